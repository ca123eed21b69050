"""I&S-ViT (Zhong et al., arXiv 2311.10126): SULQ post-Softmax quantizer; its three-stage smooth optimisation `sos`
is a reconstruction pass in plugin.quant.recon (DopQ-ViT runs it too)."""
from .quantizers import ShiftUniformLog2Quantizer  # noqa: F401
from .recipes import isvit_recipe  # noqa: F401
