"""The baselines' non-uniform grids: log2 and log√2 (RepQ-ViT's post-Softmax quantizer) and twin-uniform (PTQ4ViT's
post-Softmax and post-GELU quantizer). Importing this module registers them (plugin.quant imports it)."""
import math

import torch

from .errors import ConfigError
from .quantizers import (QUANTILE_CANDIDATES, Quantizer, _broadcast, _quantile_rows, _search_best, register_quantizer,
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


@register_quantizer("twin_uniform")
class TwinUniformQuantizer(Quantizer):
    """Twin uniform quantizer of PTQ4ViT (Yuan et al., ECCV 2022, Sec. 3.2).

    Two uniform ranges share the b-bit code, one bit choosing the range, 2^(b-1) levels each, with steps Δ1 and
    Δ2 = 2^m·Δ1 (a power-of-two ratio, so both ranges align to one integer grid).
    - `mode="magnitude"` (post-Softmax): R1 = [0, (2^(b-1)-1)Δ1] holds the many small values, R2 = [0, (2^(b-1)-1)Δ2]
      the large ones; a value goes to R1 when it fits there.
    - `mode="sign"` (post-GELU): R1 = [-(2^(b-1))Δ1, 0] holds the negative values, R2 = [0, (2^(b-1)-1)Δ2] the
      positive ones.
    Δ2 comes from the maximum (shrunk by an MSE search), m from an MSE search over 0 … 10. PTQ4ViT searches with a
    Hessian-guided output metric; here the search is on the activation's own quantization error.
    """
    learnable_buffers = ("delta1", "delta2")

    def __init__(self, spec, channel_axis=-1):
        super().__init__(spec, channel_axis)
        self.mode = spec.opts.get("mode", "magnitude")
        if self.mode not in ("magnitude", "sign"):
            raise ConfigError(f"twin_uniform mode must be 'magnitude' or 'sign', got {self.mode!r}")
        self.register_buffer("delta1", torch.ones(1))
        self.register_buffer("delta2", torch.ones(1))
        self.half = 2 ** (spec.bits - 1)

    def fake_quant(self, x, d1, d2):
        top = self.half - 1
        if self.mode == "sign":
            q1 = round_ste(torch.clamp(x / d1, -self.half, 0)) * d1
            q2 = round_ste(torch.clamp(x / d2, 0, top)) * d2
            return torch.where(x < 0, q1, q2)
        q1 = round_ste(torch.clamp(x / d1, 0, top)) * d1
        q2 = round_ste(torch.clamp(x / d2, 0, top)) * d2
        # Each value takes the nearer of its two candidate levels (R1's when it fits R1, which it then always is).
        return torch.where((q1 - x).abs() <= (q2 - x).abs(), q1, q2)

    def quantize(self, x):
        return self.fake_quant(x, _broadcast(self.delta1, x, self.channel_axis), _broadcast(self.delta2, x, self.channel_axis))

    def _calibrate(self, obs):
        lo, hi, samples = self._reduce_stats(obs)
        top = self.half - 1
        best, best_err = None, None
        for frac in torch.linspace(1.0, 0.5, 8).tolist():
            d2 = (hi.clamp_min(1e-8) * frac) / top
            for m in range(0, 11):
                d1 = d2 / (2 ** m)
                err = (self.fake_quant(samples, d1, d2) - samples).pow(2).sum(0)
                if best is None:
                    best, best_err = (d1, d2), err
                else:
                    better = err < best_err
                    best = (torch.where(better, d1, best[0]), torch.where(better, d2, best[1]))
                    best_err = torch.where(better, err, best_err)
        self._set(delta1=best[0], delta2=best[1])


__all__ = ["Log2Quantizer", "LogSqrt2Quantizer", "TwinUniformQuantizer"]
