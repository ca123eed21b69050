"""I&S-ViT (arXiv 2311.10126) recipe: SULQ post-Softmax, channel-wise post-LayerNorm quantizers, and the three-stage
smooth optimisation pass `sos` (plugin.quant.recon.sos), which reconstructs blocks, reparameterises the channel-wise
post-LN quantizers to layer-wise with its `rule` (stage 2) and reconstructs again.

Ablations are one switch each (`isvit_no_sulq`, `isvit_no_sos`). Pass options are checked when the recipe is built
(plugin.quant.passes). The choices behind the defaults (calibration sizes, iteration counts) are in docs/methods.md.
"""
from ...recipe import mse_recipe, register_ablations, register_recipe, setting_pass
from ...spec import QuantSpec


@register_recipe("isvit")
def isvit_recipe(w_bits, a_bits, *, sulq=True, sos=True, setting="paper", iters=None, batch_size=None, lr=4e-5,
                 name="isvit"):
    """I&S-ViT. Post-LN quantizers start channel-wise; SOS stage 2 folds them to layer-wise with the `mean` rule.
    Without SULQ the post-Softmax grid is log2 (the quantizer the paper improves on). Without SOS the post-LN
    quantizers are layer-wise from the start (reparameterised at calibration) and no reconstruction runs."""
    softmax = QuantSpec(a_bits, kind="sulq" if sulq else "log2", search="mse")
    post_ln = QuantSpec(a_bits, granularity="channel" if sos else "tensor", search="mse")
    passes = [setting_pass("sos", setting, iters=iters, batch_size=batch_size, lr=lr, rule="mean")] if sos else []
    return mse_recipe(name, w_bits, a_bits, softmax, post_ln, reparam="mean", passes=passes,
                      calib_num=1024 if passes else None)


ABLATIONS = {  # name -> (recipe function, switches): one switch off each, registered by name
    "isvit_no_sulq": (isvit_recipe, dict(sulq=False)),
    "isvit_no_sos": (isvit_recipe, dict(sos=False)),
}
register_ablations(ABLATIONS)

__all__ = ["ABLATIONS", "isvit_recipe"]
