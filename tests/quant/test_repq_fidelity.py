"""What `repq` takes from the official RepQ-ViT code: the quantile range search, the masked-zero log√2 grid, the
per-site calibration order and the unfolded classifier input; and the recipe fields that carry them."""
import pytest
import torch

from plugin.quant.errors import ConfigError
from plugin.quant import Observation, QuantSpec, Role, build_quantizer, get_recipe, quantize
from plugin.quant.calibrate import Observer
from plugin.quant.quantizers import QUANTILE_CANDIDATES, Quantizer
from plugin.quant.recipe import Recipe
from timm_toys import build, calib_data


def _obs(x):
    return Observation.from_tensor(x.reshape(-1, 1), -1)


def test_quantile_search_picks_a_candidate_quantile_range():
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    x[:5] = 40.0  # far outliers: the min-max range would waste the grid on them
    q = build_quantizer(QuantSpec(4, search="quantile")).calibrate(_obs(x))
    options = []
    for p in QUANTILE_CANDIDATES:
        lo, hi = torch.quantile(x, 1 - p), torch.quantile(x, p)
        options.append(float((hi - lo) / 15))
    assert min(abs(float(q.scale) - s) for s in options) < 1e-6
    assert float(q.scale) < 40.0 / 15 / 2


def test_quantile_range_need_not_hold_zero():
    # a channel living in [2, 5] keeps its whole 16-level grid there (RepQ-ViT's code does not widen to 0)
    x = 2 + 3 * torch.rand(4096, generator=torch.Generator().manual_seed(1))
    q = build_quantizer(QuantSpec(4, search="quantile")).calibrate(_obs(x))
    assert float(q.scale) < 3.0 / 15 * 1.01
    assert float(q.zero_point) < 0
    out = q(x)
    assert (out - x).abs().max() <= float(q.scale) / 2 + 1e-5
    minmax = build_quantizer(QuantSpec(4)).calibrate(_obs(x))  # widened to [0, 5]: a coarser step
    assert float(minmax.scale) > 5.0 / 15 * 0.99


@pytest.mark.parametrize("bits", [3, 4])
def test_masked_zero_log_grid_has_one_more_level(bits):
    x = torch.logspace(-8, 0, 20000)
    strict = build_quantizer(QuantSpec(bits, kind="log_sqrt2")).calibrate(_obs(x))
    masked = build_quantizer(QuantSpec(bits, kind="log_sqrt2", options=(("masked_zero", True),))).calibrate(_obs(x))
    n_strict = len(torch.unique(strict(x)))
    n_masked = len(torch.unique(masked(x)))
    assert n_strict == 2 ** bits            # 2^b − 1 levels and the zero: b bits
    assert n_masked == 2 ** bits + 1        # 2^b levels and a masked zero: one value beyond b bits
    assert 0.0 in masked(x).tolist()


def test_log_mse_search_goes_below_half_the_maximum():
    # many small probabilities and one large value: at 3 bits the best top level is well below the maximum
    x = torch.cat([torch.full((5000,), 0.02), torch.full((5000,), 0.005), torch.tensor([1.0])])
    q = build_quantizer(QuantSpec(3, kind="log_sqrt2", search="mse")).calibrate(_obs(x))
    assert float(q.scale) < 0.5


def test_repq_recipes_differ_only_in_the_softmax_grid():
    a, b = get_recipe("repq", 3, 3).to_dict(), get_recipe("repq_strict", 3, 3).to_dict()
    assert a["sites"]["post_softmax"]["options"] == [["masked_zero", True]]
    assert b["sites"]["post_softmax"]["options"] == []
    for d in (a, b):
        d.pop("name"), d["sites"].pop("post_softmax")
    assert a == b
    r = get_recipe("repq", 4, 4)
    assert r.sequential == "site" and r.reparam == "mean" and r.reparam_skip_roles == (Role.HEAD,)
    assert r.weight.search == r.act.search == "quantile"


def test_recipe_version_1_sequential_flag_and_bad_modes():
    d = get_recipe("minmax", 4, 4).to_dict()
    d.update(version=1, sequential=False)
    d.pop("observe_elems"), d.pop("reparam_skip_roles")
    assert Recipe.from_dict(d).sequential == "none"
    d["sequential"] = True
    assert Recipe.from_dict(d).sequential == "block"
    with pytest.raises(ConfigError, match="sequential"):
        get_recipe("minmax", 4, 4, sequential="layer")


def _ready_when_observed(recipe, monkeypatch):
    """For each activation quantizer: the quantizers already set when calibration data first reached it."""
    model, seen = build("vit"), {}
    original = Observer.record

    def spy(self, x):
        seen.setdefault(self.site_name, {n for n, q in model.named_modules() if isinstance(q, Quantizer) and q.ready})
        return original(self, x)

    monkeypatch.setattr(Observer, "record", spy)
    quantize(model, recipe, calib_data(), log=lambda *a: None)
    return seen


def test_site_order_sets_each_quantizer_after_everything_upstream(monkeypatch):
    seen = _ready_when_observed(get_recipe("repq", 4, 4), monkeypatch)
    before = seen["blocks.0.attn.matmul_av.a_quantizer"]
    # attention probabilities were observed from quantized q and k, which came from a quantized qkv
    assert {"blocks.0.attn.matmul_qk.a_quantizer", "blocks.0.attn.matmul_qk.b_quantizer",
            "blocks.0.attn.qkv.input_quantizer", "blocks.0.attn.qkv.weight_quantizer"} <= before
    assert "blocks.0.attn.proj.input_quantizer" not in before


def test_block_order_observes_a_block_in_float(monkeypatch):
    seen = _ready_when_observed(get_recipe("repq", 4, 4, sequential="block"), monkeypatch)
    before = seen["blocks.1.attn.matmul_av.a_quantizer"]
    assert "blocks.0.mlp.fc2.input_quantizer" in before          # earlier blocks are set
    assert "blocks.1.attn.matmul_qk.a_quantizer" not in before  # the same block is not


@pytest.mark.parametrize("method, option, match", [
    ("isvit", dict(iters=-1), "non-negative"),
    ("aiqvit", dict(iterz=10), "unknown options"),
    ("isvit", dict(setting="huge"), "unknown setting"),
    ("isvit", dict(rule="nosuch"), "unknown reparameterisation rule"),
])
def test_bad_pass_options_fail_before_any_forward(method, option, match):
    """A bad reconstruction option is refused before the model runs once (issue 15's criterion): when the recipe is
    built, when its passes are assigned, and by quantize() for a pass list edited in place."""
    with pytest.raises(ConfigError, match=match):
        get_recipe(method, 4, 4, passes=[dict(p, **option) for p in get_recipe(method, 4, 4).passes])
    recipe = get_recipe(method, 4, 4)
    with pytest.raises(ConfigError, match=match):
        recipe.passes = [dict(p, **option) for p in recipe.passes]
    recipe.passes[0] = dict(recipe.passes[0], **option)
    model = build("vit")
    model.register_forward_pre_hook(lambda *a: pytest.fail("the model ran before the options were checked"))
    with pytest.raises(ConfigError, match=match):
        quantize(model, recipe, calib_data(), log=lambda *a: None)
