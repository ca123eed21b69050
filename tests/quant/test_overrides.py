"""Per-module overrides as data (plugin.quant.overrides): patterns, first match wins, slots, JSON, the CLI section."""
import json
import os
import sys

import pytest
import torch
import torch.nn as nn

from plugin.quant import QuantSpec, Recipe, get_recipe, quantize
from plugin.quant.errors import ConfigError
from plugin.quant.overrides import find_override, normalize_overrides
from plugin.quant.spec import Role
from timm_toys import build, calib_data

from repo_paths import REPO  # noqa: E402
sys.path.insert(0, os.path.join(REPO, "tools"))
import ptq_test  # noqa: E402

CONFIG = os.path.join(REPO, "configs/classification/fmnist_vit_tiny.py")
CKPT = os.path.join(REPO, "plugin/assets/fmnist_vit_tiny.safetensors")


def quantized_with(overrides, recipe="minmax"):
    r = get_recipe(recipe, 4, 4, overrides=overrides)
    return quantize(build("vit"), r, calib_data(), log=lambda *a: None)


@pytest.mark.parametrize("pattern, name, role, hit", [
    ("head", "head", Role.HEAD, True),
    ("head", "head.fc", Role.HEAD, False),            # a plain name is exact
    ("blocks.0.*", "blocks.0.attn.qkv", Role.QKV, True),
    ("blocks.0.*", "blocks.10.attn.qkv", Role.QKV, False),
    ("*.fc2", "blocks.3.mlp.fc2", Role.FC2, True),
    ("re:blocks\\.(0|1)\\..*", "blocks.1.mlp.fc1", Role.FC1, True),
    ("re:blocks\\.1", "blocks.1.mlp.fc1", Role.FC1, False),  # the regex must match the whole name
    ("role:matmul_av", "blocks.0.attn.matmul_av", Role.MATMUL_AV, True),
    ("role:matmul_av", "blocks.0.attn.matmul_qk", Role.MATMUL_QK, False),
])
def test_patterns(pattern, name, role, hit):
    assert find_override(normalize_overrides([(pattern, None)]), name, role)[0] is hit


def test_first_match_wins():
    rules = normalize_overrides([("blocks.0.mlp.fc1", {"weight": QuantSpec(8)}), ("blocks.0.*", None)])
    assert find_override(rules, "blocks.0.mlp.fc1", Role.FC1)[1]["weight"].bits == 8
    assert find_override(rules, "blocks.0.mlp.fc2", Role.FC2) == (True, None)


@pytest.mark.parametrize("overrides, words", [
    ([("role:nosuch", None)], "unknown role"),
    ([("re:blocks[", None)], "bad regular expression"),
    ([("head", {"bias": None})], "unknown slot 'bias'"),
    ([("head", {"weight": {"bitz": 8}})], "slot 'weight'"),
    ([("head", 8)], "must map to None"),
    (["head"], "(pattern, rule) pair"),
    ([("", None)], "non-empty string"),
])
def test_bad_overrides_refused_when_the_recipe_is_built(overrides, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        get_recipe("minmax", 4, 4, overrides=overrides)


def test_attach_follows_the_overrides():
    model = quantized_with([("head", None),
                            ("blocks.0.attn.qkv", {"weight": QuantSpec(8, granularity="channel")}),
                            ("role:matmul_av", {"a": None}),
                            ("blocks.1.mlp.fc2", {"input": {"bits": 6}})])
    assert type(model.head) is nn.Linear  # kept float: not swapped at all
    assert model.blocks[0].attn.qkv.weight_quantizer.spec.bits == 8
    assert model.blocks[1].attn.qkv.weight_quantizer.spec.bits == 4  # untouched sites keep the recipe's spec
    assert model.blocks[0].attn.qkv.input_quantizer.spec.bits == 4   # slots a rule does not name keep theirs too
    for blk in model.blocks:
        assert blk.attn.matmul_av.a_quantizer is None and blk.attn.matmul_av.b_quantizer is not None
    assert model.blocks[1].mlp.fc2.input_quantizer.spec.bits == 6
    assert model.blocks[0].mlp.fc2.input_quantizer.spec.bits == 4


def test_a_float_consumer_keeps_its_norm_unfolded():
    """RepQ folds norm1's channel-wise ranges into the LayerNorm; with qkv float that fold would go uncompensated."""
    float_model = build("vit")
    model = quantized_with([("blocks.0.attn.qkv", None)], recipe="repq")
    assert torch.equal(model.blocks[0].norm1.weight, float_model.blocks[0].norm1.weight)
    assert not torch.equal(model.blocks[0].norm2.weight, float_model.blocks[0].norm2.weight)  # others still fold


def test_overrides_round_trip_through_json():
    r = get_recipe("repq", 4, 4, overrides=[("head", None), ("role:fc2", {"input": QuantSpec(8), "weight": None})])
    back = Recipe.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.overrides == r.overrides and back.to_dict() == r.to_dict()
    old = r.to_dict()
    del old["overrides"]
    old["version"] = 3
    assert Recipe.from_dict(old).overrides == []


def test_config_section_reaches_every_method(tmp_path):
    config = tmp_path / "cfg.py"
    config.write_text(f"_base_ = [{CONFIG!r}]\nquant = dict(overrides=[('head', None), ('blocks.0.*', None)])\n")
    out = tmp_path / "o"
    assert ptq_test.main([str(config), CKPT, "--method", "minmax", "repq", "--out", str(out), "--quiet", "--no-fp",
                          "--device", "cpu", "--calib-num", "8"]) == 0
    for result in json.load(open(out / "report.json"))["results"]:
        assert result["recipe"]["overrides"][:2] == [["head", None], ["blocks.0.*", None]]


@pytest.mark.parametrize("section, words", [
    ("quant = dict(overrides=[('role:nosuch', None)])", "unknown role"),
    ("quant = dict(overides=[])", "unknown key(s) in `quant`: overides"),
])
def test_bad_config_section_is_one_line_before_any_work(tmp_path, capsys, section, words):
    config = tmp_path / "cfg.py"
    config.write_text(f"_base_ = [{CONFIG!r}]\n{section}\n")
    out = tmp_path / "o"
    assert ptq_test.main([str(config), CKPT, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_saved_model_with_overrides_loads_back(tmp_path):
    from plugin.quant import load_quantized, save_quantized
    from timm_toys import images
    model = quantized_with([("head", None), ("blocks.1.*", {"weight": QuantSpec(8, granularity="channel")})])
    save_quantized(model, str(tmp_path / "m"))
    loaded = load_quantized(build("vit", seed=5), str(tmp_path / "m"))
    assert type(loaded.head) is nn.Linear and loaded.blocks[1].mlp.fc1.weight_quantizer.spec.bits == 8
    x = images(2)
    assert torch.equal(model(x), loaded(x))
