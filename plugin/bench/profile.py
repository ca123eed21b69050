"""GPU time per op class of one forward (torch.profiler): where a deployed model spends its time."""
import torch

from ..utils.timing import sync

# kernel-name fragments -> op class, tried in this order
_ATTN_KEYS = ("flash", "fmha", "attention", "attn", "sdpa", "scaled_dot")
_GEMM_KEYS = ("gemm", "xmma", "cutlass", "nvjet", "cublas", "scaled_mm", "_mm_", "int_mm", "matmul", "triton_tem",
              "sm90_", "sm80_", "s16816", "wgmma")
_NORM_KEYS = ("layer_norm", "gelu", "softmax", "var_mean", "erf", "tanh")
_QUANT_KEYS = ("clamp", "round", "amax", "abs", "quant", "float8", "scale")


def op_class(name):
    """attention, gemm, norm_elementwise, copy or quantize, from a kernel's name."""
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


def forward_profile(fn, x, device, calls=5):
    """GPU time per op class of one forward (kernels from torch.profiler over `calls` eager calls of the compiled
    model), the number of kernels, and the slowest kernels. A LayerNorm / GELU kernel that also writes the 8-bit
    codes counts as norm_elementwise (its name shows the fused ops: _to_copy, clamp, div)."""
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad():
        fn(x)
        sync(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn(x)
            sync(device)
    classes, kernels = {}, []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None)
        if t is None:
            t = getattr(ev, "cuda_time_total", 0)
        if not t or getattr(ev, "device_type", None) not in (None, torch.autograd.DeviceType.CUDA):
            continue
        if ev.key.startswith(("aten::", "cuda", "Torch-Compiled", "CompiledFunction", "## ")):
            continue
        c = op_class(ev.key)
        ms = t / 1e3 / calls
        classes[c] = classes.get(c, 0.0) + ms
        kernels.append({"kernel": ev.key[:160], "class": c, "ms": ms, "count": ev.count // calls})
    total = sum(classes.values())
    kernels.sort(key=lambda k: -k["ms"])
    return {"ms_per_forward": total, "ms": classes,
            "share": {c: v / total for c, v in classes.items()} if total else {},
            "kernels_per_forward": sum(k["count"] for k in kernels), "top_kernels": kernels[:25]}
