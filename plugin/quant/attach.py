"""Quantizer attachment: swap every module an adapter gives a role for its quantized class and give each quantizer
slot the recipe's spec for that site (shared by `quantize` and `load_quantized`)."""
from dataclasses import dataclass
from typing import List

import torch.nn as nn

from .errors import ConfigError
from .modules import MatMul, quant_class_for, quantizer_slots
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


def _site_keys(site: Site, slot: str):
    role = site.role.value
    if slot == "weight_quantizer":
        return [f"{role}.weight", "weight"]
    if isinstance(site.module, MatMul):
        if site.role == Role.MATMUL_QK:
            return [f"{role}.a", "q", "act"] if slot == "a_quantizer" else [f"{role}.b", "k", "act"]
        return [f"{role}.a", "post_softmax", "act"] if slot == "a_quantizer" else [f"{role}.b", "v", "act"]
    keys = [f"{role}.input"]
    if site.role == Role.FC2:
        keys.append("post_gelu")
    if site.post_ln:
        keys.append("post_ln")
    return keys + ["act"]


def _make_quantizer(spec, default_axis):
    if spec is None:
        return None
    axis = 1 if spec.granularity == "head" else default_axis
    return build_quantizer(spec, axis)


def attach_quantizers(model, recipe, adapter) -> List[Site]:
    """Swap quantized modules in (in place) and return the sites in module order."""
    roles = adapter.roles(model)
    consumers = {c for _, cs in adapter.norm_consumers(model) for c in cs}
    sites = []
    for name, role in roles.items():
        role = Role(role)
        overridden, rule = recipe.override_for(name, role)
        if role in recipe.float_roles or (overridden and rule is None):
            continue
        module = model.get_submodule(name)
        if not isinstance(module, MatMul):
            quant_cls = quant_class_for(module)
            if quant_cls is not None:
                module = quant_cls.from_module(module)
                set_submodule(model, name, module)
            elif not hasattr(module, "weight_quantizer"):  # an already quantized module is re-attached as it is
                raise ConfigError(f"adapter {adapter.name} gave role {role.value} to {name}, "
                                  f"a {type(module).__name__}, which cannot be quantized")
        site = Site(name, module, role, post_ln=name in consumers)
        for slot, axis in quantizer_slots(module):
            key = slot[:-len("_quantizer")]
            spec = rule[key] if overridden and key in rule else recipe.spec_for(_site_keys(site, slot))
            setattr(module, slot, _make_quantizer(spec, axis))
        sites.append(site)
    return sites
