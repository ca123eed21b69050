"""The modules a deployed model is made of (plugin.quant.deploy builds them): 8-bit Linear layers (int8 codes through
the `vitq::int8_gemm` custom op, or FP8 e4m3 through `torch._scaled_mm`), fake quantizers kept in float32, and the
patch embedding as one GEMM. Their codes and scales keep their dtypes under `model.to(dtype)`."""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..modules import QuantLinear
from .freeze import Int8Linear, int8_matmul
from .lower import gemm_reason, lower_grid, weight_seen_by_quantizer

FP8_MAX = 448.0  # largest finite float8_e4m3fn
TILES = ("heuristic", "autotune")


class _KeepDtypes:
    """Buffers and parameters of this module and its children keep their dtypes under `.to(dtype)`, `.half()`…:
    only device moves reach them (int8 / e4m3 codes and float32 scales must not be cast)."""

    def _apply(self, fn, recurse=True):
        for mod in self.modules():
            for store in (mod._buffers, mod._parameters):
                for key, t in store.items():
                    if t is None:
                        continue
                    moved = fn(t)
                    if moved.dtype != t.dtype:
                        moved = t.to(moved.device)
                    store[key] = nn.Parameter(moved, t.requires_grad) if isinstance(t, nn.Parameter) else moved
        return self


def _triton_available(t):
    if not t.is_cuda:
        return False
    try:
        from . import triton_int8  # noqa: F401
    except ImportError:
        return False
    return True


@torch.library.custom_op("vitq::int8_gemm", mutates_args=())
def int8_gemm_op(a8: torch.Tensor, w8: torch.Tensor, out_scale: torch.Tensor, const: torch.Tensor,
                 w_zero: Optional[torch.Tensor], bias: Optional[torch.Tensor], out_dtype: torch.dtype,
                 tile: str) -> torch.Tensor:
    """out_scale·(a8 @ w8ᵀ + const − rowsum(a8)·w_zero) + bias, as `Int8Linear` (int8 a8 (M, K), w8 (N, K)).

    CUDA with triton: the Triton GEMM with the epilogue fused (`tile`: "heuristic" fixes the tile config from the
    shape, "autotune" lets Triton time its candidates on the first call of each shape). Elsewhere: `torch._int_mm`
    (exact float64 matmul where it is missing) and the epilogue in torch ops."""
    if _triton_available(a8):
        from . import triton_int8
        config = triton_int8.heuristic_config(a8.shape[0], w8.shape[0], a8.shape[1]) if tile == "heuristic" else None
        return triton_int8.int8_gemm(a8, w8, out_scale, const, w_zero, bias, out_dtype, config=config)
    acc = int8_matmul(a8, w8) + const
    if w_zero is not None:
        acc = acc - a8.sum(1, dtype=torch.int32).unsqueeze(1) * w_zero
    y = acc.float() * out_scale
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


@int8_gemm_op.register_fake
def _int8_gemm_fake(a8, w8, out_scale, const, w_zero, bias, out_dtype, tile):
    return a8.new_empty((a8.shape[0], w8.shape[0]), dtype=out_dtype)


class DeployInt8Linear(_KeepDtypes, Int8Linear):
    """`Int8Linear` for deployment: the input quantization in plain torch ops (fused into the producer under
    torch.compile; one Triton pass when run eagerly on CUDA) and the GEMM through the `vitq::int8_gemm` custom op."""

    tile = "heuristic"

    @classmethod
    def from_quant_linear(cls, m: QuantLinear, tile="heuristic"):
        if tile not in TILES:
            raise ValueError(f"unknown tile choice {tile!r}; expected one of {TILES}")
        out = Int8Linear.from_quant_linear(m)
        out.__class__ = cls
        out.tile = tile
        return out

    def forward(self, x):
        lead = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features)
        if x2d.is_cuda and not torch.compiler.is_compiling() and _triton_available(x2d):
            from . import triton_int8
            a = triton_int8.quantize_int8(x2d, self.x_scale, self.x_zero, self.x_qmin, self.x_qmax, self.x_offset)
        else:
            a = self.quantize_input(x2d.float())
        y = torch.ops.vitq.int8_gemm(a, self.weight_int8, self.out_scale, self.const,
                                     self.w_zero if self.w_asymmetric else None, self.bias, x.dtype, self.tile)
        return y.reshape(*lead, self.out_features)


class DeployFP8Linear(_KeepDtypes, nn.Module):
    """y = (e4m3(clamp(x, lo, hi) / s_x) @ e4m3(w / s_w)ᵀ)·s_x·s_w + b by `torch._scaled_mm`, static per-tensor
    scales, output in `out_dtype`. Output features are zero-padded to a multiple of 16 (cuBLAS FP8 needs it) and
    sliced off; the input features must be a multiple of 16."""

    def __init__(self, in_features, out_features, out_dtype=torch.bfloat16, source_weight_bytes=0):
        super().__init__()
        if in_features % 16:
            raise ValueError(f"FP8 GEMM needs in_features divisible by 16, got {in_features}")
        self.in_features, self.out_features, self.out_dtype = in_features, out_features, out_dtype
        self.source_weight_bytes = source_weight_bytes
        n_pad = -(-out_features // 16) * 16
        self.register_buffer("weight_fp8", torch.zeros(n_pad, in_features, dtype=torch.float8_e4m3fn))
        self.register_buffer("w_scale", torch.ones((), dtype=torch.float32))
        self.register_buffer("x_scale", torch.ones((), dtype=torch.float32))
        self.register_buffer("x_lo", torch.full((), -FP8_MAX))
        self.register_buffer("x_hi", torch.full((), FP8_MAX))
        self.register_buffer("bias", None)

    @classmethod
    def from_quant_linear(cls, m: QuantLinear, out_dtype=torch.bfloat16):
        reason = gemm_reason(m)
        if reason is not None:
            raise ValueError(f"cannot deploy this layer in FP8: {reason}")
        n, k = m.weight.shape
        out = cls(k, n, out_dtype, source_weight_bytes=m.weight.numel() * m.weight.element_size())
        with torch.no_grad():
            w = m.weight_quantizer(weight_seen_by_quantizer(m))  # the calibrated int8 grid, dequantized
            w_scale = (w.abs().max() / FP8_MAX).clamp_min(1e-12)
            w8 = torch.zeros(out.weight_fp8.shape, device=w.device)
            w8[:n] = (w / w_scale).clamp(-FP8_MAX, FP8_MAX)
            out.weight_fp8 = w8.to(torch.float8_e4m3fn)
            lo, hi = lower_grid(m.input_quantizer).range()  # the calibrated clipping range of the int8 grid
            out.x_lo, out.x_hi = lo.clone(), hi.clone()
            out.x_scale = (torch.maximum(lo.abs(), hi.abs()) / FP8_MAX).clamp_min(1e-12)
            out.w_scale = w_scale.reshape(())
            if m.bias is not None:
                b = torch.zeros(out.weight_fp8.shape[0], device=w.device)
                b[:n] = m.bias.detach().float()
                out.bias = b.to(out_dtype)
        return out.to(m.weight.device)

    def quantize_input(self, x2d):
        """e4m3 codes of x clipped to the calibrated range, with the static scale (plain torch ops)."""
        return (x2d.float().clamp(self.x_lo, self.x_hi) / self.x_scale).to(torch.float8_e4m3fn)

    def forward(self, x):
        lead = x.shape[:-1]
        a = self.quantize_input(x.reshape(-1, self.in_features))
        if a.is_cuda:
            y = torch._scaled_mm(a, self.weight_fp8.t(), self.x_scale, self.w_scale, bias=self.bias,
                                 out_dtype=self.out_dtype)
        else:  # CPU: the same product of the e4m3 values in float32 (CPU _scaled_mm, where it exists, is slow)
            y = (a.float() @ self.weight_fp8.float().t()) * (self.x_scale * self.w_scale)
            y = (y + self.bias.float() if self.bias is not None else y).to(self.out_dtype)
        if y.shape[-1] != self.out_features:
            y = y[:, : self.out_features]
        return y.reshape(*lead, self.out_features)

    def weight_bytes(self):
        return self.weight_fp8[: self.out_features].numel() + 4

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3 W/A, static per-tensor scales"


class _Float32Quantizer(_KeepDtypes, nn.Module):
    """A fake quantizer kept at deployment: applied in float32 (its scales stay float32), result cast back."""

    def __init__(self, quantizer):
        super().__init__()
        self.quantizer = quantizer

    def forward(self, x):
        return self.quantizer(x.float()).to(x.dtype)


class PatchGemm(nn.Module):
    """A convolution with stride = kernel size, no padding, dilation or groups (a ViT / Swin patch embedding) as a
    reshape of the input into patches and one matmul; NCHW in and out, like the convolution.

    Why: in a BF16 torch.compile'd ViT-B at batch 64 on an H100 the stem convolution ran as a cuDNN kernel plus two
    layout transforms, 0.56 ms of 5.81 ms per forward (docs/performance.md, profile of bf16_compiled); as a matmul it
    is a 12544 × 768 × 768 GEMM. The input quantizer (image pixels) stays fake-quant, fused into the patch copy."""

    def __init__(self, in_chans, out_chans, patch, bias=True):
        super().__init__()
        self.in_chans, self.out_chans, self.patch = in_chans, out_chans, tuple(patch)
        self.weight = nn.Parameter(torch.zeros(out_chans, in_chans * self.patch[0] * self.patch[1]),
                                   requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_chans), requires_grad=False) if bias else None
        self.input_quantizer = None

    @staticmethod
    def applies(conv):
        if isinstance(conv.padding, str) or any(p != 0 for p in conv.padding):
            return False
        return (tuple(conv.stride) == tuple(conv.kernel_size) and tuple(conv.dilation) == (1, 1)
                and conv.groups == 1)

    @classmethod
    def from_conv(cls, conv):
        out = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias is not None)
        with torch.no_grad():
            out.weight.copy_(conv.weight.detach().reshape(conv.out_channels, -1))
            if conv.bias is not None:
                out.bias.copy_(conv.bias.detach())
        out.input_quantizer = conv.input_quantizer
        return out.to(conv.weight.device)

    def forward(self, x):
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        b, c, h, w = x.shape
        ph, pw = self.patch
        hp, wp = h // ph, w // pw
        if hp * ph != h or wp * pw != w:  # a ragged border: the convolution drops it
            x = x[:, :, : hp * ph, : wp * pw]
        patches = x.reshape(b, c, hp, ph, wp, pw).permute(0, 2, 4, 1, 3, 5).reshape(b * hp * wp, c * ph * pw)
        y = F.linear(patches, self.weight, self.bias)
        return y.reshape(b, hp, wp, self.out_chans).permute(0, 3, 1, 2)

    def extra_repr(self):
        return f"{self.in_chans}, {self.out_chans}, patch={self.patch}"
