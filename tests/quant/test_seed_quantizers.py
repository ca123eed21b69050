"""Tests of the seed methods' parts: the TanQ, SULQ and DFQ post-Softmax quantizers, the MOSF reparameterisation rule
and the dopq / isvit / aiqvit recipes with their ablations.

The level tests set a quantizer's parameters by hand and compare its outputs with numbers derived in the comments from
the equations in the quantizers' docstrings (and docs/methods.md).
"""
import json
import math

import pytest
import torch

from plugin.quant.errors import ConfigError
from plugin.quant import Observation, QuantSpec, Recipe, build_quantizer, get_recipe
from plugin.quant.calibrate import REPARAM_RULES
from plugin.quant.methods.dopq.mosf import mosf_scale
from plugin.quant.quantizers import QUANTIZERS
from plugin.quant.methods.aiqvit import DynamicFocusingQuantizer
from plugin.quant.methods.dopq import SoftmaxTanQuantizer
from plugin.quant.methods.isvit import ShiftUniformLog2Quantizer

KINDS = ("tanq", "sulq", "dfq", "dfq_interval")


def softmax_batch(seed=0, temperature=3.0, shape=(4, 3, 17, 17)):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * temperature).softmax(-1)


def calibrated(kind, bits, x=None, granularity="tensor", channel_axis=-1, **options):
    x = softmax_batch() if x is None else x
    q = build_quantizer(QuantSpec(bits, kind=kind, granularity=granularity, search="mse", options=options),
                        channel_axis)
    return q.calibrate(Observation.from_tensor(x, channel_axis)), x


def with_params(kind, bits, **params):
    q = build_quantizer(QuantSpec(bits, kind=kind))
    return q.set_params(**{k: torch.tensor([float(v)]) for k, v in params.items()})


# ------------------------------------------------------------------------------------------------- levels by hand
def test_kinds_registered():
    assert QUANTIZERS["tanq"] is SoftmaxTanQuantizer
    assert QUANTIZERS["sulq"] is ShiftUniformLog2Quantizer
    assert QUANTIZERS["dfq"] is DynamicFocusingQuantizer


def test_tanq_levels_by_hand():
    # b = 2 (N = 3), θ0 = θ1 = π/4, s = 1: tan θ0 = tan θ1 = 1, θ(u) = −π/4 + (π/2)·u, g(u) = (tan θ(u) + 1)/2.
    # Levels x_j = (atan(−1 + 2j/3) + π/4)/(π/2):
    #   j=0: (−π/4 + π/4)/(π/2) = 0;   j=1: (π/4 − atan(1/3))/(π/2) = (0.785398 − 0.321751)/1.570796 = 0.295167;
    #   j=2: 1 − 0.295167 = 0.704833 (symmetry);   j=3: 1.
    # Inputs: u=0.1: θ=−0.628319, tan=−0.726543, 3g=0.4102 → q=0 → 0
    #         u=0.2: θ=−0.471239, tan=−0.509525, 3g=0.7357 → q=1 → 0.295167
    #         u=0.4: θ=−0.157080, tan=−0.158384, 3g=1.2624 → q=1 → 0.295167
    #         u=0.6: θ= 0.157080, tan= 0.158384, 3g=1.7376 → q=2 → 0.704833
    #         u=0.9: θ= 0.628319, tan= 0.726543, 3g=2.5898 → q=3 → 1
    #         u=1.5: clamped to 1 → 1;  u=−0.2: clamped to 0 → 0
    q = with_params("tanq", 2, scale=1.0, theta_lo=math.pi / 4, theta_hi=math.pi / 4)
    x = torch.tensor([0.0, 0.1, 0.2, 0.4, 0.6, 0.9, 1.0, 1.5, -0.2])
    want = torch.tensor([0.0, 0.0, 0.295167, 0.295167, 0.704833, 1.0, 1.0, 1.0, 0.0])
    torch.testing.assert_close(q(x), want, atol=1e-5, rtol=0)
    # With s = 0.5 every level halves.
    q = with_params("tanq", 2, scale=0.5, theta_lo=math.pi / 4, theta_hi=math.pi / 4)
    torch.testing.assert_close(q(x * 0.5), want * 0.5, atol=1e-5, rtol=0)


def test_sulq_levels_by_hand():
    # b = 2, η = 1, x_min = 0, x_max = 1: l = log2(0 + 1) = 0, h = log2(1 + 1) = 1, Δ = 1/3.
    # Levels x_j = 2^(j/3) − 1 = 0, 0.259921, 0.587401, 1.
    # Inputs: x=0.1: log2(1.1)=0.137504, /Δ=0.4125 → 0 → 0;      x=0.2: log2(1.2)=0.263034, /Δ=0.7891 → 1 → 0.259921
    #         x=0.45: log2(1.45)=0.536053, /Δ=1.6082 → 2 → 0.587401;  x=0.8: log2(1.8)=0.847997, /Δ=2.5440 → 3 → 1
    #         x=2: log2(3)=1.584963, /Δ=4.7549 → clamped to 3 → 1
    q = with_params("sulq", 2, eta=1.0, log_lo=0.0, log_step=1 / 3)
    x = torch.tensor([0.0, 0.1, 0.2, 0.45, 0.8, 2.0])
    want = torch.tensor([0.0, 0.0, 0.259921, 0.587401, 1.0, 1.0])
    torch.testing.assert_close(q(x), want, atol=1e-5, rtol=0)


def test_sulq_calibration_follows_its_equation():
    q, x = calibrated("sulq", 3)
    eta = q.eta.item()
    assert any(eta == pytest.approx(e) for e in ShiftUniformLog2Quantizer.ETAS)
    lo, hi = max(x.min().item(), 0.0), x.max().item()
    # l = log2(x_min + η), Δ = (log2(x_max + η) − l)/(2^b − 1): the bottom level is x_min, the top one x_max.
    assert q.log_lo.item() == pytest.approx(math.log2(lo + eta), rel=1e-5)
    assert q.log_step.item() == pytest.approx((math.log2(hi + eta) - math.log2(lo + eta)) / 7, rel=1e-5)
    out = q(torch.tensor([lo, hi]))
    torch.testing.assert_close(out, torch.tensor([lo, hi]), atol=1e-5, rtol=1e-4)


def test_dfq_levels_by_hand():
    # b = 3 (N = 7), M = 1, i = 1 code below the focus, n = 4 codes in it, ρ = 4:
    #   Δr = M/(N − n + n/ρ) = 1/(3 + 1) = 0.25, Δf = 0.0625, a = i·Δr = 0.25, e = a + n·Δf = 0.5.
    # Levels: 0, 0.25 | 0.3125, 0.375, 0.4375, 0.5 | 0.75, 1.0  (8 = 2^3 levels).
    # Inputs: 0.1 → g=0.4 → 0 → 0;                0.2 → g=0.8 → 1 → 0.25
    #         0.33 → g=1+0.08/0.0625=2.28 → 2 → 0.3125;   0.47 → g=1+0.22/0.0625=4.52 → 5 → 0.5
    #         0.6 → g=5+0.1/0.25=5.4 → 5 → 0.5;           0.9 → g=5+0.4/0.25=6.6 → 7 → 1.0;   1.7 → clamped to 7 → 1.0
    q = with_params("dfq", 3, rest_step=0.25, focus_step=0.0625, focus_first=1, focus_codes=4)
    x = torch.tensor([0.1, 0.2, 0.33, 0.47, 0.6, 0.9, 1.7])
    want = torch.tensor([0.0, 0.25, 0.3125, 0.5, 0.5, 1.0, 1.0])
    torch.testing.assert_close(q(x), want, atol=1e-6, rtol=0)
    grid = q(torch.linspace(0, 1, 4001)).unique()
    torch.testing.assert_close(grid, torch.tensor([0.0, 0.25, 0.3125, 0.375, 0.4375, 0.5, 0.75, 1.0]))


def test_tanq_finer_than_log2_near_one():
    x = softmax_batch(temperature=4.0)
    tan, _ = calibrated("tanq", 4, x)
    log2, _ = calibrated("log2", 4, x)

    def top_gap(q):
        levels = q(torch.linspace(0, float(x.max()), 20001)).unique()
        return (levels[-1] - levels[-2]).item()

    # log2's two largest levels are s and s/2; TanQ keeps a fine step next to the top.
    assert top_gap(tan) < top_gap(log2) / 2
    # Fixed angles θ0 = θ1 = 1.2, b = 4, s = 1: tan 1.2 = 2.572152, the level below the top is
    # x_14 = (atan(−2.572152 + 2·2.572152·14/15) + 1.2)/2.4 = (atan(2.229198) + 1.2)/2.4 = (1.149114 + 1.2)/2.4
    #      = 0.978798, a top step of 0.021202, against 0.5 for log2 (levels 1 and 1/2).
    fixed = with_params("tanq", 4, scale=1.0, theta_lo=1.2, theta_hi=1.2)
    levels = fixed(torch.linspace(0, 1, 20001)).unique()
    assert levels[-2].item() == pytest.approx(0.978798, abs=1e-5)
    assert top_gap(fixed) == pytest.approx(0.021202, abs=1e-5)


# ------------------------------------------------------------------------------------------- generic properties
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bits", (2, 3, 4, 6, 8))
def test_at_most_2b_levels_within_range(kind, bits):
    q, x = calibrated(kind, bits)
    probe = torch.cat([torch.rand(20000) * x.max() * 1.2, softmax_batch(seed=1).flatten()])
    out = q(probe)
    assert out.unique().numel() <= 2 ** bits
    assert out.min() >= -1e-6 and out.max() <= x.max() + 1e-5
    torch.testing.assert_close(q(out), out, atol=0, rtol=0)  # idempotent: levels map to themselves


@pytest.mark.parametrize("kind", KINDS)
def test_per_head_granularity(kind):
    x = softmax_batch(shape=(2, 4, 9, 9))
    x[:, 2] *= 0.3  # one head with a smaller range gets its own parameters
    q, _ = calibrated(kind, 4, x, granularity="head", channel_axis=1)
    out = q(x)
    for h in range(4):
        assert out[:, h].unique().numel() <= 16
        assert out[:, h].max() <= x[:, h].max() + 1e-5
    assert out[:, 2].max() <= x[:, 2].max() + 1e-5


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("granularity,axis", [("tensor", -1), ("head", 1)])
def test_state_dict_round_trip(kind, granularity, axis):
    q, x = calibrated(kind, 4, granularity=granularity, channel_axis=axis)
    fresh = build_quantizer(q.spec, axis)
    assert not fresh.ready
    fresh.load_state_dict(q.state_dict())
    assert fresh.ready
    torch.testing.assert_close(fresh(x), q(x), atol=0, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_straight_through_gradient(kind):
    q, x = calibrated(kind, 4)
    x = x.clone().requires_grad_(True)
    (q(x) * torch.randn_like(x)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # The buffers reconstruction may train get a gradient too once they are parameters.
    for name in q.range_names():
        p, = q.make_trainable([name])
        (q(x.detach()) * torch.randn_like(x)).sum().backward()
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
        q.make_fixed([name])


# Not dfq_interval: its grid is uniform with a floor b1, so it can tie with the uniform grid but has no reason to beat it.
@pytest.mark.parametrize("kind", ("tanq", "sulq", "dfq"))
def test_beats_uniform_on_softmax(kind):
    x = softmax_batch(temperature=4.0, shape=(8, 3, 33, 33))
    err = {k: (calibrated(k, 4, x)[0](x) - x).pow(2).sum().item() for k in (kind, "uniform")}
    assert err[kind] < err["uniform"]


def test_dfq_attn_criterion_is_default_and_mse_selectable():
    q, _ = calibrated("dfq", 4)
    assert q.criterion == "attn"
    q, _ = calibrated("dfq", 4, criterion="mse")
    assert q.criterion == "mse"
    with pytest.raises(ConfigError):
        calibrated("tanq", 4, criterion="l1")


# ------------------------------------------------------------------------------------------------------- MOSF
def test_mosf_registered():
    assert REPARAM_RULES["mosf"] is mosf_scale


def test_mosf_robust_to_an_outlier_channel():
    g = torch.Generator().manual_seed(0)
    scales = 0.05 + 0.01 * torch.rand(64, generator=g)
    outlier = scales.clone()
    outlier[7] = 2.0  # one channel with a 40x range
    mean_shift = (REPARAM_RULES["mean"](outlier) - REPARAM_RULES["mean"](scales)).abs()
    mosf_shift = (mosf_scale(outlier) - mosf_scale(scales)).abs()
    assert mosf_shift < mean_shift / 10
    # Without outliers MOSF stays within the channel scales and near their mean.
    assert scales.min() <= mosf_scale(scales) <= scales.max()
    assert mosf_scale(scales) == pytest.approx(scales.mean().item(), rel=0.05)


def test_mosf_by_hand():
    # s = (1, 1, 1, 1, 9): median 1, MAD = mean|s − 1| = 8/5 = 1.6, threshold 3·1.6 = 4.8 → 9 is out, s̃ = 1.
    assert mosf_scale(torch.tensor([1.0, 1.0, 1.0, 1.0, 9.0])).item() == pytest.approx(1.0)
    # s = (1, 2, 3): median 2, MAD = 2/3, threshold 2 → all in, s̃ = mean = 2.
    assert mosf_scale(torch.tensor([1.0, 2.0, 3.0])).item() == pytest.approx(2.0)
    # No spread: s̃ = the common value.
    assert mosf_scale(torch.full((4,), 0.3)).item() == pytest.approx(0.3)


# ----------------------------------------------------------------------------------------------------- recipes
SEED_RECIPES = ("dopq", "isvit", "aiqvit", "dopq_no_tanq", "dopq_no_mosf", "isvit_no_sulq", "isvit_no_sos",
                "aiqvit_no_dfq", "aiqvit_no_lowrank", "aiqvit_no_curriculum", "aiqvit_dfq_interval", "aiqvit_rank20",
                "aiqvit_rank100")


@pytest.mark.parametrize("name", SEED_RECIPES)
@pytest.mark.parametrize("bits", ((4, 4), (3, 3), (6, 6)))
def test_recipe_round_trip(name, bits):
    r = get_recipe(name, *bits)
    assert r.name == name and (r.w_bits, r.a_bits) == bits
    assert Recipe.from_dict(r.to_dict()) == r
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_recipe_switches():
    softmax = lambda name: get_recipe(name).sites["post_softmax"].kind  # noqa: E731
    assert (softmax("dopq"), softmax("dopq_no_tanq")) == ("tanq", "log_sqrt2")
    assert (get_recipe("dopq").reparam, get_recipe("dopq_no_mosf").reparam) == ("mosf", "mean")
    assert (softmax("isvit"), softmax("isvit_no_sulq")) == ("sulq", "log2")
    assert [p["type"] for p in get_recipe("isvit").passes] == ["sos"]
    assert get_recipe("isvit").sites["post_ln"].granularity == "channel"
    no_sos = get_recipe("isvit_no_sos")
    assert no_sos.passes == [] and no_sos.sites["post_ln"].granularity == "tensor"
    assert (softmax("aiqvit"), softmax("aiqvit_no_dfq")) == ("dfq", "log_sqrt2")
    assert [p["type"] for p in get_recipe("aiqvit").passes] == ["lowrank"]
    assert get_recipe("aiqvit").passes[0]["curriculum"] is True
    assert get_recipe("aiqvit_no_curriculum").passes[0]["curriculum"] is False
    assert get_recipe("aiqvit_no_lowrank").passes == []
    # Keyword switches on the recipe functions give the same recipes as the registered ablations (up to the name).
    from plugin.quant.methods.aiqvit import aiqvit_recipe
    assert aiqvit_recipe(4, 4, lowrank=False, name="aiqvit_no_lowrank") == get_recipe("aiqvit_no_lowrank")
    assert get_recipe("isvit", 4, 4, passes=[]).passes == []


@pytest.mark.parametrize("name", ("dopq", "isvit", "aiqvit"))
def test_recipe_quantizes_a_tiny_vit(name):
    timm = pytest.importorskip("timm")
    import plugin.adapters  # noqa: F401
    from plugin.quant import CalibData, quantize
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=1,
                              pretrained=False).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    qmodel = quantize(model, get_recipe(name, 6, 6, passes=[]), CalibData([x], lambda m, b: m(b)), log=lambda *_: None)
    with torch.no_grad():
        out = qmodel(x)
    assert torch.isfinite(out).all()
    assert (out - ref).pow(2).mean() < 0.5 * ref.pow(2).mean()
    kinds = {type(m).kind for m in qmodel.modules() if hasattr(m, "kind") and hasattr(m, "spec")}
    assert {"dopq": "tanq", "isvit": "sulq", "aiqvit": "dfq"}[name] in kinds
