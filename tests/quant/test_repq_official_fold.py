"""`repq_official_fold`: RepQ-ViT's official post-LN fold (calibrated channel-wise with unfolded weights, folded
afterwards with a fractional zero point added after rounding) as an option of the reparameterisation
(Recipe.reparam_fold "official"): what the fold changes, its grid, saving, and the integer paths."""
import copy

import pytest
import torch
import torch.nn as nn

from plugin.quant import QuantSpec, build_quantizer, get_recipe, load_quantized, quantize, save_quantized, \
    set_quant_enabled
from plugin.quant.deploy.freeze import Int8Linear, freeze, frozen_summary
from plugin.quant.errors import ConfigError
from plugin.quant.recipe import Recipe
from timm_toys import build, calib_data, images

QUIET = dict(log=lambda *a: None)


def outlier_model(arch):
    """A toy whose post-LN channels have unequal ranges (as in trained ViTs), so the channel zero points differ."""
    m = build(arch)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.mul_(torch.exp(torch.randn(mod.weight.shape, generator=g)))
                mod.bias.add_(torch.randn(mod.bias.shape, generator=g))
    return m


def both(arch, bits=4):
    fp = outlier_model(arch)
    ours = quantize(copy.deepcopy(fp), get_recipe("repq", bits, bits), calib_data(), **QUIET)
    official = quantize(copy.deepcopy(fp), get_recipe("repq_official_fold", bits, bits), calib_data(), **QUIET)
    return fp, ours, official


def folded(model):
    from plugin.quant import state
    return state(model).plan.reparam_groups


@pytest.mark.parametrize("arch", ["vit", "swin"])
def test_calibrated_channel_wise_then_folded(arch, monkeypatch):
    """Calibration sees the channel-wise post-LN quantizers and unfolded weights; the fold afterwards changes only the
    folded LayerNorms and consumers (their weights, biases, input quantizers and weight quantizers), to the official
    layer-wise grid: the mean scale and the unrounded mean zero point."""
    import plugin.quant.calibrate as calibrate
    fp = outlier_model(arch)
    recipe = get_recipe("repq_official_fold", 4, 4)
    official = quantize(copy.deepcopy(fp), recipe, calib_data(), **QUIET)
    monkeypatch.setattr(calibrate, "finish_official_folds", lambda ctx: None)
    unfolded = quantize(copy.deepcopy(fp), recipe, calib_data(), **QUIET)  # the model just before the fold
    groups = folded(official)
    assert groups and groups == folded(unfolded)
    a, b = unfolded.state_dict(), official.state_dict()
    touched = {n for n, _ in groups} | {c for _, cs in groups for c in cs}
    assert a.keys() <= b.keys() and {k.rsplit(".", 1)[0] for k in b.keys() - a.keys()} <= touched  # added biases
    changed = {k for k in a if not torch.equal(a[k], b[k])} | (b.keys() - a.keys())
    assert changed and all(k.rsplit(".", 1)[0].replace(".input_quantizer", "").replace(".weight_quantizer", "")
                           in touched for k in changed)
    fp_state = fp.state_dict()
    for norm, consumers in groups:
        assert torch.equal(a[f"{norm}.weight"], fp_state[f"{norm}.weight"])  # unfolded during calibration
        channel = unfolded.get_submodule(consumers[0]).input_quantizer
        assert channel.scale.numel() > 1 and torch.equal(channel.zero_point, channel.zero_point.round())
        for c in consumers:
            lin = official.get_submodule(c)
            q = lin.input_quantizer
            assert q.zero_after_round and q.scale.numel() == 1
            torch.testing.assert_close(q.scale, channel.scale.mean().reshape(1))
            torch.testing.assert_close(q.zero_point, channel.zero_point.mean().reshape(1))
            assert q.zero_point != q.zero_point.round()
            w = build_quantizer(lin.weight_quantizer.spec, lin.weight_quantizer.channel_axis)
            assert torch.equal(lin.weight_quantizer.scale, w.calibrate_tensor(lin.weight).scale)  # on W·diag(r1)
    head = official.get_submodule("head.fc" if arch == "swin" else "head").input_quantizer
    assert not head.zero_after_round and torch.equal(head.zero_point, head.zero_point.round())
    set_quant_enabled(official, False)  # the float network is unchanged by the fold
    with torch.no_grad():
        x = images(2, 5)
        torch.testing.assert_close(official(x), fp(x), rtol=1e-4, atol=1e-4)


def test_fake_quant_is_the_official_formula_with_2b_plus_1_values():
    bits, s, z = 3, 0.1, 2.4
    q = build_quantizer(QuantSpec(bits, options={"zero_after_round": True}))
    q.set_params(scale=torch.tensor([s]), zero_point=torch.tensor([z]))
    x = torch.linspace(-1.0, 1.5, 5001)
    expected = (torch.clamp(torch.round(x / s) + z, 0, 2 ** bits - 1) - z) * s
    assert torch.equal(q(x), expected)
    assert q(x).unique().numel() == 2 ** bits + 1
    x.requires_grad_(True)  # the straight-through path computes the same values
    assert torch.equal(q(x).detach(), expected)
    plain = build_quantizer(QuantSpec(bits)).set_params(scale=torch.tensor([s]), zero_point=torch.tensor([2.0]))
    q.set_params(zero_point=torch.tensor([2.0]))  # an integer zero point: the same grid as ours
    assert torch.equal(q(x.detach()), plain(x.detach())) and q(x.detach()).unique().numel() == 2 ** bits
    with pytest.raises(ConfigError, match="zero_after_round"):
        build_quantizer(QuantSpec(bits, symmetric=True, options={"zero_after_round": True}))


@pytest.mark.parametrize("pack", [False, True])
def test_save_and_reload_bit_identical(tmp_path, pack):
    _, _, official = both("vit")
    save_quantized(official, str(tmp_path / "m"), pack=pack)
    loaded = load_quantized(outlier_model("vit"), str(tmp_path / "m"))
    a, b = official.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    # packed weights come back as their fake-quant values (plugin.quant.pack); everything else as saved
    same = [k for k in a if not (pack and k.endswith("weight") and "quantizer" not in k and "norm" not in k)]
    assert all(torch.equal(a[k], b[k]) for k in same)
    q = loaded.blocks[0].attn.qkv.input_quantizer
    assert q.zero_after_round and q.zero_point != q.zero_point.round()
    with torch.no_grad():
        x = images(2, 5)
        assert torch.equal(loaded(x), official(x))


def test_recipe_switch():
    a, b = get_recipe("repq", 3, 3).to_dict(), get_recipe("repq_official_fold", 3, 3).to_dict()
    assert (a.pop("name"), b.pop("name")) == ("repq", "repq_official_fold")
    assert (a.pop("reparam_fold"), b.pop("reparam_fold")) == ("exact", "official") and a == b
    old = get_recipe("repq", 3, 3).to_dict()
    old.pop("reparam_fold")  # a file written before the switch
    assert Recipe.from_dict(old).reparam_fold == "exact"
    with pytest.raises(ConfigError, match="reparam_fold"):
        get_recipe("repq", 3, 3, reparam_fold="late")
    with pytest.raises(ConfigError, match="needs a reparam rule"):
        get_recipe("minmax", 3, 3, reparam_fold="official")


def test_integer_paths_refuse_the_fractional_grid():
    _, ours, official = both("vit", bits=8)
    freeze(ours), freeze(official)
    assert isinstance(ours.blocks[0].attn.qkv, Int8Linear) and isinstance(ours.blocks[0].mlp.fc1, Int8Linear)
    not_frozen = frozen_summary(official)["not_frozen"]
    for name in ("blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.1.attn.qkv", "blocks.1.mlp.fc1"):
        assert "zero point added after rounding" in not_frozen[name]
    assert isinstance(official.blocks[0].attn.proj, Int8Linear) and isinstance(official.head, Int8Linear)


def test_onnx_exports_the_folded_sites_as_fake_quant_arithmetic(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from plugin.quant.deploy.onnx_export import export_onnx
    _, _, official = both("vit", bits=8)
    x = images(4, 5)
    summary = export_onnx(official, x[:1], str(tmp_path / "m.onnx"))
    sites = {n for n, why in summary["float_sites"].items() if "zero point added after rounding" in why}
    assert sites == {f"blocks.{i}.{m}.input_quantizer" for i in range(2) for m in ("attn.qkv", "mlp.fc1")}
    # ONNX Runtime's graph optimisations rewrite x/s (an ulp off, so a few roundings flip); unoptimised it is exact
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(summary["path"], options, providers=["CPUExecutionProvider"])
    out = torch.tensor(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(out, official(x), rtol=0, atol=1e-5)
