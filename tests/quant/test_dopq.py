"""DopQ-ViT on I&S-ViT's pipeline: the `dopq` recipe, and the MOSF rule at SOS stage 2 (plugin.quant.methods.dopq.mosf)."""
import copy
import json

import pytest
import torch
import torch.nn as nn

from plugin.quant.errors import ConfigError
from plugin.quant import CalibData, QuantSpec, Recipe, get_recipe, quantize, set_quant_enabled
from plugin.quant import recon
from plugin.quant.methods.dopq.mosf import mad_outliers, mosf_fold, mosf_scale
from plugin.quant.quantizers import UniformQuantizer
from plugin.quant.reparam import fold_channelwise
from timm_toys import build, images
from recon_helpers import context_for, run_pass


def quiet(_):
    pass


def test_dopq_is_sos_with_mosf_and_lite_keeps_the_calibration_fold():
    r = get_recipe("dopq", 3, 3)
    assert [(p["type"], p["rule"]) for p in r.passes] == [("sos", "mosf")]
    assert r.sites["post_ln"].granularity == "channel" and r.sites["post_softmax"].kind == "tanq"
    assert r.calib_num == get_recipe("isvit", 3, 3).calib_num == 1024
    assert {k: v for k, v in r.passes[0].items() if k != "rule"} == \
           {k: v for k, v in get_recipe("isvit", 3, 3).passes[0].items() if k != "rule"}
    assert get_recipe("dopq_no_mosf").passes[0]["rule"] == "mean"
    assert get_recipe("dopq_no_tanq").sites["post_softmax"].kind == "log_sqrt2"
    assert get_recipe("dopq_no_tanq").passes[0]["rule"] == "mosf"
    lite = get_recipe("dopq_lite")
    assert lite.passes == [] and lite.reparam == "mosf" and lite.sites["post_ln"].granularity == "tensor"
    assert get_recipe("dopq_lite_no_tanq").sites["post_softmax"].kind == "log_sqrt2"


@pytest.mark.parametrize("name", ["dopq_lite", "dopq_lite_no_tanq"])
def test_lite_recipes_round_trip(name):
    r = get_recipe(name, 3, 3)
    assert r.name == name and Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_bad_setting_fails_when_the_recipe_is_built():
    with pytest.raises(ConfigError, match="setting"):
        get_recipe("dopq", 3, 3, setting="huge")


# ------------------------------------------------------------------------------------------- the fold on a toy
class NormLinear(nn.Module):
    """A LayerNorm over 16 channels, two of them outliers (γ 20 and 40), feeding a Linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.norm, self.fc = nn.LayerNorm(16), nn.Linear(16, 5)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.norm.weight.copy_(0.8 + 0.4 * torch.rand(16, generator=g))
            self.norm.weight[[2, 6]] = torch.tensor([20.0, 40.0])
            self.norm.bias.copy_(torch.randn(16, generator=g))

    def forward(self, x):
        return self.fc(self.norm(x))


def channelwise(x, bits=3):
    q = UniformQuantizer(QuantSpec(bits, granularity="channel"), channel_axis=-1)
    return q.calibrate_tensor(x)


def layerwise(scale, zero, bits=3):
    q = UniformQuantizer(QuantSpec(bits), channel_axis=-1)
    q.set_params(scale=scale.reshape(1), zero_point=zero.reshape(1))
    return q


def test_mad_outliers_by_hand():
    # median 1, MAD = (0.1 + 0 + 0.1 + 8 + 0) / 5 = 1.64, threshold 4.92: only 9 is out.
    assert mad_outliers(torch.tensor([0.9, 1.0, 1.1, 9.0, 1.0])).tolist() == [False, False, False, True, False]
    assert not mad_outliers(torch.full((4,), 0.3)).any()


def _post_ln_case():
    """A LayerNorm → Linear with outlier channels, its inputs, post-LN activations and their channel-wise quantizer."""
    fp = NormLinear()
    inp = torch.randn(300, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = fp.norm(inp)
    cq = channelwise(x)
    return fp, inp, x, cq, cq.scale.reshape(-1), cq.zero_point.reshape(-1)


def test_mosf_fold_keeps_the_float_function_and_the_outlier_codes_but_moves_the_inliers():
    fp, inp, x, cq, s, z = _post_ln_case()
    out = mad_outliers(s)
    assert out.nonzero().flatten().tolist() == [2, 6]
    s_layer = mosf_scale(s).reshape(())
    model = copy.deepcopy(fp)
    z_layer = mosf_fold(model.norm, [model.fc], s, z, s_layer, cq.qmin, cq.qmax)
    lq = layerwise(s_layer, z_layer)
    with torch.no_grad():
        x_new = model.norm(inp)
        assert torch.allclose(model(inp), fp(inp), atol=1e-4, rtol=1e-5)  # the float network is unchanged
        codes_c = torch.clamp(torch.round(x / s) + z, cq.qmin, cq.qmax)
        codes_l = torch.clamp(torch.round(x_new / s_layer) + z_layer, lq.qmin, lq.qmax)
        assert torch.equal(codes_l[:, out], codes_c[:, out])  # outliers: exactly RepQ's fold
        assert not torch.equal(codes_l[:, ~out], codes_c[:, ~out])  # inliers: on the layer grid itself
        # inliers keep their own weight columns; outlier columns carry s_c / s̃
        assert torch.allclose(model.fc.weight[:, ~out], fp.fc.weight[:, ~out])
        assert torch.allclose(model.fc.weight[:, out], fp.fc.weight[:, out] * (s[out] / s_layer))
        # and each inlier's range is centred on the layer grid (the mean of its dequantized values stays put)
        err = (lq(x_new) - x_new)[:, ~out].mean(0).abs()
        assert (err < s_layer).all()


def test_exact_fold_is_inert_in_the_layer_scale():
    """Why MOSF needs its own fold: with the exact fold, the mean and the MOSF scale give the same quantized Linear
    output (weights quantized per output channel, as in every recipe) up to floating-point rounding."""
    fp, inp, x, cq, s, z = _post_ln_case()
    outs = []
    for s_layer in (s.mean(), mosf_scale(s)):
        assert s_layer.numel() == 1
        model = copy.deepcopy(fp)
        z_layer, _, _ = fold_channelwise(model.norm, [model.fc], s, z, s_layer.reshape(()))
        wq = UniformQuantizer(QuantSpec(3, granularity="channel", search="mse"), channel_axis=0)
        wq.calibrate_tensor(model.fc.weight)
        with torch.no_grad():
            a = layerwise(s_layer, z_layer)(model.norm(inp))
            outs.append(nn.functional.linear(a, wq(model.fc.weight), model.fc.bias))
    assert (s.mean() - mosf_scale(s)).abs() > 0.2 * s.mean()  # the two scales really differ
    assert torch.allclose(outs[0], outs[1], atol=1e-4 * outs[0].abs().max().item())


# --------------------------------------------------------------------------------------- SOS stage 2 on a ViT
@pytest.fixture(scope="module")
def channelwise_vit():
    """A tiny ViT with outlier post-LN channels, quantized W3A3 with channel-wise post-LN quantizers, no pass."""
    fp = build("vit")
    g = torch.Generator().manual_seed(100)
    with torch.no_grad():
        for mod in fp.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.mul_(torch.exp(0.2 * torch.randn(mod.weight.shape, generator=g)))
                mod.weight[:2].mul_(15.0)
    calib = CalibData([images(4, 2), images(4, 3)], lambda model, batch: model(batch))
    model = quantize(copy.deepcopy(fp), get_recipe("dopq", 3, 3, passes=[]), calib, log=quiet)
    return fp, calib, model


def stage2(model, calib, rule):
    model = copy.deepcopy(model)
    ctx = context_for(model, calib, log=quiet)
    for s in ctx.sites:  # SOS reparameterises while the weights are float
        if getattr(s.module, "weight_quantizer", None) is not None:
            s.module.weight_quantizer.enabled = False
    assert recon.reparameterize_channelwise(ctx, rule) == 5
    return model


def test_sos_stage2_mosf_changes_the_quantized_model_not_the_float_one(channelwise_vit):
    fp, calib, model = channelwise_vit
    x = images(4, 7)
    mean, mosf = stage2(model, calib, "mean"), stage2(model, calib, "mosf")
    with torch.no_grad():
        y_mean, y_mosf = mean(x), mosf(x)
        assert (y_mean - y_mosf).abs().max() > 1e-3 * y_mean.abs().max()
        for m in (mean, mosf):
            set_quant_enabled(m, False)
            assert torch.allclose(m(x), fp(x), atol=1e-4 * fp(x).abs().max().item())


def test_sos_unknown_rule_fails_before_any_forward(channelwise_vit):
    _, calib, model = channelwise_vit

    def no_forward(*_):
        raise AssertionError("a forward ran")
    ctx = context_for(copy.deepcopy(model), CalibData(calib.batches, no_forward), log=quiet)
    with pytest.raises(ConfigError, match="rule"):
        run_pass(ctx, dict(type="sos", rule="median_of_nothing", iters=1))


# ----------------------------------------------------------------------------------------- tools/mosf_check.py
def test_mosf_check_tool_scale_alone_is_inert_on_the_embedded_model(capsys, monkeypatch):
    """The tool's no-reconstruction comparison on the shipped model: MOSF's scale with the exact fold gives the `mean`
    model's top-1 exactly (the claim docs/methods.md rests on), MOSF's own fold a model of its own."""
    import os
    import sys
    from repo_paths import REPO as repo
    monkeypatch.chdir(repo)  # the config names its data relative to the repository
    sys.path.insert(0, os.path.join(repo, "tools"))
    import mosf_check
    assert mosf_check.main(["configs/classification/fmnist_vit_tiny.py", "plugin/assets/fmnist_vit_tiny.safetensors",
                            "--bits", "3", "--calib-num", "16", "--seeds", "0"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    top1 = {r["rule"]: r["top1"] for r in rows}
    assert set(top1) == {"mean", "mosf", "mosf_exact"}
    assert top1["mosf_exact"] == top1["mean"]
    assert all(0 < v <= 100 for v in top1.values())


def test_dopq_sos_with_mosf_fold_reloads(channelwise_vit, tmp_path):
    from plugin.quant import load_quantized, save_quantized
    _, calib, model = channelwise_vit
    model = copy.deepcopy(model)
    logs = []
    run_pass(context_for(model, calib, log=logs.append), dict(type="sos", rule="mosf", iters=2,
                                                                         batch_size=4))
    assert any("stage 2: 5 channel-wise post-LN quantizers reparameterised to layer-wise (mosf)" in s for s in logs)
    save_quantized(model, str(tmp_path / "dopq"))
    loaded = load_quantized(build("vit"), str(tmp_path / "dopq"))
    x = images(4, 7)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
