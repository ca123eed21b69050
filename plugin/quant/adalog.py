"""AdaLog's adaptive-base logarithmic quantizer (Wu et al., "AdaLog: Post-Training Quantization for Vision
Transformers with Adaptive Logarithm Quantizer", ECCV 2024; official code GoatWu/AdaLog): kind "adalog".

Grid: with base β = 2^(q/r) (r = 37 fixed, integer q searched), codes k = round(−log2(x/s) · r/q) clamped to
[0, 2^b − 1], and x̂ = s · 2^(−k·q/r): the levels s, s·β^−1, …, s·β^−(2^b−1), plus 0 for every value whose code would
pass 2^b − 1 (the official mask). q = r is the plain log2 grid, q = r/2 the log√2 grid: the search chooses how fast
the levels thin out towards 0 (a small base spends the codes near the largest values, a large one reaches further
down). Post-Softmax inputs are probabilities, so the official quantizer fixes s = 1 (`options: scale=1.0`, default);
`scale=None` searches s (below).

Post-GELU inputs (AdaLog §3.2, its `PostGeluLogBasedBatchingQuantLinear`): GELU outputs reach down to
min x·Φ(x) ≈ −0.17, so the grid quantizes x + shift and returns x̂ − shift (`options: shift=GELU_SHIFT`); the official
code folds the −shift into the FC2 bias, which gives the same output. There s is searched with q: the official code
takes s between the 90th percentile and the maximum of the positive values (+ shift), scored by FC2's output
similarity; ours (`scale=None`) tries the maximum of x + shift and its upper quantiles QUANTILE_CANDIDATES (RepQ-ViT's
clipping candidates for log grids), each with every q, scored by the squared error on the quantizer's input.

Calibration: AdaLog scores q ∈ {10, …, 10 + eq_n − 1} on the attention output (its matmul search); here calibrate()
keeps the q with the least squared error on the quantizer's own input (per head when the granularity is "head"), our
choice so the quantizer stands alone. Also ours: the forward uses the exact level 2^(−k·q/r); the official inference
path reads it from a table that rounds the fractional power 2^(−(k·q mod r)/r) to multiples of 1/(2^(b+1) − 2)
(a hardware-friendly form of the same grid) — the difference is below one table step.

AdaLog is not used by APHQ-ViT or FIMA-Q: their released configurations quantize post-Softmax and post-GELU inputs
on the uniform `percentile_grid`. It is here for recipes that want the adaptive log grid (docs/methods.md).
"""
import torch

from .errors import ConfigError
from .quantizers import (QUANTILE_CANDIDATES, Quantizer, _broadcast, _quantile_rows, _search_best, register_quantizer,
                         round_ste)

R = 37.0
GELU_SHIFT = 0.16997124  # −min over x of x·Φ(x), the lowest GELU output (AdaLog's post-GELU shift)


@register_quantizer("adalog")
class AdaLogQuantizer(Quantizer):
    """Adaptive-base log quantizer (module docstring). Options: r (37), q_min (10), eq_n (128 candidates of q),
    scale (1.0 for probabilities; None: searched), shift (0.0; GELU_SHIFT for post-GELU inputs)."""

    def __init__(self, spec, channel_axis=-1):
        super().__init__(spec, channel_axis)
        opts = spec.opts
        self.r = float(opts.get("r", R))
        self.q_min, self.eq_n = opts.get("q_min", 10), opts.get("eq_n", 128)
        self.fixed_scale = opts.get("scale", 1.0)
        self.shift = opts.get("shift", 0.0)
        if not (isinstance(self.q_min, int) and self.q_min >= 1 and isinstance(self.eq_n, int) and self.eq_n >= 1):
            raise ConfigError(f"adalog: q_min and eq_n must be positive integers, got {self.q_min!r}, {self.eq_n!r}")
        if self.fixed_scale is not None and not self.fixed_scale > 0:
            raise ConfigError(f"adalog: scale must be positive or None, got {self.fixed_scale!r}")
        if not (isinstance(self.shift, (int, float)) and self.shift >= 0):
            raise ConfigError(f"adalog: shift must be a non-negative number, got {self.shift!r}")
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("q", torch.full((1,), float(round(self.r))))
        self.levels = 2 ** spec.bits

    def fake_quant(self, x, scale, q):
        ratio = ((x + self.shift) / scale).clamp(1e-15, 1.0)
        k = round_ste(-torch.log2(ratio) * self.r / q)
        keep = (k < self.levels).to(x.dtype)  # codes past the last level are the zero code
        return scale * torch.pow(2.0, -k.clamp(0, self.levels - 1) * q / self.r) * keep - self.shift

    def quantize(self, x):
        axis = self.channel_axis
        return self.fake_quant(x, _broadcast(self.scale, x, axis), _broadcast(self.q, x, axis))

    def _calibrate(self, obs):
        lo, hi, rows = self._reduce_stats(obs)
        if (rows + self.shift < -1e-6).any():  # float slack: GELU's own minimum sits at −shift
            raise ConfigError(f"adalog: the grid holds values ≥ −shift = {-self.shift} only (post-Softmax: shift 0; "
                              f"post-GELU: GELU_SHIFT), got {rows.min().item():.4g}")
        if self.fixed_scale is not None:
            scales = [torch.full_like(hi, float(self.fixed_scale))]
        else:  # the maximum and the upper clipping quantiles of x + shift, per channel / head
            top = _quantile_rows(rows) + self.shift
            quantiles = torch.quantile(top, torch.tensor(QUANTILE_CANDIDATES, dtype=top.dtype), dim=0)
            scales = [(hi + self.shift).clamp_min(1e-8), *quantiles.clamp_min(1e-8)]
        candidates = [(scale, torch.full_like(scale, float(q))) for scale in scales
                      for q in range(self.q_min, self.q_min + self.eq_n)]
        best_scale, best_q = _search_best(candidates, lambda c: (self.fake_quant(rows, *c) - rows).pow(2).sum(0))
        self._set(scale=best_scale, q=best_q)

    def range_names(self):
        return ()  # the base is searched, not trained; a fixed probability scale stays 1


__all__ = ["AdaLogQuantizer", "GELU_SHIFT", "R"]
