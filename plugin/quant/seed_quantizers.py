"""Post-Softmax quantizers of the three seed methods: TanQ (DopQ-ViT), SULQ (I&S-ViT) and DFQ (AIQViT, two readings).

All three take non-negative inputs (attention probabilities) and use at most 2^b output levels. Their parameters are
buffers set by `_calibrate` from an `Observation`; rounding goes through `round_ste`, so reconstruction passes can train
through them. Where a paper leaves a detail open, the choice and its reason are in docs/methods.md.

Range and shape searches score a candidate with `criterion` (spec option):
- `"mse"`: sum of squared quantization errors;
- `"attn"` (per-tensor only): for each softmax row, Σ_j e_j² + (Σ_j e_j)² with e = Q(p) − p. This is E‖Δ(p·V)‖² when
  the value entries are i.i.d. with unit mean and unit variance: the squared term is the noise, the row-sum term the
  bias that appears when many small probabilities all round the same way (a rounded row no longer sums to one).
Per-channel (or per-head) quantizers always use "mse", per channel.
"""
import math

import torch

from .errors import ConfigError
from .quantizers import Quantizer, _broadcast, _search_best, register_quantizer, round_ste

# Range searches look at no more than this many sampled values (whole rows are kept, so "attn" stays valid).
_SEARCH_ELEMS = 2 ** 18


class _PostSoftmaxQuantizer(Quantizer):
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


@register_quantizer("tanq")
class SoftmaxTanQuantizer(_PostSoftmaxQuantizer):
    """Tan quantizer (TanQ) of DopQ-ViT (Yang et al., arXiv 2408.03291; equation numbers not verified, see docs).

    A tangent warp makes the grid dense at both ends of [0, s]: near 0, where most post-Softmax values are, and near
    s ≈ 1, where the few large, decisive attention values are (a log2 grid has a step of s/2 there). With u = x/s
    clamped to [0, 1], angles θ0, θ1 ∈ (0, π/2), θ(u) = −θ0 + (θ0 + θ1)·u and N = 2^b − 1:

        g(u) = (tan θ(u) + tan θ0) / (tan θ1 + tan θ0)            ∈ [0, 1], increasing
        q    = clamp(round(N·g(u)), 0, N)                           (2^b codes)
        x̂    = s · (atan(−tan θ0 + (tan θ1 + tan θ0)·q/N) + θ0) / (θ0 + θ1)

    Levels: x_j = s·(atan(−tan θ0 + (tan θ1 + tan θ0)·j/N) + θ0)/(θ0 + θ1), j = 0 … 2^b − 1, with x_0 = 0 and x_N = s.
    The larger θ0 (θ1), the denser the levels near 0 (near s); θ0 = θ1 → 0 tends to the uniform grid. The paper's
    exact parameterisation was not available here: the two-angle form is our choice (see docs/methods.md); s is the
    observed maximum (the values near 1 are the ones TanQ exists to keep, so they are never clipped) and (θ0, θ1) are
    grid-searched per quantizer.
    """
    ANGLES = (0.3, 0.6, 0.9, 1.1, 1.25, 1.35, 1.42, 1.48, 1.52)
    learnable_buffers = ("scale",)  # what reconstruction may train; the grid's shape (angles) stays as searched

    def __init__(self, spec, channel_axis=-1):
        super().__init__(spec, channel_axis)
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("theta_lo", torch.full((1,), math.pi / 4))
        self.register_buffer("theta_hi", torch.full((1,), math.pi / 4))

    def fake_quant(self, x, scale, t0, t1):
        u = (x / scale).clamp(0.0, 1.0)
        base, span = torch.tan(t0), torch.tan(t0) + torch.tan(t1)
        g = (torch.tan(-t0 + (t0 + t1) * u) + base) / span
        q = torch.clamp(round_ste(g * self.top), 0, self.top)
        return scale * (torch.atan(-base + span * q / self.top) + t0) / (t0 + t1)

    def quantize(self, x):
        b = lambda p: _broadcast(p, x, self.channel_axis)  # noqa: E731
        return self.fake_quant(x, b(self.scale), b(self.theta_lo), b(self.theta_hi))

    def _calibrate(self, obs):
        _, hi, rows = self._search_stats(obs)
        ones = torch.ones_like(hi)
        cands = [(ones * t0, ones * t1) for t0 in self.ANGLES for t1 in self.ANGLES]
        t0, t1 = _search_best(cands, lambda c: self._error(rows, self.fake_quant(rows, hi, *c)))
        self._set(scale=hi, theta_lo=t0, theta_hi=t1)


@register_quantizer("sulq")
class ShiftUniformLog2Quantizer(_PostSoftmaxQuantizer):
    """Shift-uniform-log2 quantizer (SULQ) of I&S-ViT (Zhong et al., arXiv 2311.10126; equation numbers not verified).

    Shift the input by η, take log2, quantize uniformly in the log domain, map back:

        y  = log2(x + η),   l = log2(x_min + η),   h = log2(x_max + η),   Δ = (h − l)/(2^b − 1)
        q  = clamp(round((y − l)/Δ), 0, 2^b − 1)
        x̂  = 2^(l + q·Δ) − η

    Levels: x_j = (x_min + η)·((x_max + η)/(x_min + η))^(j/(2^b − 1)) − η, j = 0 … 2^b − 1: a geometric grid of x + η
    from x_min to x_max, so every code is used and the whole observed domain is covered (a plain log2 grid clamps
    everything below its smallest power to one code). x_min, x_max are the observed extrema (x_min ≥ 0). η is
    grid-searched over the public code's candidates (0.001 … 1.0); small η approaches a log2 grid, large η a uniform
    one. Unlike the public code we do not round the exponent l + qΔ to an integer at dequantisation (that would make
    several codes share a level); see docs/methods.md.
    """
    ETAS = (0.001, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.2, 0.5, 1.0)
    learnable_buffers = ("log_step",)  # the log-domain step; l and η stay, so the bottom level stays x_min

    def __init__(self, spec, channel_axis=-1):
        super().__init__(spec, channel_axis)
        self.register_buffer("eta", torch.ones(1))
        self.register_buffer("log_lo", torch.zeros(1))
        self.register_buffer("log_step", torch.full((1,), 1.0 / self.top))

    def fake_quant(self, x, eta, lo, step):
        y = torch.log2(x.clamp_min(0.0) + eta)
        q = torch.clamp(round_ste((y - lo) / step), 0, self.top)
        return torch.pow(2.0, lo + q * step) - eta

    def quantize(self, x):
        b = lambda p: _broadcast(p, x, self.channel_axis)  # noqa: E731
        return self.fake_quant(x, b(self.eta), b(self.log_lo), b(self.log_step))

    def params_for(self, eta, lo, hi):
        log_lo = torch.log2(lo + eta)
        return eta, log_lo, ((torch.log2(hi + eta) - log_lo) / self.top).clamp_min(1e-8)

    def _calibrate(self, obs):
        lo, hi, rows = self._search_stats(obs)
        cands = [self.params_for(torch.full_like(hi, eta), lo, hi) for eta in self.ETAS]
        eta, log_lo, step = _search_best(cands, lambda c: self._error(rows, self.fake_quant(rows, *c)))
        self._set(eta=eta, log_lo=log_lo, log_step=step)


@register_quantizer("dfq")
class DynamicFocusingQuantizer(_PostSoftmaxQuantizer):
    """Dynamic focusing quantizer (DFQ) of AIQViT (Jiang et al., AAAI 2025, arXiv 2502.04628).

    The paper picks "the most valuable interval" of post-Softmax values and gives it a higher resolution; its exact
    grid was not available here, so this is our construction (docs/methods.md): a three-segment piecewise-uniform
    grid on [0, M] whose middle segment, the focused interval [a, a + n·Δf], has steps ρ times finer than the rest.
    With N = 2^b − 1 codes split as i codes below the focus, n in it and N − i − n above it:

        Δr = M / (N − n + n/ρ),   Δf = Δr/ρ,   a = i·Δr,   e = a + n·Δf
        g(x) = x/Δr  (x < a),   i + (x − a)/Δf  (a ≤ x ≤ e),   i + n + (x − e)/Δr  (x > e)
        q = clamp(round(g(x)), 0, N),    x̂ = g⁻¹(q)

    Levels: j·Δr for j = 0 … i, then a + k·Δf for k = 1 … n, then e + k·Δr for k = 1 … N − i − n (the last is M):
    2^b levels, 0 and M exact, no code wasted. M is the observed maximum. The focused interval (its position i, its
    share n ∈ {N/2, 3N/4} of the codes and its refinement ρ ∈ {1, 2, 4, 8, 16, 32}) is chosen per quantization site
    from the calibration data ("dynamic" = data-driven, per layer; nothing is searched at run time), minimising
    `criterion` (default "attn", the attention-output-aware error above).
    """
    default_criterion = "attn"
    FOCUS_SHARES = (1 / 2, 3 / 4)
    REFINEMENTS = (1, 2, 4, 8, 16, 32)
    POSITIONS = 16
    learnable_buffers = ("rest_step", "focus_step")

    def __init__(self, spec, channel_axis=-1):
        super().__init__(spec, channel_axis)
        # Before calibration: ρ = 1, the uniform grid on [0, 1].
        n = self.top // 2
        self.register_buffer("rest_step", torch.full((1,), 1.0 / self.top))
        self.register_buffer("focus_step", torch.full((1,), 1.0 / self.top))
        self.register_buffer("focus_first", torch.zeros(1))   # i: codes below the focused interval
        self.register_buffer("focus_codes", torch.full((1,), float(n)))  # n: codes inside it

    def fake_quant(self, x, dr, df, i, n):
        a = i * dr
        e = a + n * df
        g = torch.where(x < a, x / dr, torch.where(x <= e, i + (x - a) / df, i + n + (x - e) / dr))
        q = torch.clamp(round_ste(g), 0, self.top)
        return torch.where(q <= i, q * dr, torch.where(q <= i + n, a + (q - i) * df, e + (q - i - n) * dr))

    def quantize(self, x):
        b = lambda p: _broadcast(p, x, self.channel_axis)  # noqa: E731
        return self.fake_quant(x, b(self.rest_step), b(self.focus_step), b(self.focus_first), b(self.focus_codes))

    def candidates(self, hi):
        top, ones = self.top, torch.ones_like(hi)
        for share in self.FOCUS_SHARES:
            n = max(1, round(top * share))
            firsts = sorted({round(t) for t in torch.linspace(0, top - n, self.POSITIONS).tolist()})
            for rho in self.REFINEMENTS:
                dr = hi / (top - n + n / rho)
                for i in firsts if rho > 1 else firsts[:1]:  # rho = 1 is the uniform grid wherever the focus is
                    yield dr, dr / rho, ones * i, ones * n

    def _calibrate(self, obs):
        _, hi, rows = self._search_stats(obs)
        dr, df, i, n = _search_best(list(self.candidates(hi)), lambda c: self._error(rows, self.fake_quant(rows, *c)))
        self._set(rest_step=dr, focus_step=df, focus_first=i, focus_codes=n)


@register_quantizer("dfq_interval")
class FocusedIntervalQuantizer(_PostSoftmaxQuantizer):
    """Dynamic focusing quantizer of AIQViT (Jiang et al., AAAI 2025, arXiv 2502.04628) as its summaries describe it:
    a learnable interval [b1, b2] per quantization site, uniform quantization inside it, clamping outside, no log.

        Δ = (b2 − b1)/N,   q = round((clamp(x, b1, b2) − b1)/Δ),   x̂ = b1 + q·Δ        (N = 2^b − 1)

    Levels: b1 + j·Δ, j = 0 … N: 2^b evenly spaced levels with b1 and b2 exact; values below b1 become b1, values
    above b2 become b2. The exact equation is not available (docs/methods.md); `dfq` is our other reading (a
    three-segment grid on [0, M]). Calibration searches b2 over fractions of the observed maximum and b1 over small
    fractions of [x_min, b2] (b1 = x_min included), minimising `criterion` (default "attn", as for `dfq`).
    Reconstruction trains both bounds: they are one buffer `bounds` (2, C) = (b1, b2), so the engine's relative step
    size (scale_lr × mean |bounds|) stays non-zero when b1 = 0, which it would not be for a b1 buffer of its own.
    """
    default_criterion = "attn"
    # b2 = max·f: steps of 1/40 from 1 to 1/2 (clipping a little of the top is often best), then geometric to 1/64.
    TOP_FRACTIONS = tuple(1 - k / 40 for k in range(20)) + tuple(2.0 ** (-k / 4) for k in range(4, 25))
    BOTTOM_FRACTIONS = (0.0, 1 / 256, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4)  # b1 = lo + t·(b2 − lo)
    learnable_buffers = ("bounds",)

    def __init__(self, spec, channel_axis=-1):
        super().__init__(spec, channel_axis)
        self.register_buffer("bounds", torch.tensor([[0.0], [1.0]]))  # before calibration: [0, 1]

    def fake_quant(self, x, lo, hi):
        step = (hi - lo).clamp_min(1e-8) / self.top
        # Clamp before rounding (torch.minimum/maximum: their gradient reaches the bounds for clamped values).
        q = round_ste((torch.maximum(torch.minimum(x, hi), lo) - lo) / step)
        return lo + q * step

    def quantize(self, x):
        b = lambda p: _broadcast(p, x, self.channel_axis)  # noqa: E731
        return self.fake_quant(x, b(self.bounds[0]), b(self.bounds[1]))

    @property
    def interval(self):
        """(b1, b2) as per-channel (or one-element) tensors."""
        return self.bounds[0], self.bounds[1]

    def candidates(self, lo, hi):
        for f in self.TOP_FRACTIONS:
            top = torch.maximum(hi * f, lo + 1e-8)
            for t in self.BOTTOM_FRACTIONS:
                yield lo + t * (top - lo), top

    def _calibrate(self, obs):
        lo, hi, rows = self._search_stats(obs)
        b1, b2 = _search_best(list(self.candidates(lo, hi)), lambda c: self._error(rows, self.fake_quant(rows, *c)))
        self._set(bounds=torch.stack([b1, b2]))


def interval_report(model):
    """{module name: (b1, b2)} of every FocusedIntervalQuantizer in `model` (per-tensor ones as floats)."""
    return {name: tuple(t.tolist() if t.numel() > 1 else t.item() for t in q.interval)
            for name, q in model.named_modules() if isinstance(q, FocusedIntervalQuantizer)}


__all__ = ["SoftmaxTanQuantizer", "ShiftUniformLog2Quantizer", "DynamicFocusingQuantizer",
           "FocusedIntervalQuantizer", "interval_report"]
