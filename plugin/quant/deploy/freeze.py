"""Freeze: turn calibrated fake-quant Linear layers into stored int8 weights and integer matrix products (W8A8 path).

A `QuantLinear` qualifies when the lowering layer (`plugin.quant.deploy.lower.gemm_reason`) makes it an integer GEMM:
its weight grid uniform (symmetric or asymmetric, per output channel or per tensor), its input grid uniform and per
tensor, both calibrated, enabled and at most 8 bits; a pre-quantization low-rank branch is folded into the weight
codes. Anything else (log / twin / seed post-Softmax grids, channel-wise post-LN input quantizers, post-quantization
low-rank branches, float inputs, convolutions, the attention matmuls) stays fake-quant; `frozen_summary` says what was
and was not frozen.

Exactness. The fake-quant layer computes y = (q_x − z_x)s_x · ((q_w − z_w)s_w)ᵀ + b with integer codes q. `Int8Linear`
stores the weight codes as int8 (an unsigned grid, 0 … 255, is shifted by −128 so it fits; the zero point moves with
it), quantizes the input with the same float operations as the fake quantizer (so the codes are identical), and
computes the integer part exactly:

    Σ_k (a − z'_x)(b − z'_w) = Σ_k a·b − z'_w·Σ_k a − z'_x·Σ_k b + K·z'_x·z'_w

with a, b the int8 codes and z' the shifted zero points: Σ a·b by `torch._int_mm` (int8 × int8 → int32), Σ b per output
channel precomputed, Σ a per token only when the weight grid is asymmetric. All of this is in int32 (no overflow for
K < 32 768; larger layers are refused). The epilogue multiplies by s_x·s_w per output channel and adds the bias, in
float32. The only difference from fake-quant is therefore the float rounding of the fake-quant matmul itself (see
tests/quant/test_freeze.py for the stated tolerance).

Speed. In eager mode the input quantization and the epilogue are separate elementwise passes over (M, K) and (M, N)
tensors; on a GPU they can cost as much as the int8 matmul saves. `torch.compile` fuses them (tools/benchmark.py
--compile). The opt-in "triton" backend (`set_int8_backend("triton")` or `Int8Linear(..., backend="triton")`, CUDA
only) runs `plugin.quant.deploy.triton_int8` instead: a one-pass quantize kernel, then an int8 GEMM that applies the
corrections, scale and bias before its only store (same codes, same integer result; the float epilogue may differ
from the eager one by float rounding). "triton_fused" quantizes the input inside the GEMM while loading it (no
int8 copy of the input, but each input tile is quantized once per output tile). `torch._int_mm` ("int_mm") stays
the default.

`torch._int_mm` on CUDA needs M > 16 and K, N multiples of 8: smaller or odd shapes are zero-padded (zeros add nothing
to Σ a·b; the corrections use the unpadded sums). Where `torch._int_mm` fails (other devices, old builds) the product
falls back to a float64 matmul of the codes, which is exact (|Σ a·b| < 2^53).

A frozen model is for inference only: its frozen layers no longer hold quantizers (`set_quant_enabled` does not reach
them). `freeze` marks the model's QuantState frozen; `save_quantized`/`load_quantized` save and rebuild its
`Int8Linear` layers.
"""
import os

import torch
import torch.nn as nn

from ..attach import set_submodule
from ..modules import QuantLinear
from ..quant_state import state
from .lower import gemm_reason, lower_grid, lower_weight

_INT_MM_BROKEN = set()  # device types on which torch._int_mm raised; the exact float64 product is used there
BACKENDS = ("int_mm", "triton", "triton_fused")
_default_backend = "int_mm"


def set_int8_backend(name):
    """The backend of every `Int8Linear` whose own `backend` is None: "int_mm" (default), "triton" (a Triton
    quantize pass, then the Triton GEMM with its epilogue fused) or "triton_fused" (one Triton kernel quantizing
    the input while loading it); the Triton ones need CUDA."""
    global _default_backend
    if name not in BACKENDS:
        raise ValueError(f"unknown Int8Linear backend {name!r}; expected one of {BACKENDS}")
    _default_backend = name


def get_int8_backend():
    return _default_backend


def _triton_forward(layer, x2d, backend):
    if not (x2d.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        raise RuntimeError(f"Int8Linear backend {backend!r} needs a CUDA input, got device {x2d.device}; "
                           "use the 'int_mm' backend on this device")
    try:
        from . import triton_int8
    except ImportError as e:
        raise RuntimeError(f"Int8Linear backend {backend!r} needs the triton package ({e})") from e
    quant = (layer.x_scale, layer.x_zero, layer.x_qmin, layer.x_qmax, layer.x_offset)
    epilogue = dict(const=layer.const, w_zero=layer.w_zero if layer.w_asymmetric else None, bias=layer.bias,
                    out_dtype=x2d.dtype)
    if backend == "triton_fused":
        return triton_int8.quant_int8_gemm(x2d, layer.weight_int8, layer.out_scale, *quant, **epilogue)
    # Under torch.compile the quantization stays torch ops, so inductor can fuse it into the kernel that produces x
    # (LayerNorm, GELU, ...): the int8 codes are then the only thing written. Eagerly, one Triton pass.
    a8 = (layer.quantize_input(x2d.float()) if torch.compiler.is_compiling()
          else triton_int8.quantize_int8(x2d, *quant))
    return triton_int8.int8_gemm(a8, layer.weight_int8, layer.out_scale, **epilogue)


def _pad_to(t, dim, multiple, minimum=0):
    size = t.shape[dim]
    target = max(-(-size // multiple) * multiple, minimum)
    if target == size:
        return t
    pad = [0, 0] * t.dim()
    pad[2 * (t.dim() - 1 - dim) + 1] = target - size
    return nn.functional.pad(t, pad)


def int8_matmul(a, w):
    """Exact a @ wᵀ for int8 a (M, K) and int8 w (N, K), as int32 (M, N)."""
    m, n = a.shape[0], w.shape[0]
    kind = a.device.type
    if kind not in _INT_MM_BROKEN:
        try:
            if kind == "cuda":
                a_p = _pad_to(_pad_to(a, 1, 8), 0, 8, minimum=32)
                w_p = _pad_to(_pad_to(w, 1, 8), 0, 8)
                return torch._int_mm(a_p.contiguous(), w_p.t())[:m, :n]
            return torch._int_mm(a.contiguous(), w.t())
        except (RuntimeError, NotImplementedError):
            _INT_MM_BROKEN.add(kind)
    return (a.double() @ w.double().t()).to(torch.int32)


# None when a module can be frozen, else the reason: the lowering layer's rule for an integer GEMM site.
why_not_freezable = gemm_reason


class Int8Linear(nn.Module):
    """y = s_x·s_w·(Σ a·b − corrections) + bias, with int8 weight codes stored and int8 input codes made per call."""

    def __init__(self, in_features, out_features, x_qmin, x_qmax, x_offset, w_asymmetric, source_weight_bytes=0,
                 backend=None):
        super().__init__()
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"unknown Int8Linear backend {backend!r}; expected one of {BACKENDS}")
        self.backend = backend  # None: the module default (`set_int8_backend`)
        self.in_features, self.out_features = in_features, out_features
        self.x_qmin, self.x_qmax, self.x_offset = x_qmin, x_qmax, x_offset
        self.w_asymmetric = w_asymmetric
        self.source_weight_bytes = source_weight_bytes
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("x_scale", torch.ones(()))
        self.register_buffer("x_zero", torch.zeros(()))
        self.register_buffer("out_scale", torch.ones(out_features))                  # s_x · s_w
        self.register_buffer("w_zero", torch.zeros(out_features, dtype=torch.int32))  # z'_w (shifted)
        self.register_buffer("const", torch.zeros(out_features, dtype=torch.int32))   # −z'_x·Σb + K·z'_x·z'_w
        self.register_buffer("bias", None)

    @classmethod
    def from_quant_linear(cls, m: QuantLinear):
        reason = why_not_freezable(m)
        if reason is not None:
            raise ValueError(f"cannot freeze this layer: {reason}")
        n, k = m.weight.shape
        with torch.no_grad():
            w, x = lower_weight(m), lower_grid(m.input_quantizer)  # codes from the fake quantizers' own operations
            b = w.codes
            zw = w.zero.reshape(-1).expand(n).long()
            zx = int(round(float(x.zero))) - x.offset
            colsum = b.long().sum(1)
            const = -zx * colsum + k * zx * zw
            if const.abs().max() >= 2 ** 31 or k * 128 * 128 * 4 >= 2 ** 31:
                raise ValueError(f"in_features={k} is too large for exact int32 accumulation")
            out = cls(k, n, x.qmin, x.qmax, x.offset, bool((zw != 0).any()),
                      source_weight_bytes=m.weight.numel() * m.weight.element_size())
            out.weight_int8 = b.contiguous()
            out.x_scale = x.scale
            out.x_zero = x.zero
            out.out_scale = (out.x_scale * w.scale.reshape(-1).expand(n)).contiguous()
            out.w_zero = zw.to(torch.int32)
            out.const = const.to(torch.int32)
            out.bias = None if m.bias is None else m.bias.detach().float().clone()
        return out.to(m.weight.device)

    def quantize_input(self, x):
        """int8 input codes (M, K), from the same float operations as the fake quantizer."""
        q = torch.clamp(x / self.x_scale + self.x_zero, self.x_qmin, self.x_qmax).round()
        return (q - self.x_offset).to(torch.int8)

    def forward(self, x):
        lead = x.shape[:-1]
        backend = self.backend or _default_backend
        if backend != "int_mm":
            y = _triton_forward(self, x.reshape(-1, self.in_features), backend)
            return y.reshape(*lead, self.out_features)
        a = self.quantize_input(x.reshape(-1, self.in_features).float())
        acc = int8_matmul(a, self.weight_int8)
        acc += self.const  # in place: in eager mode every pass over the (M, N) output costs as much as the matmul
        if self.w_asymmetric:
            acc -= a.sum(1, dtype=torch.int32).unsqueeze(1) * self.w_zero
        if self.bias is not None:
            y = torch.addcmul(self.bias, acc.float(), self.out_scale)
        else:
            y = acc.float().mul_(self.out_scale)
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def weight_bytes(self):
        return sum(t.numel() * t.element_size() for t in (self.weight_int8, self.out_scale, self.w_zero, self.const))

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"act=[{self.x_qmin},{self.x_qmax}]-{self.x_offset}, asym_weight={self.w_asymmetric}"
                + (f", backend={self.backend}" if self.backend else ""))


def freeze(model: nn.Module) -> nn.Module:
    """Replace (in place) every qualifying calibrated QuantLinear by an Int8Linear. Returns the model."""
    targets = [(name, m) for name, m in model.named_modules() if why_not_freezable(m) is None]
    for name, m in targets:
        set_submodule(model, name, Int8Linear.from_quant_linear(m))
    if state(model) is not None:
        state(model).frozen = True
    return model


def frozen_summary(model: nn.Module) -> dict:
    """How many Linear layers are frozen, which quantized ones are not (and why), and their weight bytes."""
    frozen = [m for m in model.modules() if isinstance(m, Int8Linear)]
    not_frozen = {name: why_not_freezable(m) for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    return {
        "frozen": len(frozen),
        "not_frozen": not_frozen,
        "weight_bytes_before": sum(m.source_weight_bytes for m in frozen),
        "weight_bytes_after": sum(m.weight_bytes() for m in frozen),
    }


__all__ = ["Int8Linear", "freeze", "frozen_summary", "get_int8_backend", "int8_matmul", "set_int8_backend",
           "why_not_freezable"]
