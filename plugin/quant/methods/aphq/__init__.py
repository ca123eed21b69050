"""APHQ-ViT (Wu et al., CVPR 2025; official code GoatWu/APHQ-ViT): the `aphq` recipe and its ablations. Its MLP
reconstruction (`mlp_relu`: GELU -> ReLU, MLPs re-fitted to the float outputs before quantization) is in
plugin.quant.recon, as `relu_fisher` runs it too."""
from .recipe import aphq_recipe  # noqa: F401

__all__ = ["aphq_recipe"]
