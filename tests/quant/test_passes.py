"""Typed pass configs (plugin.quant.passes): built and checked with the recipe, versioned, JSON both ways, old
recipes (versions 1 and 2, passes as sparse dicts) still load."""
import glob
import json
import os

import pytest

import plugin  # noqa: F401  (registers the passes)
from plugin.quant import PASSES, Recipe, get_recipe
from plugin.quant.errors import ConfigError
from plugin.quant.passes import PassConfig, pass_config
from plugin.quant.methods.aiqvit import LowRankConfig
from plugin.quant.recon import ReconConfig, SosConfig

from repo_paths import REPO  # noqa: E402


def test_registered_passes_are_configs():
    assert {k: PASSES[k] for k in ("block_recon", "sos", "lowrank")} == \
        {"block_recon": ReconConfig, "sos": SosConfig, "lowrank": LowRankConfig}
    assert all(issubclass(cls, PassConfig) and cls.kind == name for name, cls in PASSES.items())


def test_recipes_hold_checked_configs_that_read_like_their_json():
    (p,) = get_recipe("isvit", 4, 4).passes
    assert isinstance(p, SosConfig) and p.rule == "mean" and p.learn == ("weight", "bias") and p.iters is None
    assert p["type"] == "sos" and p["learn"] == ["weight", "bias"] and dict(p)["version"] == SosConfig.VERSION
    small = pass_config(dict(p, setting="small"))  # what --recon-setting does
    assert small == p.replace(setting="small") and small.iters is None


def test_iterations_follow_the_setting_and_bit_widths():
    p = pass_config({"type": "block_recon"})
    assert (p.resolved(get_recipe("minmax", 4, 4)).iters, p.resolved(get_recipe("minmax", 6, 6)).iters) == (1000, 200)
    assert p.replace(setting="small").resolved(get_recipe("minmax", 4, 4)).batch_size == 32
    assert p.replace(iters=7).resolved(get_recipe("minmax", 4, 4)).iters == 7


@pytest.mark.parametrize("entry, match", [
    (dict(type="block_recon", iters=-1), "iters must be a non-negative integer"),
    (dict(type="block_recon", iters=2.5), "iters must be a non-negative integer"),
    (dict(type="block_recon", batch_size=0), "batch_size must be a positive integer"),
    (dict(type="block_recon", lr="fast"), "lr must be a non-negative number"),
    (dict(type="block_recon", layers="yes"), "layers must be True or False"),
    (dict(type="block_recon", curriculum_start=0), r"curriculum_start must be in \(0, 1\]"),
    (dict(type="block_recon", learn=("bias", "gamma")), "cannot learn"),
    (dict(type="block_recon", iterz=3), "unknown options"),
    (dict(type="block_recon", version=99), "newer than this library"),
    (dict(type="sos", stages=(1, 4)), "stages must be drawn from"),
    (dict(type="sos", rule="median"), "unknown reparameterisation rule 'median'; known: mean, mosf"),
    (dict(type="lowrank", placement="mid"), "placement must be"),
    (dict(type="lowrank", placement="post"), "merge=True needs placement='pre'"),
    (dict(type="lowrank", rank_candidates=[]), "rank_candidates must be positive integers"),
    (dict(type="lowrank", search_frac=1.5), r"search_frac must be in \[0, 1\]"),
    (dict(type="lowrank", roles=["qkv", "attention"]), "roles must be role names"),
    # a prefix: the list grows with every registered pass
    (dict(type="nosuch"), "recipe minmax: unknown pass 'nosuch'; known: block_recon, hessian_search, lowrank, "),
])
def test_bad_options_fail_when_the_recipe_is_built(entry, match):
    with pytest.raises(ConfigError, match=match):
        get_recipe("minmax", 4, 4, passes=[entry])


def test_a_good_entry_round_trips_through_json():
    recipe = get_recipe("minmax", 4, 4, passes=[dict(type="lowrank", placement="post", merge=False, roles=["qkv"],
                                                     rank_candidates=[8], iters=3)])
    (p,) = recipe.passes
    assert p.roles == (plugin.quant.Role.QKV,) and p.rank_candidates == (8,)
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe


def test_every_stored_recipe_of_the_results_still_loads():
    """The reports under docs/results hold recipes of versions 1 and 2 (passes as sparse dicts)."""
    found = []

    def walk(obj):
        if isinstance(obj, dict):
            if {"name", "weight", "passes"} <= set(obj):
                found.append(obj)
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)
    for path in glob.glob(os.path.join(REPO, "docs/results/**/*.json"), recursive=True):
        with open(path) as f:
            walk(json.load(f))
    old = [d for d in found if d.get("version", 1) < 3 and d["passes"]]
    if not old:
        pytest.skip("no stored recipes with passes")
    for d in old:
        recipe = Recipe.from_dict(d)
        assert [p.kind for p in recipe.passes] == [p["type"] for p in d["passes"]]
        for p, entry in zip(recipe.passes, d["passes"]):
            assert all(p[k] == (list(v) if isinstance(v, tuple) else v) for k, v in entry.items() if k != "type")
        assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
