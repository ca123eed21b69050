"""One registry type for every extension point (quantizer kinds, reparameterisation rules, channel folds, passes,
recipes, load hooks, adapters, tasks): the same lookup error, duplicate policy and listing everywhere.

    QUANTIZERS = Registry("quantizer kind")
    @QUANTIZERS.register("uniform")
    class UniformQuantizer(Quantizer): ...
    QUANTIZERS["nope"]  ->  ConfigError: unknown quantizer kind 'nope'; known: log2, uniform, ...

A registry reads like a read-only dict (`in`, `items()`, `values()`, `get()`; `names()` lists them sorted), except
that looking up an unknown name raises ConfigError naming what is known.

`register_lazy(name, module)` records a name whose module registers it when imported: the name is listed and found
like any other, and the module is imported on its first lookup (the task packages: `import plugin` for
classification does not import MMDetection).
"""
import importlib
from collections.abc import Mapping

from .errors import ConfigError


def _origin(obj):
    """Where an object was defined (module and qualified name): a partial counts as its function, an instance as its
    class."""
    obj = getattr(obj, "func", obj)
    if not hasattr(obj, "__qualname__"):
        obj = type(obj)
    return f"{obj.__module__}.{obj.__qualname__}"


class Registry(Mapping):
    """Name -> object, filled by decorators at import time, in registration order.

    Registering a taken name raises ConfigError, unless it is the same object or a new definition from the same place
    (same module and qualified name: a module reloaded, a tool's main run twice in one process), which replaces the
    old one."""

    def __init__(self, what):
        self.what = what
        self._items = {}
        self._lazy = {}  # name -> module that registers it on import (not imported yet)

    def register(self, name, obj=None):
        """`registry.register(name, obj)` returns obj; `@registry.register(name)` decorates."""
        if obj is None:
            return lambda o: self.register(name, o)
        old = self._items.get(name)
        if old is not None and old is not obj and _origin(old) != _origin(obj):
            raise ConfigError(f"{self.what} {name!r} is already registered ({_origin(old)}); "
                              f"cannot register {_origin(obj)} under the same name")
        self._items[name] = obj
        self._lazy.pop(name, None)
        return obj

    def unregister(self, name):
        """Remove `name` (a plugin or a test that registered something only for a while); unknown names raise."""
        self.lookup(name)
        del self._items[name]

    def register_lazy(self, name, module):
        """Record that importing `module` registers `name`; it is imported when `name` is first looked up."""
        if name not in self._items:
            self._lazy[name] = module

    def _load(self, name):
        module = self._lazy.pop(name)
        importlib.import_module(module)
        if name not in self._items:
            raise ConfigError(f"{self.what} {name!r}: importing {module} did not register it")

    def lookup(self, name, where=None):
        """The object registered as `name`; an unknown name raises ConfigError ("<where>: unknown <what> ...")."""
        try:
            if name in self._lazy:
                self._load(name)
            return self._items[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name from a config (a list, a dict)
            prefix = f"{where}: " if where else ""
            raise ConfigError(f"{prefix}unknown {self.what} {name!r}; known: {', '.join(self.names())}") from None

    def names(self):
        return sorted(set(self._items) | set(self._lazy))

    def __getitem__(self, name):
        return self.lookup(name)

    def __contains__(self, name):
        try:
            return name in self._items or name in self._lazy
        except TypeError:
            return False

    def get(self, name, default=None):
        return self.lookup(name) if name in self else default

    def __iter__(self):
        return iter(list(self._items) + [n for n in self._lazy if n not in self._items])

    def __len__(self):
        return len(self._items) + len(self._lazy)

    def __repr__(self):
        return f"Registry({self.what!r}: {', '.join(self.names())})"


__all__ = ["Registry"]
