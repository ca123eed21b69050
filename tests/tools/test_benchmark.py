"""tools/benchmark.py after its measuring moved into plugin/bench: the report keeps every key it had (the lists below
were read off the reports of the tool before the move, run with the same options on a CPU)."""
import json
import os
import sys

from repo_paths import REPO

sys.path.insert(0, os.path.join(REPO, "tools"))
import benchmark  # noqa: E402

_LINEAR = ["K", "M", "N", "bf16_ms", "int8_linear_ms", "int_mm_ms", "speedup_int8_linear_over_bf16",
           "speedup_int_mm_over_bf16", "speedup_triton_gemm_over_bf16", "speedup_triton_quant_gemm_over_bf16",
           "speedup_triton_quantize_over_bf16", "speedup_triton_two_step_over_bf16", "triton_gemm_ms",
           "triton_quant_gemm_ms", "triton_quantize_ms", "triton_skipped", "triton_two_step_ms"]
_METHOD = ["block_skip", "calib_s", "fake_quant.cuda_graph", "fake_quant.images_per_s", "fake_quant.seconds",
           "frozen_summary.frozen", "frozen_summary.not_frozen", "frozen_summary.weight_bytes_after",
           "frozen_summary.weight_bytes_before", "int8_frozen.cuda_graph", "int8_frozen.images_per_s",
           "int8_frozen.seconds", "int8_vs_fake_max_abs_logit_diff", "int8_vs_fake_top1_agreement",
           "ratios.fake_over_float", "ratios.int8_over_fake", "ratios.int8_over_float", "resumed"]
_MODEL = ["float.cuda_graph", "float.images_per_s", "float.seconds", "input_size[]", "params"]
MODELS_RUN_KEYS = sorted(
    ["a_bits", "batch_size", "calib_batch", "calib_num", "command", "compile", "complete", "cpu_threads", "cuda_graph",
     "device", "device_name", "int8_backend", "iters", "methods[]", "model_kwargs{}", "onnx", "python", "quick",
     "torch", "total_s", "w_bits"]
    + [f"linear_microbench[].{k}" for k in _LINEAR]
    + [f"models.deit_small_patch16_224.{k}" for k in _MODEL]
    + [f"models.deit_small_patch16_224.methods.minmax.{k}" for k in _METHOD])
_PATHS = ["bf16_compiled", "ours_fp8", "ours_w8a8", "torchao_fp8_dynamic", "torchao_int8_dynamic"]
E2E_RUN_KEYS = sorted(
    ["command", "compile", "compile_s.vit_base_patch16_224:2:bf16_compiled",
     "compile_s.vit_base_patch16_224:2:ours_w8a8", "device", "method", "notes[]", "profile{}", "quick", "timing", "torch", "total_s",
     "rows[].batch", "rows[].device", "rows[].model", "rows[].torch"]
    + [f"recipes.vit_base_patch16_224.bf16_compiled[].{k}" for k in ("op", "recipe", "role")]
    + [f"recipes.vit_base_patch16_224.ours_w8a8[].{k}" for k in ("count", "op", "recipe", "role", "sites[]")]
    + [f"rows[].img_s.{p}" for p in _PATHS] + [f"rows[].speedup_vs_bf16_compiled.{p}" for p in _PATHS])


def key_paths(obj, prefix=""):
    """Every leaf of a JSON report as a dotted path (`[]` for list items, `{}` / `[]` for an empty container)."""
    if isinstance(obj, dict):
        if not obj:
            return {prefix + "{}"}
        return set().union(*(key_paths(v, f"{prefix}.{k}" if prefix else k) for k, v in obj.items()))
    if isinstance(obj, list):
        if not obj:
            return {prefix + "[]"}
        return set().union(*(key_paths(v, prefix + "[]") for v in obj))
    return {prefix}


def test_benchmark_report_keys_unchanged(tmp_path):
    out = tmp_path / "b.json"
    assert benchmark.main(["--quick", "--device", "cpu", "--method", "minmax", "--model", "deit_small_patch16_224",
                           "--eval-batches", "1", "--micro-reps", "1", "--out", str(out)]) == 0
    assert sorted(key_paths(json.loads(out.read_text()))) == MODELS_RUN_KEYS


def test_benchmark_e2e_report_keys_unchanged(tmp_path):
    out = tmp_path / "e.json"
    assert benchmark.main(["--e2e", "--quick", "--device", "cpu", "--e2e-no-compile", "--e2e-models",
                           "vit_base_patch16_224", "--e2e-batches", "2", "--e2e-paths", "bf16_compiled", "ours_w8a8",
                           "--e2e-min-time", "0.01", "--e2e-profile", "--out", str(out)]) == 0
    assert sorted(key_paths(json.loads(out.read_text()))) == E2E_RUN_KEYS
