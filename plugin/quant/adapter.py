"""The adapter protocol: what the quantizer library needs to know about an architecture, and its registry.

The core owns this interface; architectures register into it from outside (the adapters package: timm, mmdet, point
clouds), so imports only point down into plugin.quant. Only adapters know module names. The core asks them for roles,
LayerNorm → consumer pairs and blocks, and lets them make attention matmuls explicit (`prepare`).
"""
from typing import Dict, List, Tuple

import torch.nn as nn

from .errors import ConfigError
from .registry import Registry

ADAPTERS = Registry("adapter")  # name -> Adapter instance


def register_adapter(cls):
    ADAPTERS.register(cls.name, cls())
    return cls


def find_adapter(model, name=None) -> "Adapter":
    if name is not None:
        return ADAPTERS[name]
    for adapter in ADAPTERS.values():
        if adapter.matches(model):
            return adapter
    raise ConfigError(f"no adapter knows the architecture {type(model).__name__}; known adapters: "
                      f"{', '.join(ADAPTERS.names())}")


def module_names(model) -> Dict[int, str]:
    """id(module) -> qualified name, for adapters that walk the structure by attribute."""
    return {id(m): n for n, m in model.named_modules()}


def swap_class(module: nn.Module, new_cls, **submodules):
    """Give `module` the subclass `new_cls` (same parameters and state) and add submodules.

    The class changes, not the instance's forward, so copy.deepcopy and pickling behave (a per-instance forward
    survives deepcopy and makes a "float teacher" run quantized code).
    """
    if type(module) is not new_cls:
        if not issubclass(new_cls, type(module)):
            raise TypeError(f"{new_cls.__name__} is not a subclass of {type(module).__name__}")
        module.__class__ = new_cls
    for name, sub in submodules.items():
        if not hasattr(module, name) or getattr(module, name) is None:
            module.add_module(name, sub)
    return module


class Adapter:
    """Subclass, set `name`, implement the methods, decorate with @register_adapter."""
    name = "base"

    def matches(self, model) -> bool:
        raise NotImplementedError

    def prepare(self, model) -> None:
        """Make attention matmuls explicit MatMul submodules (`matmul_qk`, `matmul_av`). Idempotent."""

    def roles(self, model) -> Dict[str, object]:
        raise NotImplementedError

    def norm_consumers(self, model) -> List[Tuple[str, List[str]]]:
        return []

    def blocks(self, model) -> List[str]:
        return []

    def deploy_attention(self) -> Dict[type, type]:
        """{quantizable attention class (after `prepare`): the class `plugin.quant.deploy` swaps in, which computes the
        same attention without explicit matmuls (e.g. through F.scaled_dot_product_attention)}. None by default: the
        attention then stays fake-quant at deployment."""
        return {}

    def model_dependent_inputs(self, model) -> List[str]:
        """Names of submodules whose inputs depend on the model's own predictions (a detector's RoI heads get the
        features of the boxes it proposed): reconstruction cannot pair their inputs in the quantized model with
        outputs of the float model, and fits them to the float module on the same inputs instead."""
        return []
