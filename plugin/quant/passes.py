"""Recipe passes as typed configs: each pass (block_recon, sos, lowrank, …) is a dataclass that checks its options
when it is built, carries a version, and runs itself on a calibration context.

A recipe holds a list of them (`Recipe.passes`); dict entries ({"type": name, **options}, as recipes of versions 1
and 2 stored them, or as code writes them) are turned into the registered config when the recipe is built or its
passes are assigned, so a misspelt option or an out-of-range value fails before the model runs once. A config also
reads like its JSON entry (`p["type"]`, `dict(p, iters=2)`), so code that edits passes as dicts keeps working.

    @register_pass("my_pass")
    @dataclass
    class MyPass(PassConfig):
        iters: int = 10
        def __post_init__(self):
            self.require(is_int(self.iters) and self.iters >= 0, "iters", "a non-negative integer")
        def run(self, ctx): ...
"""
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace as _replace
from enum import Enum
from typing import ClassVar

from .errors import ConfigError
from .registry import Registry

PASSES = Registry("pass")  # name -> PassConfig subclass


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _jsonable(value):
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


@dataclass
class PassConfig(Mapping):
    """Base of the pass configs. Subclasses are dataclasses registered with @register_pass(name), which sets `kind`;
    they validate in `__post_init__` and implement `run(ctx)`. Raise VERSION when a field changes meaning."""
    kind: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    # "post": runs after the quantizers are calibrated (most passes); "pre": runs on the float model before any
    # quantizer is attached (a pass that changes the float network itself, e.g. APHQ-ViT's ReLU MLP reconstruction)
    STAGE: ClassVar[str] = "post"

    def run(self, ctx):
        raise NotImplementedError

    def restore(self, model, adapter):
        """A "pre" pass that changes the float network's structure re-applies that change here to a float model a
        saved quantized model is loaded into (its parameters come from the file). Default: nothing to do."""

    def require(self, ok, name, expected):
        """Raise ConfigError "<kind>: <name> must be <expected>, got <value>" unless `ok`."""
        if not ok:
            raise ConfigError(f"{self.kind}: {name} must be {expected}, got {getattr(self, name)!r}")

    def replace(self, **changes):
        """A copy with some options changed (checked like a new config)."""
        return _replace(self, **changes)

    def to_dict(self):
        """The JSON entry: type, version and every option."""
        return {"type": self.kind, "version": self.VERSION,
                **{f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}}

    @classmethod
    def from_dict(cls, entry):
        """Build from a JSON/dict entry; missing options and options given as None take their defaults."""
        options = {k: v for k, v in entry.items() if k != "type" and v is not None}
        version = options.pop("version", cls.VERSION)
        if not is_int(version) or version > cls.VERSION:
            raise ConfigError(f"{cls.kind}: pass version {version!r} is newer than this library ({cls.VERSION})")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"{cls.kind}: unknown options {unknown}; known: {', '.join(sorted(known))}")
        return cls(**options)

    # read like the JSON entry: p["type"], dict(p, iters=2), p.items()
    def __getitem__(self, key):
        return self.to_dict()[key]

    def __iter__(self):
        return iter(self.to_dict())

    def __len__(self):
        return len(self.to_dict())


def register_pass(name):
    """Class decorator: register a PassConfig subclass as the pass `name`."""
    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, PassConfig)):
            raise TypeError(f"register_pass({name!r}) decorates a PassConfig dataclass, not {cls!r}")
        cls.kind = name
        return PASSES.register(name, cls)
    return deco


def pass_config(entry, where=None) -> PassConfig:
    """A pass config from a config or a dict entry {"type": name, **options} (checked either way)."""
    if isinstance(entry, PassConfig):
        return entry
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where + ': ' if where else ''}a pass is a dict with a 'type' or a pass config, "
                          f"got {entry!r}")
    return PASSES.lookup(entry.get("type"), where=where).from_dict(entry)


def check_passes(recipe):
    """The recipe's passes as checked configs: an unknown pass or a bad option raises ConfigError before any forward.
    (Recipes check their passes when built and when `passes` is assigned; this covers a list edited in place.)"""
    return [pass_config(p, where=f"recipe {recipe.name}") for p in recipe.passes]


__all__ = ["PASSES", "PassConfig", "check_passes", "is_int", "is_number", "pass_config", "register_pass"]
