"""The README's Python example runs verbatim (from a copy of the repository layout it reads) and gives a real model."""
import os
import re
import runpy
import shutil

from repo_paths import REPO  # noqa: E402


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    text = open(os.path.join(REPO, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "the README has one Python example"
    (tmp_path / "plugin").mkdir()
    shutil.copytree(os.path.join(REPO, "plugin", "assets"), tmp_path / "plugin" / "assets")
    (tmp_path / "example.py").write_text(blocks[0])
    monkeypatch.chdir(tmp_path)  # relative paths as from the repository root; `out/` is written here
    runpy.run_path(str(tmp_path / "example.py"), run_name="__main__")
    top1 = float(re.search(r"W4A4 RepQ-ViT top-1 ([0-9.]+)", capsys.readouterr().out).group(1))
    assert top1 > 70.0  # the shipped model at W4A4 is still a classifier (full precision: 84.1 on these images)
    assert (tmp_path / "out" / "fmnist_repq_w4a4.safetensors").is_file()
    assert (tmp_path / "out" / "fmnist_repq_w4a4.json").is_file()
