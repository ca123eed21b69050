"""The per-site rules of attach_quantizers before the resolved plan existed (commit 7d45534), restated as a test
oracle: the plan (plugin.quant.plan) must give the same answers on every adapter."""
from plugin.quant import Role
from plugin.quant.modules import MatMul
from plugin.quant.overrides import find_override


def legacy_spec(recipe, name, role, module, post_ln, slot):
    """The rule of attach_quantizers before the plan (commit 7d45534, `_site_keys` and its caller), restated as the
    oracle: float_roles, then the first matching override, then the site keys and the recipe's defaults."""
    if role in recipe.float_roles:
        return "float"
    overridden, rule = find_override(recipe.overrides, name, role)
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


def assert_plan_matches_legacy_rules(plan, model, recipe, adapter):
    """Every module the adapter names is in the plan, in its order, with the role, post-LN flag, slot specs and
    LayerNorm groups the pre-plan code derived (attach's site keys, reparam.py's group filter)."""
    roles = adapter.roles(model)
    groups = adapter.norm_consumers(model)
    consumers = {c for _, cs in groups for c in cs}
    assert list(plan.sites) == list(roles)  # every module the adapter names, in its order
    for name, role in roles.items():
        module, site = model.get_submodule(name), plan.sites[name]
        assert site.role == Role(role) and site.post_ln == (name in consumers)
        slots = ["a", "b"] if isinstance(module, MatMul) else ["input", "weight"]
        expected = {s: legacy_spec(recipe, name, Role(role), module, name in consumers, s) for s in slots}
        assert site.specs == (None if "float" in expected.values() else expected), name
    # reparameterisable groups: the filter reparam.py applied at calibration time before the plan
    quantized = {n for n, s in plan.sites.items() if s.specs is not None}
    assert plan.reparam_groups == [(n, cs) for n, cs in groups if cs and all(c in quantized for c in cs)
                                   and not any(plan.sites[c].role in recipe.reparam_skip_roles for c in cs)]
    assert plan.norm_groups == [(n, list(cs)) for n, cs in groups]
