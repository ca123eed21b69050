"""I&S-ViT's three-stage smooth optimisation (SOS, Zhong et al., arXiv 2311.10126, Sec. 4.2): the `sos` pass.

Stage 1 reconstructs blocks with float weights and channel-wise post-LayerNorm activation quantizers, stage 2 folds
those quantizers to layer-wise ones (`reparameterize_channelwise`, the RepQ-ViT algebra, or a registered channel fold
such as DopQ-ViT's MOSF), stage 3 reconstructs again with the weights quantized. Both reconstructions are
`BlockRecon` runs of the engine against the float model as it was before stage 1.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..calibrate import Observer
from ..quantizers import UniformQuantizer
from ..passes import register_pass
from ..registry import Registry
from ..reparam import REPARAM_RULES, fold_channelwise
from .block_recon import BlockRecon, ReconConfig
from .engine import reconstruct
from .reference import float_reference


def _post_ln_pairs(ctx):
    """(norm name, consumer sites, their input quantizers) for every post-LN group quantized channel-wise by an
    asymmetric uniform quantizer, the only kind a layer-wise quantizer can absorb exactly."""
    pairs = []
    for norm_name, consumer_names in ctx.plan.norm_groups:
        sites = [ctx.by_name[c] for c in consumer_names if c in ctx.by_name]
        qs = [s.module.input_quantizer for s in sites]
        if not sites or any(q is None or not isinstance(q, UniformQuantizer) or q.spec.symmetric or not q.ready
                            or q.scale.numel() == 1 for q in qs):
            continue
        if len({q.scale.numel() for q in qs}) != 1:
            continue
        pairs.append((norm_name, sites, qs))
    return pairs


def _observe_inputs(ctx, pairs):
    observers = {}
    for _, sites, qs in pairs:
        q = qs[0]
        q.observer = observers[sites[0].name] = Observer(sites[0].name, q.channel_axis, ctx.max_elems, ctx.seed)
    try:
        with torch.no_grad():
            for batch in ctx.calib.batches:
                ctx.calib.forward(ctx.model, batch)
    finally:
        for _, _, qs in pairs:
            qs[0].observer = None
    return {k: o.observation() for k, o in observers.items()}


# Rules whose channel→layer step is not the exact fold: name -> fold(norm, consumers, scales, zeros, s̃, qmin, qmax)
# returning z̃, applied in place (DopQ-ViT's "mosf", plugin.quant.methods.dopq.mosf). Rules without an entry fold
# exactly.
CHANNEL_FOLDS = Registry("channel fold")


def register_channel_fold(name):
    return CHANNEL_FOLDS.register(name)


def reparameterize_channelwise(ctx, rule="mean"):
    """SOS stage 2: turn every channel-wise post-LN quantizer into a layer-wise one.

    The same algebra as plugin.quant.reparam (RepQ-ViT): with channel scales s_c and zero points z_c, the layer-wise
    s̃ = rule(s_c), z̃ = round(mean z_c), r1 = s_c / s̃ and shift = s̃·(z_c − z̃) are folded into the LayerNorm affine
    and the consuming Linears (`reparam.fold_channelwise`), which keeps the codes. A rule with a registered channel
    fold (CHANNEL_FOLDS) folds its own way instead. When several consumers share a LayerNorm their (possibly
    separately learned) scales are averaged first. Returns the number of LayerNorms folded.
    """
    REPARAM_RULES.lookup(rule, where="sos")
    pairs = _post_ln_pairs(ctx)
    observations = _observe_inputs(ctx, pairs) if rule != "mean" and pairs else {}
    for norm_name, sites, qs in pairs:
        with torch.no_grad():
            scales = torch.stack([q.scale.reshape(-1) for q in qs]).mean(0)
            zeros = qs[0].zero_point.reshape(-1)
            s_layer = REPARAM_RULES[rule](scales, observations.get(sites[0].name)).reshape(())
        norm, consumers = ctx.model.get_submodule(norm_name), [s.module for s in sites]
        if rule in CHANNEL_FOLDS:
            z_layer = CHANNEL_FOLDS[rule](norm, consumers, scales, zeros, s_layer, qs[0].qmin, qs[0].qmax)
        else:
            z_layer, _, _ = fold_channelwise(norm, consumers, scales, zeros, s_layer)
        for site, q in zip(sites, qs):
            layerwise = UniformQuantizer(q.spec.replace(granularity="tensor"), channel_axis=q.channel_axis)
            layerwise.set_params(scale=s_layer.reshape(1), zero_point=z_layer.reshape(1))
            layerwise.enabled = q.enabled
            site.module.input_quantizer = layerwise.to(scales.device)
    return len(pairs)


@register_pass("sos")
@dataclass
class SosConfig(ReconConfig):
    """I&S-ViT's three-stage smooth optimisation.

    1. weights float (weight quantizers off), activations quantized with channel-wise post-LN quantizers: block
       reconstruction;
    2. channel-wise post-LN quantizers reparameterised to layer-wise (`reparameterize_channelwise`) with the scale
       rule `rule` (default: the recipe's `reparam`, else "mean"; basic calibration leaves channel-wise quantizers
       alone whatever `reparam` says): exactly, unless the rule registers its own channel fold (DopQ-ViT's "mosf");
    3. weight quantizers on and recalibrated on the current weights; block reconstruction again.
    `stages` picks which run. Both reconstructions take their targets from the float model as it was before stage 1.
    By default they learn the quantized modules' weights and biases with the quantizer scales fixed, as the public
    I&S-ViT code does. Other options: see ReconConfig.
    """
    learn: Tuple[str, ...] = ("weight", "bias")
    stages: Tuple[int, ...] = (1, 2, 3)
    rule: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        self.stages = tuple(self.stages) if isinstance(self.stages, (list, tuple)) else self.stages
        self.require(isinstance(self.stages, tuple) and set(self.stages) <= {1, 2, 3}, "stages",
                     "drawn from (1, 2, 3)")
        if self.rule is not None:
            REPARAM_RULES.lookup(self.rule, where="sos")

    def run(self, ctx):
        cfg = self.resolved(ctx.recipe)
        rule = self.rule or ctx.recipe.reparam or "mean"
        REPARAM_RULES.lookup(rule, where="sos")  # before stage 1's reconstruction, not after it
        reference = float_reference(ctx)
        weight_qs = [q for s in ctx.sites if (q := getattr(s.module, "weight_quantizer", None)) is not None]
        if 1 in self.stages:
            channelwise = len(_post_ln_pairs(ctx))
            ctx.log(f"[sos] stage 1: float weights, quantized activations ({channelwise} channel-wise post-LN groups)")
            flags = [q.enabled for q in weight_qs]
            for q in weight_qs:
                q.enabled = False
            try:
                reconstruct(ctx, BlockRecon(cfg), reference)
            finally:
                for q, flag in zip(weight_qs, flags):
                    q.enabled = flag
        if 2 in self.stages:
            folded = reparameterize_channelwise(ctx, rule)
            ctx.log(f"[sos] stage 2: {folded} channel-wise post-LN quantizers reparameterised to layer-wise ({rule})")
        if 3 in self.stages:
            for s in ctx.sites:
                q = getattr(s.module, "weight_quantizer", None)
                if q is not None:
                    q.calibrate_tensor(s.module.weight)
            ctx.log(f"[sos] stage 3: {len(weight_qs)} weight quantizers recalibrated; reconstruction with quantized "
                    f"weights")
            reconstruct(ctx, BlockRecon(cfg), reference)


__all__ = ["CHANNEL_FOLDS", "SosConfig", "register_channel_fold", "reparameterize_channelwise"]
