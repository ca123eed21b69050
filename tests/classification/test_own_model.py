"""A user's own timm model at a non-default size, on their own image folder: the config they would write runs."""
import json
import os
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from repo_paths import REPO  # noqa: E402
sys.path.insert(0, os.path.join(REPO, "tools"))
import ptq_test  # noqa: E402

from plugin.classification.data import build_cls_datasets, image_data_config  # noqa: E402


def _image_folder(root, classes=10, per_class=(2, 1), size=80):
    rng = np.random.RandomState(0)
    for split, n in zip(("train", "val"), per_class):
        for c in range(classes):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.randint(0, 255, (size, size + 7, 3), dtype=np.uint8)).save(d / f"{i}.png")


@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("own")
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", num_classes=10, img_size=64)
    ckpt = tmp / "my_vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    _image_folder(tmp / "data")
    config = tmp / "my_vit.py"
    config.write_text(
        "task = 'classification'\n"
        "model = dict(name='vit_small_patch16_224', kwargs=dict(num_classes=10, img_size=64))\n"
        f"data = dict(type='imagefolder', root={str(tmp / 'data')!r}, mean=(0.45, 0.45, 0.45), std=(0.2, 0.2, 0.2))\n"
        "calib = dict(num=8, batch_size=8)\n"
        "eval = dict(batch_size=10)\n")
    return tmp, config, ckpt, model


def test_preprocessing_follows_the_built_model_and_the_config(own_model):
    tmp, _, _, model = own_model
    cfg = image_data_config({"mean": [0.45, 0.45, 0.45], "std": (0.2, 0.2, 0.2)}, model)
    assert cfg["input_size"] == (3, 64, 64)  # the model as built, not the 224 preset of its name
    assert cfg["mean"] == (0.45, 0.45, 0.45) and cfg["std"] == (0.2, 0.2, 0.2)
    calib, evaluation = build_cls_datasets({"type": "imagefolder", "root": str(tmp / "data")}, model)
    assert calib[0][0].shape == (3, 64, 64) and len(evaluation) == 10
    assert image_data_config({"input_size": 48}, model)["input_size"] == (3, 48, 48)


def test_own_timm_model_at_64_pixels_runs_end_to_end(own_model):
    tmp, config, ckpt, _ = own_model
    out = tmp / "out"
    code = ptq_test.main([str(config), str(ckpt), "--bits", "8", "--method", "minmax", "--calib-num", "8",
                          "--out", str(out), "--quiet", "--device", "cpu"])
    assert code == 0
    report = json.load(open(out / "report.json"))
    assert report["fp"]["num_images"] == 10 and report["results"][0]["calib_num"] == 8


def test_class_count_against_the_classifier(own_model):
    from plugin.errors import UserInputError
    from plugin.classification.task import check_class_count
    tmp, _, _, model = own_model
    _, evaluation = build_cls_datasets({"type": "imagefolder", "root": str(tmp / "data")}, model)  # 10 classes
    check_class_count(evaluation, model)  # 10 vs 10: silent
    with pytest.warns(UserWarning, match="10 classes and the model's classifier 1000 outputs"):
        check_class_count(evaluation, timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=16))
    with pytest.raises(UserInputError, match="10 classes but the model's classifier has 2 outputs"):
        check_class_count(evaluation, timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=16,
                                                        num_classes=2))


def test_data_root_moves_an_image_folder(own_model, tmp_path):
    tmp, config, ckpt, _ = own_model
    moved = tmp_path / "moved.py"
    moved.write_text(config.read_text().replace(str(tmp / "data"), "/nonexistent/images"))
    code = ptq_test.main([str(moved), str(ckpt), "--bits", "8", "--method", "minmax", "--calib-num", "8", "--no-fp",
                          "--data-root", str(tmp / "data"), "--out", str(tmp_path / "out"), "--quiet", "--device",
                          "cpu"])
    assert code == 0


def test_input_size_mismatch_is_one_line(own_model, tmp_path, capsys):
    _, config, ckpt, _ = own_model
    code = ptq_test.main([str(config), str(ckpt), "--method", "minmax", "--out", str(tmp_path / "out"), "--quiet",
                          "--device", "cpu", "--cfg-options", "data.input_size=48"])
    err = capsys.readouterr().err
    assert code == 2 and "48x48 images but the model was built for 64x64" in err and "Traceback" not in err, err


def test_reload_of_a_save_model_output_as_documented(own_model, monkeypatch):
    """docs/own_model.md "Reloading a --save-model output": its command (on this module's my_vit.py) and its Python
    block, executed as written; the model rebuilt from the JSON equals one loaded onto a float model built by hand."""
    import re
    import shlex
    from plugin.quant import load_quantized
    tmp, _, _, _ = own_model
    text = open(os.path.join(REPO, "docs", "own_model.md")).read()
    section = text.split("### Reloading a `--save-model` output", 1)[1].split("\n### ", 1)[0]
    command = re.search(r"```bash\n(.*?)\n```", section, re.S).group(1)
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp)
    assert ptq_test.main(shlex.split(command)[2:] + ["--quiet", "--device", "cpu", "--no-fp"]) == 0
    namespace = {}
    exec(compile(block, "docs/own_model.md", "exec"), namespace)
    assert namespace["logits"].shape == (1, 10)
    by_hand = load_quantized(timm.create_model("vit_small_patch16_224", num_classes=10, img_size=64),
                             "out/my_vit/models/minmax_w8a8")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(namespace["model"](x), by_hand(x))
