"""Quantizer attachment: build a resolved plan (plugin.quant.plan) on a model, swapping every planned module for its
quantized class and giving each quantizer slot its spec (shared by `quantize` and `load_quantized`)."""
from dataclasses import dataclass
from typing import List

import torch.nn as nn

from .errors import ConfigError
from .modules import MatMul, quant_class_for, quantizer_slots
from .plan import Plan, resolve_plan, slot_key
from .quantizers import build_quantizer
from .spec import Role


@dataclass
class Site:
    """One quantized module: its name, role and whether it consumes a LayerNorm output."""
    name: str
    module: nn.Module
    role: Role
    post_ln: bool = False

    def quantizers(self):
        return [(slot, q) for slot, _ in quantizer_slots(self.module) if (q := getattr(self.module, slot)) is not None]

    def act_quantizers(self):
        return [(slot, q) for slot, q in self.quantizers() if slot != "weight_quantizer"]


def set_submodule(model, name, new):
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _make_quantizer(spec, default_axis):
    if spec is None:
        return None
    axis = 1 if spec.granularity == "head" else default_axis
    return build_quantizer(spec, axis)


def attach_quantizers(model, plan, adapter=None) -> List[Site]:
    """Build `plan` (a Plan, plugin.quant.plan) on `model` in place: swap each planned module for its quantized class
    and give each slot its spec; return the sites in module order. `attach_quantizers(model, recipe, adapter)`
    resolves the recipe's plan first (the model's QuantState then holds it, when `quantize` made the model)."""
    if not isinstance(plan, Plan):
        if adapter is None:
            raise ConfigError("attach_quantizers needs a Plan, or a recipe and an adapter")
        plan = resolve_plan(model, plan, adapter)
    sites = []
    for name, planned in plan.quantized():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"the plan names {name!r}, which this model does not have") from None
        if not isinstance(module, MatMul):
            quant_cls = quant_class_for(module)
            if quant_cls is not None:
                module = quant_cls.from_module(module)
                set_submodule(model, name, module)
            elif not hasattr(module, "weight_quantizer"):  # an already quantized module is re-attached as it is
                raise ConfigError(f"the plan quantizes {name}, a {type(module).__name__}, which cannot be quantized")
        for attr, axis in quantizer_slots(module):
            key = slot_key(attr)
            if key not in planned.specs:
                raise ConfigError(f"the plan of {name} has no {key!r} slot (a {type(module).__name__})")
            setattr(module, attr, _make_quantizer(planned.specs[key], axis))
        sites.append(Site(name, module, planned.role, post_ln=planned.post_ln))
    return sites
