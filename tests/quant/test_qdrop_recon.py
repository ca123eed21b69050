"""The `qdrop_recon` pass (plugin.quant.recon.qdrop): AdaRound rounding, QDrop, the block-output losses and what they
pre-compute, option checks, and save/load after the pass; on a tiny timm ViT with random weights and data."""
import copy

import pytest
import torch

timm = pytest.importorskip("timm")

import plugin.adapters  # noqa: E402,F401
from plugin.quant import CalibData, get_recipe, load_quantized, quantize, save_quantized  # noqa: E402
from plugin.quant.errors import CalibrationError, ConfigError  # noqa: E402
from plugin.quant.modules import QuantLinear  # noqa: E402
from plugin.quant.passes import PASSES  # noqa: E402
from plugin.quant.quantizers import UniformQuantizer  # noqa: E402
from plugin.quant.recon import float_reference, reconstruction_units  # noqa: E402
from plugin.quant.recon.adaround import ActivationDrop, AdaRoundWeight, DropGenerators, RoundingSchedule  # noqa: E402
from plugin.quant.recon.cache import float_tensors  # noqa: E402
from plugin.quant.recon.engine import reconstruct_unit  # noqa: E402
from plugin.quant.recon.losses import aph_loss, fisher_dplr_loss  # noqa: E402
from plugin.quant.recon.qdrop import QDropRecon  # noqa: E402
from plugin.quant.recon.sensitivity import FisherDPLR, reference_outputs, task_loss, unit_output_grads  # noqa: E402
from plugin.quant.spec import QuantSpec  # noqa: E402
from recon_helpers import context_for, run_pass  # noqa: E402


def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, num_classes=10, depth=2,
                             embed_dim=32, num_heads=2).eval()


def quiet(_):
    pass


@pytest.fixture(scope="module")
def setup():
    fp = tiny_vit()
    g = torch.Generator().manual_seed(1)
    calib = CalibData([torch.randn(4, 3, 16, 16, generator=g) for _ in range(2)], lambda model, batch: model(batch))
    base = quantize(copy.deepcopy(fp), get_recipe("repq", 3, 3), calib, log=quiet)
    return fp, calib, base


def cfg(**kw):
    return PASSES["qdrop_recon"].from_dict(dict(dict(iters=4, batch_size=4), **kw)).resolved()


# -- AdaRound ----------------------------------------------------------------------------------------------------


def _linear(bits=3, symmetric=True):
    torch.manual_seed(3)
    layer = QuantLinear.from_module(torch.nn.Linear(16, 8))
    q = UniformQuantizer(QuantSpec(bits=bits, granularity="channel", symmetric=symmetric), channel_axis=0)
    q.calibrate_tensor(layer.weight.detach())
    layer.weight_quantizer = q
    return layer, q


@pytest.mark.parametrize("symmetric", [True, False])
def test_adaround_starts_at_float_and_nearest_reaches_binary_and_hardens_on_grid(symmetric):
    layer, q = _linear(symmetric=symmetric)
    w0 = layer.weight.detach().clone()
    nearest = q(w0).detach()
    r = AdaRoundWeight(layer, q)
    x = torch.randn(32, 16)
    with torch.enable_grad():
        soft = layer.quant_weight()
    codes = w0 / q.scale.reshape(-1, 1) + q.zero_point.reshape(-1, 1)
    inside = (codes.floor() >= q.qmin) & (codes.floor() + 1 <= q.qmax)  # both neighbours on the grid
    assert torch.allclose(soft[inside], w0[inside], atol=1e-5)  # soft rounding starts at the float weight
    tie = (codes - codes.floor()) == 0.5  # AdaRound (as officially) rounds a tie up, torch.round to even
    with torch.no_grad():
        assert torch.equal(layer.quant_weight()[~tie], nearest[~tie])  # hard rounding starts at nearest rounding
    target = layer(x).detach() + 0.05 * torch.randn(32, 8)
    opt = torch.optim.Adam([r.alpha], lr=5e-2)
    sched = RoundingSchedule(300, warmup=0.2)
    for step in range(1, 301):
        with torch.enable_grad():
            loss = (layer(x) - target).pow(2).mean()
            if sched.active(step):
                loss = loss + 0.01 * r.regulariser(sched.beta(step))
            opt.zero_grad()
            loss.backward()
            opt.step()
    h = r.soft().detach()
    assert float(((h == 0) | (h == 1)).float().mean()) > 0.95  # the regulariser drove h to 0 or 1
    assert not torch.equal(r.hard(), (codes - codes.floor() >= 0.5).float())  # learned, not nearest
    r.harden()
    w = layer.weight.detach()
    assert torch.equal(q(w), w)  # hardened weights sit on the grid: the quantizer maps them to themselves
    grid = torch.clamp(codes.floor() + r.hard(), q.qmin, q.qmax)
    assert torch.equal(w, (grid - q.zero_point.reshape(-1, 1)) * q.scale.reshape(-1, 1))
    assert not q._forward_hooks  # the hook is gone


def test_rounding_schedule_matches_the_official_linear_decay():
    s = RoundingSchedule(100, warmup=0.2, b_start=20, b_end=2)
    assert not s.active(19) and s.active(20)
    assert s.beta(10) == 20 and s.beta(20) == 20 and s.beta(100) == 2 and s.beta(60) == pytest.approx(11)


# -- QDrop -------------------------------------------------------------------------------------------------------


def test_activation_drop_zero_is_no_drop_and_one_is_float():
    q = UniformQuantizer(QuantSpec(bits=3))
    x = torch.randn(64, 8)
    q.calibrate_tensor(x)
    plain = q(x)
    for prob, expect in ((0.0, plain), (1.0, x)):
        drop = ActivationDrop([q], prob, DropGenerators(0))
        with torch.enable_grad():
            assert torch.equal(q(x), expect)
        drop.remove()
    drop = ActivationDrop([q], 0.5, DropGenerators(0))
    with torch.enable_grad():
        frac = float((q(x) == x).float().mean())
    with torch.no_grad():
        assert torch.equal(q(x), plain)  # evaluation (no grad) never drops
    drop.remove()
    assert 0.35 < frac < 0.75


def _method_on_first_block(setup, **kw):
    fp, calib, base = setup
    model = copy.deepcopy(base)
    ctx = context_for(model, calib, log=quiet)
    method = QDropRecon(cfg(**kw), ctx)
    unit = reconstruction_units(ctx, layers=False)[0]
    ref = float_reference(ctx)
    cache = method.unit_cache(ctx, unit, ref, "test")
    return ctx, method, unit, ref, cache


def test_qdrop_inputs_mix_float_and_quantized_inputs(setup):
    ctx, method, unit, ref, cache = _method_on_first_block(setup, drop_prob=0.5)
    assert cache.float_inputs is not None and cache.batches == [0, 1]
    idx = torch.arange(cache.n)
    (xq,), _, tq = cache.fetch(idx)
    (xf,), _, _ = cache.float_inputs.fetch(idx)
    assert not torch.equal(xq, xf)
    for prob, expect in ((0.0, xq), (1.0, xf)):
        method.cfg = method.cfg.replace(drop_prob=prob)
        method.gens = DropGenerators(0)
        (x,), _, t = method.fetch(cache, idx)
        assert torch.equal(x, expect) and torch.equal(t[0], tq[0])
    method.cfg = method.cfg.replace(drop_prob=0.5)
    (x,), _, _ = method.fetch(cache, idx)
    from_float = (x == xf) & (x != xq)
    assert 0.35 < float(from_float.float().mean()) < 0.65


# -- losses ------------------------------------------------------------------------------------------------------


def test_fisher_dplr_rank_zero_is_the_diagonal_weighting_and_lowrank_matches_its_formula():
    torch.manual_seed(0)
    out, tgt = torch.randn(5, 3, 4), torch.randn(5, 3, 4)
    g, d = torch.rand(3, 12), torch.rand(3, 12)
    diag_only = FisherDPLR(None, None, None, 1.0, 0.7).add(g, d, lowrank=False)
    (coef, term), = fisher_dplr_loss([out], [tgt], diag_only)
    c = (out - tgt).abs().flatten(1)
    assert coef == 0.7 and torch.allclose(term, (c.pow(2) * g.mean(0)).mean())
    (_, aph), = aph_loss([out], [tgt], [g.mean(0).reshape(1, 3, 4)])
    assert torch.allclose(term, aph)
    full = FisherDPLR(None, None, None, 0.3, 0.7).add(g[:1], d[:1]).add(g[1:], d[1:])
    (c1, low), (c2, diag) = fisher_dplr_loss([out], [tgt], full)
    binv = torch.linalg.inv(d @ d.t())
    expect = torch.stack([c[b:b + 1] @ g.t() @ binv @ g @ c[b:b + 1].t() for b in range(5)]).mean()
    assert (c1, c2) == (0.3, 0.7) and torch.allclose(low, expect, rtol=1e-4) and torch.allclose(diag, term)


class _Probe(QDropRecon):
    """Records the unit's loss objective (unnormalised, hard rounding, with the loss's final pre-computed weights)
    before it is kept (`after`) and with the rounding AdaRound started from (`before`: nearest rounding)."""

    def objective(self):
        total = 0.0
        with torch.no_grad():
            for idx in self.cache.chunks(64):
                args, kwargs, tgt = self.cache.fetch(idx)
                outs = float_tensors(self.unit.module(*args, **kwargs))
                total += float(sum(c * t for c, t in self.loss_fn(outs, tgt, self.extra)))
        return total

    def attach(self, unit, generator):
        ok = super().attach(unit, generator)
        self.start_alpha = [r.alpha.detach().clone() for r in self.rounding]
        self.start_scales = [p.detach().clone() for p in self.learnables.scales]
        return ok

    def keep(self, unit):
        self.after = self.objective()
        learned = [(r.alpha, r.alpha.detach().clone()) for r in self.rounding]
        learned += [(p, p.detach().clone()) for p in self.learnables.scales]
        with torch.no_grad():
            for (t, _), start in zip(learned, self.start_alpha + self.start_scales):
                t.copy_(start)
            self.before = self.objective()
            for t, value in learned:
                t.copy_(value)
        self.rows = None if self.extra is None or not hasattr(self.extra, "grads") else self.extra.grads.shape[0]
        super().keep(unit)


@pytest.mark.parametrize("loss, extra", [("mse", {}), ("aph", {}), ("aph", dict(aph_grad="fisher")),
                                         ("fisher_dplr", dict(rank=0)), ("fisher_dplr", dict(rank=2))])
def test_each_loss_lowers_its_objective_below_nearest_rounding(setup, loss, extra):
    fp, calib, base = setup
    model = copy.deepcopy(base)
    ctx = context_for(model, calib, log=quiet)
    method = _Probe(cfg(loss=loss, iters=40, w_lr=5e-2, lr=1e-3, drop_prob=0.0, **extra), ctx)
    unit = reconstruction_units(ctx, layers=False)[0]
    w0 = {n: p.detach().clone() for n, p in unit.module.named_parameters()}
    before, after, status = reconstruct_unit(ctx, unit, method, float_reference(ctx))
    assert status == "ok"
    if loss == "fisher_dplr" and extra["rank"] == 0:
        assert method.rows == 1
    elif loss == "fisher_dplr":  # captures at iterations 0 and 20 (FIMA-Q: one more row every iters / k)
        assert method.rows == 2
    # the objective went down from nearest rounding (the hard rounding AdaRound starts from)
    assert method.after < method.before, (method.before, method.after)
    changed = [n for n, p in unit.module.named_parameters() if not torch.equal(p, w0[n])]
    assert any(n.endswith("weight") for n in changed)  # hardened rounding written into the weights
    for site in unit.sites:
        q = getattr(site.module, "weight_quantizer", None)
        if q is not None:
            w = site.module.weight.detach()
            assert torch.equal(q(w), w)
        for _, aq in site.quantizers():
            assert not aq._forward_hooks and "scale" in aq._buffers  # hooks removed, scales buffers again


def test_gradient_capture_matches_autograd_through_the_whole_model(setup):
    fp, calib, base = setup
    model = copy.deepcopy(base)
    ctx = context_for(model, calib, log=quiet)
    ref = float_reference(ctx)
    unit = reconstruction_units(ctx, layers=False)[1]
    refs = reference_outputs(ctx, ref, [0])
    with ref.active():
        outs, grads = unit_output_grads(ctx, unit, 0, lambda out: (out - refs[0][0] * 1.1).pow(2).sum())
    f = copy.deepcopy(fp)
    kept = {}
    f.blocks[1].register_forward_hook(lambda m, a, o: kept.setdefault("y", o.retain_grad() or o))
    with torch.enable_grad():
        (f(calib.batches[0]) - refs[0][0] * 1.1).pow(2).sum().backward()
    assert torch.allclose(outs[0], kept["y"].detach(), atol=1e-5)
    assert torch.allclose(grads[0], kept["y"].grad, atol=1e-5)


# -- options, the whole pass, save/load ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [dict(loss="l1"), dict(loss="kl"), dict(drop_prob=1.5), dict(rank=-1),
                                 dict(rank=1.5), dict(learn=("weight",)), dict(aph_grad="exact"), dict(warmup=1.0),
                                 dict(b_start=1.0), dict(w_lr=-1), dict(temperature=0), dict(setting="huge"),
                                 dict(iters=-1), dict(unknown=1)])
def test_bad_options_raise_config_error(bad):
    with pytest.raises(ConfigError):
        PASSES["qdrop_recon"].from_dict(bad)


def test_settings_resolve_the_official_defaults():
    paper = PASSES["qdrop_recon"].from_dict({}).resolved()
    small = PASSES["qdrop_recon"].from_dict(dict(setting="small", iters=7)).resolved()
    assert (paper.iters, paper.batch_size, paper.lr, paper.w_lr, paper.drop_prob) == (20000, 32, 4e-5, 1e-3, 0.5)
    assert (small.iters, small.batch_size) == (7, 32)
    entry = paper.to_dict()
    assert PASSES["qdrop_recon"].from_dict(entry) == paper


def test_pass_runs_in_a_recipe_and_reloads_bit_identically(setup, tmp_path):
    fp, calib, _ = setup
    recipe = get_recipe("repq", 3, 3, passes=[dict(type="qdrop_recon", loss="fisher_dplr", rank=1, iters=3,
                                                   batch_size=4)])
    logs = []
    model = quantize(copy.deepcopy(fp), recipe, calib, log=logs.append)
    assert any("pass qdrop_recon done" in line for line in logs)
    assert not any("rolled back" in line for line in logs), logs
    save_quantized(model, str(tmp_path / "qdrop"))
    loaded = load_quantized(tiny_vit(), str(tmp_path / "qdrop"))
    x = torch.cat(calib.batches)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for m in model.modules():
        if isinstance(m, QuantLinear) and m.weight_quantizer is not None:
            assert torch.equal(m.weight_quantizer(m.weight.detach()), m.weight.detach())


def test_head_unit_uses_the_kl_loss(setup):
    fp, calib, base = setup
    ctx = context_for(copy.deepcopy(base), calib, log=quiet)
    head, = [u for u in reconstruction_units(ctx) if u.name == "head"]
    method = _Probe(cfg(loss="aph", iters=40, w_lr=5e-2, drop_prob=0.0), ctx)
    assert reconstruct_unit(ctx, head, method, float_reference(ctx))[2] == "ok"
    assert method.loss_name == "kl" and method.after < method.before


def test_output_matching_loss_skips_outputs_whose_shape_changed():
    """A detector's final detections (boxes, scores) change in count when a unit upstream of NMS is quantized: such
    tensors give no term (counted), the others keep theirs, and with none left the loss is 0 with zero gradients."""
    ref = [torch.zeros(3, 4), torch.zeros(3), torch.ones(2, 2)]
    boxes, scores, other = torch.ones(4, 4, requires_grad=True), torch.ones(4, requires_grad=True), \
        torch.full((2, 2), 3.0, requires_grad=True)
    unmatched = []
    loss = task_loss([boxes, scores, other], ref, 20.0, unmatched)
    assert unmatched == [2] and loss.item() == pytest.approx(0.5 * 4 * 4 / 2)  # ½ Σ (3 − 1)² / 2 items
    g_boxes, g_other = torch.autograd.grad(loss, [boxes, other], allow_unused=True)
    assert g_boxes is None and torch.equal(g_other, torch.full((2, 2), 1.0))
    zero = task_loss([boxes, scores], ref[:2], 20.0)
    assert zero.item() == 0.0 and torch.equal(torch.autograd.grad(zero, boxes)[0], torch.zeros(4, 4))
    with pytest.raises(CalibrationError, match="3 floating-point tensors, the float model's 2"):
        task_loss([boxes, scores, other], ref[:2], 20.0)
