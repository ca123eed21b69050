"""Reconstruction: an engine that fits quantized units to the float model, and the passes built on it.

- `engine`: the unit loop, the training loop (phases, guards, rollbacks), the checkpoint driver, and `ReconMethod`,
  the one extension class (what a unit learns, how it steps, what is kept or restored, the per-stage schedule);
- `cache`: reconstruction units, their cached inputs and float targets, the mini-batch sampler (curriculum);
- `reference`: the float reference (the model run as the float network);
- the passes several methods share: `block_recon` (BRECQ; `ReconConfig`, the options every pass shares, and
  `BlockRecon`), `sos` (I&S-ViT's three-stage smooth optimisation; DopQ-ViT runs it with its own channel fold).
  A pass of one method only lives in that method's package (AIQViT's `lowrank`: plugin.quant.methods.aiqvit).
- `qdrop` (AdaRound + QDrop block reconstruction, shared by APHQ-ViT, FIMA-Q and `relu_fisher`), with `adaround`,
  the block-output `losses` (`mse`, APHQ-ViT's `aph`, FIMA-Q's `fisher_dplr`) and the gradients they pre-compute
  (`sensitivity`);
- `mlp_relu` (APHQ-ViT's MLP reconstruction, GELU -> ReLU before quantization; shared by `aphq` and `relu_fisher`).

A new method subclasses `ReconMethod` (or `BlockRecon`) and registers a pass config whose `run(ctx)` calls
`reconstruct(ctx, method)`.
"""
from .block_recon import LEARNABLE, SETTINGS, BlockRecon, Learnables, ReconConfig, default_iters
from .cache import Sampler, Unit, UnitCache, capture_inputs, capture_outputs, item_errors, reconstruction_units
from .engine import ReconMethod, reconstruct, reconstruct_unit
from .losses import LOSSES, register_loss
from .mlp_relu import MlpRelu, clamp_pct, relu_float_model
from .qdrop import QDropRecon, QDropReconConfig
from .reference import FloatReference, float_reference
from .sos import CHANNEL_FOLDS, SosConfig, register_channel_fold, reparameterize_channelwise

__all__ = ["BlockRecon", "CHANNEL_FOLDS", "FloatReference", "LEARNABLE", "LOSSES", "Learnables", "MlpRelu",
           "QDropRecon", "QDropReconConfig", "ReconConfig", "ReconMethod", "SETTINGS", "Sampler", "SosConfig", "Unit",
           "UnitCache", "capture_inputs", "capture_outputs", "clamp_pct", "default_iters", "float_reference",
           "item_errors", "reconstruct", "reconstruct_unit", "reconstruction_units", "register_channel_fold",
           "register_loss", "relu_float_model", "reparameterize_channelwise"]
