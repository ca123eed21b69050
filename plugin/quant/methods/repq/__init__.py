"""RepQ-ViT (Li et al., ICCV 2023): log2 / log√2 post-Softmax quantizers; the post-LN scale reparameterisation is the
core's (plugin.quant.reparam, rule "mean")."""
from .quantizers import Log2Quantizer, LogSqrt2Quantizer  # noqa: F401
from .recipes import repq_official_fold_recipe, repq_recipe, repq_strict_recipe  # noqa: F401
