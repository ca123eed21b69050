"""I&S-ViT's post-Softmax quantizer SULQ (registered as "sulq"); the shared base is plugin.quant.post_softmax."""

import torch

from ...post_softmax import PostSoftmaxQuantizer
from ...quantizers import _broadcast, _search_best, register_quantizer, round_ste


@register_quantizer("sulq")
class ShiftUniformLog2Quantizer(PostSoftmaxQuantizer):
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


__all__ = ["ShiftUniformLog2Quantizer"]
