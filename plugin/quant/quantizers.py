"""Fake quantizers with a straight-through gradient, and their range searches.

Every quantizer is an nn.Module holding its parameters as buffers (so `state_dict` carries them), built from a
`QuantSpec` by `build_quantizer`. `calibrate(obs)` sets the parameters from an `Observation` (exact per-channel
min/max plus a bounded random sample of rows); `forward(x)` returns the fake-quantized tensor once calibrated and `x`
unchanged before that or while disabled. Rounding uses a straight-through estimator so block reconstruction can
train through the quantizers (scales may be turned into parameters by the reconstruction pass).

The uniform grid lives here; the non-uniform grids live with their method (plugin.quant.methods: log2 and log√2 in
repq, twin-uniform in ptq4vit, TanQ in dopq, SULQ in isvit, DFQ in aiqvit; their shared base in post_softmax.py).
"""

import torch
import torch.nn as nn

from .errors import CalibrationError, ConfigError
from .spec import QUANTIZERS, QuantSpec


def register_quantizer(kind):
    def deco(cls):
        cls.kind = kind
        return QUANTIZERS.register(kind, cls)
    return deco


def build_quantizer(spec: QuantSpec, channel_axis: int = -1) -> "Quantizer":
    return QUANTIZERS[spec.kind](spec, channel_axis)


def round_ste(x):
    """Round to nearest with an identity gradient."""
    if not (x.requires_grad and torch.is_grad_enabled()):
        return x.round()  # calibration and inference: no graph, so skip the two extra passes over x
    return (x.round() - x).detach() + x


class Observation:
    """What calibration saw at one quantization site.

    `min`/`max` are exact per-channel extrema over every value seen; `samples` is a bounded uniform random subset of
    rows, shape (rows, channels), with channels along the quantizer's channel axis.
    """

    def __init__(self, min, max, samples, count=0):
        self.min, self.max, self.samples, self.count = min, max, samples, count

    @classmethod
    def from_tensor(cls, x, channel_axis):
        rows = x.detach().movedim(channel_axis, -1).reshape(-1, x.shape[channel_axis]).float()
        return cls(rows.amin(0), rows.amax(0), rows, rows.shape[0])

    def map_channels(self, fn):
        """Apply an increasing per-channel affine map `fn(t)` (broadcast over the last dim) to every statistic."""
        return Observation(fn(self.min), fn(self.max), fn(self.samples), self.count)


def _broadcast(param, x, channel_axis):
    """Reshape a per-channel vector (or a 1-element tensor) to broadcast against x along channel_axis."""
    if param.numel() == 1:
        return param.reshape(())
    shape = [1] * x.dim()
    shape[channel_axis] = -1
    return param.reshape(shape)


class Quantizer(nn.Module):
    """Base class. Subclasses define `_calibrate(obs)` and `quantize(x)`."""
    kind = "base"
    # Names of the range buffers reconstruction may train (`range_names`); None: "scale" where there is one.
    learnable_buffers = None

    def __init__(self, spec: QuantSpec, channel_axis: int = -1):
        super().__init__()
        self.spec = spec
        self.channel_axis = channel_axis
        self.enabled = True
        self.observer = None  # set by the calibration engine while it collects statistics; never saved
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._ready = False

    @property
    def bits(self):
        return self.spec.bits

    @property
    def ready(self):
        """Calibrated (or loaded from a calibrated state): forward quantizes while enabled."""
        return self._ready

    def range_names(self):
        """The range buffers reconstruction may train (a new kind declares `learnable_buffers`)."""
        if self.learnable_buffers is not None:
            return tuple(self.learnable_buffers)
        return ("scale",) if "scale" in self._buffers else ()

    def make_trainable(self, names):
        """Turn the buffers `names` into nn.Parameters of the same values (for reconstruction); returns them.
        `make_fixed(names)` turns them back."""
        params = []
        for name in names:
            p = nn.Parameter(self._buffers.pop(name).detach().clone())
            self.register_parameter(name, p)
            params.append(p)
        return params

    def make_fixed(self, names):
        """Turn the parameters `names` (from `make_trainable`) back into buffers, with their learned values."""
        for name in names:
            self.register_buffer(name, self._parameters.pop(name).detach())

    @property
    def per_channel(self):
        return self.spec.granularity in ("channel", "head")

    def extra_repr(self):
        return f"{self.kind}, bits={self.spec.bits}, {self.spec.granularity}, axis={self.channel_axis}"

    def forward(self, x):
        if self.observer is not None:
            self.observer.record(x)
        if not self.enabled or not self._ready:
            return x
        return self.quantize(x)

    def calibrate(self, obs: Observation):
        with torch.no_grad():
            self._calibrate(obs)
        return self._mark_ready()

    def set_params(self, **tensors):
        """Set parameter buffers directly (e.g. from a reparameterisation) and mark the quantizer calibrated."""
        self._set(**tensors)
        return self._mark_ready()

    def _mark_ready(self):
        self.initialized.fill_(True)
        self._ready = True
        return self

    def calibrate_tensor(self, x):
        """Calibrate directly from a full tensor (weights)."""
        return self.calibrate(Observation.from_tensor(x, self.channel_axis))

    def _reduce_stats(self, obs):
        """Per-channel (C,) or per-tensor (1,) min, max and the sample matrix to search over."""
        if self.per_channel:
            return obs.min, obs.max, obs.samples
        return obs.min.min().reshape(1), obs.max.max().reshape(1), obs.samples.reshape(-1, 1)

    def _set(self, **tensors):
        for name, value in tensors.items():
            setattr(self, name, value.detach().float().clone())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Parameters are sized at calibration time. A saved plan sizes the buffers before loading (plan.shape_buffers);
        # files saved before plans and resume checkpoints carry no shapes: resize the fresh buffers to the saved ones.
        for name in list(self._buffers):
            key = prefix + name
            if key in state_dict and self._buffers[name] is not None and self._buffers[name].shape != state_dict[key].shape:
                self._buffers[name] = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + "initialized"
        if key in state_dict:
            self._ready = bool(state_dict[key])

    def quantize(self, x):
        raise NotImplementedError

    def _calibrate(self, obs):
        raise NotImplementedError


# RepQ-ViT's candidate clipping quantiles (both tails for uniform grids, the upper one for log grids).
QUANTILE_CANDIDATES = (0.999, 0.9999, 0.99999)


def _quantile_rows(samples):
    """At most 2^24 elements of the (rows, channels) samples: torch.quantile's input limit."""
    return samples[: max(1, 2 ** 24 // samples.shape[1])]


def _search_best(candidates, error_fn):
    """Pick, per channel, the candidate with the smallest error. candidates: list of per-channel tensors."""
    best_err, best = None, None
    for cand in candidates:
        err = error_fn(cand)
        if best is None:
            best_err, best = err, [c.clone() for c in cand] if isinstance(cand, tuple) else cand.clone()
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        if isinstance(cand, tuple):
            best = [torch.where(better, c, b) for c, b in zip(cand, best)]
        else:
            best = torch.where(better, cand, best)
    return best


@register_quantizer("uniform")
class UniformQuantizer(Quantizer):
    """Uniform affine quantizer: q = clamp(round(x/s) + z, qmin, qmax), x̂ = s·(q − z).

    Symmetric: z = 0 and q in [-2^(b-1), 2^(b-1) - 1]. Asymmetric: q in [0, 2^b - 1] with an integer zero point.
    Ranges from min-max, percentiles (`options: lo_pct, hi_pct`), an MSE grid search over shrunken min-max ranges
    (`options: grid` candidates, `norm` p of the Lp error), or `quantile`: RepQ-ViT's search, which takes the
    [1 − p, p] quantiles for p in `options: pcts` (default 0.999, 0.9999, 0.99999) and keeps the one with the least
    squared error. `options: groups=G` (channel granularity, min-max only) shares one range among each of G equal
    slices of channels: PTQ4ViT's per-q/k/v-slice weight scale of a fused qkv Linear. That search uses the range as found (it need not hold 0; the zero point may then lie outside the
    code range), as RepQ-ViT's code does: a post-LayerNorm channel that never crosses zero keeps its whole grid.
    `options: zero_after_round=True` (asymmetric only) computes q = clamp(round(x/s) + z, 0, 2^b − 1) instead, the
    order of RepQ-ViT's code: the same values for an integer z; a fractional z (its post-LN fold, `Recipe.reparam_fold`
    "official") shifts the interior of the grid by that fraction of a step while the ends stay at 0 and 2^b − 1, so the
    grid holds 2^b + 1 values and has no b-bit integer form (plugin.quant.deploy.lower refuses it).
    """

    def __init__(self, spec, channel_axis=-1):
        super().__init__(spec, channel_axis)
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1))
        self.groups = spec.opts.get("groups")
        if self.groups is not None:
            if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 1:
                raise ConfigError(f"uniform: groups must be a positive integer, got {self.groups!r}")
            if spec.granularity != "channel" or spec.search != "minmax":
                raise ConfigError("uniform: groups (one range per equal slice of channels) needs granularity "
                                  f"'channel' and search 'minmax', got {spec.granularity!r} and {spec.search!r}")
        self.zero_after_round = spec.opts.get("zero_after_round", False)
        if not isinstance(self.zero_after_round, bool) or (self.zero_after_round and spec.symmetric):
            raise ConfigError("uniform: zero_after_round must be True or False, and True only on an asymmetric "
                              f"grid, got {self.zero_after_round!r} (symmetric={spec.symmetric})")
        if spec.symmetric:
            self.qmin, self.qmax = -(2 ** (spec.bits - 1)), 2 ** (spec.bits - 1) - 1
        else:
            self.qmin, self.qmax = 0, 2 ** spec.bits - 1

    def params_from_range(self, lo, hi, include_zero=True):
        if include_zero:
            lo = torch.minimum(lo, torch.zeros_like(lo))
            hi = torch.maximum(hi, torch.zeros_like(hi))
        if self.spec.symmetric:
            scale = torch.maximum(-lo, hi) / ((self.qmax - self.qmin) / 2)
            scale = scale.clamp_min(1e-8)
            return scale, torch.zeros_like(scale)
        scale = ((hi - lo) / (self.qmax - self.qmin)).clamp_min(1e-8)
        zero = (-lo / scale).round()
        return scale, (zero.clamp(self.qmin, self.qmax) if include_zero else zero)

    def fake_quant(self, x, scale, zero):
        if self.zero_after_round:  # RepQ-ViT's order: the zero point (possibly fractional) added after rounding
            q = torch.clamp(round_ste(x / scale) + zero, self.qmin, self.qmax)
            return (q - zero) * scale
        if not (torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad or zero.requires_grad)):
            # no graph (calibration searches, evaluation): the same operations in place on one new tensor, so the
            # same values with one allocation instead of five (the candidate searches stack k copies of x)
            t = x / scale
            if t.shape == torch.broadcast_shapes(t.shape, zero.shape):
                return t.add_(zero).clamp_(self.qmin, self.qmax).round_().sub_(zero).mul_(scale)
        # Clamp before rounding: the straight-through gradient is then 1 everywhere inside the range, end bins too.
        q = round_ste(torch.clamp(x / scale + zero, self.qmin, self.qmax))
        return (q - zero) * scale

    def quantize(self, x):
        return self.fake_quant(x, _broadcast(self.scale, x, self.channel_axis), _broadcast(self.zero_point, x, self.channel_axis))

    def _calibrate(self, obs):
        lo, hi, samples = self._reduce_stats(obs)
        search, opts = self.spec.search, self.spec.opts
        if self.groups is not None:  # one range per slice (e.g. the q, k and v rows of a fused qkv weight)
            if lo.numel() % self.groups:
                raise CalibrationError(f"uniform: {lo.numel()} channels do not split into {self.groups} equal groups")
            size = lo.numel() // self.groups
            lo = lo.view(self.groups, size).amin(1).repeat_interleave(size)
            hi = hi.view(self.groups, size).amax(1).repeat_interleave(size)
        if search == "percentile":
            flat = _quantile_rows(samples)
            lo = torch.quantile(flat, opts.get("lo_pct", 0.0001), dim=0)
            hi = torch.quantile(flat, opts.get("hi_pct", 0.9999), dim=0)
        elif search == "mse":
            lo, hi = self.mse_range(lo, hi, samples, grid=opts.get("grid", 40), norm=opts.get("norm", 2.0))
        elif search == "quantile":
            scale, zero = self.quantile_params(samples, opts.get("pcts", QUANTILE_CANDIDATES))
            self._set(scale=scale, zero_point=zero)
            return
        scale, zero = self.params_from_range(lo, hi)
        self._set(scale=scale, zero_point=zero)

    def quantile_params(self, samples, pcts):
        """RepQ-ViT's range search: (scale, zero) of the [1 − p, p] quantile range with the least squared error."""
        flat = _quantile_rows(samples)
        candidates = []
        for p in pcts:
            lo, hi = torch.quantile(flat, torch.tensor([1.0 - p, p], device=flat.device, dtype=flat.dtype), dim=0)
            candidates.append(self.params_from_range(lo, hi, include_zero=self.spec.symmetric))
        return _search_best(candidates, lambda c: (self.fake_quant(samples, *c) - samples).pow(2).sum(0))

    def mse_range(self, lo, hi, samples, grid=40, norm=2.0, low_frac=0.3):
        """Shrink [lo, hi] by a factor in [low_frac, 1] per channel, minimising the Lp quantization error."""
        def error(cand):
            scale, zero = self.params_from_range(*cand)
            return (self.fake_quant(samples, scale, zero) - samples).abs().pow(norm).sum(0)

        fracs = torch.linspace(1.0, low_frac, grid).tolist()
        lo_best, hi_best = _search_best([(lo * f, hi * f) for f in fracs], error)
        return lo_best, hi_best


__all__ = ["Quantizer", "UniformQuantizer", "QUANTILE_CANDIDATES",
           "Observation", "build_quantizer", "register_quantizer", "QUANTIZERS", "round_ste"]
