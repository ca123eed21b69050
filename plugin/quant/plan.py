"""The resolved plan: which module gets which quantizer, decided once from recipe + adapter + overrides.

`resolve_plan(model, recipe, adapter)` asks the adapter for roles and LayerNorm → consumer pairs and applies the
recipe's rules (below) to every module the adapter names, giving an ordered `{module name: SitePlan}`: its role,
whether it consumes a LayerNorm output, and `{slot: QuantSpec | None}` per quantizer slot (`input`, `weight` for
Linear/Conv; `a`, `b` for the two matmul operands; a slot mapped to None stays float) or `specs=None` (the module
stays float: not swapped, no quantizer). It also records the LayerNorm groups and, among them, those the
post-LayerNorm reparameterisation may fold (every consumer quantized, none of a role in `reparam_skip_roles`).
With `Recipe.reparam_fold` "official" (RepQ-ViT's code, plugin.quant.reparam), the input spec of each consumer
in those groups that can be folded gets `zero_after_round`, so a saved plan rebuilds the same grid.

`attach_quantizers` builds exactly that; calibration, reparameterisation and SOS read the groups from it; a saved model
carries it (with every quantizer's buffer shapes, `with_buffers`), so loading rebuilds the modules from the file
without asking the adapter again. A plan is plain data: `to_dict` / `from_dict` (versioned), `compact()` for reports.

Rules, per module:
1. the first matching entry of `module_rules(recipe)` decides: `float_roles` as `("role:<role>", None)` entries
   first, then the recipe's `overrides` (plugin.quant.overrides patterns: `role:`, `re:`, globs). A rule None keeps the
   module float; a dict of slots gives those slots its specs;
2. every other slot takes the first of the recipe's `sites` keys that `site_keys` lists (`<role>.weight`,
   `<role>.input`, `post_gelu`, `post_ln`, `q`, `k`, `post_softmax`, `v`, …), else the recipe's default weight /
   activation spec.
"""
import re
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

import torch

from .errors import CheckpointError, ConfigError
from .modules import MatMul, quant_class_for, quantizer_slots
from .overrides import find_override
from .quantizers import Quantizer
from .reparam import foldable
from .spec import QuantSpec, Role

PLAN_VERSION = 1


@dataclass(frozen=True)
class SitePlan:
    """One module of the plan: its role, whether a LayerNorm feeds it, and its slot specs (None: stays float)."""
    role: Role
    specs: Optional[Dict[str, Optional[QuantSpec]]]
    post_ln: bool = False

    @property
    def quantized(self):
        return self.specs is not None


@dataclass
class Plan:
    adapter: str
    sites: Dict[str, SitePlan]
    norm_groups: List[Tuple[str, List[str]]] = field(default_factory=list)
    reparam_groups: List[Tuple[str, List[str]]] = field(default_factory=list)
    # {module: {slot: {buffer: [shape, dtype]}}} of the quantizers as saved (with_buffers); None before saving
    buffers: Optional[dict] = None
    version: int = PLAN_VERSION

    def quantized(self):
        """(name, SitePlan) of the modules that get quantizers, in order."""
        return [(n, s) for n, s in self.sites.items() if s.quantized]

    def to_dict(self):
        d = {"version": self.version, "adapter": self.adapter,
             "sites": [[n, s.role.value, s.post_ln,
                        None if s.specs is None else {k: (v.to_dict() if v is not None else None)
                                                      for k, v in s.specs.items()}] for n, s in self.sites.items()],
             "norm_groups": [[n, list(cs)] for n, cs in self.norm_groups],
             "reparam_groups": [[n, list(cs)] for n, cs in self.reparam_groups]}
        if self.buffers is not None:
            d["buffers"] = self.buffers
        return d

    @classmethod
    def from_dict(cls, d, where="plan"):
        """The plan `to_dict` wrote; CheckpointError for a newer version or a malformed entry."""
        if not isinstance(d, dict) or not isinstance(d.get("version"), int):
            raise CheckpointError(f"{where}: a plan must be a dict with an integer version")
        if d["version"] > PLAN_VERSION:
            raise CheckpointError(f"{where}: plan version {d['version']} is newer than this library ({PLAN_VERSION})")
        try:
            sites = {}
            for name, role, post_ln, specs in d["sites"]:
                specs = None if specs is None else {k: (QuantSpec.from_dict(v) if v is not None else None)
                                                    for k, v in specs.items()}
                sites[name] = SitePlan(Role(role), specs, bool(post_ln))
            groups = {k: [(n, list(cs)) for n, cs in d.get(k, [])] for k in ("norm_groups", "reparam_groups")}
            return cls(str(d["adapter"]), sites, buffers=d.get("buffers"), version=d["version"], **groups)
        except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{where}: malformed plan: {type(exc).__name__}: {exc}") from exc

    def rows(self):
        """[[name, count, role, specs label]]: modules that differ only in block indices and have the same specs
        share one row named with `*` for the indices (`blocks.*.attn.qkv`, 12, ...); a row of one module keeps its
        own name. In the order of each row's first module."""
        rows = []
        for name, s in self.sites.items():
            key = (re.sub(r"(?<=\.)\d+(?=\.)", "*", name), s.role.value, site_label(s))
            same = next((r for r in rows if r[0] == key), None)
            if same is not None:
                same[2] += 1
            else:
                rows.append([key, name, 1])
        return [[key[0] if n > 1 else first, n, key[1], key[2]] for key, first, n in rows]

    def compact(self):
        """The plan in a few lines of JSON (report.json): `rows()` and the number of LayerNorm groups."""
        return {"sites": self.rows(), "norm_groups": len(self.norm_groups),
                "reparam_groups": len(self.reparam_groups)}

    def lines(self):
        """`rows()` as text lines, and the LayerNorm groups (--dry-run)."""
        rows = self.rows()
        width = max((len(r[0]) for r in rows), default=0)
        out = [f"{p:<{width}} x{n:<3} {role:<11} {label}" for p, n, role, label in rows]
        out.append(f"LayerNorm groups: {len(self.norm_groups)}, reparameterisable: {len(self.reparam_groups)}")
        return out


def spec_label(spec):
    """`uniform:4/channel/mse` (kind:bits/granularity/search, + `/sym`, + options) or `float`."""
    if spec is None:
        return "float"
    parts = [f"{spec.kind}:{spec.bits}", spec.granularity, spec.search] + (["sym"] if spec.symmetric else [])
    parts += [f"{k}={v}" for k, v in spec.options]
    return "/".join(parts)


def site_label(site):
    if site.specs is None:
        return "float (not swapped)"
    return " ".join(f"{slot}={spec_label(spec)}" for slot, spec in site.specs.items()) + \
        (" [post-LN]" if site.post_ln else "")


def slot_key(attr):
    """`weight_quantizer` -> `weight`."""
    return attr[:-len("_quantizer")]


def site_keys(role: Role, is_matmul: bool, post_ln: bool, slot: str):
    """The recipe's `sites` keys for one slot, most specific first; the last one names the default spec."""
    if slot == "weight":
        return [f"{role.value}.weight", "weight"]
    if is_matmul:
        if role == Role.MATMUL_QK:
            return [f"{role.value}.a", "q", "act"] if slot == "a" else [f"{role.value}.b", "k", "act"]
        return [f"{role.value}.a", "post_softmax", "act"] if slot == "a" else [f"{role.value}.b", "v", "act"]
    keys = [f"{role.value}.input"]
    if role == Role.FC2:
        keys.append("post_gelu")
    if post_ln:
        keys.append("post_ln")
    return keys + ["act"]


def _module_slots(module, name, role, adapter):
    """The module's slot names (`input`, `weight` / `a`, `b`); ConfigError for a module that cannot be quantized
    (an already quantized module is planned as it is)."""
    if not isinstance(module, MatMul) and quant_class_for(module) is None and not hasattr(module, "weight_quantizer"):
        raise ConfigError(f"adapter {adapter.name} gave role {role.value} to {name}, "
                          f"a {type(module).__name__}, which cannot be quantized")
    return [slot_key(attr) for attr, _ in quantizer_slots(module)]


def module_rules(recipe):
    """The one ordered list of per-module rules `resolve_plan` applies, first match wins (plugin.quant.overrides
    patterns): `float_roles` translated to leading `("role:<role>", None)` rules, then the recipe's `overrides` (into
    which the pipeline puts the config's and the task's rules first). `reparam_skip_roles` is no per-module rule: it
    filters the LayerNorm groups (`Plan.reparam_groups`)."""
    return [(f"role:{Role(r).value}", None) for r in recipe.float_roles] + list(recipe.overrides)


def resolve_plan(model, recipe, adapter) -> Plan:
    """The plan of `recipe` on `model` (after `adapter.prepare(model)`): see the module docstring for the rules."""
    roles = adapter.roles(model)
    rules = module_rules(recipe)
    groups = [(n, list(cs)) for n, cs in adapter.norm_consumers(model)]
    consumers = {c for _, cs in groups for c in cs}
    sites = {}
    for name, role in roles.items():
        role = Role(role)
        post_ln = name in consumers
        overridden, rule = find_override(rules, name, role)
        if overridden and rule is None:
            sites[name] = SitePlan(role, None, post_ln)
            continue
        module = model.get_submodule(name)
        specs = {}
        for slot in _module_slots(module, name, role, adapter):
            if overridden and slot in rule:
                specs[slot] = rule[slot]
            else:
                specs[slot] = recipe.spec_for(site_keys(role, isinstance(module, MatMul), post_ln, slot))
        sites[name] = SitePlan(role, specs, post_ln)
    quantized = {n for n, s in sites.items() if s.quantized}
    # a consumer kept float would see the folded LayerNorm output uncompensated; skip roles keep their own quantizer
    reparam = [(n, cs) for n, cs in groups if cs and all(c in quantized for c in cs)
               and not any(sites[c].role in recipe.reparam_skip_roles for c in cs)]
    if recipe.reparam is not None and recipe.reparam_fold == "official":
        for c in (c for _, cs in reparam for c in cs):
            spec = sites[c].specs.get("input")
            if foldable(spec):
                specs = dict(sites[c].specs, input=spec.replace(options={**spec.opts, "zero_after_round": True}))
                sites[c] = replace(sites[c], specs=specs)
    return Plan(adapter.name, sites, groups, reparam)


def with_buffers(model, plan) -> Plan:
    """`plan` with the shape and dtype of every buffer of its quantizers in `model` (what saving records: a
    calibrated quantizer's buffers are sized by calibration, e.g. one scale per channel)."""
    out = {}
    for name, site in plan.quantized():
        module = model.get_submodule(name)
        slots = {}
        for slot in site.specs:
            q = getattr(module, slot + "_quantizer", None)  # a frozen layer (Int8Linear) has none
            if isinstance(q, Quantizer):
                slots[slot] = {b: [list(t.shape), str(t.dtype).replace("torch.", "")]
                               for b, t in q._buffers.items() if t is not None}
        if slots:
            out[name] = slots
    return replace(plan, buffers=out)


def shape_buffers(model, plan, device=None, where="plan"):
    """Give the quantizers `attach_quantizers(model, plan)` built the buffer shapes and dtypes the plan recorded
    (`with_buffers`), on `device` (default: where each buffer is), so the saved tensors load as they are."""
    for name, slots in (plan.buffers or {}).items():
        module = model.get_submodule(name)
        for slot, buffers in slots.items():
            q = getattr(module, slot + "_quantizer", None)
            if not isinstance(q, Quantizer):
                raise CheckpointError(f"{where}: the plan records buffers of {name}.{slot}_quantizer, "
                                      f"which its own specs leave float")
            for buf, (shape, dtype) in buffers.items():
                dtype = getattr(torch, str(dtype), None)
                if not isinstance(dtype, torch.dtype):
                    raise CheckpointError(f"{where}: buffer {name}.{slot}_quantizer.{buf} has an unknown dtype")
                ref = q._buffers.get(buf)
                q._buffers[buf] = torch.empty(shape, dtype=dtype,
                                              device=device if device is not None else getattr(ref, "device", None))


__all__ = ["PLAN_VERSION", "Plan", "SitePlan", "module_rules", "resolve_plan", "shape_buffers", "site_keys", "spec_label",
           "with_buffers"]
