"""`relu_fisher` (ours): APHQ-ViT's ReLU MLP reconstruction with FIMA-Q's per-token scales and Fisher-DPLR block
reconstruction, post-LayerNorm folding at every width; see recipe.py."""
from .recipe import relu_fisher_recipe  # noqa: F401

__all__ = ["relu_fisher_recipe"]
