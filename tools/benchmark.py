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
"""
import argparse
import copy
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

MODELS = ["deit_small_patch16_224", "vit_base_patch16_224"]
METHODS = ["minmax", "ptq4vit", "repq", "dopq_lite"]
# (in_features, out_features) of ViT-B's Linear layers: qkv, proj, fc1, fc2.
VIT_B_LINEARS = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]
# --quick: the same families at toy sizes, so the whole run takes seconds on a CPU.
QUICK_MODEL_ARGS = {
    "deit_small_patch16_224": dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10),
    "vit_base_patch16_224": dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10),
}
QUICK_LINEARS = [(64, 192), (64, 64), (64, 256), (256, 64)]
# --model fmnist_vit_tiny: the embedded default (configs/classification/fmnist_vit_tiny.py) with its trained weights.
EMBEDDED = {"fmnist_vit_tiny": ("vit_tiny_patch16_224", dict(img_size=28, patch_size=4, in_chans=1, num_classes=10,
                                                             embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0),
                                "plugin/assets/fmnist_vit_tiny.safetensors")}
# Triton micro-benchmark columns: the int8 GEMM with its epilogue on int8 input (tri), the kernel quantizing bf16 X on
# load (triQ, backend "triton_fused"), the quantize kernel then tri (tri2, backend "triton"), the quantize kernel alone.
TRITON_COLUMNS = ["triton_gemm", "triton_quant_gemm", "triton_two_step", "triton_quantize"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", nargs="+", default=MODELS, help="timm model names (created with pretrained=False)")
    p.add_argument("--method", nargs="+", default=METHODS, help="recipes to calibrate (reconstruction ones: "
                   "isvit, aiqvit — set --iters to keep them short)")
    p.add_argument("--w-bits", type=int, default=8)
    p.add_argument("--a-bits", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    p.add_argument("--calib-num", type=int, default=32, help="calibration images")
    p.add_argument("--calib-batch", type=int, default=32, help="calibration images per forward")
    p.add_argument("--iters", type=int, default=None, help="iterations of reconstruction / low-rank passes")
    p.add_argument("--eval-batches", type=int, default=10, help="timed evaluation batches per model variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches before each timing")
    p.add_argument("--micro-m", type=int, default=None, help="tokens of the Linear micro-benchmark "
                   "(default batch-size·197)")
    p.add_argument("--micro-reps", type=int, default=20)
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
    p.add_argument("--onnx-threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: torch's)")
    p.add_argument("--onnx-reps", type=int, default=20, help="timed batch-1 runs per ONNX model and round")
    p.add_argument("--quick", action="store_true", help="toy model and layer sizes (a smoke run on CPU)")
    p.add_argument("--out", default=None, help="write the JSON here")
    p.add_argument("--verbose", action="store_true", help="calibration progress to stderr")
    p.add_argument("--calib-only", action="store_true", help="calibration wall time and peak GPU memory only (no "
                   "throughput, no freeze): the calibration-at-scale table of docs/performance.md")
    p.add_argument("--checkpoint-dir", default=None, help="reconstruction passes write a checkpoint here after each "
                   "unit (one subfolder per model and method); with --resume a run continues after the last one")
    p.add_argument("--resume", action="store_true", help="continue each calibration from --checkpoint-dir")
    p.add_argument("--no-block-skip", action="store_true", help="calibration forwards recompute the blocks already "
                   "calibrated (plugin.quant.block_skip off: the same model, to time what skipping saves)")
    p.add_argument("--model-kwargs", nargs="+", default=[], metavar="KEY=VALUE",
                   help="keyword arguments of timm.create_model for every --model, e.g. depth=24 img_size=64 "
                        "(values parsed as Python literals)")
    add_e2e_args(p)
    args = p.parse_args(argv)
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


def _literal_kv(text):
    import ast
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a plain string


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def build_model(name, quick, device, model_kwargs=None):
    import timm
    torch.manual_seed(0)
    if name in EMBEDDED:
        from safetensors.torch import load_file
        timm_name, kwargs, weights = EMBEDDED[name]
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
        model.load_state_dict(load_file(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                     weights)))
        return model.eval().to(device)
    kwargs = {**(QUICK_MODEL_ARGS.get(name, {}) if quick else {}), **(model_kwargs or {})}
    model = timm.create_model(name, pretrained=False, **kwargs).eval().to(device)
    return model


def input_size(model):
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is not None:
        chans = getattr(getattr(model.patch_embed, "proj", None), "in_channels", 3)
        return (chans, *size)
    return tuple(cfg.get("input_size", (3, 224, 224)))


def make_recipe(method, args):
    from plugin.quant import get_recipe
    recipe = get_recipe(method, args.w_bits, args.a_bits)
    if args.iters is not None:
        recipe.passes = [p.replace(iters=args.iters) for p in recipe.passes]
        if args.quick:
            recipe.passes = [p.replace(batch_size=min(p.batch_size or args.calib_batch, args.calib_batch))
                             for p in recipe.passes]
    return recipe


def _capture(fn, device, reps=1):
    """A CUDA graph of `reps` calls of `fn` (warmed up and autotuned before), captured on a side stream."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side), torch.cuda.graph(g, stream=side):
        for _ in range(reps):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    g.replay()  # the first replay uploads the graph
    return g


def throughput(model, device, shape, args, autocast_bf16=False):
    """images/s over `eval_batches` timed batches (after `warmup`), and peak GPU memory of the timed part. With
    --cuda-graph on CUDA the forward is captured once and replayed; a model whose forward cannot be captured (a host
    sync inside) is timed eagerly, and the result says so."""
    x = torch.randn(args.batch_size, *shape, device=device, generator=torch.Generator(device).manual_seed(0))
    if args.compile:
        model = torch.compile(model)
    # autocast's weight cache cannot live across a graph capture
    ctx = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)) if autocast_bf16
           else torch.no_grad)

    def forward():
        with torch.no_grad(), ctx():
            model(x)
    for _ in range(args.warmup):
        forward()
    step, graph_error = forward, None
    if args.cuda_graph and device.type == "cuda":
        try:
            step = _capture(forward, device).replay
        except RuntimeError as e:  # e.g. a .item() inside the forward
            torch.cuda.synchronize(device)
            graph_error = str(e).splitlines()[0][:200]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _, seconds = _timed(lambda: [step() for _ in range(args.eval_batches)], device)
    result = {"images_per_s": args.batch_size * args.eval_batches / seconds, "seconds": seconds,
              "cuda_graph": step is not forward}
    if graph_error:
        result["cuda_graph_error"] = graph_error
    if device.type == "cuda":
        result["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device)
    return result


def calibrate_timed(model, recipe, calib, args, device, ckpt_name):
    """quantize() timed, with the peak GPU memory of the calibration itself (model, cached inputs and targets,
    optimiser state) and, with --checkpoint-dir, a checkpoint per reconstruction unit (--resume continues it)."""
    from plugin.quant import quantize
    t0 = time.perf_counter()

    def progress(*a):  # elapsed time and, on CUDA, the peak memory so far: a run cut short still shows both
        mem = f" peak {torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f}GiB" if device.type == "cuda" else ""
        print(f"[{time.perf_counter() - t0:7.1f}s{mem}]", *a, file=sys.stderr)
    quiet = progress if args.verbose else (lambda *a: None)
    ckpt = os.path.join(args.checkpoint_dir, ckpt_name) if args.checkpoint_dir else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _, calib_s = _timed(lambda: quantize(model, recipe, calib, log=quiet, checkpoint_dir=ckpt, resume=args.resume,
                                         skip_finished_blocks=not args.no_block_skip), device)
    res = {"calib_s": calib_s, "resumed": bool(args.resume), "block_skip": not args.no_block_skip}
    if device.type == "cuda":
        res["calib_peak_mem_bytes"] = torch.cuda.max_memory_allocated(device)
    return res


def bench_model(name, args, device, log, entry, saved):
    """Fills `entry` with one model's figures; `saved` is called after each method, so that the caller writes the
    report as it grows."""
    from plugin.quant import CalibData
    from plugin.quant.deploy.freeze import freeze, frozen_summary
    base = build_model(name, args.quick, device, args.model_kwargs)
    shape = input_size(base)
    gen = torch.Generator(device).manual_seed(1)
    images = torch.randn(args.calib_num, *shape, device=device, generator=gen)
    calib = CalibData(list(images.split(args.calib_batch)), lambda m, b: m(b))
    entry.update(input_size=list(shape), params=sum(p.numel() for p in base.parameters()), methods={})
    if not args.calib_only:
        entry["float"] = throughput(base, device, shape, args)
        if device.type == "cuda":
            entry["float_bf16"] = throughput(base, device, shape, args, autocast_bf16=True)
    for method in args.method:
        model = copy.deepcopy(base)
        recipe = make_recipe(method, args)
        res = entry["methods"][method] = calibrate_timed(model, recipe, calib, args, device, f"{name}/{method}")
        calib_s = res["calib_s"]
        log(f"  {name} {method}: calibrated in {calib_s:.2f}s"
            + (f", peak {res['calib_peak_mem_bytes'] / 2 ** 30:.2f} GiB" if "calib_peak_mem_bytes" in res else ""))
        if args.calib_only:
            del model
            saved()
            continue
        res["fake_quant"] = throughput(model, device, shape, args)
        frozen = freeze(copy.deepcopy(model))
        summary = frozen_summary(frozen)
        res["frozen_summary"] = {k: v for k, v in summary.items() if k != "not_frozen"}
        res["frozen_summary"]["not_frozen"] = len(summary["not_frozen"])
        if summary["frozen"]:
            res["int8_frozen"] = throughput(frozen, device, shape, args)
            x = images[: args.calib_batch]
            with torch.no_grad():
                a, b = model(x), frozen(x)
            res["int8_vs_fake_top1_agreement"] = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
            res["int8_vs_fake_max_abs_logit_diff"] = (a - b).abs().max().item()
        f = entry["float"]["images_per_s"]
        res["ratios"] = {"fake_over_float": res["fake_quant"]["images_per_s"] / f}
        if "int8_frozen" in res:
            res["ratios"]["int8_over_float"] = res["int8_frozen"]["images_per_s"] / f
            res["ratios"]["int8_over_fake"] = res["int8_frozen"]["images_per_s"] / res["fake_quant"]["images_per_s"]
            if "float_bf16" in entry:
                res["ratios"]["int8_over_float_bf16"] = (res["int8_frozen"]["images_per_s"]
                                                         / entry["float_bf16"]["images_per_s"])
        if args.onnx:
            res["onnx"] = onnx_bench(base, model, name, method, shape, args, log)
        del model, frozen
        saved()


def _ort_session(path, args, optimized_path=None):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.onnx_threads or torch.get_num_threads()
    if optimized_path:
        opts.optimized_model_filepath = optimized_path  # the graph as ONNX Runtime runs it, to count fused ops
        opts.log_severity_level = 3  # not the warning that this optimized file is specific to this machine
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def _ort_times(session, shape, args):
    """(median ms of one batch-1 run, seconds of `eval_batches` runs at --batch-size) for one session."""
    import numpy as np
    name = session.get_inputs()[0].name
    rng = np.random.RandomState(0)
    one = rng.randn(1, *shape).astype(np.float32)
    many = rng.randn(args.batch_size, *shape).astype(np.float32)
    for _ in range(args.warmup):
        session.run(None, {name: one})
        session.run(None, {name: many})
    single = []
    for _ in range(args.onnx_reps):
        t0 = time.perf_counter()
        session.run(None, {name: one})
        single.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(args.eval_batches):
        session.run(None, {name: many})
    return 1000 * sorted(single)[len(single) // 2], time.perf_counter() - t0


def onnx_bench(base, model, name, method, shape, args, log, rounds=3):
    """ONNX Runtime CPU: the QDQ export of `model` against the FP32 export of `base`, timed alternately in `rounds`
    rounds (the best round of each counts, so a burst of load on a shared machine hits both alike)."""
    import tempfile

    import onnx

    from plugin.quant.deploy.onnx_export import export_float_onnx, export_onnx
    example = torch.randn(1, *shape)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"fp32": os.path.join(tmp, "fp32.onnx"), "int8_qdq": os.path.join(tmp, "qdq.onnx")}
        fp32_bytes = export_float_onnx(base, example, paths["fp32"])
        summary = export_onnx(model, example, paths["int8_qdq"])
        sessions, fused = {}, {}
        for key, path in paths.items():
            sessions[key] = _ort_session(path, args, os.path.join(tmp, key + "_opt.onnx"))
            ops = {}
            for node in onnx.load(os.path.join(tmp, key + "_opt.onnx")).graph.node:
                ops[node.op_type] = ops.get(node.op_type, 0) + 1
            fused[key] = ops
        best = {k: [float("inf"), float("inf")] for k in paths}
        for _ in range(rounds):
            for key, sess in sessions.items():
                lat, secs = _ort_times(sess, shape, args)
                best[key] = [min(best[key][0], lat), min(best[key][1], secs)]
    out = {"bytes": summary["bytes"], "fp32_bytes": fp32_bytes, "float_sites": len(summary["float_sites"]),
           "threads": args.onnx_threads or torch.get_num_threads(), "rounds": rounds,
           "ops_after_ort_optimization": fused}
    for key, (lat, secs) in best.items():
        out[key] = {"latency_ms_batch1": lat, "images_per_s": args.batch_size * args.eval_batches / secs}
    out["ratios"] = {"latency_fp32_over_int8": out["fp32"]["latency_ms_batch1"] / out["int8_qdq"]["latency_ms_batch1"],
                     "throughput_int8_over_fp32": out["int8_qdq"]["images_per_s"] / out["fp32"]["images_per_s"],
                     "size_int8_over_fp32": summary["bytes"] / fp32_bytes}
    log(f"  {name} {method} ONNX Runtime CPU: batch-1 latency fp32 {out['fp32']['latency_ms_batch1']:.2f} ms, "
        f"int8 QDQ {out['int8_qdq']['latency_ms_batch1']:.2f} ms; throughput ratio int8/fp32 "
        f"{out['ratios']['throughput_int8_over_fp32']:.2f}")
    return out


def _time_op(fn, device, reps, warmup=2, graph=False):
    """Seconds per call of `fn`. With `graph` (CUDA), the `reps` calls are captured once in a CUDA graph and the
    replay is timed: kernel time without the host's launch cost (a Python-launched Triton kernel costs tens of µs
    on the host, as long as a whole ViT-B-sized matmul)."""
    for _ in range(warmup):  # also autotunes, before any capture
        fn()
    if graph and device.type == "cuda":
        _, seconds = _timed(_capture(fn, device, reps).replay, device)
        return seconds / reps
    _, seconds = _timed(lambda: [fn() for _ in range(reps)], device)
    return seconds / reps


def _triton_status(device):
    """None when the Triton kernels can run on `device`, else why not."""
    if device.type != "cuda":
        return f"not on CUDA ({device.type})"
    try:
        import plugin.quant.deploy.triton_int8  # noqa: F401
    except ImportError as e:
        return f"triton unavailable ({e})"
    return None


def linear_microbench(args, device):
    """BF16 x @ wᵀ vs torch._int_mm, the full Int8Linear forward and (CUDA) the Triton kernels, per layer shape."""
    from plugin.quant.deploy.freeze import Int8Linear, int8_matmul
    shapes = QUICK_LINEARS if args.quick else VIT_B_LINEARS
    m = args.micro_m or (args.batch_size * (17 if args.quick else 197))
    gen = torch.Generator(device).manual_seed(0)
    triton_skip = _triton_status(device)
    rows = []
    for k, n in shapes:
        x = torch.randn(m, k, device=device, generator=gen)
        w = torch.randn(n, k, device=device, generator=gen) / k ** 0.5
        x16, w16 = x.bfloat16(), w.bfloat16()
        a8 = torch.randint(-128, 128, (m, k), device=device, dtype=torch.int8, generator=gen)
        w8 = torch.randint(-128, 128, (n, k), device=device, dtype=torch.int8, generator=gen)
        layer = Int8Linear(k, n, -128, 127, 0, False).to(device)
        layer.weight_int8 = w8
        layer.x_scale = x.abs().max() / 127
        layer.bias = torch.zeros(n, device=device)
        run_layer = torch.compile(layer) if args.compile else layer
        with torch.no_grad():
            bf16 = _time_op(lambda: x16 @ w16.t(), device, args.micro_reps, graph=args.cuda_graph)
            int_mm = _time_op(lambda: int8_matmul(a8, w8), device, args.micro_reps, graph=args.cuda_graph)
            full = _time_op(lambda: run_layer(x), device, args.micro_reps, graph=args.cuda_graph)
        row = {"M": m, "K": k, "N": n, "bf16_ms": bf16 * 1e3, "int_mm_ms": int_mm * 1e3,
               "int8_linear_ms": full * 1e3, "speedup_int_mm_over_bf16": bf16 / int_mm,
               "speedup_int8_linear_over_bf16": bf16 / full,
               **{f"{c}_ms": None for c in TRITON_COLUMNS}, **{f"speedup_{c}_over_bf16": None for c in TRITON_COLUMNS}}
        if triton_skip is None:
            from plugin.quant.deploy.triton_int8 import int8_gemm, quant_int8_gemm, quantize_int8
            epi = dict(const=layer.const, bias=layer.bias, out_dtype=torch.bfloat16)
            quant = (layer.x_scale, layer.x_zero, layer.x_qmin, layer.x_qmax, layer.x_offset)
            ops = {"triton_gemm": lambda: int8_gemm(a8, w8, layer.out_scale, **epi),
                   "triton_quant_gemm": lambda: quant_int8_gemm(x16, w8, layer.out_scale, *quant, **epi),
                   "triton_two_step": lambda: int8_gemm(quantize_int8(x16, *quant), w8, layer.out_scale, **epi),
                   "triton_quantize": lambda: quantize_int8(x16, *quant)}
            with torch.no_grad():  # the first calls autotune (inside _time_op's warm-up)
                for col, op in ops.items():
                    t = _time_op(op, device, args.micro_reps, graph=args.cuda_graph)
                    row.update({f"{col}_ms": t * 1e3, f"speedup_{col}_over_bf16": bf16 / t})
        else:
            row["triton_skipped"] = triton_skip
        rows.append(row)
    return rows


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


def main(argv=None):
    args = parse_args(argv)
    import plugin  # noqa: F401  (registers adapters, recipes, passes)
    if args.e2e:
        return e2e_main(args)
    from plugin.quant.deploy.freeze import set_int8_backend
    if args.int8_backend != "int_mm" and _triton_status(torch.device(args.device)) is not None:
        print(f"error: --int8-backend {args.int8_backend}: {_triton_status(torch.device(args.device))}",
              file=sys.stderr)
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
    device = torch.device(args.device)
    log = lambda *a: print(*a, file=sys.stderr)  # noqa: E731
    report = {
        "device": args.device, "quick": args.quick, "torch": torch.__version__, "python": platform.python_version(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(), "w_bits": args.w_bits, "a_bits": args.a_bits,
        "batch_size": args.batch_size, "compile": args.compile, "cuda_graph": args.cuda_graph,
        "int8_backend": args.int8_backend,
        "calib_num": args.calib_num, "iters": args.iters, "calib_batch": args.calib_batch,
        "model_kwargs": args.model_kwargs,
        "methods": args.method, "onnx": args.onnx,
        "models": {},
    }
    report["command"] = "python " + " ".join(["tools/benchmark.py"] + (sys.argv[1:] if argv is None else list(argv)))
    t0 = time.perf_counter()

    def save(done=False):  # the report as it grows, so a run cut short keeps what finished
        report["total_s"] = time.perf_counter() - t0
        report["complete"] = done
        if args.out:
            from plugin.quant.io import write_json
            write_json(args.out, report)
    for name in [] if args.micro_only else args.model:
        log(f"[benchmark] {name}")
        bench_model(name, args, device, log, report["models"].setdefault(name, {}), save)
    report["linear_microbench"] = [] if args.no_micro else linear_microbench(args, device)
    if _triton_status(device) is None:
        from plugin.quant.deploy.triton_int8 import tuned_configs
        report["triton_tuned_configs"] = tuned_configs()
    if args.onnx:
        import onnxruntime
        report["onnxruntime"] = onnxruntime.__version__
    print_report(report)
    save(done=True)
    return 0


# --------------------------------------------------------------------------------------------------------------------
# --e2e: whole-model deployment throughput, BF16 compiled vs torchao vs plugin.quant.deploy (issue 14)

E2E_MODELS = ["vit_base_patch16_224", "deit_small_patch16_224", "swin_tiny_patch4_window7_224"]
E2E_BATCHES = [64, 8, 1]
E2E_PATHS = ["bf16_compiled", "torchao_int8_dynamic", "torchao_fp8_dynamic", "ours_w8a8", "ours_fp8"]
# run order: ours first (the torchao paths compile slowest: 41 s for ViT-B at batch 64 on an H100, bf16 12 s)
E2E_RUN_ORDER = ["ours_fp8", "bf16_compiled", "ours_w8a8", "torchao_fp8_dynamic", "torchao_int8_dynamic"]
# --quick --e2e: toy models of the same families, small batches (a CPU smoke run)
E2E_QUICK_ARGS = {
    **QUICK_MODEL_ARGS,
    "swin_tiny_patch4_window7_224": dict(img_size=32, patch_size=2, window_size=4, embed_dim=32, depths=(2, 2),
                                         num_heads=(2, 4), num_classes=10),
}
# kernel-name fragments -> op class, tried in this order (profile of one forward; see e2e_profile)
_ATTN_KEYS = ("flash", "fmha", "attention", "attn", "sdpa", "scaled_dot")
_GEMM_KEYS = ("gemm", "xmma", "cutlass", "nvjet", "cublas", "scaled_mm", "_mm_", "int_mm", "matmul", "triton_tem",
              "sm90_", "sm80_", "s16816", "wgmma")
_NORM_KEYS = ("layer_norm", "gelu", "softmax", "var_mean", "erf", "tanh")
_QUANT_KEYS = ("clamp", "round", "amax", "abs", "quant", "float8", "scale")


def add_e2e_args(p):
    g = p.add_argument_group("--e2e: deployment throughput (BF16 compiled, torchao, plugin.quant.deploy)")
    g.add_argument("--e2e", action="store_true", help="whole-model throughput of bf16_compiled, "
                   "torchao_int8_dynamic, torchao_fp8_dynamic, ours_w8a8, ours_fp8 (all torch.compile + CUDA graph "
                   "replays), written to docs/results/performance/e2e_<gpu>.json unless --out")
    g.add_argument("--e2e-models", nargs="+", default=E2E_MODELS)
    g.add_argument("--e2e-batches", nargs="+", type=int, default=E2E_BATCHES)
    g.add_argument("--e2e-paths", nargs="+", default=E2E_PATHS, choices=E2E_PATHS)
    g.add_argument("--e2e-method", default="minmax", help="recipe calibrated for the ours_* paths (W8A8)")
    g.add_argument("--e2e-min-time", type=float, default=0.5, help="seconds of timed replays per measurement")
    g.add_argument("--e2e-budget-s", type=float, default=None, help="start no new (model, path) after this many "
                   "seconds; the rows say what was skipped")
    g.add_argument("--e2e-profile", nargs="*", default=None, metavar="MODEL:BATCH",
                   help="time per op class (GEMM, attention, norm/elementwise, quantize) of one forward of each "
                   "path; default when given without values: vit_base_patch16_224:64")
    g.add_argument("--e2e-no-compile", action="store_true", help="eager (a CPU smoke test of the harness)")
    g.add_argument("--e2e-first", nargs="*", default=["vit_base_patch16_224:64"], metavar="MODEL:BATCH",
                   help="cells measured for every path before the rest of the grid (default: the acceptance row)")
    g.add_argument("--e2e-try-all", action="store_true", help="also run cells known to fail (torchao int8 dynamic "
                   "at batch <= 16)")


def _gpu_slug(device):
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    for key in ("h200", "h100", "a100", "l40s", "l4", "b200", "a10g"):
        if key in name:
            return key
    return "".join(c for c in name if c.isalnum())[:16] or "gpu"


def _torchao_status():
    try:
        import torchao  # noqa: F401
        from torchao.quantization import quantize_  # noqa: F401
    except Exception as e:  # ImportError, or a torchao that does not load with this torch
        return f"torchao not available ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    return None


def _e2e_build(path, base, calibrated, dtype):
    """The model of one path (not compiled) and its recipe summary."""
    if path in ("ours_w8a8", "ours_fp8"):
        from plugin.quant.deploy import deploy, deploy_report
        dep = deploy(calibrated, "int8" if path == "ours_w8a8" else "fp8", dtype=dtype)
        return dep, deploy_report(dep)["summary"]
    model = copy.deepcopy(base).to(dtype)
    if path == "bf16_compiled":
        return model, [{"role": "all", "op": f"timm model in {dtype}", "recipe": "not quantized"}]
    from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, Int8DynamicActivationInt8WeightConfig,
                                      PerRow, quantize_)
    if path == "torchao_int8_dynamic":
        quantize_(model, Int8DynamicActivationInt8WeightConfig())
        recipe = "torchao Int8DynamicActivationInt8WeightConfig: W int8 per-channel, A int8 per-token dynamic"
    else:
        quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        recipe = "torchao Float8DynamicActivationFloat8WeightConfig(PerRow): W/A e4m3 rowwise, A dynamic"
    return model, [{"role": "Linear", "op": "torchao quantize_", "recipe": recipe},
                   {"role": "other", "op": f"timm default in {dtype}", "recipe": "not quantized"}]


def _e2e_time(fn, x, device, min_time):
    """images/s of fn(x): warm-up (compiles), then CUDA-graph replays (eager calls where capture fails or off
    CUDA), timed in three rounds of >= min_time / 3 s each; the median round."""
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        step, note = (lambda: fn(x)), None
        if device.type == "cuda":
            try:
                step = _capture(lambda: fn(x), device).replay
            except RuntimeError as e:
                torch.cuda.synchronize(device)
                note = "eager (CUDA graph capture failed: " + str(e).splitlines()[0][:150] + ")"
        _, once = _timed(step, device)
        reps = max(3, int(min_time / 3 / max(once, 1e-6)))
        rounds = []
        for _ in range(3):
            _, sec = _timed(lambda: [step() for _ in range(reps)], device)
            rounds.append(sec / reps)
    rounds.sort()
    return x.shape[0] / rounds[1], note


def _op_class(name):
    n = name.lower()
    if any(k in n for k in _ATTN_KEYS):
        return "attention"
    if any(k in n for k in _GEMM_KEYS):
        return "gemm"
    if any(k in n for k in _NORM_KEYS):
        return "norm_elementwise"
    if "memcpy" in n or "memset" in n:
        return "copy"
    if any(k in n for k in _QUANT_KEYS):
        return "quantize"
    return "norm_elementwise"


def e2e_profile(fn, x, device, calls=5):
    """GPU time per op class of one forward (kernels from torch.profiler over `calls` eager calls of the compiled
    model), the number of kernels, and the slowest kernels. A LayerNorm / GELU kernel that also writes the 8-bit
    codes counts as norm_elementwise (its name shows the fused ops: _to_copy, clamp, div)."""
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad():
        fn(x)
        _sync(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn(x)
            _sync(device)
    classes, kernels = {}, []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None)
        if t is None:
            t = getattr(ev, "cuda_time_total", 0)
        if not t or getattr(ev, "device_type", None) not in (None, torch.autograd.DeviceType.CUDA):
            continue
        if ev.key.startswith(("aten::", "cuda", "Torch-Compiled", "CompiledFunction", "## ")):
            continue
        c = _op_class(ev.key)
        ms = t / 1e3 / calls
        classes[c] = classes.get(c, 0.0) + ms
        kernels.append({"kernel": ev.key[:160], "class": c, "ms": ms, "count": ev.count // calls})
    total = sum(classes.values())
    kernels.sort(key=lambda k: -k["ms"])
    return {"ms_per_forward": total, "ms": classes,
            "share": {c: v / total for c, v in classes.items()} if total else {},
            "kernels_per_forward": sum(k["count"] for k in kernels), "top_kernels": kernels[:25]}


def _write_e2e(report, out):
    from plugin.quant.io import write_json
    write_json(out, report)


def _e2e_cell_order(args):
    """(model, batch) cells in run order: the --e2e-first cells (the acceptance row) for every path before the
    rest, so that a run stopped by its time limit has measured what matters most."""
    first = []
    for spec in args.e2e_first or []:
        model, _, batch = spec.rpartition(":")
        if model in args.e2e_models and batch.isdigit() and int(batch) in args.e2e_batches:
            first.append((model, int(batch)))
    rest = [(m, b) for m in args.e2e_models for b in args.e2e_batches if (m, b) not in first]
    return [first, rest]


def _known_failure(path, batch, args):
    """Cells not run because they fail on every setup measured (--e2e-try-all runs them anyway)."""
    if path == "torchao_int8_dynamic" and batch <= 16 and not args.e2e_try_all:
        return ("not run: at batch <= 16 the classifier Linear has M = batch <= 16 rows and torch._int_mm needs "
                "M > 16 (RuntimeError 'self.size(0) needs to be greater than 16' at batch 8 on an H100, torch 2.11, "
                "torchao 0.16, after 104 s of compiling); --e2e-try-all runs it")
    return None


def e2e_main(args):
    from plugin.quant import CalibData, get_recipe, quantize
    device = torch.device(args.device)
    dtype = torch.bfloat16
    out = args.out or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "results",
                                   "performance", f"e2e_{_gpu_slug(device)}.json")
    profile_at = set(args.e2e_profile if args.e2e_profile else
                     (["vit_base_patch16_224:64"] if args.e2e_profile is not None else []))
    tao_skip = _torchao_status()
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    report = {"command": "python " + " ".join(sys.argv), "device": dev_name, "torch": torch.__version__,
              "compile": not args.e2e_no_compile, "timing": "torch.compile (inductor default, dynamo reset before each) "
              "per path, model and batch (static shapes), then CUDA-graph replays; images/s of the median of three "
              "timed rounds",
              "method": f"{args.e2e_method} W8A8, {args.calib_num} random calibration images", "quick": args.quick,
              "notes": [], "rows": [], "recipes": {}, "profile": {}, "compile_s": {}}
    if tao_skip:
        report["notes"].append(f"torchao rows skipped: {tao_skip}")
    if device.type != "cuda":
        report["notes"].append("not a GPU: torchao rows skipped, ours_* run torch._int_mm / float32 e4m3 emulation")
    rows = {}
    for name in args.e2e_models:
        for b in args.e2e_batches:
            rows[(name, b)] = {"device": dev_name, "torch": torch.__version__, "model": name, "batch": b,
                               "img_s": {p: None for p in E2E_PATHS}, "notes": {}}
    report["rows"] = list(rows.values())
    t_start = time.perf_counter()
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    paths = [p for p in E2E_RUN_ORDER if p in args.e2e_paths]
    built = {}  # model name -> (base, calibrated, input shape); one model at a time

    def model_pair(name):
        if name not in built:
            import timm
            built.clear()
            torch.manual_seed(0)
            base = timm.create_model(name, pretrained=False,
                                     **(E2E_QUICK_ARGS.get(name, {}) if args.quick else {})).eval().to(device)
            shape = input_size(base)
            calibrated = None
            if any(p.startswith("ours") for p in paths):
                gen = torch.Generator(device).manual_seed(1)
                imgs = torch.randn(args.calib_num, *shape, device=device, generator=gen)
                calibrated = quantize(copy.deepcopy(base), get_recipe(args.e2e_method, 8, 8),
                                      CalibData(list(imgs.split(args.calib_batch)), lambda m, b: m(b)),
                                      log=lambda *a: None)
            built[name] = (base, calibrated, shape)
        return built[name]

    for cells in _e2e_cell_order(args):
        for name in dict.fromkeys(m for m, _ in cells):
            batches = [b for m, b in cells if m == name]
            base, calibrated, shape = model_pair(name)
            report["recipes"].setdefault(name, {})
            for path in paths:
                todo = []
                for b in batches:
                    why = _known_failure(path, b, args)
                    if path.startswith("torchao") and (tao_skip or device.type != "cuda"):
                        why = tao_skip or "torchao rows need CUDA here"
                    elif args.e2e_budget_s is not None and time.perf_counter() - t_start > args.e2e_budget_s:
                        why = "skipped: --e2e-budget-s reached"
                    if why:
                        rows[(name, b)]["notes"][path] = why
                    else:
                        todo.append(b)
                if not todo:
                    continue
                try:
                    model, recipe = _e2e_build(path, base, calibrated, dtype)
                except Exception as e:  # a torchao config that does not apply, say: the row says why
                    for b in todo:
                        rows[(name, b)]["notes"][path] = f"build failed: {type(e).__name__}: {str(e)[:200]}"
                    log(f"[e2e] {name} {path}: build failed: {e}")
                    continue
                report["recipes"][name][path] = recipe
                for b in todo:
                    # A fresh compile per cell: a long grid otherwise reaches dynamo's recompile limit (8 per code
                    # object, shared by every model of one timm class) and later cells silently run eager; the
                    # DeiT-S cells of one H100 grid came out 0.42x (fp8) to 0.84x (w8a8) of their value in a run
                    # of their own (docs/performance.md).
                    torch._dynamo.reset()
                    fn = model if args.e2e_no_compile else torch.compile(model, dynamic=False)
                    x = torch.randn(b, *shape, device=device,
                                    generator=torch.Generator(device).manual_seed(0)).to(dtype)
                    t0 = time.perf_counter()
                    try:
                        img_s, note = _e2e_time(fn, x, device, args.e2e_min_time)
                    except Exception as e:
                        img_s, note = None, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                    rows[(name, b)]["img_s"][path] = img_s
                    if note:
                        rows[(name, b)]["notes"][path] = note
                    report["compile_s"][f"{name}:{b}:{path}"] = time.perf_counter() - t0
                    log(f"[e2e] {name} b{b} {path}: {img_s if img_s is None else round(img_s, 1)} img/s "
                        f"({time.perf_counter() - t0:.1f}s incl. compile){' ' + note if note else ''}")
                    if f"{name}:{b}" in profile_at and img_s is not None:
                        try:
                            report["profile"].setdefault(f"{name}:{b}", {})[path] = e2e_profile(fn, x, device)
                        except Exception as e:
                            report["profile"].setdefault(f"{name}:{b}", {})[path] = {"error": str(e)[:200]}
                del model, fn
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                report["total_s"] = time.perf_counter() - t_start
                _write_e2e(report, out)  # after every (model, path): a run stopped at its time limit keeps its rows
    built.clear()
    for r in report["rows"]:
        bf = r["img_s"].get("bf16_compiled")
        r["speedup_vs_bf16_compiled"] = {p: (v / bf if v and bf else None) for p, v in r["img_s"].items()}
        if not r["notes"]:
            del r["notes"]
    report["total_s"] = time.perf_counter() - t_start
    _write_e2e(report, out)
    print_e2e(report)
    print(f"\nwritten: {out}")
    return 0


def print_e2e(report):
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
