"""The uniform quantizer of the AdaLog family's calibrator: kind "percentile_grid".

AdaLog (Wu et al., ECCV 2024, code GoatWu/AdaLog) calibrates its uniform quantizers by choosing among a fixed list of
(scale, zero point) candidates built from quantiles of the data; APHQ-ViT (CVPR 2025) and FIMA-Q (CVPR 2025) keep that
calibrator unchanged and use this uniform grid at every site, post-Softmax and post-GELU included (their repositories
contain no logarithmic quantizer in use). The grid is the plain asymmetric one of `UniformQuantizer`,
q = clamp(round(x/s) + z, 0, 2^b − 1), x̂ = s·(q − z); only where (s, z) come from differs. `options: mode`:

- "range" (Linear weights per output row, Linear inputs): widths from the spread q(l) − q(1 − l) to the spread
  q(r) − q(1 − r) (l = 0.9, r = 1.0: from the inner 80 % to min..max) in `eq_n // n_z` steps, crossed with
  n_z = min(16, 2^b) integer zero points 2^(b−1) − n_z/2 … 2^(b−1) + n_z/2 − 1 (all of them at b ≤ 4);
  s = width / (2^b − 1), clamped to ≥ 1e-4 for inputs. `zero_fixed` (the input of FC2 after APHQ-ViT's ReLU):
  zero point 0 and `eq_n` widths.
- "pair_value" (attention-matmul operands, per head): eq_n (lower, upper) pairs, upper_i = q(l) + t·(q(r) − q(l)),
  lower_i = q(1 − r) + t·(q(1 − l) − q(1 − r)), t = i / eq_n, l = 0.99, r = 0.99999; s = (upper − lower)/(2^b − 1),
  z = −round(lower / s) (not clamped to the code range, as in the official code).
- "pair_pct" (Conv weights, per output channel): (q(1 − p_i), q(p_i)) with p_i = l + (r − l)·(i/(eq_n − 1))^k,
  l = 0.99, r = 0.9999, k = 0.5.
`token_axis` (-2: the token axis of Linear inputs and the rows of the left matmul operand; -1: the columns of the right
operand): after the search, `expand_tokens` gives every token (every column) its own copy of the scale — FIMA-Q's
`token_channel_wise`, which only matters once reconstruction trains the scales. The official loops score `eq_n`
candidates; the extra last one its code builds is never scored, so it is left out.

`calibrate()` keeps the candidate with the least squared error on the quantizer's own input, per channel or head
when the granularity says so: the official first step for Linear sites ("self" search). The official search then
scores candidates on the module's float output, in rounds: that is the `output_search` pass
(plugin.quant.output_search), which reuses `candidates()` below. Quantiles come from the calibration engine's sample
of each site (`Recipe.observe_elems` values), where the official code takes the mean of per-chunk quantiles.
"""
import torch

from .errors import ConfigError
from .quantizers import UniformQuantizer, _broadcast, _quantile_rows, register_quantizer

MODES = {"range": (0.9, 1.0), "pair_value": (0.99, 0.99999), "pair_pct": (0.99, 0.9999)}


def _quantiles(rows, pcts):
    """Per-column quantiles (len(pcts), C) of a (rows, C) matrix."""
    flat = _quantile_rows(rows)
    return torch.quantile(flat, torch.as_tensor(pcts, dtype=flat.dtype, device=flat.device), dim=0)


@register_quantizer("percentile_grid")
class PercentileGridQuantizer(UniformQuantizer):
    """Asymmetric uniform quantizer whose (scale, zero point) is picked from AdaLog's quantile candidates (module
    docstring). Options: mode ("range" | "pair_value" | "pair_pct"), eq_n (candidates, 128), lo_pct / hi_pct (l, r;
    defaults by mode), pct_power (k of "pair_pct", 0.5), zero_fixed (range mode: zero point 0)."""

    def __init__(self, spec, channel_axis=-1):
        super().__init__(spec, channel_axis)
        opts = spec.opts
        self.mode = opts.get("mode", "range")
        if self.mode not in MODES:
            raise ConfigError(f"percentile_grid: unknown mode {self.mode!r}; known: {', '.join(MODES)}")
        if spec.symmetric:
            raise ConfigError("percentile_grid: the grid is asymmetric (symmetric=False)")
        self.eq_n = opts.get("eq_n", 128)
        self.lo_pct, self.hi_pct = opts.get("lo_pct", MODES[self.mode][0]), opts.get("hi_pct", MODES[self.mode][1])
        self.pct_power = opts.get("pct_power", 0.5)
        self.zero_fixed = bool(opts.get("zero_fixed", False))
        self.token_axis = opts.get("token_axis")
        if self.token_axis not in (None, -1, -2):
            raise ConfigError(f"percentile_grid: token_axis must be -1, -2 or None, got {self.token_axis!r}")
        self.is_input = channel_axis != 0  # weights are quantized along axis 0 (output channels)
        if not (isinstance(self.eq_n, int) and self.eq_n >= 2):
            raise ConfigError(f"percentile_grid: eq_n must be an integer >= 2, got {self.eq_n!r}")
        if not 0.5 <= self.lo_pct <= self.hi_pct <= 1.0:
            raise ConfigError(f"percentile_grid: need 0.5 <= lo_pct <= hi_pct <= 1, got {self.lo_pct}, {self.hi_pct}")

    # --- candidates -------------------------------------------------------------------------------------------------
    def pair_params(self, lower, upper):
        """(scale, zero) of the range [lower, upper] (any matching shapes)."""
        scale = ((upper - lower) / self.qmax).clamp_min(1e-8)
        return scale, -(lower / scale).round()

    def pair_bounds(self, rows):
        """The eq_n (lower, upper) candidate bounds of the pair modes, each (eq_n, C)."""
        l, r, n = self.lo_pct, self.hi_pct, self.eq_n
        if self.mode == "pair_value":
            q = _quantiles(rows, [l, r, 1 - l, 1 - r])
            t = torch.arange(n, dtype=rows.dtype, device=rows.device)[:, None] / n
            return q[3] + t * (q[2] - q[3]), q[0] + t * (q[1] - q[0])
        pcts = [l + (r - l) * (i / (n - 1)) ** self.pct_power for i in range(n)]
        return _quantiles(rows, [1 - p for p in pcts]), _quantiles(rows, pcts)

    def candidates(self, rows):
        """(scale, zero) candidates, each (K, C), for the (rows, C) data of this quantizer's channels."""
        if self.mode != "range":
            return self.pair_params(*self.pair_bounds(rows))
        q = _quantiles(rows, [self.lo_pct, self.hi_pct, 1 - self.lo_pct, 1 - self.hi_pct])
        spread_lo, spread_hi = q[0] - q[2], q[1] - q[3]
        n_zero = 1 if self.zero_fixed else min(16, 2 ** self.bits)
        n_width = self.eq_n // n_zero
        t = torch.linspace(0, 1, n_width, dtype=rows.dtype, device=rows.device)[:, None]
        scale = (spread_lo + t * (spread_hi - spread_lo)) / self.qmax
        scale = scale.clamp_min(1e-4 if self.is_input else 1e-8)
        if self.zero_fixed:
            return scale, torch.zeros_like(scale)
        mid = 2 ** (self.bits - 1)
        zeros = torch.arange(mid - n_zero // 2, mid + n_zero // 2, dtype=rows.dtype, device=rows.device)
        scale = scale.repeat(n_zero, 1)                                        # zero point outer, width inner
        return scale, zeros.repeat_interleave(n_width)[:, None].expand_as(scale).clone()

    def pick(self, scales, zeros, error_fn):
        """Set the candidate (rows of `scales`, `zeros`) with the least `error_fn(scale, zero)` (per channel where the
        error is per channel); returns the index picked per channel."""
        return self.pick_errors(scales, zeros, torch.stack([error_fn(s, z) for s, z in zip(scales, zeros)]))

    def pick_errors(self, scales, zeros, errs):
        """`pick` with the errors of every candidate given at once: (K, C) or (K, 1)."""
        best = errs.argmin(0)
        idx = best.expand(scales.shape[1]) if best.numel() == 1 else best
        cols = torch.arange(scales.shape[1], device=scales.device)
        self._set(scale=scales[idx, cols], zero_point=zeros[idx, cols])
        return idx

    def expand_tokens(self, n):
        """FIMA-Q's `token_channel_wise`: one scale per token along `token_axis` (n of them), each starting at the
        searched value, so that reconstruction can train them apart; the zero point stays per tensor / head."""
        self._set(scale=self.scale.reshape(-1, 1).expand(-1, n))

    def quantize(self, x):
        if self.scale.dim() < 2:
            return super().quantize(x)
        groups, n = self.scale.shape
        shape = [1] * x.dim()
        shape[self.token_axis] = n
        if groups > 1:
            shape[self.channel_axis] = groups
        return self.fake_quant(x, self.scale.reshape(shape), _broadcast(self.zero_point, x, self.channel_axis))

    def _calibrate(self, obs):
        lo, hi, rows = self._reduce_stats(obs)
        scales, zeros = self.candidates(rows)
        self.pick(scales, zeros, lambda s, z: (self.fake_quant(rows, s, z) - rows).pow(2).sum(0))


__all__ = ["PercentileGridQuantizer", "MODES"]
