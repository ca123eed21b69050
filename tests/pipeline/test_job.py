"""plugin.pipeline.job: one job resolved once from the flags and the config, before any model is built."""
import copy
import os

import pytest
import torch

import plugin.pipeline.job as job_mod
from plugin.errors import UserInputError
from plugin.pipeline import WEIGHT_ONLY_A_BITS, resolve_job, resolve_recipe
from plugin.quant import ConfigError
from repo_paths import REPO

CONFIG = os.path.join(REPO, "configs/classification/fmnist_vit_tiny.py")
CKPT = os.path.join(REPO, "plugin/assets/fmnist_vit_tiny.safetensors")


def job(tmp_path, **options):
    return resolve_job(CONFIG, CKPT, **{"out": str(tmp_path / "out"), "device": "cpu", **options})


def test_recon_setting_reaches_reconstruction_passes_only(tmp_path):
    """Issue 25.1: ptq4vit's hessian_search has no `setting`; only isvit's sos pass takes it."""
    j = job(tmp_path, method=["repq", "ptq4vit", "isvit"], recon_setting="small")
    plans = {p.method: p for p in j.plans}
    assert plans["repq"].recon == () and plans["ptq4vit"].recon == ()
    assert [p.kind for p in plans["ptq4vit"].recipe.passes] == ["hessian_search"]
    (sos,) = plans["isvit"].recon
    assert (sos.kind, sos.setting, sos.iters, sos.batch_size) == ("sos", "small", 250, 32)
    assert plans["isvit"].recipe.passes[0].iters == 250  # the recipe says what runs (no `iters: null`)
    assert not (tmp_path / "out").exists()
    # methods without a reconstruction pass take the flags too (scripts pass one setting to every group of methods)
    assert job(tmp_path, method=["minmax"], recon_setting="small", recon_iters=5).plans[0].recon == ()


@pytest.mark.parametrize("bits, setting, iters, expected", [
    ((4,), None, None, 1000), ((6,), None, None, 200), ((4,), "small", None, 250), ((4,), "small", 7, 7),
    ((6,), None, 3, 3)])
def test_iterations_resolved_and_recorded(tmp_path, bits, setting, iters, expected):
    j = job(tmp_path, method=["isvit"], bits=list(bits), recon_setting=setting, recon_iters=iters, calib_num=16)
    (plan,) = j.plans
    assert plan.recon[0].iters == expected and plan.recipe.passes[0].iters == expected
    assert plan.recon[0].batch_used == 16  # the sampler clips the batch to the calibration set
    assert plan.to_dict()["recon"][0]["iters"] == expected
    assert j.to_dict()["plans"][0]["recon"][0]["iters"] == expected


def test_calibration_size_and_its_source(tmp_path):
    cfg = tmp_path / "cfg.py"
    cfg.write_text(f"_base_ = [{CONFIG!r}]\ncalib = dict(num=16, batch_size=8)\n")
    by_method = {p.method: (p.calib_num, p.calib_source) for p in job(tmp_path, method=["minmax", "ptq4vit", "isvit"]).plans}
    assert by_method == {"minmax": (32, "task default"), "ptq4vit": (32, "method default"),
                         "isvit": (1024, "method default")}
    from_config = resolve_job(str(cfg), CKPT, method=["isvit"], out=str(tmp_path / "o"), device="cpu")
    assert (from_config.plans[0].calib_num, from_config.plans[0].calib_source) == (16, "config calib.num")
    assert job(tmp_path, method=["isvit"], calib_num=8).plans[0].calib_source == "--calib-num"
    # ablations without a reconstruction pass use the task's default, as before
    assert job(tmp_path, method=["isvit_no_sos"]).plans[0].calib_source == "task default"


def test_each_recipe_is_built_once(tmp_path, monkeypatch):
    calls, real = [], job_mod.get_recipe
    monkeypatch.setattr(job_mod, "get_recipe", lambda *a, **k: calls.append(a) or real(*a, **k))
    job(tmp_path, method=["minmax", "isvit"], bits=[4, 6])
    assert sorted(calls) == sorted([("minmax", 4, 4), ("isvit", 4, 4), ("minmax", 6, 6), ("isvit", 6, 6)])


def test_resolved_recipe_is_frozen(tmp_path):
    recipe = job(tmp_path, method=["isvit"]).plans[0].recipe
    with pytest.raises(ConfigError, match="frozen"):
        recipe.a_bits = 8
    with pytest.raises(ConfigError, match="read-only"):
        recipe.sites["post_softmax"] = None
    with pytest.raises(AttributeError):
        recipe.passes.append({"type": "block_recon"})  # a tuple
    twin = copy.deepcopy(recipe)  # quantize keeps the recipe in the model's QuantState, models get deep-copied
    assert twin.to_dict() == recipe.to_dict()
    with pytest.raises(ConfigError):
        twin.sites["act"] = None


@pytest.mark.parametrize("flags, pairs", [
    (dict(), [(4, 4)]), (dict(bits=[3, 6]), [(3, 3), (6, 6)]), (dict(w_bits=3, a_bits=6), [(3, 6)]),
    (dict(w_bits=3), [(3, WEIGHT_ONLY_A_BITS)]), (dict(w_bits=3, bits=[4]), [(3, 4)]), (dict(a_bits=6), [(4, 6)])])
def test_bit_pairs(flags, pairs):
    assert job_mod.bit_pairs(**flags) == pairs


def test_weight_only_recipe_has_no_activation_quantizer():
    import timm

    from plugin.pipeline.run import site_summary
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                              num_classes=3)
    recipe = resolve_recipe("repq", 3, WEIGHT_ONLY_A_BITS)
    assert recipe.a_bits == WEIGHT_ONLY_A_BITS and recipe.reparam is None
    plan = job_mod.MethodPlan("repq", 3, WEIGHT_ONLY_A_BITS, recipe, 8, "--calib-num", ())
    assert site_summary(model, plan)[0].endswith("6 weight and 0 activation quantizers")


@pytest.mark.parametrize("options, words", [
    (dict(fp_only=True, no_fp=True), "exclude each other"),
    (dict(w_bits=3, bits=[4, 6]), "cannot be combined"),
    (dict(method=["nosuch"]), "nosuch"),
    pytest.param(dict(device="cuda"), "no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is available")),
    (dict(int8_backend="triton"), "add --freeze"),
    (dict(onnx_nonuniform="float"), "add --export-onnx"),
    (dict(cfg_options=["nokeyvalue"]), "KEY=VALUE"),
])
def test_bad_options_refused_before_any_model(tmp_path, options, words):
    with pytest.raises((UserInputError, ConfigError), match=words):
        job(tmp_path, **options)
    assert not (tmp_path / "out").exists()


def test_non_empty_out_needs_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.json").write_text("{}")
    with pytest.raises(UserInputError, match="not empty.*--overwrite"):
        job(tmp_path)
    assert job(tmp_path, overwrite=True).overwrite
    assert job(tmp_path, resume=True).resume  # continues from the checkpoints a run left there


def test_overwrite_never_replaces_the_inputs(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    cfg = folder / "cfg.py"
    cfg.write_text(f"_base_ = [{CONFIG!r}]\n")
    with pytest.raises(UserInputError, match="an input of this run"):
        resolve_job(str(cfg), CKPT, out=str(folder), overwrite=True, device="cpu")
