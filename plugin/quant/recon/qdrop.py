"""Block reconstruction with AdaRound weight rounding and QDrop, the optimisation APHQ-ViT (Wu et al., CVPR 2025) and
FIMA-Q (Wang et al., CVPR 2025) share (both forks of AdaLog, Wu et al., ECCV 2024): the `qdrop_recon` pass.

Per unit (transformer block, or a quantized module outside blocks: patch embedding, head, patch merging), as their
official `BlockReconstructor.reconstruct_single_block` does:
- learned: every weight's AdaRound rounding (α; Adam at `w_lr`, the official code's Adam default 1e-3, no schedule)
  and the range buffers (`scale`) of every activation quantizer of the unit (Adam at `lr` = 4e-5 with a cosine
  decay to 0). Weight scales and zero points stay fixed;
- inputs: QDrop (plugin.quant.recon.adaround): each element of the unit's input is its float-model value with
  probability `drop_prob`, else its quantized-model value, and each activation quantizer's output falls back to
  its float input with the same probability;
- objective: the normalised block-output loss (`loss`: "mse", "aph", "fisher_dplr"; plugin.quant.recon.losses;
  the classification head uses the KL of softmaxes, as officially) plus `round_weight` · AdaRound's regulariser with
  β annealed from `b_start` to `b_end` after `warmup` of the iterations;
- after the unit: the rounding is hardened into the weights (grid points the weight quantizer maps to themselves),
  so freeze, save/load and later passes see the learned codes.

Our choices, beside the official code: units come from the adapter (blocks and quantized modules outside them)
rather than from timm class names; "fisher_dplr" with `rank` 0 keeps only the diagonal term; `aph_grad="fisher"`
replaces APHQ-ViT's ±1e-6 perturbation (float rounding noise, see plugin.quant.recon.sensitivity) by the sampled
Fisher diagonal; the engine's guards (NaN/inf, divergence of the normalised loss) roll a unit back, but
`rollback_if_worse` is off: the objective is not the MSE the engine compares.
"""
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..errors import ConfigError
from ..passes import is_int, is_number, register_pass
from ..spec import Role
from .adaround import ActivationDrop, AdaRoundWeight, DropGenerators, RoundingSchedule, can_adaround
from .block_recon import Learnables, ReconConfig
from .cache import depends_on_model, float_tensors
from .engine import ReconMethod, reconstruct, unit_cache
from .losses import LOSSES, Normalised
from .sensitivity import (FisherDPLR, RepeatedUnit, fisher_row, perturbation_hessian, reference_outputs,
                          sampled_fisher_diag)

# "paper": the official defaults (test_quant.py never overrides reconstruct_single_block's 20000 iterations; batch 32
# from configs/{3,4}bit/best.py). "small": a tenth of the iterations, same batch: for small models and quick runs.
QDROP_SETTINGS = {"paper": dict(iters=20000, batch_size=32), "small": dict(iters=2000, batch_size=32)}
APH_GRADS = ("perturb", "fisher")


@register_pass("qdrop_recon")
@dataclass
class QDropReconConfig(ReconConfig):
    """Options of `qdrop_recon` (and the ReconConfig options it shares: layers, max_loss_ratio, log_every, amp, …).

    setting: "paper" (20000 iterations, batch 32: the official defaults) or "small" (2000, batch 32).
    lr: Adam step size of the activation quantizers' scales (absolute, cosine decay; official 4e-5).
    w_lr: Adam step size of AdaRound's α (constant; official: Adam's default 1e-3).
    learn: ("act_scale",) (official) or () to keep activation scales fixed.
    drop_prob: QDrop probability of taking an element's float value (official 0.5; 0: plain quantized inputs).
    input_source: "quant" (QDrop mixes float- and quantized-model inputs) or "float" (float inputs only).
    loss: "mse", "aph" or "fisher_dplr" (plugin.quant.recon.losses).
    rank: fisher_dplr: the number of Fisher captures spread over the iterations (official k = 5), each adding a row
        to the low-rank part; 0: one capture at the start and the diagonal term only.
    p_lowrank, p_diag: fisher_dplr's coefficients of the low-rank and diagonal terms (official p1 = p2 = 1).
    aph_grad: aph: "perturb" (official ±`perturb` shift of the unit's output on the float model) or "fisher" (our
        sampled Fisher diagonal).
    temperature: of the task-loss KL the gradients come from (official 20).
    round_weight, b_start, b_end, warmup: AdaRound's regulariser weight (official 0.01), β from 20 to 2, and the
        fraction of iterations before the regulariser and the β decay start (0.2).
    """
    setting: str = "paper"
    lr: float = 4e-5
    w_lr: float = 1e-3
    learn: Tuple[str, ...] = ("act_scale",)
    drop_prob: float = 0.5
    loss: str = "mse"
    rank: int = 5
    p_lowrank: float = 1.0
    p_diag: float = 1.0
    aph_grad: str = "perturb"
    perturb: float = 1e-6
    temperature: float = 20.0
    round_weight: float = 0.01
    b_start: float = 20.0
    b_end: float = 2.0
    warmup: float = 0.2
    rollback_if_worse: bool = False

    def __post_init__(self):
        super().__post_init__()
        if any(x != "act_scale" for x in self.learn):
            raise ConfigError(f"{self.kind}: learn must be ('act_scale',) or (), got {self.learn!r}; AdaRound learns "
                              f"the weights' rounding")
        if self.loss not in LOSSES or self.loss == "kl":
            raise ConfigError(f"{self.kind}: unknown loss {self.loss!r}; known: aph, fisher_dplr, mse")
        if self.aph_grad not in APH_GRADS:
            raise ConfigError(f"{self.kind}: aph_grad must be one of {APH_GRADS}, got {self.aph_grad!r}")
        self.require(is_number(self.drop_prob) and 0 <= self.drop_prob <= 1, "drop_prob", "in [0, 1]")
        self.require(is_int(self.rank) and self.rank >= 0, "rank", "a non-negative integer")
        for name in ("w_lr", "round_weight", "p_lowrank", "p_diag"):
            self.require(is_number(getattr(self, name)) and getattr(self, name) >= 0, name, "a non-negative number")
        for name in ("temperature", "b_end", "perturb"):
            self.require(is_number(getattr(self, name)) and getattr(self, name) > 0, name, "a positive number")
        self.require(is_number(self.b_start) and self.b_start >= self.b_end, "b_start", "a number >= b_end")
        self.require(is_number(self.warmup) and 0 <= self.warmup < 1, "warmup", "in [0, 1)")

    def resolved(self, recipe=None):
        s = QDROP_SETTINGS[self.setting]
        return self.replace(iters=s["iters"] if self.iters is None else self.iters,
                            batch_size=s["batch_size"] if self.batch_size is None else self.batch_size)

    def run(self, ctx):
        """Reconstruct every unit (plugin.quant.recon.engine) with AdaRound, QDrop and the chosen loss."""
        return reconstruct(ctx, QDropRecon(self.resolved(ctx.recipe), ctx))


class QDropRecon(ReconMethod):
    """The method of `qdrop_recon` (see the module docstring)."""

    def __init__(self, cfg, ctx):
        super().__init__(cfg)
        self.ctx = ctx
        self.refs = None  # the float model's outputs per calibration batch, for the task-loss gradients
        self._clear()

    def _clear(self):
        self.learnables, self.rounding, self.drop, self.gens = None, [], None, None
        self.cache = self.extra = self.loss_fn = None
        self.step, self.norm = 0, Normalised()

    # -- data ---------------------------------------------------------------------------------------------------
    def unit_cache(self, ctx, unit, reference, where):
        self.reference, self.where = reference, where
        self.cache = unit_cache(ctx, unit, self.cfg, reference, where, float_inputs=self.cfg.drop_prob > 0)
        return self.cache

    def fetch(self, cache, idx):
        args, kwargs, targets = cache.fetch(idx)
        paired = getattr(cache, "float_inputs", None)
        if paired is None or self.cfg.drop_prob == 0:
            return args, kwargs, targets
        fargs, fkwargs, _ = paired.fetch(idx)
        mix = self._mix
        return mix(args, fargs), mix(kwargs, fkwargs), targets

    def _mix(self, quant, float_):
        if torch.is_tensor(quant):
            if (torch.is_tensor(float_) and quant.is_floating_point() and quant.shape == float_.shape
                    and quant.dim() > 0):
                return self.gens.mix(quant, float_, self.cfg.drop_prob)
            return quant
        if isinstance(quant, (tuple, list)):
            return type(quant)(self._mix(q, f) for q, f in zip(quant, float_))
        if isinstance(quant, dict):
            return {k: self._mix(v, float_[k]) if k in float_ else v for k, v in quant.items()}
        return quant

    def _targets(self, start, n):
        """The float targets of the stacked cache's items start … start + n − 1."""
        return [t[start:start + n] for t in self.cache.targets]

    # -- what is learned ----------------------------------------------------------------------------------------
    def attach(self, unit, generator):
        cfg = self.cfg
        self.step, self.norm = 0, Normalised()
        self.gens = DropGenerators(int(torch.randint(2 ** 62, (1,), generator=generator)))
        self.unit, self.generator = unit, generator
        head = len(unit.sites) == 1 and unit.sites[0].role == Role.HEAD
        self.loss_name = "kl" if head else cfg.loss
        # FIMA-Q's head KL is not normalised; APHQ-ViT's is (2·KL / KL₀)
        self.norm = Normalised(normalise=not (head and cfg.loss == "fisher_dplr"))
        self.loss_fn = LOSSES[self.loss_name]
        if self.loss_name in ("aph", "fisher_dplr") and not self.cache.stacked:
            self.ctx.log(f"{self.where}: inputs of varying shapes, {self.loss_name} weights need fixed shapes: "
                         f"uses mse")
            self.loss_name, self.loss_fn = "mse", LOSSES["mse"]
        if self.loss_name == "aph":
            try:
                self.extra = self._aph_weights()
            except RepeatedUnit as exc:
                self._fall_back_to_mse(exc)
        self.learnables = Learnables(unit, cfg)
        groups = self.learnables.groups
        for g in groups:
            g["lr"] = cfg.lr  # absolute, as the official code (not ReconConfig's relative scale_lr)
        for site in unit.sites:
            q = getattr(site.module, "weight_quantizer", None)
            if can_adaround(q) and isinstance(getattr(site.module, "weight", None), torch.nn.Parameter):
                self.rounding.append(AdaRoundWeight(site.module, q))
        if self.rounding:
            groups.append({"params": [r.alpha for r in self.rounding], "lr": cfg.w_lr, "constant_lr": True})
        acts = [q for site in unit.sites for _, q in site.act_quantizers()]
        self.drop = ActivationDrop(acts, cfg.drop_prob, self.gens)
        self.schedule = RoundingSchedule(cfg.iters, cfg.warmup, cfg.b_start, cfg.b_end)
        self.fisher_every = max(1, cfg.iters // max(cfg.rank, 1))
        if self.loss_name == "fisher_dplr" and depends_on_model(self.ctx, unit.name):
            # D = |ŷ − y| pairs the unit's outputs in the Fisher forward (float elsewhere) with its cached targets
            # (taken on the quantized model's inputs): items that depend on the model's own predictions (a detector's
            # ROIs) are other items there, so no D row can be formed
            self._fall_back_to_mse("its inputs depend on the model's own predictions (other items in the float "
                                   "forward than in its cache)")
        elif self.loss_name == "fisher_dplr":
            self.extra = FisherDPLR(None, None, None, cfg.p_lowrank, cfg.p_diag)
            try:
                self._refresh_fisher()
            except RepeatedUnit as exc:
                self._fall_back_to_mse(exc)
        return bool(groups)

    def _fall_back_to_mse(self, why):
        """A unit that runs several times per forward (a detector's RPN conv over the pyramid levels) has no output
        gradient per cached output, and one whose inputs depend on the model's own predictions no Fisher D row, so
        no aph / fisher_dplr weight: plain MSE, logged."""
        self.ctx.log(f"{self.where}: {why}; no {self.loss_name} weights for this unit: uses mse")
        self.loss_name, self.loss_fn, self.extra = "mse", LOSSES["mse"], None

    def _ensure_refs(self):
        if self.refs is None:
            batches = range(len(self.ctx.calib.batches))
            self.refs = reference_outputs(self.ctx, self.reference, batches)

    def _aph_weights(self):
        self._ensure_refs()
        cfg, batches = self.cfg, self.cache.batches
        if cfg.aph_grad == "perturb":
            return perturbation_hessian(self.ctx, self.unit, self.reference, batches, self.refs, cfg.temperature,
                                        cfg.perturb)
        return sampled_fisher_diag(self.ctx, self.unit, self.reference, batches, self.refs, cfg.temperature,
                                   self.generator)

    def _refresh_fisher(self):
        self._ensure_refs()
        g, d = fisher_row(self.ctx, self.unit, self.reference, self.cache.batches, self.refs, self._targets,
                          self.cfg.temperature)
        self.extra = self.extra.add(g, d, lowrank=self.cfg.rank > 0)
        self.norm.restart()  # FIMA-Q re-normalises its terms after each capture

    def param_groups(self):
        return self.learnables.groups

    def loss(self, output, targets):
        self.step += 1
        total = self.norm(self.loss_fn(float_tensors(output, detach=False), targets, self.extra))
        if self.rounding and self.schedule.active(self.step) and self.cfg.round_weight > 0:
            beta = self.schedule.beta(self.step)
            total = total + self.cfg.round_weight * sum(r.regulariser(beta) for r in self.rounding)
        return total

    def loss_ratio(self, loss, start_error):
        return self.norm.ratio

    def after_step(self):
        self.learnables.clamp()
        for g in self.learnables.groups:
            if g.get("constant_lr"):
                g["lr"] = g["initial_lr"]  # the engine's cosine decay is for the scales only, as officially
        if (self.loss_name == "fisher_dplr" and self.cfg.rank > 0 and self.step < self.cfg.iters
                and self.step % self.fisher_every == 0):
            self._refresh_fisher()

    # -- what is kept -------------------------------------------------------------------------------------------
    def keep(self, unit):
        for r in self.rounding:
            r.harden()
        self._release()

    def detach(self, unit):
        for r in self.rounding:
            r.remove()
        self._release()

    def _release(self):
        if self.drop is not None:
            self.drop.remove()
        if self.learnables is not None:
            self.learnables.release()
        cache = self.cache
        self._clear()
        self.cache = cache  # the engine may still measure errors on it; the next unit replaces it


__all__ = ["APH_GRADS", "QDROP_SETTINGS", "QDropRecon", "QDropReconConfig"]
