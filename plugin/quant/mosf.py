"""MAD-guided optimal scaling factor (MOSF) of DopQ-ViT (Yang et al., arXiv 2408.03291), as a reparameterisation rule.

RepQ-ViT takes the layer-wise scale s̃ of a reparameterised post-LayerNorm quantizer as the mean of the channel-wise
scales s_c; a few outlier channels (scales tens of times the rest) drag that mean far from the typical channel.
MOSF picks s̃ from the channels that are not outliers, using the mean absolute deviation (MAD) as the yardstick:

    m   = median(s)
    MAD = mean_c |s_c − m|
    s̃   = mean{ s_c : |s_c − m| ≤ k·MAD }          (k = 3)

No search and no extra inference cost. k → ∞ gives back RepQ-ViT's mean; with no spread (MAD = 0) s̃ = m. The
paper's exact formula was not available here; the median centre, the threshold k and the inlier mean are our choices
(docs/methods.md).

What s̃ does in this library: `plugin.quant.reparam` folds r1 = s_c/s̃ into the LayerNorm and the consuming Linears
exactly, so the activation codes equal the channel-wise ones for any s̃; and it multiplies every consumer weight by
the same 1/s̃, which per-channel (or per-tensor) weight quantizers with range searches over fractions of the range
absorb exactly. So s̃ changes the quantized model only through floating-point rounding, through the magnitude of the
layer-wise quantizer parameters a later pass trains (its learning rate is absolute), and through anything that
recalibrates that quantizer afterwards. The consumer weights are not needed by this rule.
"""

from .reparam import register_reparam_rule

MAD_THRESHOLD = 3.0


@register_reparam_rule("mosf")
def mosf_scale(scales, obs=None, k=MAD_THRESHOLD):
    """Layer-wise scale: the mean of the channel scales within k mean-absolute-deviations of their median."""
    s = scales.detach().flatten().float()
    centre = s.median()
    dev = (s - centre).abs()
    mad = dev.mean()
    if mad <= 0:
        return centre
    return s[dev <= k * mad].mean()


__all__ = ["mosf_scale", "MAD_THRESHOLD"]
