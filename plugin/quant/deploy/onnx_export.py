"""ONNX export of a calibrated fake-quant model as a standard QDQ graph (QuantizeLinear / DequantizeLinear).

Which sites are integer, their codes, scales and zero points come from the lowering layer (plugin.quant.deploy.lower,
`weight_reason`, `qdq_reason`, `lower_weight`, `lower_grid`), the same as for `freeze`.

What each quantization site becomes:
- A weight on a uniform grid (`UniformQuantizer`, per tensor or per output channel): its integer codes are stored as
  an **int8 initializer** followed by a `DequantizeLinear` with the calibrated scale and zero point (per-channel axis
  where the quantizer is per channel). The codes come from the fake quantizer's own float operations, so the
  dequantized weight equals the fake-quant weight exactly. An unsigned grid (0 … 2^b − 1) is shifted by −128 into
  int8, its zero point with it (the product (q − z)·s is unchanged), as in `plugin.quant.deploy.freeze`. Linear weights
  are stored transposed (in × out, axis 1) so the graph reads `DequantizeLinear → MatMul` with no Transpose between.
- An activation on a uniform grid (per tensor, per channel or per head): a `QuantizeLinear → DequantizeLinear` pair
  with the calibrated static scale and zero point, in uint8 (asymmetric grids, 0 … 2^b − 1) or int8 (symmetric ones).
- A b-bit grid with b < 8 is held in the 8-bit type and its codes are clipped to the b-bit range by a `Clip` on the
  integer tensor between Q and DQ (`QuantizeLinear → Clip → DequantizeLinear`); weight codes are in range already.
  Why not opset-21 int4/uint4 types: they express 4 bits only (not 2, 3, 5, 6, 7), and the 8-bit container with an
  integer Clip runs on ONNX Runtime's CPU provider for every b and gives the fake quantizer's values exactly.
  4-bit weights are therefore stored one code per byte (no 2-per-byte packing): a W4 file is as large as a W8 one.

Sites ONNX cannot express with Q/DQ (log2, log√2, twin-uniform, TanQ, SULQ, DFQ grids; a zero point outside the code
range, as RepQ-ViT's quantile search may give; more than 8 bits) are listed by name with the reason in the summary.
An activation there follows `nonuniform`: "emulate" (default) exports the fake quantizer's own float arithmetic
(Log/Round/Pow/Where…), so the ONNX function equals fake-quant, but that site is float math, not Q/DQ; "float" drops
the quantizer (the deployed op sees the float tensor, and the ONNX model differs from fake-quant there: on the
embedded default at W8A8, RepQ-ViT's four log√2 post-Softmax sites left float moved top-1 by 0.3 points and 2.1 % of
the predictions). A weight there is stored as a float initializer holding the fake-quant values (the same function
either way).

Folding: the reparameterised LayerNorms (RepQ-ViT, DopQ-ViT) are already folded into the LayerNorm and the next
Linear by calibration, so they export as they are; a pre-quantization low-rank branch (AIQViT, Q(W + A·B)) is folded
into the weight before its codes are taken; a post-quantization one (Q(W) + A·B) cannot be integer and leaves that
weight float (fake-quant values), listed.

The graph comes from torch's TorchScript-based exporter (`torch.onnx.export(dynamo=False)`) run on a deep copy of the
model in which every quantized module is replaced by an export module (a class of its own, not a patched forward)
whose Q/DQ steps are autograd Functions with an ONNX `symbolic`: eagerly they compute what ONNX Runtime computes
(round half to even after x/s, then + z, saturate, clip), so the copy can be checked in torch too. Why not the
torch.export-based exporter (`dynamo=True`, torch's default): it works as well (Q/DQ through
`torch.onnx.ops.symbolic`, tried on the embedded ViT), but took 10-17 s per export of the tiny embedded ViT here
against 3 s, and needs onnxscript; the TorchScript exporter is deprecated by torch (a DeprecationWarning), so this is
the place to switch when it is removed. The batch dimension is dynamic. Needs onnx and, to run the result,
onnxruntime: `pip install -e '.[onnx]'`.
"""
import copy
import os
import tempfile
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attach import set_submodule
from ..errors import ConfigError, QuantError
from ..io import umask_mode
from ..modules import MatMul, QuantConv2d, QuantLinear
from ..quantizers import Quantizer, UniformQuantizer
from .lower import active, lower_grid, lower_weight, qdq_reason, weight_reason

OPSET = 18
NONUNIFORM_MODES = ("float", "emulate")


def check_onnx_available():
    """Raise a ConfigError (one line) when a package the export needs is missing."""
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"ONNX export needs {', '.join(missing)}: pip install -e '.[onnx]'")


def _along(t, x, axis):
    """A per-axis vector shaped to broadcast against x along `axis` (a 0-d tensor as it is)."""
    if t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


class _QuantDequant(torch.autograd.Function):
    """x → QuantizeLinear → [Clip to the b-bit codes] → DequantizeLinear. Eagerly it computes what ONNX Runtime
    computes (round half to even, saturate, clip), so the export copy can be checked in torch as well."""

    @staticmethod
    def forward(ctx, x, scale, zero, code_min, code_max, axis):
        s, z = _along(scale, x, axis), _along(zero.float(), x, axis)
        codes = torch.clamp(torch.round(x / s) + z, float(code_min), float(code_max))
        return (codes - z) * s

    @staticmethod
    def symbolic(g, x, scale, zero, code_min, code_max, axis):
        codes = g.op("QuantizeLinear", x, scale, zero, axis_i=axis)
        full = (0, 255) if code_min >= 0 else (-128, 127)  # QDQ holds a grid without negative codes in uint8
        if (code_min, code_max) != full:
            dtype = torch.uint8 if full[0] == 0 else torch.int8
            lo = g.op("Constant", value_t=torch.tensor(code_min, dtype=dtype))
            hi = g.op("Constant", value_t=torch.tensor(code_max, dtype=dtype))
            codes = g.op("Clip", codes, lo, hi)
        return g.op("DequantizeLinear", codes, scale, zero, axis_i=axis)


class _Dequant(torch.autograd.Function):
    """int8 weight codes → DequantizeLinear: (q − z)·s."""

    @staticmethod
    def forward(ctx, codes, scale, zero, axis):
        return (codes.float() - _along(zero.float(), codes, axis)) * _along(scale, codes, axis)

    @staticmethod
    def symbolic(g, codes, scale, zero, axis):
        return g.op("DequantizeLinear", codes, scale, zero, axis_i=axis)


class QDQ(nn.Module):
    """QuantizeLinear → [Clip] → DequantizeLinear with a calibrated uniform quantizer's static scale and zero point."""

    def __init__(self, q: UniformQuantizer):
        super().__init__()
        grid = lower_grid(q)
        self.axis = 0 if grid.axis is None else grid.axis
        dtype = torch.uint8 if q.qmin >= 0 else torch.int8  # Q/DQ holds an unsigned grid as it is (no offset)
        self.register_buffer("scale", grid.scale)
        self.register_buffer("zero_point", grid.zero.round().to(dtype))
        self.code_min, self.code_max = q.qmin, q.qmax

    def forward(self, x):
        return _QuantDequant.apply(x, self.scale, self.zero_point, self.code_min, self.code_max, self.axis)


class _ExportWeighted(nn.Module):
    """A quantized Linear/Conv2d for export: the input through its activation module, the weight as int8 codes + DQ
    (or a float initializer holding the fake-quant weight where the grid is not uniform)."""

    def _init_weight(self, m, wq, float_reason):
        self.bias = None if m.bias is None else nn.Parameter(m.bias.detach().float().clone(), requires_grad=False)
        if float_reason is None:
            w = lower_weight(m)
            self.per_channel = w.per_channel
            self.register_buffer("weight_codes", self._layout(w.codes).contiguous())
            self.register_buffer("weight_scale", w.scale.clone())
            self.register_buffer("weight_zero_point", w.zero.to(torch.int8))  # in [−128, 127]: `qdq_reason`
            self.weight = None
        else:
            with torch.no_grad():
                w = m.quant_weight().detach().float()  # the fake-quant weight (low-rank branch included)
            self.weight = nn.Parameter(self._layout(w).contiguous().clone(), requires_grad=False)

    def _layout(self, w):
        return w

    def _weight_axis(self):
        return 0

    def dequant_weight(self):
        if self.weight is not None:
            return self.weight
        return _Dequant.apply(self.weight_codes, self.weight_scale, self.weight_zero_point,
                              self._weight_axis() if self.per_channel else 0)


class ExportLinear(_ExportWeighted):
    def __init__(self, m, input_module, wq, float_reason):
        super().__init__()
        self.input_quantizer = input_module
        self._init_weight(m, wq, float_reason)

    def _layout(self, w):
        return w.t()  # (in, out): DequantizeLinear → MatMul, no Transpose

    def _weight_axis(self):
        return 1

    def forward(self, x):
        y = torch.matmul(self.input_quantizer(x), self.dequant_weight())
        return y if self.bias is None else y + self.bias


class ExportConv2d(_ExportWeighted):
    def __init__(self, m, input_module, wq, float_reason):
        super().__init__()
        self.input_quantizer = input_module
        self.stride, self.padding, self.dilation, self.groups = m.stride, m.padding, m.dilation, m.groups
        if m.padding_mode != "zeros":
            raise ConfigError(f"ONNX export: Conv2d padding_mode {m.padding_mode!r} is not supported")
        self._init_weight(m, wq, float_reason)

    def forward(self, x):
        return F.conv2d(self.input_quantizer(x), self.dequant_weight(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


class _Plan:
    """Per-site decisions, collected while the export copy is built."""

    def __init__(self, nonuniform):
        self.nonuniform = nonuniform
        self.float_sites = {}
        self.qdq_activations = 0
        self.int8_weights = 0

    def activation(self, name, q):
        if not active(q):
            return nn.Identity()
        reason = qdq_reason(q)
        if reason is None:
            self.qdq_activations += 1
            return QDQ(q)
        if self.nonuniform == "emulate":
            self.float_sites[name] = reason + "; exported as the fake quantizer's float arithmetic"
            return q
        self.float_sites[name] = reason + "; left float (no quantizer)"
        return nn.Identity()

    def weight(self, name, m):
        q = m.weight_quantizer
        if not active(q):
            return q, "float weight (not quantized)"
        reason = weight_reason(m) or qdq_reason(q)
        if reason is None:
            self.int8_weights += 1
            return q, None
        self.float_sites[name] = reason + "; float initializer holding the fake-quant weight"
        return q, reason


def export_copy(model, nonuniform="emulate"):
    """(a deep copy of `model` with every quantized module replaced by its export module, summary dict)."""
    if nonuniform not in NONUNIFORM_MODES:
        raise ConfigError(f"nonuniform must be one of {NONUNIFORM_MODES}, got {nonuniform!r}")
    plan = _Plan(nonuniform)
    copy_ = copy.deepcopy(model).eval()
    for name, m in list(copy_.named_modules()):
        if isinstance(m, (QuantLinear, QuantConv2d)):
            act = plan.activation(f"{name}.input_quantizer", m.input_quantizer)
            wq, reason = plan.weight(f"{name}.weight_quantizer", m)
            cls = ExportLinear if isinstance(m, QuantLinear) else ExportConv2d
            set_submodule(copy_, name, cls(m, act, wq, reason))
        elif isinstance(m, MatMul):
            m.a_quantizer = plan.activation(f"{name}.a_quantizer", m.a_quantizer)
            m.b_quantizer = plan.activation(f"{name}.b_quantizer", m.b_quantizer)
    summary = {"qdq_activations": plan.qdq_activations, "int8_weights": plan.int8_weights,
               "float_sites": plan.float_sites, "nonuniform": nonuniform, "opset": OPSET}
    return copy_, summary


def _export(module, example, path, dynamic_batch):
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic frozen into the trace
        torch.onnx.export(module, (example,), path, dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=["output"], dynamic_axes=axes, do_constant_folding=True)
    _strip_metadata(path)


def _strip_metadata(path):
    """Drop the exporter's per-node debug metadata (source stack traces, FX node text: most of a small model's
    file, and local paths) and intermediate shape annotations (ONNX Runtime infers them)."""
    import onnx
    model = onnx.load(path)
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.graph.value_info[:]
    onnx.save(model, path)


def _atomic_export(module, example, path, dynamic_batch):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".onnx_", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        try:
            _export(module, example, tmp, dynamic_batch)
        except Exception as exc:  # a model the tracer cannot handle: one line, not the exporter's traceback
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise QuantError(f"ONNX export failed: {type(exc).__name__}: {first}") from exc
        os.chmod(tmp, umask_mode())  # mkstemp's file is private; the export is an ordinary output
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return os.path.getsize(path)


def export_onnx(model, example, path, nonuniform="emulate", dynamic_batch=True):
    """Write `model` (calibrated fake-quant, or plain float) to `path` as an ONNX QDQ graph, atomically.

    `example` is one input batch (its shape fixes every dimension but the batch). Returns a summary: counts of Q/DQ
    activation sites and int8 weights, `float_sites` (name → reason), the file size in bytes.
    """
    check_onnx_available()
    module, summary = export_copy(model, nonuniform)
    module = module.to("cpu").float()
    with torch.no_grad():
        summary["bytes"] = _atomic_export(module, example.detach().to("cpu").float(), path, dynamic_batch)
    summary["path"] = path
    return summary


def export_float_onnx(model, example, path, dynamic_batch=True):
    """The float model (every quantizer off) through the same exporter: the size and speed reference."""
    check_onnx_available()
    floating = copy.deepcopy(model)
    for m in floating.modules():
        if isinstance(m, Quantizer):
            m.enabled = False
    module, _ = export_copy(floating)
    return _atomic_export(module.to("cpu").float(), example.detach().to("cpu").float(), path, dynamic_batch)


__all__ = ["NONUNIFORM_MODES", "OPSET", "QDQ", "check_onnx_available", "export_copy",
           "export_float_onnx", "export_onnx"]
