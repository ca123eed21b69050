"""RepQ-ViT's recipes: "repq" (the official code's post-Softmax grid), "repq_strict" (an honest b-bit grid) and
"repq_official_fold" (repq with the official code's fractional post-LN zero point as well)."""
from ...recipe import Recipe, register_recipe
from ...spec import QuantSpec, Role


def _repq(name, w_bits, a_bits, masked_zero, reparam_fold="exact"):
    """RepQ-ViT as its official code does it (zkkli/RepQ-ViT): every range from the 0.999/0.9999/0.99999 quantile
    search, each quantizer set as the forward reaches it, post-LN channel-wise ranges folded into the LayerNorm of
    each block (the classifier's input stays a plain per-tensor quantizer), log√2 post-Softmax. `reparam_fold`: when
    and how the post-LN ranges are folded (plugin.quant.reparam)."""
    act = QuantSpec(a_bits, search="quantile")
    options = (("masked_zero", True),) if masked_zero else ()
    return Recipe(
        name=name, w_bits=w_bits, a_bits=a_bits,
        weight=QuantSpec(w_bits, granularity="channel", search="quantile"),
        act=act,
        sites={"patch_embed.input": QuantSpec(8, search="quantile"), "post_ln": act,
               "post_softmax": QuantSpec(a_bits, kind="log_sqrt2", search="quantile", options=options)},
        reparam="mean", reparam_skip_roles=(Role.HEAD,), reparam_fold=reparam_fold, sequential="site",
        observe_elems=2 ** 24,
    )


@register_recipe("repq")
def repq_recipe(w_bits, a_bits):
    """RepQ-ViT (Li et al., ICCV 2023): post-LN channel-wise scales folded into LayerNorm + next Linear, log√2 softmax.

    The post-Softmax grid is the official code's: 2^b non-zero log√2 levels plus a masked zero, one value more than
    b bits hold; `repq_strict` is the same recipe with an honest b-bit grid."""
    return _repq("repq", w_bits, a_bits, masked_zero=True)


@register_recipe("repq_strict")
def repq_strict_recipe(w_bits, a_bits):
    """RepQ-ViT with a strict b-bit post-Softmax grid (2^b − 1 log√2 levels and a zero code)."""
    return _repq("repq_strict", w_bits, a_bits, masked_zero=False)


@register_recipe("repq_official_fold")
def repq_official_fold_recipe(w_bits, a_bits):
    """`repq` with the official code's post-LN fold (plugin.quant.reparam, `reparam_fold="official"`): calibrated with
    channel-wise post-LN inputs and unfolded weights, folded afterwards with the unrounded mean of the channel zero
    points as the layer-wise zero point, added after rounding (2^b + 1 values). The computation of the official
    RepQ-ViT code; such a grid has no integer deployment (plugin.quant.deploy.lower)."""
    return _repq("repq_official_fold", w_bits, a_bits, masked_zero=True, reparam_fold="official")


__all__ = ["repq_official_fold_recipe", "repq_recipe", "repq_strict_recipe"]
