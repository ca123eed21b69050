"""Post-LayerNorm scale reparameterisation (RepQ-ViT, Li et al., ICCV 2023, Sec. 3.2).

Post-LN activations have a few channels with much larger ranges. Quantizing them channel-wise (scale s_c, zero
point z_c) and then choosing one layer-wise pair (s̃, z̃ = round(mean z_c)) gives the variation factors
r1 = s_c / s̃ and r2 = z_c − z̃. With
    γ' = γ / r1,  β' = β / r1 + s̃·r2           (LayerNorm affine)
    W' = W·diag(r1),  b' = b − W'·(s̃·r2)        (every consuming Linear)
the layer-wise quantizer (s̃, z̃) on x' = x / r1 + s̃·r2 produces exactly the codes of the channel-wise quantizer on x,
and the float network is unchanged. The rule that picks s̃ from the s_c is registered by name (`mean` for RepQ-ViT;
other methods register theirs) and changes only how hard the reparameterised weights are to quantize.

How the fold is done (`Recipe.reparam_fold`). "exact" (ours, the default): as above, when the consumer is calibrated,
with z̃ = round(mean z_c), so the layer-wise codes are exactly the channel-wise ones. "official": what the official
RepQ-ViT code does (classification/test_quant.py, read and written anew here): every quantizer is calibrated with the
post-LN inputs quantized channel-wise (s_c, z_c) and the consumers' weights unfolded; then (`finish_official_folds`)
the fold is applied with z̄ = mean z_c unrounded, the layer-wise quantizer rounds x'/s̃ before adding z̄
(UniformQuantizer's `zero_after_round`), so each channel's grid is shifted by the fraction z̄ − round(z̄) of a step and
clipped at 0 and 2^b − 1 (2^b + 1 values), and the consumers' weight quantizers are calibrated again on the folded
weights.
"""
import torch
import torch.nn as nn

from .quantizers import UniformQuantizer
from .registry import Registry
from .spec import QUANTIZERS

REPARAM_RULES = Registry("reparameterisation rule")  # name -> fn(channel scales, Observation or None) -> s̃
REPARAM_FOLDS = ("exact", "official")  # at calibration with round(mean z_c), or RepQ-ViT's code (module docstring)


def register_reparam_rule(name):
    return REPARAM_RULES.register(name)


@register_reparam_rule("mean")
def mean_scale(scales, obs=None):
    """RepQ-ViT: the layer-wise scale is the mean of the channel-wise scales."""
    return scales.mean()


def _ensure_affine(norm: nn.Module):
    c = norm.normalized_shape[-1] if hasattr(norm, "normalized_shape") else norm.weight.shape[0]
    ref = next((t for t in norm.parameters()), None)
    kw = dict(device=ref.device if ref is not None else None)
    if getattr(norm, "weight", None) is None:
        norm.weight = nn.Parameter(torch.ones(c, **kw))
        norm.elementwise_affine = True
    if getattr(norm, "bias", None) is None:
        norm.bias = nn.Parameter(torch.zeros(c, device=norm.weight.device))


def fold_scales(norm: nn.Module, consumers, r1, shift):
    """Apply x' = x / r1 + shift to the LayerNorm output and undo it in every consuming Linear (in place)."""
    _ensure_affine(norm)
    with torch.no_grad():
        norm.weight.div_(r1)
        norm.bias.div_(r1).add_(shift)
        for lin in consumers:
            lin.weight.mul_(r1)
            correction = lin.weight @ shift
            if lin.bias is None:
                lin.bias = nn.Parameter(-correction)
            else:
                lin.bias.sub_(correction)


def fold_channelwise(norm, consumers, scales, zeros, s_layer, round_zero=True):
    """Fold channel-wise (scales, integer zeros) into `norm` and `consumers` for the layer-wise scale `s_layer`.

    Returns (z̃, r1, shift): the layer-wise zero point round(mean z_c) (unrounded with `round_zero=False`: the official
    fold), r1 = s_c / s̃ and shift = s̃·(z_c − z̃).
    """
    with torch.no_grad():
        z_layer = zeros.mean().round() if round_zero else zeros.mean()
        r1 = scales / s_layer
        shift = s_layer * (zeros - z_layer)
    fold_scales(norm, consumers, r1, shift)
    return z_layer, r1, shift


def foldable(spec):
    """Whether a consumer input quantizer of `spec` can absorb the channel-wise one exactly: an asymmetric per-tensor
    uniform grid (the rule `reparameterize_group` applies to the built quantizers)."""
    return (spec is not None and issubclass(QUANTIZERS[spec.kind], UniformQuantizer) and not spec.symmetric
            and spec.granularity == "tensor")


def finish_official_folds(ctx):
    """`reparam_fold` "official", once calibration is done: fold each channel-wise (s_c, z_c) into the LayerNorm and
    consumers for (s̃, z̄ = mean z_c unrounded), set the layer-wise quantizers to it and calibrate the consumers' weight
    quantizers again on the folded weights (the float network is unchanged)."""
    for norm, consumers, scales, zeros, s_layer in ctx.official_folds:
        z_mean, _, _ = fold_channelwise(norm, consumers, scales, zeros, s_layer, round_zero=False)
        for lin in consumers:
            lin.input_quantizer.set_params(scale=s_layer.reshape(1), zero_point=z_mean.reshape(1))
            lin.weight_quantizer.calibrate_tensor(lin.weight)
    ctx.official_folds = []


def reparameterize_group(ctx, members, observations):
    """Reparameterise every norm → consumers pair whose consumers are in `members`, and set their input quantizers."""
    rule = REPARAM_RULES[ctx.recipe.reparam]
    member_names = {s.name for s in members}
    for norm_name, consumer_names in ctx.plan.reparam_groups:  # every consumer quantized, none of a skipped role
        sites = [ctx.by_name[c] for c in consumer_names]
        if sites[0].name not in member_names:
            continue
        quantizers = [s.module.input_quantizer for s in sites]
        if any(q is None or not foldable(q.spec) for q in quantizers):
            continue  # only an asymmetric layer-wise uniform quantizer can absorb the channel-wise one exactly
        obs = observations.get((sites[0].name, "input_quantizer"))
        if obs is None:
            continue
        spec = quantizers[0].spec
        # the consumer's own kind (a UniformQuantizer subclass may choose its range its own way), channel-wise
        channelwise = type(quantizers[0])(spec.replace(granularity="channel"), channel_axis=-1).calibrate(obs)
        scales, zeros = channelwise.scale, channelwise.zero_point
        s_layer = rule(scales, obs).reshape(())
        norm, consumers = ctx.model.get_submodule(norm_name), [s.module for s in sites]
        if ctx.recipe.reparam_fold == "official":  # channel-wise (a per-channel buffer) until calibration ends
            for q in quantizers:
                q.set_params(scale=scales, zero_point=zeros)
            ctx.official_folds.append((norm, consumers, scales, zeros, s_layer))
            continue
        z_layer, r1, shift = fold_channelwise(norm, consumers, scales, zeros, s_layer)
        new_obs = obs.map_channels(lambda t: t / r1 + shift)
        for site, q in zip(sites, quantizers):
            q.set_params(scale=s_layer.reshape(1), zero_point=z_layer.reshape(1))
            observations[(site.name, "input_quantizer")] = new_obs
