"""PTQ4ViT (Yuan et al., ECCV 2022): twin-uniform quantizers and the Hessian-guided scale search pass."""
from .quantizers import TwinUniformQuantizer  # noqa: F401
from .hessian import HessianSearchConfig, hessian_search  # noqa: F401
from .recipes import ptq4vit_mse_recipe, ptq4vit_recipe  # noqa: F401
