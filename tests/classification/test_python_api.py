"""The Python API a PyTorch user reaches for: `quantize(model, "repq", w_bits=4, a_bits=4, calib=<DataLoader or
list>)`, the input size a timm model was built for, and `load_quantized(path)` with no float model (rebuilt from the
timm record in the saved JSON). On the embedded default (configs/classification/fmnist_vit_tiny.py)."""
import json
import logging

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

import plugin  # noqa: F401  (registers adapters, recipes and the timm model recorder)
from plugin.classification import data_config_for, input_size
from plugin.classification.timm_models import build_timm_model, describe_timm_model
from plugin.quant import (CalibData, CalibrationError, CheckpointError, ConfigError, get_recipe, load_quantized,
                          quantize, read_meta, save_quantized)
from repo_paths import REPO
from timm_toys import SWIN, VIT, build

KWARGS = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)


def float_model():
    m = timm.create_model("vit_tiny_patch16_224", **KWARGS)
    m.load_state_dict(load_file(f"{REPO}/plugin/assets/fmnist_vit_tiny.safetensors"))
    return m.eval()


@pytest.fixture(scope="module")
def fmnist():
    data = np.load(f"{REPO}/plugin/assets/fashion_mnist_subset.npz")
    prep = lambda a: ((torch.tensor(a).float() / 255 - 0.2860) / 0.3530).unsqueeze(1)  # noqa: E731
    return prep(data["calib_images"][:64]), torch.tensor(data["calib_labels"][:64]), prep(data["eval_images"][:50])


def _same(a, b, x):
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_dataloader_calibration_equals_list_calibration(fmnist):
    x, y, ev = fmnist
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)  # yields (x, y)
    from_loader = quantize(float_model(), "minmax", w_bits=4, a_bits=4, calib=loader, calib_num=48)
    from_list = quantize(float_model(), "minmax", w_bits=4, a_bits=4, calib=[x[:32], x[32:48]])
    old_form = quantize(float_model(), get_recipe("minmax", 4, 4), CalibData([x[:32], x[32:48]], lambda m, b: m(b)))
    assert _same(from_loader, from_list, ev) and _same(from_list, old_form, ev)
    # a forward of the user's own sees each batch whole
    seen = []
    quantize(float_model(), "minmax", w_bits=8, a_bits=8, calib=loader,
             forward=lambda m, batch: (seen.append(len(batch)), m(batch[0])))
    assert seen and set(seen) == {2}


def test_calibration_input_errors(fmnist):
    x, y, _ = fmnist
    with pytest.raises(CalibrationError, match="calib_num=100 but the calibration data holds 64"):
        quantize(float_model(), "minmax", calib=[x], calib_num=100)
    with pytest.raises(ConfigError, match="pass forward="):
        quantize(float_model(), "minmax", calib=[{"img": x}])
    with pytest.raises(ConfigError, match="batch of type dict cannot be counted"):
        quantize(float_model(), "minmax", calib=[{"img": x}], forward=lambda m, b: m(b["img"]), calib_num=4)
    with pytest.raises(ConfigError, match="w_bits/a_bits apply to a recipe name"):
        quantize(float_model(), get_recipe("minmax", 8, 8), calib=[x], w_bits=4)
    with pytest.raises(ConfigError, match="needs calibration data"):
        quantize(float_model(), "minmax")


def test_progress_goes_through_logging(fmnist, capsys, caplog):
    x, _, _ = fmnist
    with caplog.at_level(logging.INFO, logger="plugin.quant"):
        quantize(float_model(), "minmax", w_bits=8, a_bits=8, calib=[x[:8]])
    assert capsys.readouterr().out == ""
    assert any("[calibrate minmax]" in r.getMessage() for r in caplog.records)


def test_input_size_is_the_built_size_not_the_names_preset():
    model = timm.create_model("vit_tiny_patch16_224", img_size=48, depth=1, embed_dim=32, num_heads=2)
    assert input_size(model) == (3, 48, 48)
    cfg = data_config_for(model, mean=(0.5,) * 3)
    assert cfg["input_size"] == (3, 48, 48) and cfg["mean"] == (0.5,) * 3
    # timm's own transform at that config feeds the model what it was built for
    from PIL import Image
    transform = timm.data.create_transform(**cfg)
    batch = torch.stack([transform(Image.new("RGB", (300, 200))) for _ in range(2)])
    quantize(model, "minmax", w_bits=8, a_bits=8, calib=[batch])
    from timm.models.mlp_mixer import MlpMixer
    mixer = MlpMixer(img_size=48, num_blocks=1, embed_dim=32)  # its patch embedding is `stem`
    assert input_size(mixer) == (3, 48, 48)
    assert input_size(float_model()) == (1, 28, 28)


def test_load_quantized_from_the_path_alone(fmnist, tmp_path):
    x, _, ev = fmnist
    model = quantize(float_model(), "repq", w_bits=4, a_bits=4, calib=[x[:32]])
    save_quantized(model, str(tmp_path / "m"))
    record = read_meta(str(tmp_path / "m"))["model"]
    assert record == {"task": "classification", "timm_model": "vit_tiny_patch16_224",
                      "timm_kwargs": {k: v for k, v in KWARGS.items()}}
    alone = load_quantized(str(tmp_path / "m"))
    assert _same(alone, load_quantized(float_model(), str(tmp_path / "m")), ev) and _same(alone, model, ev)


def test_load_without_a_model_record_is_one_clear_error(tmp_path):
    toy = quantize(build("vit"), "minmax", w_bits=8, a_bits=8, calib=[torch.randn(2, 3, 32, 32)])  # not via timm
    save_quantized(toy, str(tmp_path / "toy"))
    assert "model" not in read_meta(str(tmp_path / "toy"))
    with pytest.raises(CheckpointError, match="records no model recipe.*load_quantized\\(float_model, path\\)"):
        load_quantized(str(tmp_path / "toy"))
    meta = json.loads((tmp_path / "toy.json").read_text())
    meta["model"] = {"task": "detection", "config": "x.py"}
    (tmp_path / "toy.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="no model recorder can build"):
        load_quantized(str(tmp_path / "toy"))


@pytest.mark.parametrize("name,kwargs", [("vit_small_patch16_224", VIT), ("swin_tiny_patch4_window7_224", SWIN),
                                         ("deit_tiny_distilled_patch16_224", VIT)])
def test_timm_record_rebuilds_the_same_architecture(name, kwargs):
    model = timm.create_model(name, **kwargs)
    record = describe_timm_model(model)
    rebuilt = build_timm_model(json.loads(json.dumps(record)))  # through JSON, as saved
    assert type(rebuilt) is type(model)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert describe_timm_model(build("vit")) is None  # built without timm.create_model: no name to record
