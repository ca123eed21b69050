"""MAD-guided optimal scaling factor (MOSF) of DopQ-ViT (Yang et al., arXiv 2408.03291), as a reparameterisation rule.

RepQ-ViT takes the layer-wise scale s̃ of a reparameterised post-LayerNorm quantizer as the mean of the channel-wise
scales s_c; a few outlier channels (scales several times the rest) drag that mean away from the typical channel.
MOSF picks s̃ from the channels that are not outliers, using the mean absolute deviation (MAD) as the yardstick:

    m   = median(s)
    MAD = mean_c |s_c − m|
    outlier(c)  ⇔  |s_c − m| > k·MAD                 (k = 3)
    s̃   = mean{ s_c : not outlier(c) }

No search and no extra inference cost. k → ∞ gives back RepQ-ViT's mean; with no spread (MAD = 0) s̃ = m. The
paper's exact formula was not available here; the median centre, the threshold k and the inlier mean are our choices.

Where s̃ can matter. An exact fold (r1 = s_c/s̃ for every channel, `reparam.fold_channelwise`) reproduces the
channel-wise codes for any s̃, and the common 1/s̃ it puts on the consumer weights is absorbed by per-channel weight
quantizers with range searches over fractions of the range. So in the calibration-time fold (`dopq_lite`) the rule is
inert up to floating-point rounding, and after SOS stage 2 it acts only through stage 3's absolute learning rate on
weights scaled by 1/s̃ (a few per cent on a model with mild outliers).

Our reading of what makes the scale "optimal" for the typical channel: in SOS stage 2 (`mosf_fold`, registered as
the channel fold of the "mosf" rule) only the outlier channels are folded exactly; the inlier channels are put on the
layer grid itself (r1 = 1, their range centred on it), so s̃ is the step those channels are really quantized with, and
their weight columns keep their float magnitudes instead of being spread by s_c/s̃ before the 3-bit weight quantizer.
The fold of the float network stays exact (`reparam.fold_scales`); the activation codes of inlier channels change.
This trade (a little activation error on inliers for less spread in the consumer weights) is ours, not the paper's;
the measurement is in docs/methods.md.
"""
import torch

from ...recon.sos import register_channel_fold
from ...reparam import fold_scales, register_reparam_rule

MAD_THRESHOLD = 3.0


def mad_outliers(scales, k=MAD_THRESHOLD):
    """Boolean mask of the channels whose scale is more than k mean-absolute-deviations from the median."""
    s = scales.detach().flatten().float()
    dev = (s - s.median()).abs()
    mad = dev.mean()
    if mad <= 0:
        return torch.zeros_like(s, dtype=torch.bool)
    return dev > k * mad


@register_reparam_rule("mosf")
def mosf_scale(scales, obs=None, k=MAD_THRESHOLD):
    """Layer-wise scale: the mean of the channel scales within k mean-absolute-deviations of their median."""
    s = scales.detach().flatten().float()
    if not (s - s.median()).abs().mean() > 0:
        return s.median()
    return s[~mad_outliers(s, k)].mean()


@register_channel_fold("mosf")
def mosf_fold(norm, consumers, scales, zeros, s_layer, qmin, qmax, k=MAD_THRESHOLD):
    """SOS stage 2 with MOSF: fold the MAD outliers exactly, put the inlier channels on the layer grid (s̃, z̃).

    A channel c with ratio r_c maps to x' = x / r_c + shift_c. Its quantization range is centred at
    μ_c = s_c·((qmin + qmax)/2 − z_c); the layer grid at μ̃ = s̃·((qmin + qmax)/2 − z̃). shift_c = μ̃ − μ_c / r_c puts
    the one on the other. Outliers take r_c = s_c/s̃ (then shift_c = s̃·(z_c − z̃), the exact fold of RepQ-ViT);
    inliers r_c = 1, so their range s_c·(qmax − qmin) becomes s̃·(qmax − qmin), a little wider or narrower
    (inlier scales lie within k·MAD of the median). Returns z̃ = round(mean z_c)."""
    with torch.no_grad():
        outlier = mad_outliers(scales, k)
        z_layer = zeros.mean().round()
        mid = (qmin + qmax) / 2
        r1 = torch.where(outlier, scales / s_layer, torch.ones_like(scales))
        shift = s_layer * (mid - z_layer) - scales * (mid - zeros) / r1
    fold_scales(norm, consumers, r1, shift)
    return z_layer


__all__ = ["mosf_scale", "mosf_fold", "mad_outliers", "MAD_THRESHOLD"]
