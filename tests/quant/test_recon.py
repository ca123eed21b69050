"""Block reconstruction, I&S-ViT's SOS, AIQViT's low-rank compensation and the curriculum (plugin.quant.recon,
plugin.quant.methods.aiqvit.lowrank), on a tiny timm ViT with random weights and data."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

timm = pytest.importorskip("timm")

import plugin.adapters  # noqa: E402,F401
from plugin.quant.errors import ConfigError  # noqa: E402
from plugin.quant import (CalibData, QuantLinear, QuantSpec, get_recipe, load_quantized, quantize,  # noqa: E402
                          read_meta)
from plugin.quant import save_quantized, state  # noqa: E402
from plugin.quant.methods.aiqvit import lowrank as lr  # noqa: E402
from plugin.quant import recon  # noqa: E402
from plugin.quant.recon import cache as recon_cache  # noqa: E402
from recon_helpers import context_for, run_pass  # noqa: E402
from plugin.quant.quantizers import UniformQuantizer  # noqa: E402


def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=2,
                             embed_dim=64, num_heads=2).eval()


def calib_data():
    g = torch.Generator().manual_seed(1)
    return CalibData([torch.randn(4, 3, 32, 32, generator=g) for _ in range(2)], lambda model, batch: model(batch))


def quiet(_):
    pass


@pytest.fixture(scope="module")
def setup():
    """The float model, the calibration data and the same model quantized by repq W4A4 without passes."""
    fp = tiny_vit()
    calib = calib_data()
    base = quantize(copy.deepcopy(fp), get_recipe("repq", 4, 4), calib, log=quiet)
    return fp, calib, base


def fixed_input(calib):
    return torch.cat(calib.batches)


def block_errors(model, fp, x):
    """Per block (and for the logits): mean squared difference between the model's and the float model's output."""
    def outputs(m):
        outs = []
        hooks = [b.register_forward_hook(lambda mod, a, o: outs.append(o)) for b in m.blocks]
        with torch.no_grad():
            outs.append(m(x))
        for h in hooks:
            h.remove()
        return outs
    return [float((a - b).pow(2).mean()) for a, b in zip(outputs(model), outputs(fp))]


def with_pass(base, calib, spec, logs=None):
    model = copy.deepcopy(base)
    ctx = context_for(model, calib, log=(logs.append if logs is not None else quiet))
    run_pass(ctx, spec)
    return model


def test_passes_run_from_the_recipe(setup):
    fp, calib, _ = setup
    logs = []
    quantize(copy.deepcopy(fp), get_recipe("minmax", 4, 4, passes=[dict(type="block_recon", iters=2, layers=False)]),
             calib, log=logs.append)
    assert any("pass block_recon done" in line for line in logs)


def test_block_recon_lowers_every_block_error_and_reloads(setup, tmp_path):
    fp, calib, base = setup
    model = with_pass(base, calib, dict(type="block_recon", iters=20, batch_size=8, scale_lr=1e-2, lr=1e-3,
                                        learn=("act_scale", "weight_scale", "weight", "bias")))
    x = fixed_input(calib)
    before, after = block_errors(base, fp, x), block_errors(model, fp, x)
    assert all(a < b for a, b in zip(after, before)), (before, after)

    save_quantized(model, str(tmp_path / "recon"))
    loaded = load_quantized(tiny_vit(), str(tmp_path / "recon"))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_unit_reached_by_some_batches_learns_on_those(setup):
    """A unit that some calibration batches skip (in detection: a RoI head on an image without proposals) learns
    from the batches that reach it; one reached by none is skipped, not an error."""
    fp, calib, base = setup

    def forward(model, batch):
        x, skip = batch
        x = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        for i, blk in enumerate(model.blocks):
            if i not in skip:
                x = blk(x)
        return model.forward_head(model.norm(x))

    b0, b1 = calib.batches
    skipping = CalibData([(b0, ()), (b1, ()), (b0, (1,)), (b1, (0, 1))], forward)
    logs = []
    model = with_pass(base, skipping, dict(type="block_recon", iters=20, batch_size=8, scale_lr=1e-2, lr=1e-3,
                                           learn=("act_scale", "weight_scale", "weight", "bias")), logs)
    assert any("blocks.1: reached by 2 of 4 calibration batches" in line for line in logs), logs
    assert any("blocks.0: reached by 3 of 4 calibration batches" in line for line in logs), logs
    x = fixed_input(calib)
    before, after = block_errors(base, fp, x), block_errors(model, fp, x)
    assert after[1] < before[1], (before, after)

    never = CalibData([(b, (1,)) for b in calib.batches], forward)
    logs = []
    model = with_pass(base, never, dict(type="block_recon", iters=4, batch_size=8, layers=False), logs)
    assert any("blocks.1: not reached by the calibration data, skipped" in line for line in logs), logs
    for k, v in model.blocks[1].state_dict().items():
        assert torch.equal(v, base.blocks[1].state_dict()[k]), k


def test_targets_realigned_where_shapes_depend_on_the_model(setup):
    """A RoI head sees as many boxes as its own model proposed: where the float model fed the unit inputs of other
    shapes than the quantized model did, the target becomes the float unit on the quantized model's inputs."""
    fp, calib, _ = setup
    model = quantize(copy.deepcopy(fp), get_recipe("minmax", 4, 4), calib, log=quiet)
    fc1 = model.blocks[0].mlp.fc1
    g = torch.Generator().manual_seed(3)
    x3, x6 = torch.randn(3, 64, generator=g), torch.randn(6, 64, generator=g)
    with torch.no_grad():
        right = [fp.blocks[0].mlp.fc1(x6)]
        inputs = {0: ((x3,), {}), 1: ((x6,), {})}
        # batch 0: the float model gave the unit 6 rows (boxes), the quantized one 3
        captured = {0: ([x6.shape], [torch.zeros(6, 256)]), 1: ([x6.shape], right)}
        targets, n = recon_cache.realign_targets(recon.Unit("blocks.0.mlp.fc1", fc1, []), recon.FloatReference(model),
                                            inputs, captured, [0, 1])
        assert n == 1 and targets[1] is right
        assert torch.allclose(targets[0][0], fp.blocks[0].mlp.fc1(x3), atol=1e-6)
        assert not torch.allclose(fc1(x3), targets[0][0], atol=1e-4)  # the quantizers are back on afterwards


def test_model_dependent_units_fit_the_float_unit_on_their_own_inputs(setup, monkeypatch):
    """Units the adapter names in model_dependent_inputs (a detector's RoI heads) are fitted to the float unit on the
    quantized model's inputs: their float-model outputs are never captured."""
    fp, calib, base = setup
    model = copy.deepcopy(base)
    ctx = context_for(model, calib, log=quiet)
    monkeypatch.setattr(type(ctx.adapter), "model_dependent_inputs", lambda self, m: ["blocks.1"])
    captured, capture = [], recon.capture_outputs
    monkeypatch.setattr(recon.engine, "capture_outputs", lambda c, unit: captured.append(unit.name) or capture(c, unit))
    logs = []
    ctx.log = logs.append
    cfg = recon.ReconConfig(iters=10, batch_size=8, layers=False)
    report = recon.reconstruct(ctx, recon.BlockRecon(cfg))
    assert captured == ["blocks.0"]
    assert any("blocks.1: its inputs depend on the model's own predictions" in line for line in logs), logs
    assert not any("blocks.0: its inputs depend" in line for line in logs)
    assert set(report) == {"blocks.0", "blocks.1"} and report["blocks.1"][2] == "ok"


def test_float_reference_is_the_float_model(setup):
    fp, calib, base = setup
    model = copy.deepcopy(base)
    ref = recon.FloatReference(model, snapshot=True)
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight.add_(1.0)  # as if reconstruction had trained it
        x = fixed_input(calib)
        with ref.active():
            y = model(x)
        assert torch.allclose(y, fp(x), atol=1e-5)
        assert not torch.allclose(model(x), base(x))  # the live weight is back after the reference ran


def test_rollback_on_nan(setup):
    fp, calib, base = setup
    model = copy.deepcopy(base)
    state = {k: v.clone() for k, v in model.blocks[0].state_dict().items()}

    def poison(mod, args, out):  # NaN only while training: capture and evaluation stay clean
        return out * float("nan") if torch.is_grad_enabled() else out

    model.blocks[0].mlp.fc2.register_forward_hook(poison)
    logs = []
    ctx = context_for(model, calib, log=logs.append)
    run_pass(ctx, dict(type="block_recon", iters=12, batch_size=8, layers=False))
    assert any("blocks.0: rolled back (loss became NaN/inf" in line for line in logs), logs
    for k, v in model.blocks[0].state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not any(isinstance(p, nn.Parameter) for q in model.modules() for p in q._parameters.values()
                   if q.__class__.__name__.endswith("Quantizer"))


def test_lowrank_search_merge_and_reload(setup, tmp_path):
    fp, calib, base = setup
    x = fixed_input(calib)
    ranks = (2, 4, 8)
    model = with_pass(base, calib, dict(type="lowrank", iters=20, batch_size=8, rank_candidates=ranks, merge=False,
                                        search_frac=0.5, arch_lr=5e-2))
    found = lr.branches(model)
    assert len(found) == 9  # 4 Linears in each of 2 blocks + the head
    assert all(m.lowrank.rank in ranks and not m.lowrank.searching for _, m in found)
    assert set(state(model).ranks.values()) <= set(ranks)
    assert block_errors(model, fp, x)[-1] < block_errors(base, fp, x)[-1]

    with torch.no_grad():
        unmerged = model(x)
        assert lr.merge_branches(model) == 9
        merged = model(x)
    assert not lr.branches(model)
    assert torch.allclose(unmerged, merged, atol=1e-5, rtol=0)

    save_quantized(model, str(tmp_path / "merged"))
    assert read_meta(str(tmp_path / "merged"))["packed"]["float"] == {}  # merged: plain integer weights, packed
    loaded = load_quantized(tiny_vit(), str(tmp_path / "merged"))
    with torch.no_grad():
        assert torch.equal(merged, loaded(x))


def test_kept_branches_reload(setup, tmp_path):
    fp, calib, base = setup
    x = fixed_input(calib)
    model = with_pass(base, calib, dict(type="lowrank", iters=10, batch_size=8, rank_candidates=(2, 4), merge=False,
                                        placement="post"))
    assert lr.branches(model)
    path = str(tmp_path / "kept")
    save_quantized(model, path)
    kept_float = read_meta(path)["packed"]["float"]  # Q(W) + A·B: W stays float, said so
    assert set(kept_float) == {f"{n}.weight" for n, _ in lr.branches(model)}
    loaded = load_quantized(tiny_vit(), path)  # rebuilds the branches first (load hook lr.restore_branches)
    assert [(n, m.lowrank.rank) for n, m in lr.branches(loaded)] == [(n, m.lowrank.rank) for n, m in lr.branches(model)]
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def _quant_linear():
    torch.manual_seed(3)
    lin = nn.Linear(16, 12)
    weight_q = UniformQuantizer(QuantSpec(4, granularity="channel"), channel_axis=0)
    q = QuantLinear.from_module(lin, UniformQuantizer(QuantSpec(8)), weight_q)
    x = torch.randn(5, 16)
    q.input_quantizer.calibrate_tensor(x)
    q.weight_quantizer.calibrate_tensor(lin.weight)
    return q, x


def test_branch_applied_exactly():
    for post in (False, True):
        q, x = _quant_linear()
        branch = lr.attach_branch(q, [3], post=post, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            branch.A.normal_(0, 0.05)
            xq = q.input_quantizer(x)
            delta = branch.A @ branch.B
            if post:
                expect = F.linear(xq, q.weight_quantizer(q.weight), q.bias) + xq @ delta.t()
            else:
                expect = F.linear(xq, q.weight_quantizer(q.weight + delta), q.bias)
            assert torch.allclose(q(x), expect, atol=1e-5)
            if post:
                with pytest.raises(ConfigError):
                    lr.merge_branch(q)
            else:
                before = q(x)
                lr.merge_branch(q)
                assert type(q) is QuantLinear and torch.equal(q(x), before)


def test_rank_search_keeps_argmax_candidate():
    branch = lr.LowRankBranch(12, 16, ranks=(2, 4, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        branch.A.normal_()
        branch.arch_logits.copy_(torch.tensor([0.1, 2.0, -1.0]))
        m = branch.component_weights()
        expect = (branch.A * m)[:, :4] @ branch.B[:4]
    assert torch.allclose(m[:2], torch.ones(2)) and m[4:].max() < m[2:4].min()
    assert branch.discretize() == 4
    assert branch.rank == 4 and not branch.searching
    assert torch.allclose(branch.delta(), expect)


def test_curriculum_orders_easy_to_hard():
    difficulty = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 0.5, 6.0, 7.0, 8.0, 9.0])
    sampler = recon.Sampler(torch.arange(10), 2, torch.Generator().manual_seed(0), difficulty, iters=100,
                            start=0.3, full_at=0.5)
    assert sampler.order.tolist() == torch.argsort(difficulty).tolist()
    sizes = [sampler.pool_size(it) for it in range(100)]
    assert sizes[0] == 3 and sizes[-1] == 10 and sizes[50] == 10
    assert all(a <= b for a, b in zip(sizes, sizes[1:]))
    easiest = set(torch.argsort(difficulty)[:3].tolist())
    assert all(set(sampler.sample(0).tolist()) <= easiest for _ in range(20))
    plain = recon.Sampler(torch.arange(10), 4, torch.Generator().manual_seed(0))
    assert plain.pool_size(0) == 10


@pytest.fixture(scope="module")
def isvit_like(setup):
    """Quantized with a recipe in the shape of isvit's: channel-wise post-LN quantizers, no RepQ reparam."""
    fp, calib, _ = setup
    recipe = get_recipe("repq", 4, 4, reparam=None)
    recipe.sites = dict(recipe.sites, post_ln=QuantSpec(4, granularity="channel", search="mse"))
    return quantize(copy.deepcopy(fp), recipe, calib, log=quiet)


def test_sos_stage2_reparam_is_exact(setup, isvit_like):
    fp, calib, _ = setup
    x = fixed_input(calib)
    model = copy.deepcopy(isvit_like)
    ctx = context_for(model, calib, log=quiet)
    for s in ctx.sites:  # SOS reparameterises while the weights are float
        if getattr(s.module, "weight_quantizer", None) is not None:
            s.module.weight_quantizer.enabled = False
    with torch.no_grad():
        y0 = model(x)
        assert recon.reparameterize_channelwise(ctx) == 5  # norm1, norm2 of 2 blocks + final norm
        y1 = model(x)
    assert all(s.module.input_quantizer.scale.numel() == 1 for s in ctx.sites if s.post_ln)
    assert torch.allclose(y0, y1, atol=1e-5 * y0.abs().max().item())


def test_sos_runs_and_reloads(setup, isvit_like, tmp_path):
    fp, calib, _ = setup
    x = fixed_input(calib)
    logs = []
    model = with_pass(isvit_like, calib, dict(type="sos", iters=10, batch_size=8), logs)
    assert any("stage 2: 5 channel-wise" in line for line in logs)
    assert all(math.isfinite(e) for e in block_errors(model, fp, x))
    save_quantized(model, str(tmp_path / "sos"))
    loaded = load_quantized(tiny_vit(), str(tmp_path / "sos"))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
