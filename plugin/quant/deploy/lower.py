"""Lowering: a calibrated fake-quant site as integers, computed once for every integer consumer.

`freeze` (Int8Linear, CPU/GPU), the GPU deployment (int8 through Triton / `torch._int_mm`, FP8 ranges) and the ONNX
QDQ export read their codes, scales, zero points and reasons from here; none of them derives them on its own.

The one rule (`grid_reason`): a quantizer lowers to integers when it is a calibrated, enabled `UniformQuantizer` of
at most 256 codes (≤ 8 bits) that adds its zero point before rounding (not `zero_after_round`: the official RepQ-ViT
post-LN fold, whose fractional zero point gives 2^b + 1 values that no b-bit code holds). A weight grid must also be
per tensor or per output channel (`weight_reason`; the axis taken modulo the weight's dimensions, so −2 of a Linear
weight is its output channel) of a module whose weight lowering is known: a plain QuantLinear / QuantConv2d, or one
with a low-rank branch (`lowrank`): a pre-quantization branch (Q(W + A·B)) is folded into the codes, a
post-quantization one (Q(W) + A·B) leaves no integer weight.
Each consumer adds only what its own arithmetic needs:
- an integer GEMM (`gemm_reason`: freeze, int8 and FP8 deployment): a Linear whose input grid is per tensor (the
  input scale and zero point are factored out of the sum over K);
- ONNX Q/DQ (`qdq_reason`): a zero point that is a code of the grid (QuantizeLinear's zero point has the 8-bit type).
  Integer arithmetic in int32 has no such limit, so a GEMM keeps such sites integer.

Codes. A weight's codes are the fake quantizer's own float operations, clamp(w/s + z, qmin, qmax).round(), so the
dequantized codes equal the fake-quant weight exactly. An unsigned grid (qmax > 127) is shifted by −128 into int8
(`offset`), its zero point with it; (q − z)·s is unchanged.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from ..modules import QuantConv2d, QuantLinear
from ..quantizers import Quantizer, UniformQuantizer


def active(q):
    """A quantizer that runs: calibrated (or loaded) and enabled."""
    return isinstance(q, Quantizer) and q.enabled and q.ready


def offset(q):
    """128 for an unsigned grid (qmax > 127), shifted by −128 into int8; 0 otherwise."""
    return 128 if q.qmax > 127 else 0


def grid_reason(q) -> Optional[str]:
    """None when the quantizer `q` lowers to an integer grid, else why not (a short phrase)."""
    if not active(q):
        return "not quantized (no calibrated, enabled quantizer)"
    if type(q) is not UniformQuantizer:
        return f"{q.kind} grid: not a uniform grid"
    if q.qmax - q.qmin + 1 > 256:
        return f"{q.bits}-bit grid: more than 8 bits"
    if q.zero_after_round:
        return ("zero point added after rounding (RepQ-ViT's official post-LN fold): a fractional zero point, "
                f"{q.qmax - q.qmin + 2} values: no {q.bits}-bit integer grid")
    return None


def weight_reason(m) -> Optional[str]:
    """None when the weight of the quantized Linear/Conv2d `m` lowers to int8 codes, else why not."""
    branch = getattr(m, "lowrank", None)
    if type(m) not in (QuantLinear, QuantConv2d) and branch is None:
        return f"{type(m).__name__}: a quantized module whose weight lowering is not known"
    if branch is not None and branch.enabled and branch.is_post:
        return "post-quantization low-rank branch Q(W) + A·B: no integer weight"
    q = m.weight_quantizer
    reason = grid_reason(q)
    if reason is not None:
        return "weight: " + reason
    if q.scale.numel() > 1 and (q.scale.numel() != m.weight.shape[0] or q.channel_axis % m.weight.dim() != 0):
        return f"weight grid is neither per tensor nor per output channel (axis {q.channel_axis})"
    return None


def gemm_reason(m) -> Optional[str]:
    """None when the Linear `m` runs as an integer GEMM (freeze, int8 / FP8 deployment), else why not."""
    if not isinstance(m, QuantLinear):
        return "not a quantized Linear"
    if m.weight_quantizer is None or m.input_quantizer is None:
        return "float weight or input"
    reason = weight_reason(m)
    if reason is not None:
        return reason
    xq = m.input_quantizer
    reason = grid_reason(xq)
    if reason is not None:
        return "input: " + reason
    if xq.scale.numel() != 1 or xq.zero_point.numel() != 1:
        return "input grid is not per-tensor"
    return None


def qdq_reason(q) -> Optional[str]:
    """None when the quantizer `q` is expressed exactly by ONNX QuantizeLinear / DequantizeLinear, else why not."""
    reason = grid_reason(q)
    if reason is not None:
        return reason
    zero = q.zero_point.detach()
    if bool(((zero < q.qmin) | (zero > q.qmax)).any()):
        return (f"zero point outside the code range [{q.qmin}, {q.qmax}] (range search that does not hold 0): "
                "not a valid Q/DQ zero point")
    return None


def weight_seen_by_quantizer(m):
    """The float weight the weight quantizer rounds: W, or W + A·B for a pre-quantization low-rank branch."""
    branch = getattr(m, "lowrank", None)
    w = m.weight.detach().float()
    if branch is not None and branch.enabled and not branch.is_post:
        w = w + branch.delta().detach().float()
    return w


@dataclass
class IntWeight:
    """A weight as int8 codes: w ≈ (codes − zero)·scale, per tensor (0-d scale and zero) or per output channel (N,)."""
    codes: torch.Tensor       # int8, the weight's shape
    scale: torch.Tensor       # float32
    zero: torch.Tensor        # int32: the shifted zero point (z − offset); int8 only where `qdq_reason` allows
    qmin: int
    qmax: int
    offset: int

    @property
    def per_channel(self):
        return self.scale.dim() == 1


def lower_weight(m) -> IntWeight:
    """The int8 codes of the weight of `m` (see `weight_reason`: call only where it is None)."""
    q = m.weight_quantizer
    w = weight_seen_by_quantizer(m)
    per_channel = q.scale.numel() > 1
    view = (w.shape[0],) + (1,) * (w.dim() - 1) if per_channel else ()
    scale = q.scale.detach().float().reshape(view)
    zero = q.zero_point.detach().float().reshape(view)
    with torch.no_grad():
        codes = torch.clamp(w / scale + zero, q.qmin, q.qmax).round()  # the fake quantizer's own operations
    off = offset(q)
    flat = (lambda t: t.reshape(-1)) if per_channel else (lambda t: t)  # noqa: E731
    return IntWeight((codes - off).to(torch.int8), flat(scale), flat((zero - off).round().to(torch.int32)),
                     q.qmin, q.qmax, off)


@dataclass
class IntGrid:
    """An activation grid: codes = clamp(x/scale + zero, qmin, qmax).round() (− offset for int8), per tensor (0-d
    scale and zero, axis None) or along `axis` ((C,) scale and zero)."""
    scale: torch.Tensor       # float32
    zero: torch.Tensor        # float32: the calibrated zero point as the fake quantizer uses it
    qmin: int
    qmax: int
    offset: int
    axis: Optional[int]

    def range(self):
        """(lo, hi): the float range the grid clips to."""
        return (self.qmin - self.zero) * self.scale, (self.qmax - self.zero) * self.scale


def lower_grid(q) -> IntGrid:
    """The grid of an activation quantizer (see `grid_reason`; a GEMM input must also be per tensor: `gemm_reason`)."""
    scale = q.scale.detach().float().reshape(-1)
    zero = q.zero_point.detach().float().reshape(-1)
    if scale.numel() == 1:
        return IntGrid(scale.reshape(()).clone(), zero.reshape(()).clone(), q.qmin, q.qmax, offset(q), None)
    return IntGrid(scale.clone(), zero.clone(), q.qmin, q.qmax, offset(q), q.channel_axis)


__all__ = ["IntGrid", "IntWeight", "active", "gemm_reason", "grid_reason", "lower_grid",
           "lower_weight", "offset", "qdq_reason", "weight_reason", "weight_seen_by_quantizer"]
