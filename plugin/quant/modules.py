"""Quantized modules: Linear, Conv2d and the attention matmuls, each holding its quantizers as submodules.

`QuantLinear`/`QuantConv2d` are built `from_module` and share the float module's parameters (no copy), so a
reparameterisation that edits the weights in place is seen by the quantized module. Either quantizer may be None
(that input or weight stays in float).
"""
import torch.nn as nn
import torch.nn.functional as F


class MatMul(nn.Module):
    """An explicit `a @ b`, so the two operands of attention matmuls are quantization sites.

    Adapters put one at `matmul_qk` (q @ kᵀ) and one at `matmul_av` (attn @ v) in every attention module.
    """

    def __init__(self):
        super().__init__()
        self.a_quantizer = None
        self.b_quantizer = None

    def forward(self, a, b):
        if self.a_quantizer is not None:
            a = self.a_quantizer(a)
        if self.b_quantizer is not None:
            b = self.b_quantizer(b)
        return a @ b


class _QuantWeightMixin:
    def _init_quant(self, input_quantizer, weight_quantizer):
        self.input_quantizer = input_quantizer
        self.weight_quantizer = weight_quantizer

    def quant_weight(self):
        w = self.weight
        return self.weight_quantizer(w) if self.weight_quantizer is not None else w

    def quant_input(self, x):
        return self.input_quantizer(x) if self.input_quantizer is not None else x


class QuantLinear(_QuantWeightMixin, nn.Linear):
    @classmethod
    def from_module(cls, m: nn.Linear, input_quantizer=None, weight_quantizer=None):
        q = cls.__new__(cls)
        nn.Module.__init__(q)
        q.in_features, q.out_features = m.in_features, m.out_features
        q.weight, q.bias = m.weight, m.bias
        q._init_quant(input_quantizer, weight_quantizer)
        return q

    def forward(self, x):
        return F.linear(self.quant_input(x), self.quant_weight(), self.bias)


class QuantConv2d(_QuantWeightMixin, nn.Conv2d):
    @classmethod
    def from_module(cls, m: nn.Conv2d, input_quantizer=None, weight_quantizer=None):
        q = cls.__new__(cls)
        nn.Module.__init__(q)
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "transposed",
                     "output_padding", "groups", "padding_mode", "_reversed_padding_repeated_twice"):
            setattr(q, attr, getattr(m, attr))
        q.weight, q.bias = m.weight, m.bias
        q._init_quant(input_quantizer, weight_quantizer)
        return q

    def forward(self, x):
        return self._conv_forward(self.quant_input(x), self.quant_weight(), self.bias)


QUANT_MODULES = {nn.Linear: QuantLinear, nn.Conv2d: QuantConv2d}


def quant_class_for(module):
    """The quantized class for a float module (exact type or subclass match), or None."""
    if isinstance(module, (QuantLinear, QuantConv2d, MatMul)):
        return None
    for float_cls, quant_cls in QUANT_MODULES.items():
        if isinstance(module, float_cls):
            return quant_cls
    return None


def quantizer_slots(module):
    """(slot name, channel axis) pairs of a quantized module's quantizers, in a fixed order."""
    if isinstance(module, MatMul):
        return [("a_quantizer", -1), ("b_quantizer", -1)]
    return [("input_quantizer", 1 if isinstance(module, nn.Conv2d) else -1), ("weight_quantizer", 0)]


__all__ = ["MatMul", "QuantLinear", "QuantConv2d", "quant_class_for", "quantizer_slots"]
