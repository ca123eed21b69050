"""AdaRound (Nagel et al., ICML 2020, arXiv 2004.10568) and QDrop (Wei et al., ICLR 2022, arXiv 2203.05740) as
attachments to a reconstruction unit, used by the `qdrop_recon` pass (plugin.quant.recon.qdrop).

AdaRound (paper Eq. 21-24): a weight w on a uniform grid (scale s, zero point z) is quantized as
    q = clamp(⌊w/s + z⌋ + h(α), qmin, qmax),   ŵ = s·(q − z),
with the rectified sigmoid h(α) = clamp(σ(α)·(ζ − γ) + γ, 0, 1), ζ = 1.1, γ = −0.1, while training ("soft"), and
h = [α ≥ 0] once hardened. α starts where h(α) equals the fractional part of w/s + z, so the soft weight starts at the
float weight and the hard one at nearest rounding. The regulariser Σ 1 − |2h − 1|^β (Eq. 24) with β annealed from
20 to 2 pushes every h to 0 or 1. The scale and zero point stay as calibration set them (as in the official APHQ-ViT
and FIMA-Q code, whose AdaRound quantizer does not train its scale).

QDrop (paper Sec. 4): while training, each element of an activation quantizer's output is replaced by its float input
with probability `drop_prob`. (The official code names the complementary probability `drop_prob`: the chance of
keeping the quantized value; at its default 0.5 the two readings agree.)

Our choices: both act through forward hooks on the unit's quantizers (no module is swapped, so `state_dict` and the
float reference are untouched), and both are active only while autograd records (`torch.is_grad_enabled()`): the
engine's start and final errors, measured under no_grad, see the hard rounding and no drop. α is a plain leaf tensor,
not a registered parameter: it lives for one unit and must not enter the float reference's parameter snapshot.
"""
import torch

from ..quantizers import UniformQuantizer, _broadcast

GAMMA, ZETA = -0.1, 1.1


def rectified_sigmoid(alpha):
    return torch.clamp(torch.sigmoid(alpha) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def can_adaround(q):
    return isinstance(q, UniformQuantizer) and q.enabled and q.ready


class AdaRoundWeight:
    """Learned rounding of one module's weight on its weight quantizer's grid (a UniformQuantizer)."""

    def __init__(self, module, quantizer):
        self.module, self.q = module, quantizer
        with torch.no_grad():
            x = self._grid(module.weight.detach())
            rest = x - x.floor()  # in [0, 1): h(α) = rest at the start
            self.alpha = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)).requires_grad_()
        self.handle = quantizer.register_forward_hook(self._hook)

    def _grid(self, w):
        q = self.q
        return w / _broadcast(q.scale, w, q.channel_axis) + _broadcast(q.zero_point, w, q.channel_axis)

    def soft(self):
        return rectified_sigmoid(self.alpha)

    def hard(self):
        return (self.alpha >= 0).to(self.alpha.dtype)

    def _value(self, w, h):
        q = self.q
        codes = torch.clamp(self._grid(w).floor() + h, q.qmin, q.qmax)
        return (codes - _broadcast(q.zero_point, w, q.channel_axis)) * _broadcast(q.scale, w, q.channel_axis)

    def _hook(self, quantizer, args, output):
        if not (quantizer.enabled and quantizer.ready):
            return None  # the float reference runs with quantizers off: leave the float weight alone
        h = self.soft() if torch.is_grad_enabled() else self.hard()
        return self._value(args[0], h)

    def regulariser(self, beta):
        """Σ 1 − |2h − 1|^β over the weight (AdaRound Eq. 24)."""
        return (1.0 - (2.0 * self.soft() - 1.0).abs().pow(beta)).sum()

    @torch.no_grad()
    def harden(self):
        """Write the hard-rounded weight into the module: a point of the grid, which the quantizer's own nearest
        rounding maps to itself, so fake-quant, freeze and save/load see the learned codes."""
        self.module.weight.copy_(self._value(self.module.weight, self.hard()))
        self.remove()

    def remove(self):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


class RoundingSchedule:
    """AdaRound's annealed exponent β (a linear decay from `b_start` to `b_end` after a warm-up fraction of the
    iterations, during which the regulariser is off), as in the official code's LinearTempDecay."""

    def __init__(self, iters, warmup=0.2, b_start=20.0, b_end=2.0):
        self.iters, self.start, self.b_start, self.b_end = iters, warmup * iters, b_start, b_end

    def active(self, step):
        return step >= self.start

    def beta(self, step):
        if step < self.start:
            return self.b_start
        rel = (step - self.start) / max(self.iters - self.start, 1e-12)
        return self.b_end + (self.b_start - self.b_end) * max(0.0, 1.0 - rel)


class DropGenerators:
    """One seeded generator per device, for the QDrop masks (reproducible given the unit's seed)."""

    def __init__(self, seed):
        self.seed, self.gens = seed, {}

    def rand_like(self, x):
        g = self.gens.get(x.device)
        if g is None:
            g = self.gens[x.device] = torch.Generator(device=x.device).manual_seed(self.seed)
        return torch.rand(x.shape, generator=g, device=x.device, dtype=torch.float32)

    def mix(self, quant, float_, prob):
        """Each element is `float_` with probability `prob`, else `quant`."""
        return torch.where(self.rand_like(quant) < prob, float_, quant)


class ActivationDrop:
    """QDrop on activation quantizers: while training, each output element falls back to the float input with
    probability `prob`."""

    def __init__(self, quantizers, prob, gens):
        self.prob, self.gens = prob, gens
        self.handles = [q.register_forward_hook(self._hook) for q in quantizers] if prob > 0 else []

    def _hook(self, quantizer, args, output):
        if not (torch.is_grad_enabled() and quantizer.enabled and quantizer.ready):
            return None
        return self.gens.mix(output, args[0], self.prob)

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []


__all__ = ["ActivationDrop", "AdaRoundWeight", "DropGenerators", "RoundingSchedule", "can_adaround",
           "rectified_sigmoid"]
