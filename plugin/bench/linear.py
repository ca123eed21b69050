"""The Linear micro-benchmark: at M = batch·tokens rows and ViT-B's Linear shapes, BF16 `x @ wᵀ` against
`torch._int_mm`, the whole `Int8Linear` forward (input quantization + int8 matmul + epilogue) and, on CUDA with triton,
the Triton kernels of plugin.quant.deploy.triton_int8. Ratios are taken between figures of the same run."""
import torch

from ..utils.timing import time_op

# (in_features, out_features) of ViT-B's Linear layers: qkv, proj, fc1, fc2.
VIT_B_LINEARS = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]
QUICK_LINEARS = [(64, 192), (64, 64), (64, 256), (256, 64)]
# Triton columns: the int8 GEMM with its epilogue on int8 input (tri), the kernel quantizing bf16 X on load (triQ,
# backend "triton_fused"), the quantize kernel then tri (tri2, backend "triton"), the quantize kernel alone.
TRITON_COLUMNS = ["triton_gemm", "triton_quant_gemm", "triton_two_step", "triton_quantize"]


def triton_status(device):
    """None when the Triton kernels can run on `device`, else why not."""
    if device.type != "cuda":
        return f"not on CUDA ({device.type})"
    try:
        import plugin.quant.deploy.triton_int8  # noqa: F401
    except ImportError as e:
        return f"triton unavailable ({e})"
    return None


def _triton_row(row, layer, x16, a8, w8, bf16, s, device):
    from ..quant.deploy.triton_int8 import int8_gemm, quant_int8_gemm, quantize_int8
    epi = dict(const=layer.const, bias=layer.bias, out_dtype=torch.bfloat16)
    quant = (layer.x_scale, layer.x_zero, layer.x_qmin, layer.x_qmax, layer.x_offset)
    ops = {"triton_gemm": lambda: int8_gemm(a8, w8, layer.out_scale, **epi),
           "triton_quant_gemm": lambda: quant_int8_gemm(x16, w8, layer.out_scale, *quant, **epi),
           "triton_two_step": lambda: int8_gemm(quantize_int8(x16, *quant), w8, layer.out_scale, **epi),
           "triton_quantize": lambda: quantize_int8(x16, *quant)}
    with torch.no_grad():  # the first calls autotune (inside time_op's warm-up)
        for col, op in ops.items():
            t = time_op(op, device, s.micro_reps, graph=s.cuda_graph)
            row.update({f"{col}_ms": t * 1e3, f"speedup_{col}_over_bf16": bf16 / t})


def linear_microbench(s, device):
    """One row per layer shape: milliseconds per call and speed-ups over BF16."""
    from ..quant.deploy.freeze import Int8Linear, int8_matmul
    shapes = QUICK_LINEARS if s.quick else VIT_B_LINEARS
    m = s.micro_m or (s.batch_size * (17 if s.quick else 197))
    gen = torch.Generator(device).manual_seed(0)
    triton_skip = triton_status(device)
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
        run_layer = torch.compile(layer) if s.compile else layer
        with torch.no_grad():
            bf16 = time_op(lambda: x16 @ w16.t(), device, s.micro_reps, graph=s.cuda_graph)
            int_mm = time_op(lambda: int8_matmul(a8, w8), device, s.micro_reps, graph=s.cuda_graph)
            full = time_op(lambda: run_layer(x), device, s.micro_reps, graph=s.cuda_graph)
        row = {"M": m, "K": k, "N": n, "bf16_ms": bf16 * 1e3, "int_mm_ms": int_mm * 1e3,
               "int8_linear_ms": full * 1e3, "speedup_int_mm_over_bf16": bf16 / int_mm,
               "speedup_int8_linear_over_bf16": bf16 / full,
               **{f"{c}_ms": None for c in TRITON_COLUMNS}, **{f"speedup_{c}_over_bf16": None for c in TRITON_COLUMNS}}
        if triton_skip is None:
            _triton_row(row, layer, x16, a8, w8, bf16, s, device)
        else:
            row["triton_skipped"] = triton_skip
        rows.append(row)
    return rows
