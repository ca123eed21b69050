"""Triton INT8 GEMM with the `Int8Linear` epilogue fused in, optionally quantizing a float input while loading it.

Computes, for int8 activation codes a (M, K) and int8 weight codes w (N, K):

    y[m, n] = s[n] · (Σ_k a[m,k]·w[n,k] + c[n] − (Σ_k a[m,k])·z_w[n]) + bias[n]

with the int8 × int8 products accumulated exactly in int32 by `tl.dot`, then one float32 multiply-add and a cast to
the output dtype (bf16 / fp16 / fp32) before the only store — the int32 (M, N) product never reaches memory. This is
`plugin.quant.deploy.freeze.Int8Linear`'s math: s = s_x·s_w (per output channel), c = −z'_x·Σ_k w + K·z'_x·z'_w
(per output channel), z_w = z'_w (the row-sum term only for asymmetric weight grids; `w_zero=None` drops it).

Entry points:
- `int8_gemm(a8, w8, ...)`: a8 already int8 (the GEMM alone, with its epilogue).
- `quantize_int8(x, ...)`: the input quantization alone, one memory-bound pass (float in, int8 codes out), with the
  same codes as `Int8Linear.quantize_input`. `quantize_int8` then `int8_gemm` is the `Int8Linear` backend "triton".
- `quant_int8_gemm(x, w8, ...)`: x float (bf16 / fp16 / fp32); each A tile is quantized in registers right after it
  is loaded, a = clamp(x / s_x + z_x, qmin, qmax).round() − offset, with the same float32 operations as
  `Int8Linear.quantize_input` (IEEE division `div_rn`, round half to even), so the codes are identical and there is no
  separate quantize pass over (M, K). The price: every N-tile re-quantizes its rows (N / BLOCK_N times per element);
  `exact_quant=False` multiplies by 1/s_x instead of dividing (cheaper, may move a code by one at a rounding tie).
  This is the `Int8Linear` backend "triton_fused".

Weight layout: W stays [N, K] row-major as `Int8Linear` stores it; the kernel reads its [BLOCK_K, BLOCK_N] tiles
through strides. That tile is K-contiguous, which is the operand order the int8 tensor-core instructions want (Hopper
wgmma takes 8-bit operands only K-major), so no transposed copy is made at freeze time.

On CUDA the block sizes are picked by `triton.autotune` (key: M, N, K and the variant). Under the Triton interpreter
(TRITON_INTERPRET=1, CPU tensors; used by tests/quant/test_triton_int8.py) or off CUDA a single small config is used, so no
autotuning runs. Rows and columns past M, N are wrapped (index % M) on load and masked on store; K is masked unless
it is a multiple of BLOCK_K, so there are no shape constraints beyond K < 2^17 (int32 accumulation).
tests/quant/test_triton_int8.py also compiles the kernel for sm_90 offline and checks for int8 wgmma and pipelined loads.
"""
import os

import torch
import triton
import triton.language as tl

# 1.5·2^23: (v + R) − R rounds a float32 |v| < 2^22 to the nearest integer, ties to even (as torch.round does)
_ROUND = tl.constexpr(12582912.0)


def _interpreting():
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _codes(x, xs, xz, qmin, qmax, offset, EXACT: tl.constexpr):
    """int32 codes clamp(x / xs + xz, qmin, qmax).round() − offset, in float32 as `Int8Linear.quantize_input`."""
    x = x.to(tl.float32)
    if EXACT:
        v = tl.math.div_rn(x, xs) + xz
    else:
        v = x * (1.0 / xs) + xz
    v = tl.minimum(tl.maximum(v, qmin), qmax)
    v = (v + _ROUND) - _ROUND
    return v.to(tl.int32) - offset


@triton.jit
def _quantize_kernel(x_ptr, out_ptr, xs_ptr, xz_ptr, numel, x_qmin, x_qmax, x_offset, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    x = tl.load(x_ptr + offs, mask=ok, other=0)
    a = _codes(x, tl.load(xs_ptr), tl.load(xz_ptr), x_qmin, x_qmax, x_offset, True)
    tl.store(out_ptr + offs, a.to(tl.int8), mask=ok)


@triton.jit
def _tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(row tile, column tile) of program / tile `pid` in grouped ("swizzled") order: GROUP_M row tiles share each
    column tile, so W tiles stay in L2."""
    grid_m, grid_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    first_m = (pid // (GROUP_M * grid_n)) * GROUP_M
    rows_in_group = tl.minimum(grid_m - first_m, GROUP_M)
    return first_m + (pid % (GROUP_M * grid_n)) % rows_in_group, (pid % (GROUP_M * grid_n)) // rows_in_group


@triton.jit
def _epilogue(acc, row_sum, cols, N, scale_ptr, const_ptr, wzero_ptr, bias_ptr, W_ASYM: tl.constexpr,
              HAS_BIAS: tl.constexpr):
    """Exact integer corrections, then s·acc + bias in float32 (columns ≥ N read as 0; they are never stored)."""
    ok = cols < N
    acc += tl.load(const_ptr + cols, mask=ok, other=0)[None, :]
    if W_ASYM:
        acc -= row_sum[:, None] * tl.load(wzero_ptr + cols, mask=ok, other=0)[None, :]
    y = acc.to(tl.float32) * tl.load(scale_ptr + cols, mask=ok, other=0)[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + cols, mask=ok, other=0)[None, :].to(tl.float32)
    return y


@triton.jit
def _int8_gemm_tma_kernel(a_desc, w_desc, out_desc, scale_ptr, const_ptr, wzero_ptr, bias_ptr, M, N, K,
                          W_ASYM: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, NUM_SMS: tl.constexpr,
                          FLATTEN: tl.constexpr, OUT: tl.constexpr, WARP_SPEC: tl.constexpr = False,
                          SUBTILE: tl.constexpr = False, ACC: tl.constexpr = tl.int32):
    """Persistent variant of the int8 GEMM (Hopper and later): one program per SM walks the output tiles; A, W and
    the output move by TMA (tensor descriptors, which zero-fill out-of-range loads and clip stores), and with
    FLATTEN the software pipeline runs across tile boundaries, so the next tile's loads overlap this tile's epilogue;
    WARP_SPEC splits producer (TMA) and consumer (wgmma) warps; SUBTILE stores the output in two column halves
    (fewer registers and less shared memory for the store). Same math and epilogue as `_int8_gemm_kernel` on int8
    input."""
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), num_tiles, NUM_SMS, flatten=FLATTEN, warp_specialize=WARP_SPEC):
        pid_m, pid_n = _tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        om, on = pid_m * BLOCK_M, pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        row_sum = tl.zeros((BLOCK_M,), dtype=tl.int32)
        for ki in range(k_tiles):
            a = a_desc.load([om, ki * BLOCK_K])
            b = w_desc.load([on, ki * BLOCK_K])
            acc = tl.dot(a, b.T, acc, out_dtype=ACC)
            if W_ASYM:
                row_sum += tl.sum(a.to(tl.int32), axis=1)
        if SUBTILE:
            halves = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
            for h in tl.static_range(2):
                c0 = on + h * (BLOCK_N // 2)
                y = _epilogue(halves[h], row_sum, c0 + tl.arange(0, BLOCK_N // 2), N, scale_ptr, const_ptr,
                              wzero_ptr, bias_ptr, W_ASYM, HAS_BIAS)
                out_desc.store([om, c0], y.to(OUT))
        else:
            y = _epilogue(acc, row_sum, on + tl.arange(0, BLOCK_N), N, scale_ptr, const_ptr, wzero_ptr, bias_ptr,
                          W_ASYM, HAS_BIAS)
            out_desc.store([om, on], y.to(OUT))


@triton.jit
def _int8_gemm_kernel(x_ptr, w_ptr, out_ptr, scale_ptr, const_ptr, wzero_ptr, bias_ptr, xs_ptr, xz_ptr,
                      M, N, K, stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
                      x_qmin, x_qmax, x_offset,
                      QUANT_X: tl.constexpr, EXACT_QUANT: tl.constexpr, W_ASYM: tl.constexpr,
                      HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, ACC: tl.constexpr = tl.int32):
    pid_m, pid_n = _tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows, cols = offs_m % M, offs_n % N  # wrapped: loads stay in bounds, the extra rows/columns are not stored
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + offs_k[:, None] * stride_wk + cols[None, :] * stride_wn  # [BLOCK_K, BLOCK_N] view of W[N, K]

    if QUANT_X:
        xs = tl.load(xs_ptr)
        xz = tl.load(xz_ptr)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    row_sum = tl.zeros((BLOCK_M,), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs)
            b = tl.load(w_ptrs)
        else:
            k_ok = offs_k < K - k0
            x = tl.load(x_ptrs, mask=k_ok[None, :], other=0)
            b = tl.load(w_ptrs, mask=k_ok[:, None], other=0)
        if QUANT_X:
            a = _codes(x, xs, xz, x_qmin, x_qmax, x_offset, EXACT_QUANT)
            if not EVEN_K:
                a = tl.where(k_ok[None, :], a, 0)  # K padding must be code 0, not the zero point
            a = a.to(tl.int8)
        else:
            a = x
        acc = tl.dot(a, b, acc, out_dtype=ACC)
        if W_ASYM:
            row_sum += tl.sum(a.to(tl.int32), axis=1)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    y = _epilogue(acc, row_sum, cols, N, scale_ptr, const_ptr, wzero_ptr, bias_ptr, W_ASYM, HAS_BIAS)
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def _cfg(bm, bn, bk, warps, stages, **extra):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, **extra}, num_warps=warps,
                         num_stages=stages, pre_hook=_set_block_shapes if "FLATTEN" in extra else None)


def _set_block_shapes(nargs):
    """TMA descriptors carry their block shape: set it from the config being launched (autotuner pre-hook)."""
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a_desc"].block_shape = [bm, bk]
    nargs["w_desc"].block_shape = [bn, bk]
    nargs["out_desc"].block_shape = [bm, bn // 2 if nargs.get("SUBTILE") else bn]


# Candidates for H100 / A100 at ViT-B sizes (M ≈ 10^4, K, N ∈ {768, 2304, 3072}); 128-byte K tiles suit int8.
_CONFIGS = [
    _cfg(128, 128, 128, 8, 3), _cfg(128, 128, 128, 4, 4), _cfg(128, 256, 128, 8, 3), _cfg(256, 128, 128, 8, 3),
    _cfg(128, 128, 64, 4, 4), _cfg(128, 256, 64, 8, 4), _cfg(256, 128, 64, 8, 4),
    # K = 768 is only 3-6 K steps: wider K tiles, and narrower N tiles so N = 768 still fills 132 SMs
    _cfg(128, 128, 256, 8, 3), _cfg(128, 256, 256, 8, 2), _cfg(128, 64, 128, 4, 4), _cfg(64, 128, 256, 4, 3),
    _cfg(128, 128, 128, 8, 4),
]
_TMA_CONFIGS = [_cfg(bm, bn, bk, w, st, FLATTEN=f, SUBTILE=sub) for f, sub in ((True, False), (False, False),
                                                                                (True, True))
                for bm, bn, bk, w, st in [(128, 128, 64, 4, 4), (128, 128, 128, 8, 3), (128, 256, 64, 8, 4),
                                          (128, 256, 128, 8, 3), (256, 128, 64, 8, 4), (256, 128, 128, 8, 3),
                                          (128, 128, 256, 8, 3), (64, 256, 128, 4, 4)]]
_SMALL = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2}  # interpreter / non-CUDA: no autotuning
# EVEN_K (K a multiple of BLOCK_K, as in ViT layers) drops the K masks from the inner loop.
_kernel = triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})(_int8_gemm_kernel)
_KEY = ["M", "N", "K", "W_ASYM", "HAS_BIAS"]
_tuned_kernel = triton.autotune(_CONFIGS, key=_KEY + ["QUANT_X", "EXACT_QUANT"])(_kernel)
# TMA descriptors carry no dtype into the autotuner's key: the output dtype (OUT) goes in by name, or a bf16 call
# would reuse the tile config tuned for a float32 output
_tuned_tma_kernel = triton.autotune(_TMA_CONFIGS, key=_KEY + ["OUT"])(_int8_gemm_tma_kernel)
_TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


def _tma_unusable(x, w8, out):
    """None when the persistent TMA kernel can run on these tensors, else why not."""
    if not x.is_cuda or _interpreting():
        return "TMA needs a CUDA device (not the interpreter)"
    if torch.cuda.get_device_capability(x.device)[0] < 9:
        return "TMA needs a Hopper or newer GPU"
    if out.dtype not in _TL_DTYPES:
        return f"output dtype {out.dtype} is not one of {sorted(str(d) for d in _TL_DTYPES)}"
    for name, t in (("x", x), ("w", w8), ("out", out)):
        if t.stride(1) != 1 or (t.stride(0) * t.element_size()) % 16 or t.data_ptr() % 16:
            return f"{name} rows are not 16-byte aligned and contiguous"
    return None


def _launch(x, w8, out_scale, const, w_zero, bias, out_dtype, quant, config=None, persistent=False):
    """One GEMM launch. `config`: fixed tile config (dict of BLOCK_M/N/K, GROUP_M, num_warps, num_stages[, FLATTEN,
    WARP_SPEC, SUBTILE]) instead of autotuning; `persistent`: the TMA kernel (int8 input only; None: where it can
    run). Float x and w of one dtype multiply in float32 (a diagnostic of Triton's own speed:
    tools/int8_gemm_sweep.py)."""
    if x.dim() != 2 or w8.dim() != 2 or x.shape[1] != w8.shape[1]:
        raise ValueError(f"expected x (M, K) and w8 (N, K), got {tuple(x.shape)} and {tuple(w8.shape)}")
    if w8.dtype != torch.int8 and not (quant is None and w8.dtype == x.dtype):
        raise TypeError(f"w8 must be int8, got {w8.dtype}")
    if not (x.is_cuda or _interpreting()):
        raise RuntimeError("the Triton INT8 GEMM needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tests)")
    (m, k), n = x.shape, w8.shape[0]
    if k >= 2 ** 17:
        raise ValueError(f"K={k} is too large for exact int32 accumulation")
    out = torch.empty(m, n, device=x.device, dtype=out_dtype)
    if m == 0 or n == 0:
        return out
    out_scale = out_scale.to(device=x.device, dtype=torch.float32).expand(n).contiguous()
    const = (torch.zeros(n, dtype=torch.int32, device=x.device) if const is None
             else const.to(device=x.device, dtype=torch.int32).expand(n).contiguous())
    dummy = out_scale  # never read: its use is switched off by a constexpr flag
    epi = [out_scale, const, dummy if w_zero is None else w_zero.to(torch.int32).contiguous(),
           dummy if bias is None else bias.contiguous()]
    flags = dict(W_ASYM=w_zero is not None, HAS_BIAS=bias is not None,
                 ACC=tl.int32 if w8.dtype == torch.int8 else tl.float32)
    fixed = dict(config or {})
    if persistent is None:
        persistent = quant is None and w8.dtype == torch.int8 and _tma_unusable(x, w8, out) is None
    if persistent:
        why = "it takes int8 input only" if quant is not None else _tma_unusable(x, w8, out)
        if why:
            raise ValueError(f"the persistent TMA kernel cannot run: {why}")
        from triton.tools.tensor_descriptor import TensorDescriptor
        descs = [TensorDescriptor.from_tensor(t, [1, 1]) for t in (x, w8, out)]  # block shapes: set per config
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        grid = lambda meta: (min(sms, triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])),)  # noqa
        args = [*descs, *epi, m, n, k]
        flags["OUT"] = _TL_DTYPES[out_dtype]
        if fixed:
            fixed.setdefault("FLATTEN", True)
            _set_block_shapes({"a_desc": descs[0], "w_desc": descs[1], "out_desc": descs[2], **fixed})
            _int8_gemm_tma_kernel[grid](*args, **flags, NUM_SMS=sms, **fixed)
        else:
            _tuned_tma_kernel[grid](*args, **flags, NUM_SMS=sms)
        return out
    args = [x, w8, out, *epi, *(quant["ptrs"] if quant else (dummy, dummy)),
            m, n, k, x.stride(0), x.stride(1), w8.stride(0), w8.stride(1), out.stride(0), out.stride(1),
            *(quant["ints"] if quant else (0, 0, 0))]
    flags.update(QUANT_X=quant is not None, EXACT_QUANT=bool(quant and quant["exact"]))
    if not x.is_cuda or _interpreting():
        fixed = fixed or _SMALL
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    (_kernel if fixed else _tuned_kernel)[grid](*args, **flags, **fixed)
    return out


_QUANT_BLOCK = 4096


def quantize_int8(x, x_scale, x_zero, qmin=-128, qmax=127, x_offset=0):
    """int8 codes clamp(x / x_scale + x_zero, qmin, qmax).round() − x_offset of a float x, any shape, in one pass.

    The same float32 operations as `Int8Linear.quantize_input` (IEEE division, ties to even), so the codes are
    identical; x_scale, x_zero: 0-d float tensors, read on the device (no host sync)."""
    if not x.is_floating_point():
        raise TypeError(f"x must be a float tensor, got {x.dtype}")
    if not (x.is_cuda or _interpreting()):
        raise RuntimeError("the Triton quantize kernel needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU tests)")
    if x.numel() >= 2 ** 31:
        raise ValueError(f"{x.numel()} elements is too many for one launch (int32 offsets)")
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    if x.numel():
        block = _QUANT_BLOCK if x.is_cuda and not _interpreting() else 64
        xs, xz = _scalar(x_scale, x.device), _scalar(x_zero, x.device)
        _quantize_kernel[(triton.cdiv(x.numel(), block),)](x, out, xs, xz, x.numel(), float(qmin), float(qmax),
                                                            int(x_offset), BLOCK=block)
    return out


def _scalar(t, device):
    return t.to(device=device, dtype=torch.float32).reshape(1)


def int8_gemm(a8, w8, out_scale, const=None, w_zero=None, bias=None, out_dtype=torch.bfloat16, persistent=None,
              config=None):
    """out_scale·(a8 @ w8ᵀ + const − rowsum(a8)·w_zero) + bias for int8 a8 (M, K), w8 (N, K); out (M, N) out_dtype.

    out_scale: float (N,) or scalar; const, w_zero: int32 (N,) or None; bias: (N,) or None. persistent: True for
    the TMA kernel (Hopper+, 16-byte aligned rows; ValueError otherwise), False for the pointer kernel, None (default)
    for TMA wherever it can run; config: a fixed tile config instead of autotuning."""
    if a8.dtype != torch.int8:
        raise TypeError(f"a8 must be int8, got {a8.dtype}")
    return _launch(a8, w8, out_scale, const, w_zero, bias, out_dtype, None, config, persistent)


def quant_int8_gemm(x, w8, out_scale, x_scale, x_zero, qmin=-128, qmax=127, x_offset=0, const=None, w_zero=None,
                    bias=None, out_dtype=None, exact_quant=True):
    """`int8_gemm` of a = clamp(x / x_scale + x_zero, qmin, qmax).round() − x_offset, quantized inside the kernel.

    x: float (M, K); x_scale, x_zero: 0-d float tensors (read on the device, no host sync); out_dtype defaults to
    x.dtype."""
    if not x.is_floating_point():
        raise TypeError(f"x must be a float tensor, got {x.dtype}")
    quant = {"ptrs": (_scalar(x_scale, x.device), _scalar(x_zero, x.device)),
             "ints": (float(qmin), float(qmax), int(x_offset)), "exact": exact_quant}
    return _launch(x, w8, out_scale, const, w_zero, bias, out_dtype or x.dtype, quant)


def heuristic_config(m, n, k):
    """A fixed tile config for an (M, N, K) GEMM, no autotuning (deployment: a model with many shapes and batch
    sizes would otherwise time every candidate for each). From the autotuner's picks on an H100 at ViT-B sizes
    (docs/performance.md): wide N tiles where N is large, wide K tiles where K is large, 128×128×128 otherwise; small
    M (a few images) takes 64-row tiles so more programs run."""
    if m >= 4096:
        if k >= 2048:
            bm, bn, bk, warps, stages = 128, 128, 256, 8, 3
        elif n >= 2048:
            bm, bn, bk, warps, stages = 128, 256, 128, 8, 3
        else:
            bm, bn, bk, warps, stages = 128, 128, 128, 8, 3
    else:
        bm, bn, bk, warps, stages = 64, 128, 128, 4, 4
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": warps, "num_stages": stages}


def tuned_configs():
    """The tile configs the autotuner picked so far: {"M,N,K,flags…": "BLOCK_M: …, num_warps: …"} (for reports)."""
    return {f"{kind}:" + ",".join(map(str, key)): str(cfg)
            for kind, kern in (("pointer", _tuned_kernel), ("tma", _tuned_tma_kernel))
            for key, cfg in getattr(kern, "cache", {}).items()}


__all__ = ["heuristic_config", "int8_gemm", "quant_int8_gemm", "quantize_int8", "tuned_configs"]
