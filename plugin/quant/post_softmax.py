"""The base of the post-Softmax quantizers of TanQ (DopQ-ViT), SULQ (I&S-ViT) and DFQ (AIQViT): shared here so
that each method's package imports the core only.

All of them take non-negative inputs (attention probabilities) and use at most 2^b output levels. Their parameters are
buffers set by `_calibrate` from an `Observation`; rounding goes through `round_ste`, so reconstruction passes can train
through them. Where a paper leaves a detail open, the choice and its reason are in docs/methods.md.

Range and shape searches score a candidate with `criterion` (spec option):
- `"mse"`: sum of squared quantization errors;
- `"attn"` (per-tensor only): for each softmax row, Σ_j e_j² + (Σ_j e_j)² with e = Q(p) − p. This is E‖Δ(p·V)‖² when
  the value entries are i.i.d. with unit mean and unit variance: the squared term is the noise, the row-sum term the
  bias that appears when many small probabilities all round the same way (a rounded row no longer sums to one).
Per-channel (or per-head) quantizers always use "mse", per channel.
"""
from .errors import ConfigError
from .quantizers import Quantizer

# Range searches look at no more than this many sampled values (whole rows are kept, so "attn" stays valid).
_SEARCH_ELEMS = 2 ** 18


class PostSoftmaxQuantizer(Quantizer):
    """Shared calibration plumbing: the sample rows to search on and the per-candidate error."""
    default_criterion = "mse"

    def __init__(self, spec, channel_axis=-1):
        super().__init__(spec, channel_axis)
        self.top = 2 ** spec.bits - 1
        self.criterion = spec.opts.get("criterion", self.default_criterion)
        if self.criterion not in ("mse", "attn"):
            raise ConfigError(f"{self.kind}: criterion must be 'mse' or 'attn', got {self.criterion!r}")

    def _search_stats(self, obs):
        """(lo, hi, rows): per-channel (C,) or per-tensor (1,) extrema and sample rows (R, C) to score candidates on."""
        lo, hi, _ = self._reduce_stats(obs)
        rows = obs.samples
        stride = -(-rows.shape[0] // max(1, _SEARCH_ELEMS // rows.shape[1]))  # evenly spread: rows come in input order
        rows = rows[::stride]
        return lo.clamp_min(0.0), hi.clamp_min(1e-8), rows

    def _error(self, rows, xq):
        e = xq - rows
        if self.per_channel:
            return e.pow(2).sum(0)
        if self.criterion == "attn":
            return (e.pow(2).sum(1) + e.sum(1).pow(2)).sum().reshape(1)
        return e.pow(2).sum().reshape(1)


__all__ = ["PostSoftmaxQuantizer"]
