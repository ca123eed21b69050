"""APHQ-ViT (Wu et al., CVPR 2025; official code GoatWu/APHQ-ViT): the `aphq` recipe and its ablations, and its MLP
reconstruction (`mlp_relu`: GELU -> ReLU, MLPs re-fitted to the float outputs before quantization)."""
from .mlp_relu import MlpRelu, relu_float_model  # noqa: F401  (registers the pass)
from .recipe import aphq_recipe  # noqa: F401

__all__ = ["MlpRelu", "aphq_recipe", "relu_float_model"]
