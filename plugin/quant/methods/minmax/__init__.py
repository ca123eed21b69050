"""Min-max uniform quantization: the plain baseline (uniform quantizers of the core, no pass)."""
from .recipes import minmax_recipe  # noqa: F401
