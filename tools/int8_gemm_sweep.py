#!/usr/bin/env python
"""Where does the INT8 GEMM time go? A diagnostic sweep on ViT-B's Linear shapes (CUDA + triton; CUDA-graph timing).

    python tools/int8_gemm_sweep.py --out results/int8_sweep.json

For each shape (M = 64·197 tokens, K → N of qkv, proj, fc1, fc2), all timed as CUDA-graph replays in one run:
- cuBLAS: BF16 `x @ wᵀ` (the baseline), `torch._int_mm` (int8 → int32) and, where the GPU has FP8, FP8 e4m3
  `torch._scaled_mm` with a BF16 output: what cuBLAS gets from 8-bit tensor cores at these sizes.
- `plugin.quant.deploy.triton_int8.int8_gemm` (the shipped kernel, autotuned), and the same kernel forced through a grid of
  tile configs (--full-grid: every one; default: a short list), to see whether tile choice is the limit.
- the TMA persistent variant of `plugin.quant.deploy.triton_int8` (`int8_gemm(..., persistent=True)`; Hopper and later)
  over its configs.
- the same pointer kernel multiplying BF16 operands (fp32 accumulation): Triton's own BF16 speed, to tell Triton's
  code generation apart from the int8 path.
Prints a table per shape (ms and speed-up over cuBLAS BF16) and writes JSON. Not part of the test suite.
"""
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plugin.errors import ToolParser, UserInputError, positive_int, tool_main  # noqa: E402

import torch  # noqa: E402

from plugin.utils.timing import capture_graph  # noqa: E402

SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]
# persistent-kernel variants: (FLATTEN, WARP_SPEC, SUBTILE)
TMA_VARIANTS = [(True, False, False), (False, False, False), (True, False, True), (False, True, False),
                (False, True, True)]


def graph_time(fn, reps=50):
    """Seconds per call: `reps` calls captured in one CUDA graph, replayed (after warm-up / autotuning); best of 5."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    g = capture_graph(fn, torch.device("cuda"), reps)
    best = float("inf")
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3 / reps)
    return best


def _try(fn):
    try:
        return graph_time(fn)
    except Exception as e:  # a config that does not fit (shared memory, registers) or an op the GPU lacks
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e) else type(e).__name__


@tool_main
def main(argv=None):
    p = ToolParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=positive_int, default=64 * 197)
    p.add_argument("--full-grid", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise UserInputError("needs a CUDA GPU")
    import triton
    from plugin.quant.deploy import triton_int8 as ti
    grid = (list(itertools.product([64, 128, 256], [64, 128, 256], [64, 128, 256], [4, 8], [2, 3, 4, 5]))
            if args.full_grid else
            [(128, 128, 64, 4, 4), (128, 128, 128, 8, 3), (128, 256, 128, 8, 3), (256, 128, 128, 8, 3),
             (128, 256, 64, 8, 4), (256, 128, 64, 8, 4), (128, 128, 256, 8, 3), (64, 256, 128, 4, 4),
             (128, 256, 128, 8, 4), (256, 128, 128, 8, 4), (128, 256, 64, 8, 6), (256, 128, 64, 8, 6)])
    dev = torch.device("cuda")
    g = torch.Generator(dev).manual_seed(0)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "M": args.m, "shapes": []}
    for k, n in SHAPES:
        m = args.m
        x16 = torch.randn(m, k, device=dev, generator=g).bfloat16()
        w16 = (torch.randn(n, k, device=dev, generator=g) / k ** 0.5).bfloat16()
        a8 = torch.randint(-128, 128, (m, k), device=dev, dtype=torch.int8, generator=g)
        w8 = torch.randint(-128, 128, (n, k), device=dev, dtype=torch.int8, generator=g)
        scale = torch.rand(n, device=dev, generator=g) * 1e-3
        const = torch.randint(-1000, 1000, (n,), device=dev, dtype=torch.int32, generator=g)
        bias = torch.randn(n, device=dev, generator=g)
        row = {"K": k, "N": n, "times_ms": {}}
        t = row["times_ms"]

        def put(name, sec):
            t[name] = sec * 1e3 if isinstance(sec, float) else sec

        with torch.no_grad():
            put("cublas_bf16", _try(lambda: x16 @ w16.t()))
            put("cublas_int_mm", _try(lambda: torch._int_mm(a8, w8.t())))
            if hasattr(torch, "float8_e4m3fn"):
                a_f8, w_f8 = x16.to(torch.float8_e4m3fn), w16.to(torch.float8_e4m3fn)
                one = torch.ones((), device=dev)
                put("cublas_fp8_scaled_mm", _try(lambda: torch._scaled_mm(a_f8, w_f8.t(), one, one,
                                                                           out_dtype=torch.bfloat16)))
            epi = dict(const=const, bias=bias, out_dtype=torch.bfloat16)
            put("triton_int8_autotuned", _try(lambda: ti.int8_gemm(a8, w8, scale, persistent=False, **epi)))
            put("triton_int8_persistent_autotuned", _try(lambda: ti.int8_gemm(a8, w8, scale, persistent=True, **epi)))
            for bm, bn, bk, warps, stages in grid:
                smem = (bm + bn) * bk * stages
                if smem > 227 * 1024:
                    continue
                cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=warps, num_stages=stages)
                name = f"{bm}x{bn}x{bk}_w{warps}_s{stages}"
                put("int8_" + name, _try(lambda: ti.int8_gemm(a8, w8, scale, config=cfg, persistent=False, **epi)))
                for flat, ws, sub in TMA_VARIANTS:
                    tcfg = dict(cfg, FLATTEN=flat, WARP_SPEC=ws, SUBTILE=sub)
                    put(f"int8_tma_{name}_f{int(flat)}ws{int(ws)}sub{int(sub)}",
                        _try(lambda: ti.int8_gemm(a8, w8, scale, config=tcfg, persistent=True, **epi)))
                if smem * 2 <= 227 * 1024:
                    put("bf16_triton_" + name, _try(lambda: ti._launch(x16, w16, scale, const, None, bias,
                                                                        torch.bfloat16, None, cfg)))
        base = t["cublas_bf16"]
        row["speedup_over_cublas_bf16"] = {kk: base / v for kk, v in t.items() if isinstance(v, float)}
        best = {}
        for prefix in ("int8_tma_", "int8_", "bf16_triton_"):
            cands = {kk: v for kk, v in t.items() if kk.startswith(prefix) and isinstance(v, float)
                     and not (prefix == "int8_" and kk.startswith("int8_tma_"))}
            if cands:
                kk = min(cands, key=cands.get)
                best[prefix.rstrip("_")] = (kk, cands[kk])
        row["best"] = best
        report["shapes"].append(row)
        print(f"\n{m}x{k} -> {n}: cuBLAS bf16 {base:.4f} ms")
        for name in ("cublas_int_mm", "cublas_fp8_scaled_mm", "triton_int8_autotuned",
                     "triton_int8_persistent_autotuned"):
            v = t.get(name)
            print(f"  {name:<34} " + (f"{v:.4f} ms  {base / v:.2f}x" if isinstance(v, float) else str(v)))
        for label, (kk, v) in best.items():
            print(f"  best {label:<29} {v:.4f} ms  {base / v:.2f}x  ({kk})")
        sys.stdout.flush()
    report["tuned_configs"] = ti.tuned_configs()
    if args.out:
        from plugin.quant.io import write_json
        write_json(args.out, report, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
