"""AIQViT's post-Softmax quantizer DFQ in two readings ("dfq", "dfq_interval") and `interval_report`; the shared
base is plugin.quant.post_softmax."""

import torch

from ...post_softmax import PostSoftmaxQuantizer
from ...quantizers import _broadcast, _search_best, register_quantizer, round_ste


@register_quantizer("dfq")
class DynamicFocusingQuantizer(PostSoftmaxQuantizer):
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
class FocusedIntervalQuantizer(PostSoftmaxQuantizer):
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


__all__ = ["DynamicFocusingQuantizer", "FocusedIntervalQuantizer", "interval_report"]
