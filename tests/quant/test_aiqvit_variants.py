"""AIQViT's variants: the interval reading of DFQ (`dfq_interval`) and the fixed-rank ablations of the low-rank pass
(`aiqvit_rank20`, `aiqvit_rank100`). The generic quantizer properties (2^b levels, per-head, state dict, STE) are
covered for `dfq_interval` by the parametrised tests of test_seed_quantizers.py."""
import copy

import pytest
import torch

from plugin.quant import Observation, QuantSpec, build_quantizer, get_recipe, state
from plugin.quant.quantizers import QUANTIZERS
from plugin.quant.methods.aiqvit import FocusedIntervalQuantizer, interval_report


def interval(bits, b1, b2):
    q = build_quantizer(QuantSpec(bits, kind="dfq_interval"))
    return q.set_params(bounds=torch.tensor([[b1], [b2]]))


def test_registered():
    assert QUANTIZERS["dfq_interval"] is FocusedIntervalQuantizer


def test_levels_by_hand_and_clamping():
    # b = 2 (N = 3), [b1, b2] = [0.2, 0.8]: Δ = 0.6/3 = 0.2, levels 0.2, 0.4, 0.6, 0.8 (2^2, both bounds exact).
    # 0.29 → (0.29 − 0.2)/0.2 = 0.45 → 0 → 0.2;   0.31 → 0.55 → 1 → 0.4;   0.55 → 1.75 → 2 → 0.6;
    # 0.75 → 2.75 → 3 → 0.8;   below b1 (0, −1) → b1 = 0.2;   above b2 (1.5) → b2 = 0.8.
    q = interval(2, 0.2, 0.8)
    x = torch.tensor([-1.0, 0.0, 0.29, 0.31, 0.55, 0.75, 0.8, 1.5])
    want = torch.tensor([0.2, 0.2, 0.2, 0.4, 0.6, 0.8, 0.8, 0.8])
    torch.testing.assert_close(q(x), want, atol=1e-6, rtol=0)
    levels = q(torch.linspace(-1, 2, 3001)).unique()
    torch.testing.assert_close(levels, torch.tensor([0.2, 0.4, 0.6, 0.8]))


@pytest.mark.parametrize("bits", (3, 4))
def test_2b_evenly_spaced_levels_inside_the_interval(bits):
    q = interval(bits, 0.05, 0.45)
    levels = q(torch.linspace(0, 1, 20001)).unique()
    assert levels.numel() == 2 ** bits
    torch.testing.assert_close(levels, torch.linspace(0.05, 0.45, 2 ** bits), atol=1e-6, rtol=0)


def test_gradients_reach_both_bounds():
    q = interval(3, 0.2, 0.8)
    q.make_trainable(["bounds"])  # what the reconstruction engine does (recon.Learnables)
    # Clamped values follow their bound one for one: below b1 only b1 gets a gradient, above b2 only b2.
    q(torch.tensor([-0.5, 0.1])).sum().backward()
    torch.testing.assert_close(q.bounds.grad.flatten(), torch.tensor([2.0, 0.0]))
    q.bounds.grad = None
    q(torch.tensor([0.9, 3.0])).sum().backward()
    torch.testing.assert_close(q.bounds.grad.flatten(), torch.tensor([0.0, 2.0]))
    # Inside, the step Δ = (b2 − b1)/N moves every level: both bounds get a (rounding-error) gradient.
    q.bounds.grad = None
    q(torch.tensor([0.33, 0.52, 0.71])).sum().backward()
    assert (q.bounds.grad.abs() > 0).all()


def test_calibration_beats_the_full_range():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 3, 33, 33, generator=g) * 3).softmax(-1)
    q = build_quantizer(QuantSpec(3, kind="dfq_interval", search="mse"))
    q.calibrate(Observation.from_tensor(x, -1))
    b1, b2 = q.interval
    assert float(x.min()) <= float(b1) < float(b2) <= float(x.max()) + 1e-6
    rows = x.reshape(-1, 33)
    full = interval(3, float(x.min()), float(x.max()))
    # The search's criterion ("attn" by default) of the chosen interval is no worse than the plain min-max interval's.
    assert q._error(rows, q(rows)) <= full._error(rows, full(rows)) + 1e-9
    assert interval_report(torch.nn.Sequential(q)) == {"0": (float(b1), float(b2))}


def test_recipes_register_the_variants():
    softmax = lambda name: get_recipe(name).sites["post_softmax"].kind  # noqa: E731
    assert (softmax("aiqvit"), softmax("aiqvit_dfq_interval")) == ("dfq", "dfq_interval")
    assert get_recipe("aiqvit_dfq_interval").passes == get_recipe("aiqvit").passes
    assert get_recipe("aiqvit").passes[0]["rank_candidates"] == [4, 8, 16, 32]
    for r in (20, 100):
        (p,) = get_recipe(f"aiqvit_rank{r}", 3, 3).passes
        assert (p["rank_candidates"], p["search"]) == ([r], False)
        assert softmax(f"aiqvit_rank{r}") == "dfq"


@pytest.mark.parametrize("name,rank", [("aiqvit_rank20", 20), ("aiqvit_rank100", 100), ("aiqvit_dfq_interval", None)])
def test_variants_run_on_a_tiny_vit(name, rank):
    timm = pytest.importorskip("timm")
    import plugin.adapters  # noqa: F401
    from plugin.quant import CalibData, quantize
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=1,
                              embed_dim=24, num_heads=2, pretrained=False).eval()
    x = torch.randn(8, 3, 32, 32)
    recipe = get_recipe(name, 4, 4)
    recipe.passes = [dict(p, iters=2, batch_size=4) for p in recipe.passes]
    logs = []
    qmodel = quantize(copy.deepcopy(model), recipe, CalibData([x[:4], x[4:]], lambda m, b: m(b)), log=logs.append)
    ranks = state(qmodel).ranks
    linears = {n: m for n, m in qmodel.named_modules() if n in ranks}
    assert len(linears) == 5  # qkv, proj, fc1, fc2 and the head
    if rank is None:  # the rank search picks among the candidates (those above min(in, out) dropped)
        assert all(r in (4, 8, 16) for r in ranks.values())
        assert any(line.startswith("[dfq_interval] learned") for line in logs)
    else:  # no search: rank min(r, in, out) everywhere (embed_dim 24: r = 20 is capped at the head, r = 100 everywhere)
        assert ranks == {n: min(rank, m.in_features, m.out_features) for n, m in linears.items()}
