"""The logarithmic grids log2 and log√2 (RepQ-ViT's post-Softmax quantizer, registered as "log2" and "log_sqrt2").
log2 is also the baseline I&S-ViT's SULQ improves on (`isvit_no_sulq` names it by kind)."""
import math

import torch

from ...quantizers import (QUANTILE_CANDIDATES, Quantizer, _broadcast, _quantile_rows, _search_best, register_quantizer,
                           round_ste)


class _LogQuantizer(Quantizer):
    """Logarithmic grid for non-negative inputs (post-Softmax): x̂ = s·2^(-j/k) for j = 0 … L − 1, plus an exact 0.

    k = 1 gives log2, k = 2 log√2 (RepQ-ViT). Values above s take the top level s; values below the smallest level
    (j > L − 1 after rounding) and non-positive values become 0. The number of non-zero levels L:
    - strict (default): L = 2^b − 1, so the 2^b codes are the levels and one zero code: an honest b-bit grid;
    - `options: masked_zero=True`: L = 2^b, as in RepQ-ViT's code, where the zero is a mask beside the 2^b codes.
      That grid holds 2^b + 1 values, one more than b bits can encode (docs/methods.md).
    The scale s (the largest level) comes from the observed maximum (`minmax`), RepQ-ViT's `quantile` search (the
    0.999 / 0.9999 / 0.99999 quantiles of the inputs, least squared error), or an MSE search over fractions
    1 … 0.05 of the maximum: a floor as low as 0.05 matters at 3 bits, where the best top level is often a small
    fraction of the largest attention probability.
    """
    base_div = 1

    def __init__(self, spec, channel_axis=-1):
        super().__init__(spec, channel_axis)
        self.register_buffer("scale", torch.ones(1))
        self.levels = 2 ** spec.bits if spec.opts.get("masked_zero", False) else 2 ** spec.bits - 1

    def fake_quant(self, x, scale):
        k = self.base_div
        ratio = (x / scale).clamp_min(1e-30)
        j = round_ste((-k * torch.log2(ratio)).clamp_min(0))
        out = scale * torch.pow(2.0, -j / k)
        return torch.where((j > self.levels - 1) | (x <= 0), torch.zeros_like(out), out)

    def quantize(self, x):
        return self.fake_quant(x, _broadcast(self.scale, x, self.channel_axis))

    def _calibrate(self, obs):
        _, hi, samples = self._reduce_stats(obs)
        hi = hi.clamp_min(1e-8)
        if self.spec.search == "minmax":
            self._set(scale=hi)
            return
        if self.spec.search == "quantile":
            flat = _quantile_rows(samples)
            pcts = self.spec.opts.get("pcts", QUANTILE_CANDIDATES)
            candidates = [torch.quantile(flat, p, dim=0).clamp_min(1e-8) for p in pcts]
        else:
            candidates = [hi * f for f in torch.logspace(0, math.log10(0.05), 40).tolist()]
        self._set(scale=_search_best(candidates, lambda s: (self.fake_quant(samples, s) - samples).pow(2).sum(0)))


@register_quantizer("log2")
class Log2Quantizer(_LogQuantizer):
    base_div = 1


@register_quantizer("log_sqrt2")
class LogSqrt2Quantizer(_LogQuantizer):
    """log√2 grid of RepQ-ViT (Li et al., ICCV 2023, Sec. 3.3): levels s·2^(-j/2)."""
    base_div = 2


__all__ = ["Log2Quantizer", "LogSqrt2Quantizer"]
