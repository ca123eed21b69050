"""The resolved plan (plugin.quant.plan): the same answers as the per-site rules attach used before it, built exactly
by attach_quantizers, plain data that round-trips, and saved with the model so loading needs no adapter rules."""
import json

import pytest
import torch

from plugin.errors import CheckpointError
from plugin.quant import QuantSpec, Role, get_recipe, load_quantized, quantize, save_quantized, state
from plugin.quant.adapter import find_adapter
from plugin.quant.attach import attach_quantizers
from plugin.quant.modules import MatMul
from plugin.quant.plan import Plan, resolve_plan
from plugin.quant.quantizers import Quantizer
from timm_toys import build, calib_data, images


def _legacy_spec(recipe, name, role, module, post_ln, slot):
    """The rule of attach_quantizers before the plan (commit 7d45534, `_site_keys` and its caller), restated as the
    oracle: float_roles, then the first matching override, then the site keys and the recipe's defaults."""
    if role in recipe.float_roles:
        return "float"
    overridden, rule = recipe.override_for(name, role)
    if overridden and rule is None:
        return "float"
    if overridden and slot in rule:
        return rule[slot]
    r = role.value
    if slot == "weight":
        keys = [f"{r}.weight", "weight"]
    elif isinstance(module, MatMul):
        table = {(Role.MATMUL_QK, "a"): "q", (Role.MATMUL_QK, "b"): "k", (Role.MATMUL_AV, "a"): "post_softmax",
                 (Role.MATMUL_AV, "b"): "v"}
        keys = [f"{r}.{slot}", table[(role, slot)], "act"]
    else:
        keys = [f"{r}.input"] + (["post_gelu"] if role == Role.FC2 else []) + (["post_ln"] if post_ln else []) + ["act"]
    return recipe.spec_for(keys)


def _with_overrides(recipe):
    recipe.float_roles = (Role.HEAD,)
    recipe.overrides = [("blocks.0.*", None), ("role:fc2", {"input": QuantSpec(8)}),
                        ("re:.*matmul_qk", {"b": None}), ("role:head", {"weight": QuantSpec(8)})]
    recipe.__post_init__()
    return recipe


def _pointcloud():
    pc = pytest.importorskip("plugin.pointcloud")
    torch.manual_seed(0)
    return pc.build_model(dict(type="PointMAECls", num_classes=3, num_group=8, head_hidden=(16,), trans_dim=16,
                               depth=2, num_heads=2, group_size=8, encoder_channels=(8, 16))).eval()


MODELS = {"vit": lambda: build("vit"), "vit_avg": lambda: build("vit_avg"), "swin": lambda: build("swin"),
          "deit_distilled": lambda: build("deit_distilled"), "pointcloud": _pointcloud}
RECIPES = ["minmax", "ptq4vit", "repq", "isvit", "dopq", "aiqvit", "overrides"]


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("method", RECIPES)
def test_plan_gives_the_answers_of_the_rules_before_it(arch, method):
    model = MODELS[arch]()
    recipe = _with_overrides(get_recipe("minmax", 4, 4)) if method == "overrides" else get_recipe(method, 4, 4)
    adapter = find_adapter(model)
    adapter.prepare(model)
    plan = resolve_plan(model, recipe, adapter)
    roles = adapter.roles(model)
    groups = adapter.norm_consumers(model)
    consumers = {c for _, cs in groups for c in cs}
    assert list(plan.sites) == list(roles)  # every module the adapter names, in its order
    for name, role in roles.items():
        module, site = model.get_submodule(name), plan.sites[name]
        assert site.role == Role(role) and site.post_ln == (name in consumers)
        slots = ["a", "b"] if isinstance(module, MatMul) else ["input", "weight"]
        expected = {s: _legacy_spec(recipe, name, Role(role), module, name in consumers, s) for s in slots}
        assert site.specs == (None if "float" in expected.values() else expected), name
    # reparameterisable groups: the filter reparam.py applied at calibration time before the plan
    quantized = {n for n, s in plan.sites.items() if s.specs is not None}
    assert plan.reparam_groups == [(n, cs) for n, cs in groups if cs and all(c in quantized for c in cs)
                                   and not any(plan.sites[c].role in recipe.reparam_skip_roles for c in cs)]
    assert plan.norm_groups == [(n, list(cs)) for n, cs in groups]
    if method == "overrides" and arch == "vit":
        assert plan.sites["head"].specs is None and plan.sites["blocks.0.attn.qkv"].specs is None
        assert plan.sites["blocks.1.mlp.fc2"].specs["input"] == QuantSpec(8)
        assert plan.sites["blocks.1.attn.matmul_qk"].specs["b"] is None


@pytest.mark.parametrize("arch", ["vit", "swin"])
def test_attach_builds_exactly_the_plan(arch):
    recipe = _with_overrides(get_recipe("repq", 4, 4))
    model = quantize(build(arch), recipe, calib_data(), log=lambda *a: None)
    plan = state(model).plan
    for name, site in plan.sites.items():
        module = model.get_submodule(name)
        if site.specs is None:
            assert not any(isinstance(m, Quantizer) for m in module.modules())  # float: no quantizer at all
            continue
        for slot, spec in site.specs.items():
            q = getattr(module, slot + "_quantizer")
            assert (q is None) if spec is None else (isinstance(q, Quantizer) and q.spec == spec)


def test_plan_round_trips_as_json_and_refuses_newer_or_malformed():
    model = build("swin")
    adapter = find_adapter(model)
    adapter.prepare(model)
    plan = resolve_plan(model, _with_overrides(get_recipe("isvit", 3, 3)), adapter)
    back = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert back == plan and back.to_dict() == plan.to_dict()
    with pytest.raises(CheckpointError, match="newer"):
        Plan.from_dict({**plan.to_dict(), "version": 99})
    with pytest.raises(CheckpointError, match="malformed"):
        Plan.from_dict({**plan.to_dict(), "sites": [["x", "nope", False, None]]})
    with pytest.raises(CheckpointError, match="malformed"):
        Plan.from_dict({**plan.to_dict(), "sites": [["x", "qkv", False, {"weight": {"bits": 99}}]]})


def test_attach_refuses_a_plan_that_names_a_missing_module():
    model = build("vit")
    adapter = find_adapter(model)
    adapter.prepare(model)
    plan = resolve_plan(model, get_recipe("minmax", 4, 4), adapter)
    plan.sites = {"no.such": next(iter(plan.sites.values()))}
    from plugin.quant.errors import ConfigError
    with pytest.raises(ConfigError, match="no.such"):
        attach_quantizers(build("vit"), plan)


def test_compact_folds_blocks_and_keeps_exceptions():
    model = build("vit")
    adapter = find_adapter(model)
    adapter.prepare(model)
    rows = resolve_plan(model, _with_overrides(get_recipe("minmax", 4, 4)), adapter).compact()
    by = {(r[0], r[3]): r[1] for r in rows}
    assert by[("blocks.*.attn.qkv", "float (not swapped)")] == 1  # blocks.0 kept float by the override
    assert sum(n for (p, _), n in by.items() if p == "blocks.*.attn.qkv") == 2
    assert any(p == "head" and label == "float (not swapped)" for (p, label) in by)
