"""What `ptq4vit` takes from the official PTQ4ViT code: the output-metric (Hessian-guided) scale search as the
`hessian_search` pass, per-slice weight ranges of a fused qkv, per-head attention operands; the recipe round-trips."""
import json

import pytest
import torch
import torch.nn as nn

from plugin.quant import QuantSpec, Role, build_quantizer, get_recipe, quantize
from plugin.quant.attach import Site
from plugin.quant.errors import ConfigError
from plugin.quant.methods.ptq4vit.hessian import HessianSearchConfig, _loss, _search_site
from plugin.quant.modules import MatMul, QuantLinear
from plugin.quant.recipe import Recipe
from timm_toys import build, calib_data


def _outlier_linear(seed=0):
    """A Linear whose input has one huge channel the output ignores (its weight column is zero)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 16, generator=g)
    x[:, 0] = 40.0 * torch.randn(512, generator=g)  # dominates min-max and the input's own error
    lin = nn.Linear(16, 8)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(8, 16, generator=g))
        lin.weight[:, 0] = 0.0
    return x, lin


def _quant_linear(lin, x, act_spec, w_bits=8):
    m = QuantLinear.from_module(lin, build_quantizer(act_spec), build_quantizer(QuantSpec(w_bits, symmetric=True), 0))
    m.input_quantizer.calibrate_tensor(x)
    m.weight_quantizer.calibrate_tensor(lin.weight)
    return m


def test_output_metric_search_beats_the_inputs_own_mse_search():
    x, lin = _outlier_linear()
    with torch.no_grad():
        y = lin(x)
    own_mse = _quant_linear(lin, x, QuantSpec(3, symmetric=True, search="mse"))
    searched = _quant_linear(lin, x, QuantSpec(3, symmetric=True))
    _search_site(Site("fc", searched, Role.FC1), [((x,), y, torch.ones_like(y))], HessianSearchConfig(metric="hessian"))
    with torch.no_grad():
        err_own = (own_mse(x) - y).pow(2).mean().item()
        err_searched = (searched(x) - y).pow(2).mean().item()
    # the input's own MSE keeps the outlier channel (floor 0.3 of the range); the output metric knows it is ignored
    assert err_searched < 0.5 * err_own
    assert float(searched.input_quantizer.scale) < float(own_mse.input_quantizer.scale)


def test_gradient_weights_the_output_error():
    # only output channel 0 matters to the loss: the weight search then serves that row alone
    x, lin = _outlier_linear(1)
    with torch.no_grad():
        y = lin(x)
    g = torch.zeros_like(y)
    g[:, 0] = 1.0
    plain = _quant_linear(lin, x, QuantSpec(8, symmetric=True), w_bits=3)
    weighted = _quant_linear(lin, x, QuantSpec(8, symmetric=True), w_bits=3)
    _search_site(Site("fc", plain, Role.FC1), [((x,), y, None)], HessianSearchConfig(metric="mse"))
    _search_site(Site("fc", weighted, Role.FC1), [((x,), y, g)], HessianSearchConfig())
    with torch.no_grad():
        err = [(m(x) - y)[:, 0].pow(2).mean().item() for m in (plain, weighted)]
    assert err[1] <= err[0]


def test_per_head_operands_pick_their_own_scale():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 2, 5, 4, generator=g)
    a[:, 1] *= 30.0  # head 1 is 30x wider than head 0
    b = torch.randn(2, 2, 4, 5, generator=g)
    mm = MatMul()
    mm.a_quantizer = build_quantizer(QuantSpec(4, granularity="head", symmetric=True), 1).calibrate_tensor(a)
    mm.b_quantizer = None
    y = a @ b
    _search_site(Site("attn.matmul_qk", mm, Role.MATMUL_QK), [((a, b), y, torch.ones_like(y))], HessianSearchConfig())
    s = mm.a_quantizer.scale
    assert s.shape == (2,) and float(s[1]) > 10 * float(s[0])


def test_qkv_weight_scale_is_shared_per_slice_and_recipe_runs():
    model = quantize(build("vit"), get_recipe("ptq4vit", 4, 4, passes=[dict(type="hessian_search", eq_n=4,
                                                                              rounds=1)]),
                     calib_data(), log=lambda *a: None)
    qkv = model.blocks[0].attn.qkv
    scale = qkv.weight_quantizer.scale
    assert scale.numel() == qkv.out_features
    assert len(torch.unique(scale)) <= 3 and all(len(torch.unique(p)) == 1 for p in scale.chunk(3))
    assert model.blocks[0].mlp.fc1.weight_quantizer.scale.numel() == 1  # per tensor
    assert model.patch_embed.proj.input_quantizer is None  # the official code leaves the pixels in float
    assert model.blocks[0].attn.matmul_qk.a_quantizer.scale.numel() == 4  # per head
    assert model.blocks[0].attn.matmul_av.a_quantizer.kind == "twin_uniform"
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()


def test_swin_runs():
    model = quantize(build("swin"), get_recipe("ptq4vit", 4, 4, passes=[dict(type="hessian_search", eq_n=2,
                                                                              rounds=1, grad="random")]),
                     calib_data(), log=lambda *a: None)
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()


def test_recipe_round_trips():
    for name in ("ptq4vit", "ptq4vit_mse"):
        r = get_recipe(name, 3, 3)
        d = json.loads(json.dumps(r.to_dict()))
        assert Recipe.from_dict(d).to_dict() == r.to_dict()
    p = get_recipe("ptq4vit", 3, 3).passes[0]
    assert p["type"] == "hessian_search" and p["eq_alpha"] == 0.01 and p["eq_beta"] == 1.2 and p["eq_n"] == 100


@pytest.mark.parametrize("option", [dict(metric="l3"), dict(grad="none"), dict(eq_alpha=0), dict(eq_beta=0.001),
                                    dict(eq_n=0), dict(rounds=1.5), dict(split_candidates=0), dict(nope=1)])
def test_bad_search_options_fail_when_the_recipe_is_built(option):
    with pytest.raises(ConfigError):
        get_recipe("ptq4vit", 4, 4, passes=[dict(type="hessian_search", **option)])


@pytest.mark.parametrize("spec", [dict(granularity="channel", options=(("groups", 0),)),
                                  dict(granularity="channel", options=(("groups", True),)),
                                  dict(granularity="tensor", options=(("groups", 3),)),
                                  dict(granularity="channel", search="mse", options=(("groups", 3),))])
def test_bad_groups_fail_when_the_quantizer_is_built(spec):
    with pytest.raises(ConfigError):
        build_quantizer(QuantSpec(4, **spec), 0)


def test_loss_falls_back_to_a_random_projection():
    t = torch.randn(3, 4, requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    assert _loss({"boxes": t, "n": torch.ones(3, dtype=torch.long)}, "label", gen).requires_grad
    assert _loss(t, "label", gen).item() > 0  # cross-entropy against the argmax


def test_calls_of_one_site_add_up_whatever_their_shapes():
    """A site applied several times per forward (a detector's RPN head on each FPN level): the capture keeps one entry
    per input size, the search adds the errors of all entries. Split into two equal-shape calls, the search picks
    what it picks on the concatenation; with a gradient that is zero throughout it falls back to output MSE."""
    from plugin.quant.methods.ptq4vit.hessian import _Capture
    x, lin = _outlier_linear(2)
    with torch.no_grad():
        y = lin(x)
    g = torch.rand(y.shape, generator=torch.Generator().manual_seed(0))
    whole = _quant_linear(lin, x, QuantSpec(3, symmetric=True), w_bits=3)
    split = _quant_linear(lin, x, QuantSpec(3, symmetric=True), w_bits=3)
    _search_site(Site("fc", whole, Role.FC1), [((x,), y, g)], HessianSearchConfig())
    _search_site(Site("fc", split, Role.FC1), [((x[:200],), y[:200], g[:200]), ((x[200:],), y[200:], g[200:])],
                 HessianSearchConfig())
    for a, b in ((whole.input_quantizer, split.input_quantizer), (whole.weight_quantizer, split.weight_quantizer)):
        torch.testing.assert_close(a.scale, b.scale)

    site = Site("fc", split, Role.FC1)
    cap = _Capture([site])
    for rows in (3, 5, 3):  # two sizes, 3-row calls twice
        xs = torch.randn(2, rows, 16)
        cap.inputs["fc"].append((xs,))
        cap.outputs["fc"].append(torch.zeros(2, rows, 8))
        cap.grads["fc"].append(torch.zeros(2, rows, 8))
    calls = cap.get("fc")
    assert sorted(tuple(c[0][0].shape) for c in calls) == [(2, 5, 16), (4, 3, 16)]
    assert all(c[2] is None for c in calls)  # zero gradient everywhere: searched on output MSE
