"""plugin.quant.registry.Registry: one lookup error, duplicate policy and listing for every registry."""
import pytest

import plugin  # noqa: F401  (registers everything)
from plugin.quant import ADAPTERS, PASSES, QUANTIZERS, RECIPES, Registry
from plugin.quant.reparam import REPARAM_RULES
from plugin.quant.errors import ConfigError
from plugin.quant.io import LOAD_HOOKS
from plugin.quant.recon import CHANNEL_FOLDS
from plugin.tasks.base import TASKS, get_task


def _fn():
    return 1


def test_lookup_listing_and_unknown_name():
    reg = Registry("colour")
    reg.register("red", _fn)
    assert reg.register("blue")(len) is len
    assert reg["red"] is _fn and "blue" in reg and "green" not in reg and ["x"] not in reg
    assert reg.names() == ["blue", "red"] and list(reg) == ["red", "blue"] and len(reg) == 2
    assert reg.get("green") is None and dict(reg.items()) == {"red": _fn, "blue": len}
    with pytest.raises(ConfigError, match=r"^unknown colour 'green'; known: blue, red$"):
        reg["green"]
    with pytest.raises(ConfigError, match=r"^recipe x: unknown colour \['a'\]; known: blue, red$"):
        reg.lookup(["a"], where="recipe x")  # an unhashable name from a config is an unknown name, not a TypeError


def test_duplicates_are_refused_unless_the_same_definition():
    reg = Registry("colour")
    reg.register("red", _fn)
    reg.register("red", _fn)  # the same object again: fine
    with pytest.raises(ConfigError, match="colour 'red' is already registered"):
        reg.register("red", len)
    assert reg["red"] is _fn

    def _fn_again():  # noqa: E306
        return 2
    _fn_again.__qualname__ = _fn.__qualname__  # a reloaded module defines the same name again: replaces
    reg.register("red", _fn_again)
    assert reg["red"] is _fn_again


@pytest.mark.parametrize("registry, name", [
    (QUANTIZERS, "uniform"), (REPARAM_RULES, "mean"), (CHANNEL_FOLDS, "mosf"), (PASSES, "block_recon"),
    (RECIPES, "repq"), (LOAD_HOOKS, "restore_branches"), (ADAPTERS, "timm_vit"), (TASKS, "classification")])
def test_every_registry_is_a_registry(registry, name):
    assert isinstance(registry, Registry) and name in registry.names()
    with pytest.raises(ConfigError, match=f"unknown {registry.what} 'nope'; known: .*{name}"):
        registry["nope"]


def test_unknown_task_names_the_config():
    with pytest.raises(ConfigError, match="config: unknown task 'nope'; known: classification"):
        get_task("nope")


def test_lazy_entries_import_their_module_on_first_lookup(tmp_path, monkeypatch):
    """A lazy name is listed and found like a registered one; its module is imported only when it is looked up."""
    import sys
    reg = Registry("colour")
    (tmp_path / "lazy_colour_mod.py").write_text("import builtins\nbuiltins._lazy_reg.register('teal', len)\n")
    (tmp_path / "lazy_colour_bad.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("builtins._lazy_reg", reg, raising=False)
    reg.register_lazy("teal", "lazy_colour_mod")
    reg.register_lazy("grey", "lazy_colour_bad")
    assert "teal" in reg and reg.names() == ["grey", "teal"] and "lazy_colour_mod" not in sys.modules
    assert reg["teal"] is len and "lazy_colour_mod" in sys.modules
    with pytest.raises(ConfigError, match="importing lazy_colour_bad did not register it"):
        reg["grey"]
    with pytest.raises(ConfigError, match="known: teal"):
        reg["grey"]  # refused once: no longer listed
