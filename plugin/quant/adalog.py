"""AdaLog's adaptive-base logarithmic quantizer (Wu et al., "AdaLog: Post-Training Quantization for Vision
Transformers with Adaptive Logarithm Quantizer", ECCV 2024; official code GoatWu/AdaLog): kind "adalog".

Grid: with base β = 2^(q/r) (r = 37 fixed, integer q searched), codes k = round(−log2(x/s) · r/q) clamped to
[0, 2^b − 1], and x̂ = s · 2^(−k·q/r): the levels s, s·β^−1, …, s·β^−(2^b−1), plus 0 for every value whose code would
pass 2^b − 1 (the official mask). q = r is the plain log2 grid, q = r/2 the log√2 grid: the search chooses how fast
the levels thin out towards 0 (a small base spends the codes near the largest values, a large one reaches further
down). Post-Softmax inputs are probabilities, so the official quantizer fixes s = 1 (`options: scale=1.0`, default);
`scale=None` sets s to the observed maximum (per tensor, channel or head).

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
from .quantizers import Quantizer, _broadcast, register_quantizer, round_ste

R = 37.0


@register_quantizer("adalog")
class AdaLogQuantizer(Quantizer):
    """Adaptive-base log quantizer (module docstring). Options: r (37), q_min (10), eq_n (128 candidates of q),
    scale (1.0 for probabilities; None: observed maximum)."""

    def __init__(self, spec, channel_axis=-1):
        super().__init__(spec, channel_axis)
        opts = spec.opts
        self.r = float(opts.get("r", R))
        self.q_min, self.eq_n = opts.get("q_min", 10), opts.get("eq_n", 128)
        self.fixed_scale = opts.get("scale", 1.0)
        if not (isinstance(self.q_min, int) and self.q_min >= 1 and isinstance(self.eq_n, int) and self.eq_n >= 1):
            raise ConfigError(f"adalog: q_min and eq_n must be positive integers, got {self.q_min!r}, {self.eq_n!r}")
        if self.fixed_scale is not None and not self.fixed_scale > 0:
            raise ConfigError(f"adalog: scale must be positive or None, got {self.fixed_scale!r}")
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("q", torch.full((1,), float(round(self.r))))
        self.levels = 2 ** spec.bits

    def fake_quant(self, x, scale, q):
        ratio = (x / scale).clamp(1e-15, 1.0)
        k = round_ste(-torch.log2(ratio) * self.r / q)
        keep = (k < self.levels).to(x.dtype)  # codes past the last level are the zero code
        return scale * torch.pow(2.0, -k.clamp(0, self.levels - 1) * q / self.r) * keep

    def quantize(self, x):
        axis = self.channel_axis
        return self.fake_quant(x, _broadcast(self.scale, x, axis), _broadcast(self.q, x, axis))

    def _calibrate(self, obs):
        lo, hi, rows = self._reduce_stats(obs)
        if (rows < 0).any():
            raise ConfigError("adalog: the grid holds non-negative values only (post-Softmax), got negative inputs")
        scale = torch.full_like(hi, float(self.fixed_scale)) if self.fixed_scale is not None else hi.clamp_min(1e-8)
        best_err, best_q = None, None
        for q in range(self.q_min, self.q_min + self.eq_n):
            qt = torch.full_like(scale, float(q))
            err = (self.fake_quant(rows, scale, qt) - rows).pow(2).sum(0)
            if best_err is None:
                best_err, best_q = err, qt
            else:
                better = err < best_err
                best_err, best_q = torch.where(better, err, best_err), torch.where(better, qt, best_q)
        self._set(scale=scale, q=best_q)

    def range_names(self):
        return ()  # the base is searched, not trained; a fixed probability scale stays 1


__all__ = ["AdaLogQuantizer", "R"]
