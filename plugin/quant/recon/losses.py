"""Block-output losses of the `qdrop_recon` pass, one interface: `loss(outputs, targets, extra)` returns a list of
(coefficient, term); the pass divides each term by its value at the first step (and again after `extra` is
refreshed) and sums them with the coefficients, as the official APHQ-ViT and FIMA-Q code do (their reconstruction
loss is `2·rec / rec₀`, FIMA-Q's Fisher loss `p1·L_lowrank / L_lowrank₀ + p2·L_diag / L_diag₀`).

`outputs` / `targets` are the unit's output tensors (quantized unit) and its float targets, lists of equal length;
`extra` is what the loss pre-computed over the calibration set (plugin.quant.recon.sensitivity), or None.

- "mse": plain block-output mean squared error.
- "aph": APHQ-ViT's average-perturbation Hessian loss (Wu et al., CVPR 2025): mean((ŷ − y)² ⊙ w) with w (one weight
  per output position, averaged over the calibration items) from `sensitivity.perturbation_hessian`.
- "fisher_dplr": FIMA-Q's Fisher information as diagonal plus low rank (Wang et al., CVPR 2025): with
  c = |ŷ − y| flattened per item, G (k × N) the captured mean |∂L/∂y| rows and D (k × N) the captured mean |ŷ − y|
  rows (`sensitivity.FisherDPLR`), the low-rank term mean_b (c_b Gᵀ)(D Dᵀ)⁻¹(c_b Gᵀ)ᵀ and the diagonal term
  mean(c² ⊙ mean_k G). With no low-rank rows (rank 0) only the diagonal term remains: the `aph` form with the
  weights mean_k G.
- "kl" (the classification head, as both official codes do for their `head` unit): KL(softmax(y) ‖ softmax(ŷ)).
"""
import torch
import torch.nn.functional as F

from ..errors import CalibrationError
from ..registry import Registry

LOSSES = Registry("reconstruction loss")


def register_loss(name):
    return LOSSES.register(name)


def _pairs(outputs, targets):
    if len(outputs) != len(targets):
        raise CalibrationError(f"a unit returned {len(outputs)} tensors, its float target {len(targets)}")
    return [(o.float(), t.float()) for o, t in zip(outputs, targets)]


@register_loss("mse")
def mse_loss(outputs, targets, extra=None):
    return [(2.0, sum(F.mse_loss(o, t) for o, t in _pairs(outputs, targets)))]


@register_loss("aph")
def aph_loss(outputs, targets, extra):
    """extra: one weight tensor per output, shaped (1, *item shape) (or broadcastable to the output)."""
    if extra is None or len(extra) != len(outputs):
        raise CalibrationError(f"aph loss: needs one weight tensor per unit output, got "
                               f"{'none' if extra is None else len(extra)} for {len(outputs)}")
    return [(2.0, sum(((o - t).pow(2) * w).mean() for (o, t), w in zip(_pairs(outputs, targets), extra)))]


def _flat_abs_error(outputs, targets):
    return torch.cat([(o - t).abs().flatten(1) for o, t in _pairs(outputs, targets)], dim=1)


@register_loss("fisher_dplr")
def fisher_dplr_loss(outputs, targets, extra):
    """extra: a sensitivity.FisherDPLR (rows G, inverse_b or None, coefficients p_lowrank and p_diag)."""
    if extra is None:
        raise CalibrationError("fisher_dplr loss: needs the captured Fisher rows")
    c = _flat_abs_error(outputs, targets)                       # (B, N)
    diag = (c.pow(2) * extra.grads.mean(0)).mean()
    if extra.inverse_b is None:
        return [(extra.p_diag, diag)]
    a = c @ extra.grads.t()                                      # (B, k)
    lowrank = ((a @ extra.inverse_b) * a).sum(1).mean()
    return [(extra.p_lowrank, lowrank), (extra.p_diag, diag)]


@register_loss("kl")
def kl_loss(outputs, targets, extra=None):
    (o, t), = _pairs(outputs, targets)
    o, t = o.flatten(0, -2), t.flatten(0, -2)
    return [(2.0, F.kl_div(F.log_softmax(o, dim=-1), F.softmax(t, dim=-1), reduction="batchmean"))]


class Normalised:
    """Σ coefficient · term / term₀, with term₀ each term's value at the first call after `restart()`. `ratio` is the
    last value relative to its start (1 at a restart), for the engine's divergence guard."""

    def __init__(self, normalise=True):
        self.normalise, self.start, self.ratio = normalise, None, None

    def restart(self):
        self.start = None

    def __call__(self, terms):
        if not self.normalise:
            total = sum(c * t for c, t in terms)
            if self.start is None:
                self.start = total.detach().clamp_min(1e-30)
            self.ratio = total.detach() / self.start
            return total
        if self.start is None or len(self.start) != len(terms):
            self.start = [t.detach().clamp_min(1e-30) for _, t in terms]
        total = sum(c * t / s for (c, t), s in zip(terms, self.start))
        self.ratio = total.detach() / max(sum(c for c, _ in terms), 1e-30)
        return total


__all__ = ["LOSSES", "Normalised", "aph_loss", "fisher_dplr_loss", "kl_loss", "mse_loss", "register_loss"]
