"""tools/compare_official.py: refusal of bad input (fast, no official code needed) and, where an official checkout
is named by an environment variable, a real side-by-side run on the embedded tiny ViT.

    VITQ_OFFICIAL_REPQ=/path/RepQ-ViT VITQ_OFFICIAL_ISVIT=/path/IaS-ViT VITQ_OFFICIAL_PTQ4VIT=/path/PTQ4ViT pytest ...

No official code (nor a stand-in of it) is part of this project: without the variables those tests are skipped.
"""
import json
import os
import sys

import pytest

from repo_paths import REPO  # noqa: E402
sys.path.insert(0, os.path.join(REPO, "tools"))
import compare_official  # noqa: E402

CONFIG = os.path.join(REPO, "configs/classification/fmnist_vit_tiny.py")
CKPT = os.path.join(REPO, "plugin/assets/fmnist_vit_tiny.safetensors")
CHECKOUTS = {m: os.environ.get(f"VITQ_OFFICIAL_{m.upper()}") for m in compare_official.OFFICIAL}


def _refused(capsys, tmp_path, *argv, words=()):
    out = tmp_path / "out"
    code = compare_official.main([CONFIG, CKPT, "--out", str(out), "--device", "cpu", *map(str, argv)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and ": error: " in lines[0], err
    assert all(w.lower() in lines[0].lower() for w in words), lines[0]
    assert not out.exists()  # refused before any work
    return lines[0]


@pytest.mark.parametrize("value, words", [
    ("nope=/tmp", ["METHOD=PATH", "repq", "isvit", "ptq4vit"]),
    ("repq", ["METHOD=PATH"]),
    ("isvit=", ["METHOD=PATH"]),
])
def test_bad_official_value(tmp_path, capsys, value, words):
    _refused(capsys, tmp_path, "--official", value, words=words)


@pytest.mark.parametrize("method, title", [(m, c.title) for m, c in compare_official.OFFICIAL.items()])
def test_folder_that_is_not_the_checkout(tmp_path, capsys, method, title):
    (tmp_path / "empty").mkdir()
    _refused(capsys, tmp_path, "--official", f"{method}={tmp_path / 'empty'}", words=[title, "checkout"])
    _refused(capsys, tmp_path, "--official", f"{method}={tmp_path / 'missing'}", words=["not a folder"])


@pytest.mark.parametrize("method, other", [("repq", "isvit"), ("isvit", "repq"), ("ptq4vit", "repq")])
def test_checkout_of_another_method_refused(tmp_path, capsys, method, other):
    if not CHECKOUTS[other]:
        pytest.skip(f"VITQ_OFFICIAL_{other.upper()} not set")
    _refused(capsys, tmp_path, "--official", f"{method}={CHECKOUTS[other]}",
             words=[compare_official.OFFICIAL[method].title])


def test_unknown_official_arg(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    # The checkout is checked first; an unknown key for a valid checkout is checked with parse_official_args.
    from plugin.errors import UserInputError
    with pytest.raises(UserInputError, match="iters"):
        compare_official.parse_official_args(["itres=3"], ["isvit"])
    with pytest.raises(UserInputError, match="KEY=VALUE"):
        compare_official.parse_official_args(["iters=3"], ["repq"])  # repq has no iteration count
    with pytest.raises(UserInputError, match="integer"):
        compare_official.parse_official_args(["iters=x"], ["isvit"])
    assert compare_official.parse_official_args(["iters=3"], ["isvit", "repq"]) == {"isvit": {"iters": 3}, "repq": {}}


def test_official_defaults():
    assert compare_official.OFFICIAL["repq"].calib_num == 32
    assert compare_official.OFFICIAL["isvit"].calib_num == 1024
    assert compare_official.OFFICIAL["ptq4vit"].calib_num == 32
    assert compare_official.isvit_iters(4, 4) == 1000 and compare_official.isvit_iters(6, 6) == 200
    assert compare_official.OURS == {"repq": "repq", "isvit": "isvit", "ptq4vit": "ptq4vit"}


@pytest.mark.parametrize("method, extra", [
    ("repq", []),
    ("isvit", ["--calib-num", "64", "--official-args", "iters=2"]),
    ("ptq4vit", []),
])
def test_side_by_side_on_the_embedded_model(tmp_path, method, extra):
    if not CHECKOUTS[method]:
        pytest.skip(f"VITQ_OFFICIAL_{method.upper()} not set")
    code = compare_official.main([CONFIG, CKPT, "--official", f"{method}={CHECKOUTS[method]}", "--bits", "8",
                                  "--seeds", "0", "--device", "cpu", "--out", str(tmp_path), *extra])
    assert code == 0
    (row,) = json.load(open(tmp_path / "fidelity.json"))
    assert row["method"] == method and row["ours_recipe"] == method
    # W8A8 is close to float on both sides.
    assert abs(row["official"] - row["fp"]) < 3.0 and abs(row["ours"] - row["fp"]) < 3.0, row
    assert not any(name.split(".")[0] in compare_official.OFFICIAL[method].modules for name in sys.modules)
