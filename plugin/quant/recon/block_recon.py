"""Block reconstruction (BRECQ, Li et al., ICLR 2021): the `block_recon` pass, the options every reconstruction pass
shares (`ReconConfig`), and `BlockRecon`, the method that learns quantizer scales, weights and biases.

Each unit minimises  E‖f_q(x_q) − f(x_fp)‖²  (mean squared error over elements) with Adam and a cosine learning-rate
decay (plugin.quant.recon.engine). What is learned is chosen by `learn`: quantizer scales (`act_scale`,
`weight_scale`: the buffers become nn.Parameters for the duration; the rounding's straight-through estimator gives
LSQ gradients), the quantized modules' `weight` and `bias`. Scale learning rates are relative: each scale tensor's
Adam step size is `scale_lr` times its mean magnitude, so one setting fits 8-bit activation scales and 3-bit weight
scales alike. Weights and biases use `lr`.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..passes import PassConfig, is_int, is_number, register_pass
from .engine import ReconMethod, reconstruct

LEARNABLE = ("act_scale", "weight_scale", "weight", "bias")

# Iterations and batch size by setting. "paper": I&S-ViT's (Sec. 5.1; 1000 iterations at 3/4 bit, 200 at 6 bit, batch
# 64, Adam lr 4e-5). "small": for small models and small calibration sets (CIFAR-sized ViTs, 32-256 images), where
# 1000 steps of batch 64 would revisit every sample hundreds of times: a quarter of the steps, batch 32.
SETTINGS = {
    "paper": dict(low_bit_iters=1000, high_bit_iters=200, batch_size=64),
    "small": dict(low_bit_iters=250, high_bit_iters=100, batch_size=32),
}


def default_iters(recipe, setting="paper"):
    """The setting's iteration count: the low-bit one unless both weights and activations have 6 bits or more."""
    s = SETTINGS[setting]
    return s["high_bit_iters"] if min(recipe.w_bits, recipe.a_bits) >= 6 else s["low_bit_iters"]


@register_pass("block_recon")
@dataclass
class ReconConfig(PassConfig):
    """Options of the reconstruction passes: the `block_recon` pass itself, and the base of `sos` and `lowrank`.

    setting: "paper" or "small" (see SETTINGS): the iterations and batch size when they are not given.
    iters, batch_size: Adam steps per unit and samples per step (clipped to the calibration set); None: from the
        `setting` and the recipe's bit widths (`resolved`).
    lr: Adam step size of weights, biases (and, in lowrank, not the branches: see its `branch_lr`).
    scale_lr: relative step size of quantizer scales (times each scale tensor's mean magnitude).
    learn: any of "act_scale", "weight_scale", "weight", "bias".
    layers: also reconstruct the quantized modules outside blocks (patch embedding, head, Swin patch merging).
    curriculum, curriculum_start, curriculum_full_at: easy-to-hard sampling (see Sampler).
    input_source: "quant" (the unit's inputs in the quantized model, default) or "float" (in the float model).
    max_loss_ratio: roll a unit back when the loss averaged over a few steps exceeds this times its start error.
    rollback_if_worse: roll a unit back when its final error is above its start error.
    amp: bf16 autocast of the unit's forward while training. Off by default: it changes the rounding inside the
        quantizers (x / scale in bf16), and it gave no speed-up on small ViTs on an H100.
    log_every: progress line every N steps (default iters / 5).
    """
    setting: str = "paper"
    iters: Optional[int] = None
    batch_size: Optional[int] = None
    lr: float = 4e-5
    scale_lr: float = 1e-3
    learn: Tuple[str, ...] = ("act_scale", "weight_scale")
    layers: bool = True
    curriculum: bool = False
    curriculum_start: float = 0.5
    curriculum_full_at: float = 0.8
    input_source: str = "quant"
    max_loss_ratio: float = 10.0
    rollback_if_worse: bool = True
    amp: bool = False
    log_every: int = 0

    def __post_init__(self):
        if self.setting not in SETTINGS:
            raise ConfigError(f"{self.kind}: unknown setting {self.setting!r}; known: {', '.join(sorted(SETTINGS))}")
        self.learn = (self.learn,) if isinstance(self.learn, str) else tuple(self.learn)
        bad = [x for x in self.learn if x not in LEARNABLE]
        if bad:
            raise ConfigError(f"{self.kind}: cannot learn {bad}; choose from {LEARNABLE}")
        if self.input_source not in ("quant", "float"):
            raise ConfigError(f"{self.kind}: input_source must be 'quant' or 'float', got {self.input_source!r}")
        self.require(self.iters is None or is_int(self.iters) and self.iters >= 0, "iters", "a non-negative integer")
        self.require(self.batch_size is None or is_int(self.batch_size) and self.batch_size >= 1, "batch_size",
                     "a positive integer")
        self.require(is_int(self.log_every) and self.log_every >= 0, "log_every", "a non-negative integer")
        for name in ("lr", "scale_lr"):
            self.require(is_number(getattr(self, name)) and getattr(self, name) >= 0, name, "a non-negative number")
        self.require(is_number(self.max_loss_ratio) and self.max_loss_ratio > 0, "max_loss_ratio", "a positive number")
        for name in ("curriculum_start", "curriculum_full_at"):
            self.require(is_number(getattr(self, name)) and 0 < getattr(self, name) <= 1, name, "in (0, 1]")
        for name in ("layers", "curriculum", "rollback_if_worse", "amp"):
            self.require(isinstance(getattr(self, name), bool), name, "True or False")

    @property
    def tag(self):
        return self.kind

    def resolved(self, recipe):
        """A copy with iterations and batch size filled in from the setting and the recipe's bit widths."""
        return self.replace(iters=self.iters if self.iters is not None else default_iters(recipe, self.setting),
                            batch_size=self.batch_size if self.batch_size is not None
                            else SETTINGS[self.setting]["batch_size"])

    def run(self, ctx):
        """Block reconstruction of every unit (plugin.quant.recon.engine)."""
        return reconstruct(ctx, BlockRecon(self.resolved(ctx.recipe)))


# ----------------------------------------------------------------------------------------------------------------
# What a unit learns


class Learnables:
    """Freezes every parameter of a unit, then makes trainable what the config asks for: quantizer scale buffers
    become nn.Parameters, weights and biases of the unit's quantized modules get requires_grad. `release()` writes
    learned scales back as buffers and restores the requires_grad flags."""

    def __init__(self, unit, cfg):
        self.flags = [(p, p.requires_grad) for p in unit.module.parameters()]
        for p, _ in self.flags:
            p.requires_grad_(False)
        self.converted, self.scales, self.groups = [], [], []
        tensors, seen = [], set()
        for site in unit.sites:
            for slot, q in site.quantizers():
                kind = "weight_scale" if slot == "weight_quantizer" else "act_scale"
                if kind not in cfg.learn or not q.enabled or not q.ready:
                    continue
                for name in q.range_names():
                    p, = q.make_trainable([name])
                    self.converted.append((q, name))
                    self.scales.append(p)
                    lr = cfg.scale_lr * float(p.detach().abs().mean().clamp_min(1e-12))
                    self.groups.append({"params": [p], "lr": lr})
            for attr in ("weight", "bias"):
                p = getattr(site.module, attr, None)
                if attr in cfg.learn and isinstance(p, nn.Parameter) and id(p) not in seen:
                    seen.add(id(p))
                    p.requires_grad_(True)
                    tensors.append(p)
        if tensors:
            self.groups.append({"params": tensors, "lr": cfg.lr})

    @torch.no_grad()
    def clamp(self):
        for p in self.scales:
            p.clamp_(min=1e-8)

    def release(self):
        for q, name in self.converted:
            q.make_fixed([name])
        self.converted = []
        for p, flag in self.flags:
            p.requires_grad_(flag)


class BlockRecon(ReconMethod):
    """The reconstruction method of `block_recon` (and the base of the others): learns what `cfg.learn` names."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.learnables = None

    def attach(self, unit, generator):
        self.learnables = Learnables(unit, self.cfg)
        return bool(self.learnables.groups)

    def param_groups(self):
        return self.learnables.groups

    def after_step(self):
        self.learnables.clamp()

    def keep(self, unit):
        self.learnables.release()

    def detach(self, unit):
        self.learnables.release()


__all__ = ["BlockRecon", "LEARNABLE", "Learnables", "ReconConfig", "SETTINGS", "default_iters"]
