"""Tests of the `aphq`, `fimaq` and `relu_fisher` recipes and their parts: APHQ-ViT's `mlp_relu` pass (GELU -> ReLU
MLP refit, run before any quantizer), the `output_search` pass, `Recipe.stat_fraction`, and the recipes end to end on
a toy ViT with tiny iteration counts (CPU)."""
import copy
import os
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

import timm_toys as T
from plugin.quant import (CalibData, Recipe, get_recipe, iter_quantizers, load_quantized, quantize, read_meta,
                          save_quantized)
from plugin.quant.adalog import GELU_SHIFT
from plugin.quant.errors import CheckpointError, ConfigError
from plugin.quant.passes import PASSES, PassConfig, register_pass
from plugin.quant.recon import float_reference
from plugin.quant.methods.aphq import aphq_recipe
from plugin.quant.methods.fimaq import fimaq_recipe
from plugin.quant.methods.relu_fisher import relu_fisher_recipe
from plugin.quant.recon import relu_float_model
from plugin.quant.modules import QuantLinear
from plugin.quant.spec import Role

QUIET = dict(log=lambda *a: None)


def calib(n_batches=4, size=4):
    return CalibData([T.images(size, seed) for seed in range(n_batches)], lambda m, b: m(b))


def rel_err(model, ref_model, x):
    with torch.no_grad():
        ref = ref_model(x)
        return ((model(x) - ref).pow(2).mean() / ref.pow(2).mean()).item()


def with_mlp_pass(**options):
    recipe = get_recipe("minmax", 4, 4)
    recipe.passes = [dict(type="mlp_relu", **options)]
    return recipe


# --- recipes as data -------------------------------------------------------------------------------------------------
def test_paper_settings_are_the_official_defaults():
    aphq, fimaq = get_recipe("aphq", 3, 3), get_recipe("fimaq", 4, 4)
    assert [p.kind for p in aphq.passes] == ["mlp_relu", "output_search", "qdrop_recon"]
    assert [p.kind for p in fimaq.passes] == ["output_search", "qdrop_recon"]
    for r in (aphq, fimaq):
        assert r.calib_num == 1024 and r.calib_num * r.stat_fraction == 128     # optim_size, calib_size
        assert r.passes[-1].drop_prob == 0.5 and r.passes[-1].batch_size == 32 and r.passes[-1].setting == "paper"
        assert r.sites["patch_embed.input"].bits == 8
        assert r.reparam == "mean"
    assert aphq.passes[0].clamp_pct == 0.99 and get_recipe("aphq", 4, 4).passes[0].clamp_pct == 0.98
    assert aphq.passes[0].loss == "aph" and aphq.passes[-1].loss == "aph"
    assert fimaq.passes[-1].loss == "fisher_dplr"
    assert aphq.sites["post_gelu"].opts["zero_fixed"] and "post_gelu" not in fimaq.sites
    # the official per-tensor search ignores its post_relu flag: this ablation searches the zero point like theirs
    assert "post_gelu" not in get_recipe("aphq_fc2_zero_searched", 3, 3).sites
    assert get_recipe("aphq", 2, 4).reparam is None  # the official code folds only when a_bit == w_bit


def test_relu_fisher_combines_the_two_codes_and_folds_at_every_width():
    r = get_recipe("relu_fisher", 2, 4)
    assert [p.kind for p in r.passes] == ["mlp_relu", "output_search", "qdrop_recon"]
    assert r.passes[0].loss == "aph" and r.passes[-1].loss == "fisher_dplr"
    assert r.sites["post_gelu"].opts["zero_fixed"] and r.sites["post_ln"].opts["token_axis"] == -2
    assert r.reparam == "mean" and get_recipe("relu_fisher_official_reparam", 2, 4).reparam is None
    assert get_recipe("relu_fisher_official_reparam", 3, 3).reparam == "mean"
    assert r.sites["post_softmax"].kind == "percentile_grid"
    assert get_recipe("relu_fisher_adalog_softmax", 3, 3).sites["post_softmax"].kind == "adalog"
    assert get_recipe("relu_fisher_aph", 3, 3).passes[-1].loss == "aph"
    assert get_recipe("fimaq_adalog_softmax", 3, 3).sites["post_softmax"].kind == "adalog"
    assert get_recipe("fimaq", 3, 3).sites["post_softmax"].kind == "percentile_grid"
    assert "post_gelu" not in get_recipe("fimaq_adalog_softmax", 3, 3).sites
    both = get_recipe("fimaq_adalog", 3, 3).sites
    assert both["post_softmax"].kind == both["post_gelu"].kind == "adalog"
    assert both["post_gelu"].opts["shift"] == GELU_SHIFT and both["post_gelu"].opts["scale"] is None
    with pytest.raises(ConfigError, match="gelu"):
        fimaq_recipe(3, 3, gelu="log2")
    kinds = lambda name: [p.kind for p in get_recipe(name, 3, 3).passes]  # noqa: E731
    assert kinds("fimaq_adalog_softmax_lowrank") == kinds("fimaq_adalog_softmax") + ["lowrank"]
    for build in (relu_fisher_recipe, fimaq_recipe):
        with pytest.raises(ConfigError, match="softmax"):
            build(3, 3, softmax="log2")


@pytest.mark.parametrize("name", ["aphq", "fimaq", "aphq_small", "fimaq_small", "aphq_no_mlp", "aphq_no_recon",
                                  "aphq_fc2_zero_searched", "relu_fisher", "relu_fisher_adalog_softmax",
                                  "fimaq_adalog_softmax", "fimaq_adalog", "fimaq_adalog_softmax_lowrank"])
def test_recipes_round_trip_through_json(name):
    r = get_recipe(name, 3, 3)
    assert Recipe.from_dict(r.to_dict()).to_dict() == r.to_dict()


def test_bad_settings_and_options_are_refused():
    with pytest.raises(ConfigError):
        aphq_recipe(3, 3, setting="huge")
    with pytest.raises(ConfigError):
        fimaq_recipe(3, 3, loss="nope")
    with pytest.raises(ConfigError):
        aphq_recipe(3, 3, fc2_zero="free")
    with pytest.raises(ConfigError):
        with_mlp_pass(loss="kl")
    with pytest.raises(ConfigError):
        get_recipe("minmax", 4, 4, stat_fraction=0)


# --- stat_fraction and pre passes ------------------------------------------------------------------------------------
def test_stat_fraction_sets_the_quantizers_from_the_first_batches_only():
    data = calib(4)
    half = quantize(T.build("vit"), get_recipe("minmax", 4, 4, stat_fraction=0.5), data, **QUIET)
    first = quantize(T.build("vit"), get_recipe("minmax", 4, 4), CalibData(data.batches[:2], data.forward), **QUIET)
    every = quantize(T.build("vit"), get_recipe("minmax", 4, 4), data, **QUIET)
    scales = lambda m: torch.cat([q.scale.flatten() for _, q in iter_quantizers(m)])  # noqa: E731
    assert torch.equal(scales(half), scales(first))
    assert not torch.equal(scales(half), scales(every))


def test_mlp_relu_runs_before_the_quantizers_see_the_model():
    model = quantize(T.build("vit"), with_mlp_pass(iters=2, loss="mse"), calib(2), **QUIET)
    for block in model.blocks:
        assert isinstance(block.mlp.act, nn.ReLU)
        assert block.mlp.fc2.input_quantizer.zero_point.item() == 0  # min-max saw only non-negative inputs


@pytest.mark.parametrize("loss", ["mse", "aph"])
def test_mlp_reconstruction_brings_the_relu_model_close_to_the_gelu_one(loss):
    fp = T.build("vit")
    x = T.images(8, 9)
    swapped = copy.deepcopy(fp)
    for block in swapped.blocks:
        block.mlp.act = nn.ReLU()
    model = quantize(copy.deepcopy(fp), with_mlp_pass(iters=150, lr=3e-3, loss=loss), calib(4, 8), **QUIET)
    fitted = relu_float_model(fp, model)
    assert isinstance(fitted.blocks[0].mlp.act, nn.ReLU)
    assert rel_err(fitted, fp, x) < 0.5 * rel_err(swapped, fp, x)


def test_mlp_reconstruction_takes_batches_of_different_token_counts():
    """A detector's calibration images differ in size, so its MLPs see batches of different token counts: the samples
    are kept per shape (no concatenation error), the APH weight falls back to w = 1, and the fit still helps."""
    fp = T.build("vit", dynamic_img_size=True)
    sizes = (32, 48, 32, 40)
    data = CalibData([torch.randn(4, 3, s, s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(sizes)],
                     lambda m, b: m(b))
    swapped = copy.deepcopy(fp)
    for block in swapped.blocks:
        block.mlp.act = nn.ReLU()
    recipe = with_mlp_pass(iters=150, lr=3e-3, loss="aph")
    recipe.float_roles = (Role.MATMUL_QK, Role.MATMUL_AV)  # per-head matmul scales are for one token count
    logs = []
    model = quantize(copy.deepcopy(fp), recipe, data, log=logs.append)
    assert any("token count differs" in line for line in logs)
    fitted = relu_float_model(fp, model)
    for s in (32, 48):
        x = torch.randn(6, 3, s, s, generator=torch.Generator().manual_seed(20 + s))
        assert rel_err(fitted, fp, x) < 0.5 * rel_err(swapped, fp, x)


def test_relu_float_model_is_none_without_the_pass():
    fp = T.build("vit")
    assert relu_float_model(fp, quantize(copy.deepcopy(fp), get_recipe("minmax", 4, 4), calib(1), **QUIET)) is None


# --- output_search ---------------------------------------------------------------------------------------------------
def _linear_output_errors(model, fp, data):
    """Each quantized Linear's output error on its float input, summed over the calibration batches."""
    errs, float_mods = {}, dict(fp.named_modules())
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLinear):
            inputs = []
            h = float_mods[name].register_forward_hook(lambda m, a, o: inputs.append(a[0]))
            with torch.no_grad():
                for b in data.batches:
                    fp(b)
                h.remove()
                errs[name] = sum((mod(x) - float_mods[name](x)).pow(2).sum().item() for x in inputs)
    return errs


def test_output_search_lowers_each_module_output_error():
    fp, data = T.build("vit"), calib(2)
    errs = {}
    for rounds in (0, 1):
        recipe = fimaq_recipe(3, 3, recon=False, eq_n=32)
        recipe.reparam = None  # fp's Linear weights stay comparable to the quantized model's
        recipe.stat_fraction = 1.0  # the search sees the batches the errors are measured on
        recipe.passes = [dict(p, rounds=rounds) for p in recipe.passes]
        errs[rounds] = _linear_output_errors(quantize(copy.deepcopy(fp), recipe, data, **QUIET), fp, data)
    assert all(errs[1][n] <= errs[0][n] * (1 + 1e-5) for n in errs[0])
    assert sum(errs[1].values()) < sum(errs[0].values())


# --- end to end ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch, build", [
    ("vit", lambda: aphq_recipe(3, 3, setting="small", iters=3, mlp_iters=5, eq_n=32)),
    ("vit", lambda: fimaq_recipe(4, 4, setting="small", iters=3, eq_n=32)),
    ("vit", lambda: fimaq_recipe(3, 3, setting="small", iters=3, eq_n=32, softmax="adalog", gelu="adalog")),
    ("vit", lambda: fimaq_recipe(3, 3, setting="small", iters=3, eq_n=32, softmax="adalog", lowrank=True)),
    ("vit", lambda: relu_fisher_recipe(2, 4, setting="small", iters=3, mlp_iters=5, eq_n=32, softmax="adalog")),
    # Swin: the APH weight of the MLP step is float-rounding sized there (it underflowed to NaN in float32)
    ("swin", lambda: aphq_recipe(4, 4, setting="small", iters=2, mlp_iters=3, eq_n=16)),
], ids=["aphq", "fimaq", "fimaq_adalog", "fimaq_lowrank", "relu_fisher", "aphq-swin"])
def test_recipes_run_end_to_end_and_round_trip(arch, build, tmp_path):
    recipe = build()
    fp = T.build(arch)
    model = quantize(copy.deepcopy(fp), recipe, calib(1, 2) if arch == "swin" else calib(2), **QUIET)
    x = T.images(4, 9)
    with torch.no_grad():
        out = model(x)
    assert torch.isfinite(out).all()
    assert rel_err(model, fp, x) < 1.0
    path = os.path.join(tmp_path, "q")
    save_quantized(model, path)
    packed = read_meta(path)["packed"]  # percentile_grid weights are plain uniform grids: stored as codes
    assert packed["weights"] and packed["float"] == {}
    loaded = load_quantized(T.build(arch), path)
    with torch.no_grad():
        assert torch.equal(loaded(x), out)
    acts = [m for n, m in loaded.named_modules() if n.endswith("mlp.act")]
    assert acts and all(isinstance(a, nn.ReLU if recipe.name in ("aphq", "relu_fisher") else nn.GELU) for a in acts)


# --- the float reference follows the original network -----------------------------------------------------------------
PROBE = []


@dataclass
class _ProbeReference(PassConfig):
    """Records the model's output under the reconstruction's float reference (test only)."""

    def run(self, ctx):
        with float_reference(ctx).active(), torch.no_grad():
            PROBE.append(ctx.model(T.images(4, 9)))


def aphq_folding(**options):
    """APHQ-ViT's W3A3 recipe (it folds the post-LayerNorm scales: equal widths) with the MLP step alone."""
    recipe = get_recipe("aphq", 3, 3)
    recipe.passes = [dict(type="mlp_relu", **options)]
    return recipe


@pytest.mark.parametrize("make", [with_mlp_pass, aphq_folding], ids=["no_fold", "fold"])
def test_reconstruction_reference_runs_the_original_gelu_mlps(make):
    """With a fold, norm2 is rescaled for the quantized fc1 while the original MLP keeps the unscaled fc1: the
    reference must see the parameters from before the fold (it was 0.1 off on the toy's logits)."""
    fp = T.build("vit")
    register_pass("_probe_float_reference")(_ProbeReference)
    try:  # registered only while this test runs (other tests list the registered passes)
        recipe = make(iters=3, loss="mse")
        assert (recipe.reparam is not None) == (make is aphq_folding)
        recipe.passes = [*recipe.passes, dict(type="_probe_float_reference")]
        PROBE.clear()
        model = quantize(copy.deepcopy(fp), recipe, calib(2), **QUIET)
    finally:
        PASSES.unregister("_probe_float_reference")
    with torch.no_grad():
        assert torch.allclose(PROBE[0], fp(T.images(4, 9)), atol=1e-6)
    assert isinstance(model.blocks[0].mlp.act, nn.ReLU)  # put back after the reference ran


def test_fimaq_token_wise_scales_one_per_token_and_trainable(tmp_path):
    fp = T.build("vit")                                               # 32x32 images, 8x8 patches: 17 tokens
    model = quantize(copy.deepcopy(fp), fimaq_recipe(4, 4, recon=False, eq_n=32), calib(2), **QUIET)
    blk = model.blocks[0]
    assert blk.attn.qkv.input_quantizer.scale.shape == (1, 17)
    assert blk.attn.matmul_qk.a_quantizer.scale.shape == (4, 17)       # q: per head, per query token
    assert blk.attn.matmul_av.b_quantizer.scale.shape == (4, 16)       # v: per head, per channel (head dim 16)
    assert model.head.input_quantizer.scale.shape == (1,)              # (batch, features): unchanged
    # every token starts at the searched value: the model is the per-tensor one until scales are trained
    plain = quantize(copy.deepcopy(fp), fimaq_recipe(4, 4, recon=False, eq_n=32, token_wise=False), calib(2), **QUIET)
    x = T.images(4, 9)
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x), atol=1e-6)
        blk.attn.qkv.input_quantizer.scale[0, 3] *= 2                  # tokens can now differ
        assert not torch.allclose(model(x), plain(x), atol=1e-6)
    save_quantized(model, os.path.join(tmp_path, "q"))
    with torch.no_grad():
        assert torch.equal(load_quantized(T.build("vit"), os.path.join(tmp_path, "q"))(x), model(x))


def test_mlp_relu_resumes_from_its_progress_file(tmp_path, monkeypatch):
    import plugin.quant.recon.mlp_relu as mlp_relu
    fp, data = T.build("vit"), calib(2)
    recipe = with_mlp_pass(iters=4, loss="mse")
    first = quantize(copy.deepcopy(fp), recipe, data, checkpoint_dir=str(tmp_path), **QUIET)
    assert os.path.isfile(os.path.join(tmp_path, "pre-0-mlp_relu.safetensors"))

    def no_fit(*args, **kwargs):
        raise AssertionError("a resumed run fitted an MLP again")
    monkeypatch.setattr(mlp_relu, "_fit", no_fit)
    again = quantize(copy.deepcopy(fp), recipe, data, checkpoint_dir=str(tmp_path), resume=True, **QUIET)
    x = T.images(4, 9)
    with torch.no_grad():
        assert torch.equal(again(x), first(x))
    with pytest.raises(CheckpointError, match="another run"):
        quantize(copy.deepcopy(fp), with_mlp_pass(iters=5, loss="mse"), data, checkpoint_dir=str(tmp_path),
                 resume=True, **QUIET)


@pytest.mark.parametrize("name", ["aphq", "fimaq"])
def test_recipes_run_on_the_point_cloud_part_segmenter(name):
    """Point-MAE's blocks (their own MLP class) and an output of per-point scores (the MLP step's APH weight falls
    back to an unweighted loss there)."""
    from plugin.pointcloud import build_model
    torch.manual_seed(0)
    model = build_model(dict(type="PointMAEPartSeg", num_categories=2, num_parts=6, num_group=8, trans_dim=16, depth=2,
                             num_heads=2, group_size=8, encoder_channels=(8, 16), propagation_mlp=(16, 16),
                             head_hidden=(16, 8))).eval()
    x, c = torch.randn(4, 64, 3), torch.tensor([0, 1, 1, 0])
    run = lambda m, b: m(b[0], b[1])  # noqa: E731
    build = aphq_recipe if name == "aphq" else fimaq_recipe
    extra = dict(mlp_iters=3) if name == "aphq" else {}
    recipe = build(4, 4, setting="small", iters=2, eq_n=16, batch_size=2, **extra)
    quantize(model, recipe, CalibData([(x[:2], c[:2]), (x[2:], c[2:])], run), **QUIET)
    assert torch.isfinite(run(model, (x, c))).all()
    assert all(isinstance(b.mlp.act, nn.ReLU if name == "aphq" else nn.GELU) for b in model.blocks.blocks)
