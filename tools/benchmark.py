#!/usr/bin/env python
"""Speed of calibration and inference, float beside fake-quant beside frozen INT8, measured in one run.

    python tools/benchmark.py --device cuda --out results/bench.json
    python tools/benchmark.py --device cpu --quick --out /tmp/bench.json     # tiny sizes, a smoke run
    python tools/benchmark.py --e2e --e2e-profile    # deployment: BF16 compiled vs torchao vs plugin.quant.deploy

For each model (timm, random weights: speed does not depend on them): calibration wall time per method; evaluation
throughput (images/s) of the float model, the fake-quant model and the frozen INT8 model (`plugin.quant.deploy.freeze`);
peak GPU memory on CUDA. Then a micro-benchmark of ViT-B-sized Linear layers at M = batch·197 tokens: BF16 matmul
against `torch._int_mm`, against the whole `Int8Linear` (input quantization + int8 matmul + epilogue) and, on CUDA
with triton installed, against the Triton kernels of `plugin.quant.deploy.triton_int8` (int8 GEMM with the epilogue fused;
the same quantizing a bf16 input while loading it). Ratios are taken between figures of the same run. See
docs/performance.md.

--e2e (issue 14): whole-model images/s of bf16_compiled, torchao_int8_dynamic, torchao_fp8_dynamic (torchao is
optional: skipped with a note where absent), ours_w8a8 and ours_fp8 (plugin.quant.deploy) on ViT-B/16, DeiT-S and
Swin-T at batch 64, 8, 1; every path torch.compile'd and timed as CUDA-graph replays; rows written to
docs/results/performance/e2e_<gpu>.json with the recipe of each site; --e2e-profile adds GPU time per op class.

This tool parses options and prints tables; the measuring is plugin/bench (models, speed, onnx_bench, linear, e2e,
profile) over plugin/utils/timing.py.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plugin.errors import (ToolParser, bit_width, nonnegative_int, positive_float, positive_int,  # noqa: E402
                           tool_main)

import torch  # noqa: E402


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = ToolParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", nargs="+", default=None, help="timm model names (created with pretrained=False; default: "
                   "deit_small_patch16_224 vit_base_patch16_224)")
    p.add_argument("--method", nargs="+", default=None, help="recipes to calibrate (default: minmax ptq4vit repq "
                   "dopq_lite; reconstruction ones: "
                   "isvit, aiqvit — set --iters to keep them short)")
    p.add_argument("--w-bits", type=bit_width, default=8)
    p.add_argument("--a-bits", type=bit_width, default=8)
    p.add_argument("--batch-size", type=positive_int, default=64, help="evaluation batch size")
    p.add_argument("--calib-num", type=positive_int, default=32, help="calibration images")
    p.add_argument("--calib-batch", type=positive_int, default=32, help="calibration images per forward")
    p.add_argument("--iters", type=positive_int, default=None, help="iterations of reconstruction / low-rank passes")
    p.add_argument("--eval-batches", type=positive_int, default=10, help="timed evaluation batches per model variant")
    p.add_argument("--warmup", type=nonnegative_int, default=2, help="untimed batches before each timing")
    p.add_argument("--micro-m", type=positive_int, default=None, help="tokens of the Linear micro-benchmark "
                   "(default batch-size·197)")
    p.add_argument("--micro-reps", type=positive_int, default=20)
    p.add_argument("--no-micro", action="store_true", help="skip the Linear micro-benchmark")
    p.add_argument("--micro-only", action="store_true", help="only the Linear micro-benchmark")
    p.add_argument("--int8-backend", choices=["int_mm", "triton", "triton_fused"], default="int_mm",
                   help="matmul of the frozen models' Int8Linear layers (plugin.quant.deploy.freeze.set_int8_backend)")
    p.add_argument("--cuda-graph", action="store_true", help="time every model forward and Linear micro-benchmark "
                   "op as CUDA-graph replays (GPU time without host launch cost, for every column alike)")
    p.add_argument("--compile", action="store_true", help="torch.compile every timed model and layer (fuses the "
                   "INT8 path's quantize and epilogue kernels; eager mode runs them as separate passes)")
    p.add_argument("--onnx", action="store_true", help="also export each calibrated model as an ONNX QDQ graph and the "
                   "float model as an FP32 graph, and time both with ONNX Runtime on the CPU (latency at batch 1, "
                   "throughput at --batch-size), in the same run; needs pip install -e '.[onnx]'")
    p.add_argument("--onnx-threads", type=positive_int, default=None, help="ONNX Runtime intra-op threads (default: torch's)")
    p.add_argument("--onnx-reps", type=positive_int, default=20, help="timed batch-1 runs per ONNX model and round")
    p.add_argument("--quick", action="store_true", help="toy model and layer sizes (a smoke run on CPU)")
    p.add_argument("--out", default=None, help="write the JSON here")
    p.add_argument("--verbose", action="store_true", help="calibration progress to stderr")
    p.add_argument("--calib-only", action="store_true", help="calibration wall time and peak GPU memory only (no "
                   "throughput, no freeze): the calibration-at-scale table of docs/performance.md")
    p.add_argument("--checkpoint-dir", default=None, help="reconstruction and search passes write a checkpoint here "
                   "after each unit (one subfolder per model and method); with --resume a run continues after the "
                   "last one")
    p.add_argument("--resume", action="store_true", help="continue each calibration from --checkpoint-dir")
    p.add_argument("--no-block-skip", action="store_true", help="calibration forwards recompute the blocks already "
                   "calibrated (plugin.quant.block_skip off: the same model, to time what skipping saves)")
    p.add_argument("--model-kwargs", nargs="+", default=[], metavar="KEY=VALUE",
                   help="keyword arguments of timm.create_model for every --model, e.g. depth=24 img_size=64 "
                        "(values parsed as Python literals)")
    add_e2e_args(p)
    args = p.parse_args(argv)
    _library_defaults(p, args)
    if args.quick:
        args.batch_size = min(args.batch_size, 8)
        args.calib_num = min(args.calib_num, 8)
        args.calib_batch = min(args.calib_batch, 8)
        args.eval_batches = min(args.eval_batches, 5)
        args.warmup = min(args.warmup, 1)
        args.micro_reps = min(args.micro_reps, 10)
        if args.iters is None:
            args.iters = 2
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    if args.resume and not args.checkpoint_dir:
        p.error("--resume needs --checkpoint-dir")
    try:
        args.model_kwargs = dict(_literal_kv(kv) for kv in args.model_kwargs)
    except ValueError as e:
        p.error(f"--model-kwargs: {e}")
    return args


def _library_defaults(p, args):
    """Model, method and --e2e defaults from plugin.bench, imported once the options parsed (a fast --help)."""
    from plugin.bench.e2e import E2E_BATCHES, E2E_MODELS, E2E_PATHS
    from plugin.bench.models import METHODS, MODELS
    args.model, args.method = args.model or MODELS, args.method or METHODS
    args.e2e_models, args.e2e_batches = args.e2e_models or E2E_MODELS, args.e2e_batches or E2E_BATCHES
    args.e2e_paths = args.e2e_paths or E2E_PATHS
    for path in args.e2e_paths:
        if path not in E2E_PATHS:
            p.error(f"argument --e2e-paths: invalid choice: {path!r} (choose from {', '.join(E2E_PATHS)})")


def _literal_kv(text):
    import ast
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a plain string


def print_report(report):
    print(f"device: {report['device_name']}  torch {report['torch']}  quick={report['quick']}  "
          f"W{report['w_bits']}A{report['a_bits']}  batch {report['batch_size']}")
    for name, entry in report["models"].items():
        if "float" not in entry:  # --calib-only
            print(f"\n{name} ({entry['params'] / 1e6:.2f} M params), {report['calib_num']} calibration images")
            for method, r in entry["methods"].items():
                mem = r.get("calib_peak_mem_bytes")
                peak = f", peak {mem / 2 ** 30:.2f} GiB" if mem else ""
                print(f"  {method:<12} calib {r['calib_s']:8.1f} s{peak}")
            continue
        fl = entry["float"]["images_per_s"]
        line = f"\n{name} ({entry['params'] / 1e6:.2f} M params): float32 {fl:.1f} img/s"
        if "float_bf16" in entry:
            line += f", bf16 autocast {entry['float_bf16']['images_per_s']:.1f} img/s"
        if "peak_mem_bytes" in entry["float"]:
            line += f", peak {entry['float']['peak_mem_bytes'] / 2 ** 20:.0f} MiB"
        print(line)
        print(f"  {'method':<10} {'calib s':>8} {'fake img/s':>11} {'int8 img/s':>11} {'fake/fp32':>9} "
              f"{'int8/fp32':>9} {'int8/fake':>9} {'frozen':>6} {'top1=':>6}")
        for method, r in entry["methods"].items():
            i8 = r.get("int8_frozen", {}).get("images_per_s")
            ra = r["ratios"]
            fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
            print(f"  {method:<10} {r['calib_s']:>8.2f} {r['fake_quant']['images_per_s']:>11.1f} {fmt(i8, '>11.1f')} "
                  f"{ra['fake_over_float']:>9.2f} {fmt(ra.get('int8_over_float'), '>9.2f')} "
                  f"{fmt(ra.get('int8_over_fake'), '>9.2f')} {r['frozen_summary']['frozen']:>6} "
                  f"{fmt(r.get('int8_vs_fake_top1_agreement'), '>6.2f')}")
            if "onnx" in r:
                o = r["onnx"]
                print(f"  {'':<10} ONNX Runtime CPU ({o['threads']} threads): batch 1 fp32 "
                      f"{o['fp32']['latency_ms_batch1']:.2f} ms, int8 QDQ {o['int8_qdq']['latency_ms_batch1']:.2f} ms "
                      f"({o['ratios']['latency_fp32_over_int8']:.2f}x); batch {report['batch_size']} fp32 "
                      f"{o['fp32']['images_per_s']:.1f} img/s, int8 QDQ {o['int8_qdq']['images_per_s']:.1f} img/s "
                      f"({o['ratios']['throughput_int8_over_fp32']:.2f}x); file {o['bytes'] / 2 ** 20:.2f} MiB = "
                      f"{o['ratios']['size_int8_over_fp32']:.2f}x fp32")
            if "peak_mem_bytes" in r["fake_quant"]:
                print(f"  {'':<10} peak MiB: fake {r['fake_quant']['peak_mem_bytes'] / 2 ** 20:.0f}"
                      + (f", int8 {r['int8_frozen']['peak_mem_bytes'] / 2 ** 20:.0f}" if i8 else ""))
    if report.get("linear_microbench"):
        print("\nLinear layers (M tokens x K -> N): bf16 matmul vs torch._int_mm vs full Int8Linear vs Triton "
              "(tri: int8 GEMM + fused epilogue on int8 X; triQ: the same quantizing bf16 X on load; tri2: Triton "
              "quantize pass, then tri; q: that quantize pass alone)"
              + (" -- CUDA-graph replays" if report.get("cuda_graph") and report["device"] == "cuda" else ""))
        print(f"  {'M':>6} {'K':>5} {'N':>5} {'bf16 ms':>9} {'int_mm ms':>9} {'Int8Lin ms':>10} {'int_mm x':>8} "
              f"{'Int8Lin x':>9} {'tri ms':>8} {'tri x':>6} {'triQ ms':>8} {'triQ x':>6} {'tri2 ms':>8} {'tri2 x':>6} "
              f"{'q ms':>7}")
        fmt = lambda v, spec: format(v, spec) if v is not None else format("-", spec.split(".")[0])  # noqa: E731
        for r in report["linear_microbench"]:
            print(f"  {r['M']:>6} {r['K']:>5} {r['N']:>5} {r['bf16_ms']:>9.3f} {r['int_mm_ms']:>9.3f} "
                  f"{r['int8_linear_ms']:>10.3f} {r['speedup_int_mm_over_bf16']:>8.2f} "
                  f"{r['speedup_int8_linear_over_bf16']:>9.2f} {fmt(r['triton_gemm_ms'], '>8.3f')} "
                  f"{fmt(r['speedup_triton_gemm_over_bf16'], '>6.2f')} {fmt(r['triton_quant_gemm_ms'], '>8.3f')} "
                  f"{fmt(r['speedup_triton_quant_gemm_over_bf16'], '>6.2f')} "
                  f"{fmt(r.get('triton_two_step_ms'), '>8.3f')} "
                  f"{fmt(r.get('speedup_triton_two_step_over_bf16'), '>6.2f')} "
                  f"{fmt(r.get('triton_quantize_ms'), '>7.3f')}")
        skipped = {r.get("triton_skipped") for r in report["linear_microbench"]} - {None}
        if skipped:
            print(f"  Triton columns skipped: {', '.join(sorted(skipped))}")


def _write_json(path):
    from plugin.quant.io import write_json
    return (lambda report: write_json(path, report)) if path else None


def check_names(args):
    """Unknown methods or models: one line before any model is built (timm would raise deep inside a run)."""
    import timm

    from plugin.bench.models import EMBEDDED
    from plugin.errors import UserInputError
    from plugin.quant import RECIPES
    unknown = [m for m in args.method if m not in RECIPES]
    if unknown:
        raise UserInputError(f"unknown method(s) {unknown}; known: {', '.join(sorted(RECIPES))}")
    unknown = [m for m in args.model if m not in EMBEDDED and not timm.is_model(m)]
    if unknown:
        raise UserInputError(f"unknown model(s) {unknown}: not timm model names (timm.list_models() lists them)")


@tool_main
def main(argv=None):
    args = parse_args(argv)
    import plugin  # noqa: F401  (registers adapters, recipes, passes)
    check_names(args)
    if args.e2e:
        return e2e_main(args)
    from plugin.bench.linear import triton_status
    from plugin.bench.run import run_benchmark
    from plugin.bench.settings import BenchSettings
    from plugin.quant.deploy.freeze import set_int8_backend
    device = torch.device(args.device)
    if args.int8_backend != "int_mm" and triton_status(device) is not None:
        print(f"error: --int8-backend {args.int8_backend}: {triton_status(device)}", file=sys.stderr)
        return 2
    set_int8_backend(args.int8_backend)
    if args.onnx:
        from plugin.errors import UserInputError
        from plugin.quant.deploy.onnx_export import check_onnx_available
        try:
            check_onnx_available()
        except UserInputError as e:
            print(f"error: --onnx: {e}", file=sys.stderr)
            return 2
    command = "python " + " ".join(["tools/benchmark.py"] + (sys.argv[1:] if argv is None else list(argv)))
    report = run_benchmark(BenchSettings.from_namespace(args), device, command, write=_write_json(args.out),
                           log=lambda *a: print(*a, file=sys.stderr))
    print_report(report)
    return 0


def e2e_main(args):
    from plugin.bench.e2e import gpu_slug, run_e2e
    from plugin.bench.settings import E2ESettings
    device = torch.device(args.device)
    out = args.out or os.path.join(REPO, "docs", "results", "performance", f"e2e_{gpu_slug(device)}.json")
    report = run_e2e(E2ESettings.from_namespace(args), device, "python " + " ".join(sys.argv), _write_json(out),
                     log=lambda *a: print(*a, file=sys.stderr, flush=True))
    print_e2e(report)
    print(f"\nwritten: {out}")
    return 0


# --------------------------------------------------------------------------------------------------------------------
# --e2e: whole-model deployment throughput, BF16 compiled vs torchao vs plugin.quant.deploy (issue 14)

def add_e2e_args(p):
    g = p.add_argument_group("--e2e: deployment throughput (BF16 compiled, torchao, plugin.quant.deploy)")
    g.add_argument("--e2e", action="store_true", help="whole-model throughput of bf16_compiled, "
                   "torchao_int8_dynamic, torchao_fp8_dynamic, ours_w8a8, ours_fp8 (all torch.compile + CUDA graph "
                   "replays), written to docs/results/performance/e2e_<gpu>.json unless --out")
    # defaults and choices: plugin.bench.e2e, filled in after parsing (--help imports no plugin code)
    g.add_argument("--e2e-models", nargs="+", default=None)
    g.add_argument("--e2e-batches", nargs="+", type=positive_int, default=None)
    g.add_argument("--e2e-paths", nargs="+", default=None)
    g.add_argument("--e2e-method", default="minmax", help="recipe calibrated for the ours_* paths (W8A8)")
    g.add_argument("--e2e-min-time", type=positive_float, default=0.5, help="seconds of timed replays per measurement")
    g.add_argument("--e2e-budget-s", type=positive_float, default=None, help="start no new (model, path) after this many "
                   "seconds; the rows say what was skipped")
    g.add_argument("--e2e-profile", nargs="*", default=None, metavar="MODEL:BATCH",
                   help="time per op class (GEMM, attention, norm/elementwise, quantize) of one forward of each "
                   "path; default when given without values: vit_base_patch16_224:64")
    g.add_argument("--e2e-no-compile", action="store_true", help="eager (a CPU smoke test of the harness)")
    g.add_argument("--e2e-first", nargs="*", default=["vit_base_patch16_224:64"], metavar="MODEL:BATCH",
                   help="cells measured for every path before the rest of the grid (default: the acceptance row)")
    g.add_argument("--e2e-try-all", action="store_true", help="also run cells known to fail (torchao int8 dynamic "
                   "at batch <= 16)")


def print_e2e(report):
    from plugin.bench.e2e import E2E_PATHS
    print(f"device: {report['device']}  torch {report['torch']}  ({report['timing']})")
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"{'model':<30} {'batch':>5} " + " ".join(f"{p:>22}" for p in E2E_PATHS))
    for r in report["rows"]:
        bf = r["img_s"].get("bf16_compiled")
        cells = []
        for p in E2E_PATHS:
            v = r["img_s"].get(p)
            cells.append(f"{'-':>22}" if v is None else
                         f"{v:>12.1f}" + (f" ({v / bf:>5.2f}x)" if bf else " " * 9) + " ")
        print(f"{r['model']:<30} {r['batch']:>5} " + " ".join(cells))
    for key, paths in report.get("profile", {}).items():
        print(f"\nprofile {key}: GPU ms per forward by op class")
        for p, prof in paths.items():
            if "ms" in prof:
                parts = ", ".join(f"{c} {v:.3f}" for c, v in sorted(prof["ms"].items(), key=lambda kv: -kv[1]))
                print(f"  {p:<22} total {prof['ms_per_forward']:.3f} ms, {prof['kernels_per_forward']} kernels: {parts}")
    for model, paths in report.get("recipes", {}).items():
        for p, summary in paths.items():
            if p.startswith("ours"):
                print(f"\nrecipe {model} {p}:")
                for g in summary:
                    count = f"{g['count']:>3}x" if g.get("count") is not None else "   -"
                    print(f"  {count} {g['role']:<12} {g['op']}: {g['recipe']}")


if __name__ == "__main__":
    sys.exit(main())
