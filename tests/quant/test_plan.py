"""The resolved plan (plugin.quant.plan): the same answers as the per-site rules attach used before it, built exactly
by attach_quantizers, plain data that round-trips, and saved with the model so loading needs no adapter rules."""
import json
import math

import pytest
import torch

from plugin.errors import CheckpointError
from plugin.quant import QuantSpec, Role, get_recipe, load_quantized, quantize, save_quantized, state
from plugin.quant.adapter import find_adapter
from plugin.quant.attach import attach_quantizers
from plugin.quant.overrides import find_override
from plugin.quant.plan import Plan, module_rules, resolve_plan
from plugin.quant.quantizers import Quantizer
from plan_oracle import assert_plan_matches_legacy_rules
from timm_toys import build, calib_data, images


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
    assert_plan_matches_legacy_rules(plan, model, recipe, adapter)
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


def test_one_rule_list_float_roles_first():
    """float_roles become leading role rules, so they win over any override, as before the plan."""
    recipe = _with_overrides(get_recipe("minmax", 4, 4))
    rules = module_rules(recipe)
    assert rules[0] == ("role:head", None) and rules[1:] == list(recipe.overrides)
    assert find_override(rules, "head", Role.HEAD) == (True, None)  # ("role:head", {weight: 8 bit}) comes later


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
    rows = resolve_plan(model, _with_overrides(get_recipe("minmax", 4, 4)), adapter).rows()
    by = {(r[0], r[3]): r[1] for r in rows}
    assert by[("blocks.0.attn.qkv", "float (not swapped)")] == 1  # kept float by the override: its own row
    assert by[("blocks.1.attn.qkv", "input=uniform:4/tensor/minmax weight=uniform:4/channel/minmax [post-LN]")] == 1
    assert ("head", "float (not swapped)") in by
    wide = build("vit", depth=3)
    adapter.prepare(wide)
    rows = resolve_plan(wide, get_recipe("minmax", 4, 4), adapter).rows()
    assert ["blocks.*.mlp.fc2", 3, "fc2", "input=uniform:4/tensor/minmax weight=uniform:4/channel/minmax"] in rows


def _no_resizing(monkeypatch):
    """Make Quantizer loading fail where a saved buffer's shape differs from the fresh one (a resize would be due)."""
    original = Quantizer._load_from_state_dict

    def strict(self, state_dict, prefix, *args, **kwargs):
        for name, buf in self._buffers.items():
            if prefix + name in state_dict and buf is not None:
                assert buf.shape == state_dict[prefix + name].shape, f"resize needed: {prefix}{name}"
        return original(self, state_dict, prefix, *args, **kwargs)
    monkeypatch.setattr(Quantizer, "_load_from_state_dict", strict)


@pytest.mark.parametrize("method", ["repq", "isvit"])
def test_saved_plan_loads_without_adapter_rules_or_resizing(tmp_path, monkeypatch, method):
    recipe = get_recipe(method, 4, 4)
    recipe.passes = [dict(p.to_dict(), iters=1, batch_size=2) for p in recipe.passes]
    model = quantize(build("vit"), recipe, calib_data(), log=lambda *a: None)
    save_quantized(model, str(tmp_path / "m"))
    meta = json.load(open(tmp_path / "m.json"))
    saved = Plan.from_dict(meta["plan"])
    assert saved.sites == state(model).plan.sites
    shape, dtype = saved.buffers["blocks.0.mlp.fc1"]["weight"]["scale"]  # per output channel: 4 x 64 of them
    assert math.prod(shape) == 256 and dtype == "float32"
    adapter_cls = type(find_adapter(build("vit")))

    def refuse(*a, **k):
        raise AssertionError("the adapter's rules ran while loading a saved plan")
    with monkeypatch.context() as m:
        m.setattr(adapter_cls, "roles", refuse)
        m.setattr(adapter_cls, "norm_consumers", refuse)
        _no_resizing(m)
        loaded = load_quantized(build("vit"), str(tmp_path / "m"))
    x = images(2)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert state(loaded).plan.sites == saved.sites
    # a file saved before plans (no "plan" in its JSON) loads through the recipe and the adapter, resizing buffers
    meta.pop("plan")
    json.dump(meta, open(tmp_path / "m.json", "w"))
    with monkeypatch.context() as m:
        _no_resizing(m)
        with pytest.raises(AssertionError, match="resize needed"):
            load_quantized(build("vit"), str(tmp_path / "m"))
    legacy = load_quantized(build("vit"), str(tmp_path / "m"))
    with torch.no_grad():
        assert torch.equal(legacy(x), model(x))
    assert state(legacy).plan.sites == saved.sites


def test_a_bad_saved_plan_is_one_clear_error(tmp_path):
    model = quantize(build("vit"), get_recipe("minmax", 4, 4), calib_data(), log=lambda *a: None)
    save_quantized(model, str(tmp_path / "m"))
    meta = json.load(open(tmp_path / "m.json"))
    for edit, match in ((lambda p: p.update(version=99), "newer"),
                        (lambda p: p["sites"].append(["blocks.9.attn.qkv", "qkv", False, {}]), "does not fit"),
                        (lambda p: p.update(adapter="other"), "adapter"),
                        (lambda p: p["buffers"]["head"]["weight"]["scale"].__setitem__(1, "nope"), "dtype")):
        bad = json.loads(json.dumps(meta))
        edit(bad["plan"])
        json.dump(bad, open(tmp_path / "m.json", "w"))
        with pytest.raises(CheckpointError, match=match):
            load_quantized(build("vit"), str(tmp_path / "m"))


def test_architecture_doc_plan_example_prints_what_the_doc_shows(capsys):
    """docs/architecture.md's "resolved plan" example, executed as written, prints the lines the doc shows."""
    import pathlib
    from repo_paths import REPO
    section = (pathlib.Path(REPO) / "docs" / "architecture.md").read_text().split("## The resolved plan", 1)[1]
    section = section.split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    shown = section.split("\nprints (", 1)[1].split("```\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/architecture.md", "exec"), {"__name__": "plan_example"})
    assert capsys.readouterr().out == shown
