"""DopQ-ViT's post-Softmax quantizer TanQ (registered as "tanq"); the shared base is plugin.quant.post_softmax."""
import math

import torch

from ...post_softmax import PostSoftmaxQuantizer
from ...quantizers import _broadcast, _search_best, register_quantizer, round_ste


@register_quantizer("tanq")
class SoftmaxTanQuantizer(PostSoftmaxQuantizer):
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


__all__ = ["SoftmaxTanQuantizer"]
