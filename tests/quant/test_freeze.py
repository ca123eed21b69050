"""freeze(): frozen Int8Linear layers reproduce fake-quant exactly up to float rounding; zero points are corrected
exactly; layers that do not qualify stay fake-quant; tools/benchmark.py --quick runs on CPU and writes its JSON.

Tolerances (float32):
- one layer: max |y_int8 − y_fake| ≤ 1e-5 · max |y_fake| (the fake-quant matmul's own rounding; measured ≈ 5e-7);
  when every product and partial sum is exactly representable (hand-made integer cases) the outputs are equal.
- whole model at W8A8: a one-ulp difference can move an activation across a rounding boundary of a later quantizer,
  so logits are not bit-equal: top-1 agreement ≥ 0.95 and max |Δlogit| ≤ 0.05 · max |logit| (and well below the
  fake-quant-vs-float gap).
Saving a frozen model is not supported (save before freezing, load, freeze again), so it is not tested here.
"""
import copy
import importlib
import json
import os
import sys

import pytest
import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

import plugin.adapters  # noqa: F401  (registers the timm adapters)
from plugin.quant import CalibData, QuantLinear, QuantSpec, build_quantizer, get_recipe, quantize, set_quant_enabled
from plugin.quant.deploy.freeze import Int8Linear, freeze, frozen_summary, int8_matmul, why_not_freezable
from plugin.quant.methods.aiqvit.lowrank import attach_branch

from repo_paths import REPO  # noqa: E402
LAYER_TOL = 1e-5
# the module, not the `freeze` function plugin.quant may export under the same name
freeze_mod = importlib.import_module("plugin.quant.deploy.freeze")


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10).eval()


def images(n, seed):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=["minmax", "repq", "ptq4vit"])
def calibrated(request):
    model = quantize(tiny_vit(), get_recipe(request.param, 8, 8),
                     CalibData([images(8, 1)], lambda m, b: m(b)), log=lambda *a: None)
    return request.param, model


def quant_linear(k, n, w_spec, x_spec, seed=0, bias=True):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    return QuantLinear.from_module(lin, build_quantizer(x_spec, -1), build_quantizer(w_spec, 0))


def set_params(q, scale, zero):
    q.set_params(scale=torch.as_tensor(scale, dtype=torch.float32).reshape(-1),
                 zero_point=torch.as_tensor(zero, dtype=torch.float32).reshape(-1))


# --- one layer -----------------------------------------------------------------------------------------------------

SPECS = {
    "w8sym_a8asym": (QuantSpec(8, granularity="channel", symmetric=True), QuantSpec(8)),
    "w8asym_a8asym": (QuantSpec(8, granularity="channel"), QuantSpec(8)),
    "w8asym_a8sym": (QuantSpec(8, granularity="channel"), QuantSpec(8, symmetric=True)),
    "w4asym_a8asym": (QuantSpec(4, granularity="channel", search="mse"), QuantSpec(8, search="mse")),
    "w6sym_a6asym": (QuantSpec(6, granularity="channel", symmetric=True), QuantSpec(6)),
    "w8tensor_a8asym": (QuantSpec(8), QuantSpec(8)),
}


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("m,k,n", [(3, 5, 7), (50, 64, 24), (197, 256, 96)])
def test_layer_matches_fake_quant(name, m, k, n):
    w_spec, x_spec = SPECS[name]
    layer = quant_linear(k, n, w_spec, x_spec)
    x = torch.randn(2, m, k) * 2 + 0.7  # off-centre, so asymmetric zero points are far from the middle
    layer.weight_quantizer.calibrate_tensor(layer.weight)
    layer.input_quantizer.calibrate_tensor(x)
    assert why_not_freezable(layer) is None
    frozen = Int8Linear.from_quant_linear(layer)
    with torch.no_grad():
        ref, out = layer(x), frozen(x)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert (out - ref).abs().max() <= LAYER_TOL * ref.abs().max()


@pytest.mark.parametrize("w_sym", [True, False])
@pytest.mark.parametrize("x_sym", [True, False])
def test_zero_point_correction_exact_on_integers(w_sym, x_sym):
    """Unit scales and integer inputs: fake-quant is exact integer arithmetic, so the int8 path must equal it."""
    k, n = 6, 3
    layer = quant_linear(k, n, QuantSpec(8, granularity="channel", symmetric=w_sym), QuantSpec(8, symmetric=x_sym),
                         bias=True)
    g = torch.Generator().manual_seed(3)
    lo_w, hi_w = (-100, 100) if w_sym else (-30, 200)
    with torch.no_grad():
        layer.weight.copy_(torch.randint(lo_w, hi_w, (n, k), generator=g).float())
        layer.bias.copy_(torch.tensor([0.5, -2.0, 3.0]))
    set_params(layer.weight_quantizer, [1.0, 1.0, 1.0], [0, 0, 0] if w_sym else [37, 200, 128])
    set_params(layer.input_quantizer, 1.0, 0 if x_sym else 41)
    lo_x, hi_x = (-128, 128) if x_sym else (-41, 215)
    x = torch.randint(lo_x, hi_x, (20, k), generator=g).float()
    frozen = Int8Linear.from_quant_linear(layer)
    with torch.no_grad():
        ref, out = layer(x), frozen(x)
    assert torch.equal(out, ref)
    # and against the formula written out by hand: Σ (q_x − z_x)(q_w − z_w) + b
    wq = torch.clamp(layer.weight + layer.weight_quantizer.zero_point[:, None], 0 if not w_sym else -128,
                     255 if not w_sym else 127) - layer.weight_quantizer.zero_point[:, None]
    xq = torch.clamp(x + layer.input_quantizer.zero_point, 0 if not x_sym else -128, 255 if not x_sym else 127) \
        - layer.input_quantizer.zero_point
    assert torch.equal(out, (xq.double() @ wq.double().t() + layer.bias.double()).float())


def test_zero_point_hand_made_case():
    """1 x 2 input, 2 outputs, asymmetric both: worked by hand."""
    layer = quant_linear(2, 2, QuantSpec(8, granularity="channel"), QuantSpec(8), bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.25]]))
    set_params(layer.weight_quantizer, [1.0, 0.25], [10, 4])    # codes: [11, 8], [6, 5]
    set_params(layer.input_quantizer, 0.5, 3)                    # x = [1, -1] -> codes [5, 1]
    out = Int8Linear.from_quant_linear(layer)(torch.tensor([[1.0, -1.0]]))
    # ((5-3)(11-10) + (1-3)(8-10))·0.5·1 = 3 ; ((5-3)(6-4) + (1-3)(5-4))·0.5·0.25 = 0.25
    assert torch.equal(out, torch.tensor([[3.0, 0.25]]))


def test_int8_matmul_fallback_is_exact(monkeypatch):
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (19, 40), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (13, 40), generator=g, dtype=torch.int8)
    expect = (a.long() @ w.long().t()).int()
    assert torch.equal(int8_matmul(a, w), expect)
    monkeypatch.setattr(freeze_mod, "_INT_MM_BROKEN", {"cpu"})
    assert torch.equal(int8_matmul(a, w), expect)


# --- whole model ---------------------------------------------------------------------------------------------------

def test_model_per_layer_and_end_to_end(calibrated):
    name, model = calibrated
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: inputs.__setitem__(n, a[0]))
             for n, m in model.named_modules() if type(m) is QuantLinear]
    x = images(64, 5)
    with torch.no_grad():
        ref = model(x)
    for h in hooks:
        h.remove()
    for layer_name, inp in inputs.items():
        layer = model.get_submodule(layer_name)
        if why_not_freezable(layer) is None:
            with torch.no_grad():
                a, b = layer(inp), Int8Linear.from_quant_linear(layer)(inp)
            assert (a - b).abs().max() <= LAYER_TOL * a.abs().max(), layer_name

    frozen = freeze(copy.deepcopy(model))
    with torch.no_grad():
        out = frozen(x)
    agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    assert agree >= 0.95
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()
    set_quant_enabled(model, False)
    with torch.no_grad():
        fp = model(x)
    set_quant_enabled(model, True)
    assert (out - ref).abs().mean() < (fp - ref).abs().mean()  # INT8 vs fake ≪ fake vs float

    summary = frozen_summary(frozen)
    linears = sum(isinstance(m, QuantLinear) for m in model.modules())
    assert summary["frozen"] + len(summary["not_frozen"]) == linears
    assert summary["weight_bytes_after"] < summary["weight_bytes_before"] / 3
    if name == "ptq4vit":  # twin-uniform post-GELU inputs: fc2 stays fake-quant
        assert sorted(summary["not_frozen"]) == ["blocks.0.mlp.fc2", "blocks.1.mlp.fc2"]
    else:
        assert summary["not_frozen"] == {}


def test_non_qualifying_layers_untouched():
    model = quantize(tiny_vit(), get_recipe("ptq4vit", 8, 8), CalibData([images(4, 1)], lambda m, b: m(b)),
                     log=lambda *a: None)
    fc2 = model.blocks[0].mlp.fc2                      # twin-uniform input
    model.blocks[1].mlp.fc1.weight_quantizer.enabled = False   # float weight: not frozen
    fc1_disabled = model.blocks[1].mlp.fc1
    attach_branch(model.blocks[0].attn.proj, [4], post=True)   # Q(W) + A·B: weight is not on the grid
    proj_lowrank = model.blocks[0].attn.proj
    patch = model.patch_embed.proj                     # QuantConv2d
    matmul = model.blocks[0].attn.matmul_qk
    freeze(model)
    assert model.blocks[0].mlp.fc2 is fc2 and type(fc2) is QuantLinear
    assert model.blocks[1].mlp.fc1 is fc1_disabled
    assert model.blocks[0].attn.proj is proj_lowrank
    assert model.patch_embed.proj is patch and model.blocks[0].attn.matmul_qk is matmul
    assert isinstance(model.blocks[0].attn.qkv, Int8Linear) and isinstance(model.head, Int8Linear)
    with pytest.raises(ValueError):
        Int8Linear.from_quant_linear(fc2)
    with torch.no_grad():
        assert torch.isfinite(model(images(2, 9))).all()


def test_pre_quantization_lowrank_branch_is_folded_into_the_codes():
    """Q(W + A·B) is an integer weight: freeze takes the codes of W + A·B (the lowering layer, as the ONNX export);
    a post-quantization branch Q(W) + A·B is not frozen."""
    x = torch.randn(5, 16)
    for post in (False, True):
        layer = quant_linear(16, 8, QuantSpec(8, granularity="channel"), QuantSpec(8))
        attach_branch(layer, [4], post=post)
        with torch.no_grad():
            layer.lowrank.A.normal_(0, 0.05)  # A starts at zero: make the branch count
            layer.weight_quantizer.calibrate_tensor(layer.weight + layer.lowrank.delta())
        layer.input_quantizer.calibrate_tensor(x)
        if post:
            assert "post-quantization" in why_not_freezable(layer)
            continue
        assert why_not_freezable(layer) is None
        frozen = Int8Linear.from_quant_linear(layer)
        with torch.no_grad():
            ref, out = layer(x), frozen(x)
            assert (out - ref).abs().max() <= LAYER_TOL * ref.abs().max()
            no_branch = nn.functional.linear(layer.quant_input(x), layer.weight_quantizer(layer.weight), layer.bias)
            assert (ref - no_branch).abs().max() > 1e-3  # the branch changes the output


def test_over_8_bit_or_uncalibrated_not_frozen():
    layer = quant_linear(8, 8, QuantSpec(8, granularity="channel"), QuantSpec(8))
    assert why_not_freezable(layer) is not None          # not calibrated yet
    layer.weight_quantizer.calibrate_tensor(layer.weight)
    layer.input_quantizer.calibrate_tensor(torch.randn(4, 8))
    assert why_not_freezable(layer) is None
    layer.input_quantizer = build_quantizer(QuantSpec(8, granularity="channel"), -1)
    layer.input_quantizer.calibrate_tensor(torch.randn(4, 8))
    assert "per-tensor" in why_not_freezable(layer)


# --- tools/benchmark.py --------------------------------------------------------------------------------------------

def test_benchmark_quick_cpu(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import benchmark
    out = tmp_path / "bench.json"
    assert benchmark.main(["--quick", "--device", "cpu", "--method", "minmax", "repq", "--out", str(out)]) == 0
    report = json.load(open(out))
    for key in ("device", "quick", "torch", "models", "linear_microbench", "batch_size", "total_s"):
        assert key in report
    assert set(report["models"]) == {"deit_small_patch16_224", "vit_base_patch16_224"}
    for entry in report["models"].values():
        assert entry["float"]["images_per_s"] > 0
        for method in ("minmax", "repq"):
            r = entry["methods"][method]
            assert r["calib_s"] > 0 and r["fake_quant"]["images_per_s"] > 0
            assert r["int8_frozen"]["images_per_s"] > 0 and r["frozen_summary"]["frozen"] > 0
            assert {"fake_over_float", "int8_over_float", "int8_over_fake"} <= set(r["ratios"])
            assert r["int8_vs_fake_top1_agreement"] >= 0.95
    assert len(report["linear_microbench"]) == 4
    assert report["int8_backend"] == "int_mm" and report["cuda_graph"] is False
    for row in report["linear_microbench"]:
        assert {"M", "K", "N", "bf16_ms", "int_mm_ms", "int8_linear_ms", "speedup_int_mm_over_bf16"} <= set(row)
        assert row["triton_two_step_ms"] is None and row["triton_skipped"].startswith("not on CUDA")


def test_benchmark_calib_only_checkpoint_resume(tmp_path):
    """--calib-only: calibration time per method and nothing else; with --checkpoint-dir a second run with --resume
    skips the finished reconstruction units (the calibration-at-scale runs of docs/performance.md span calls)."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import benchmark
    common = ["--quick", "--device", "cpu", "--calib-only", "--model", "deit_small_patch16_224", "--method", "minmax",
              "isvit", "--no-micro", "--checkpoint-dir", str(tmp_path / "ckpt")]
    assert benchmark.main(common + ["--out", str(tmp_path / "a.json")]) == 0
    a = json.load(open(tmp_path / "a.json"))
    assert a["complete"] is True and a["calib_num"] == 8
    methods = a["models"]["deit_small_patch16_224"]["methods"]
    assert set(methods) == {"minmax", "isvit"} and "float" not in a["models"]["deit_small_patch16_224"]
    assert all(r["calib_s"] > 0 and r["resumed"] is False and "fake_quant" not in r for r in methods.values())
    assert (tmp_path / "ckpt" / "deit_small_patch16_224" / "isvit").is_dir()
    assert benchmark.main(common + ["--method", "isvit", "--resume", "--verbose", "--out", str(tmp_path / "b.json")]) == 0
    assert json.load(open(tmp_path / "b.json"))["models"]["deit_small_patch16_224"]["methods"]["isvit"]["resumed"]
    with pytest.raises(SystemExit):
        benchmark.main(["--quick", "--device", "cpu", "--resume"])
    # --model-kwargs reach timm.create_model; --no-block-skip is recorded
    assert benchmark.main(["--quick", "--device", "cpu", "--calib-only", "--model", "deit_small_patch16_224",
                           "--method", "repq", "--no-micro", "--no-block-skip", "--model-kwargs", "depth=3",
                           "--out", str(tmp_path / "c.json")]) == 0
    c = json.load(open(tmp_path / "c.json"))
    assert c["model_kwargs"] == {"depth": 3}
    assert c["models"]["deit_small_patch16_224"]["params"] > a["models"]["deit_small_patch16_224"]["params"]
    assert c["models"]["deit_small_patch16_224"]["methods"]["repq"]["block_skip"] is False
    with pytest.raises(SystemExit):
        benchmark.main(["--quick", "--device", "cpu", "--model-kwargs", "depth"])


def test_benchmark_triton_backend_needs_cuda(capsys):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import benchmark
    assert benchmark.main(["--quick", "--device", "cpu", "--int8-backend", "triton", "--micro-only"]) == 2
    assert "--int8-backend triton: not on CUDA" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_int8_gemm_sweep_refuses_without_cuda(tmp_path, capsys):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import int8_gemm_sweep
    out = tmp_path / "sweep.json"
    assert int8_gemm_sweep.main(["--out", str(out)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err and not out.exists()
