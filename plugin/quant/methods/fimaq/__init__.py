"""FIMA-Q (Wang et al., CVPR 2025; official code ShiheWang/FIMA-Q): the `fimaq` recipe."""
from .recipe import fimaq_recipe  # noqa: F401

__all__ = ["fimaq_recipe"]
