"""DopQ-ViT (Yang et al., arXiv 2408.03291): TanQ post-Softmax quantizer and the MOSF scale rule, on I&S-ViT's `sos`
pass (plugin.quant.recon.sos)."""
from .quantizers import SoftmaxTanQuantizer  # noqa: F401
from .mosf import MAD_THRESHOLD, mad_outliers, mosf_fold, mosf_scale  # noqa: F401
from .recipes import dopq_lite_recipe, dopq_recipe  # noqa: F401
