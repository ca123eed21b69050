"""APHQ-ViT (Wu et al., CVPR 2025; official code GoatWu/APHQ-ViT): the `aphq` recipe and its ablations."""
from .recipe import aphq_recipe  # noqa: F401

__all__ = ["aphq_recipe"]
