"""Recipes: which quantizer goes where, and which calibration passes run. Registered by name (each method's package
under plugin.quant.methods registers its own; `first_layer_sites`, `setting_pass` and `mse_recipe` are the parts
several methods share).

A recipe is data: default weight and activation specs, per-site overrides (`sites`), the post-LayerNorm
reparameterisation rule and a list of extra passes. Site keys, looked up in this order for each quantizer:

- weights: `<role>.weight`, then `weight`;
- inputs of Linear/Conv: `<role>.input`, then `post_gelu` (input of FC2), `post_ln` (input of a LayerNorm consumer),
  then `act`;
- `q`, `k` (operands of q@kᵀ), `post_softmax`, `v` (operands of attn@v), then `act`.

A site mapped to None stays in float. `calib_num` is the method's own calibration size (its paper's); None leaves it
to the task runner (its default for the task). `freeze()` makes a resolved recipe read-only: a tool resolves its
recipes once (bit widths, pass options, iterations) and runs them unchanged. Roles listed in `float_roles` are not
quantized at all. `overrides` are per-module rules by name, regex or role (plugin.quant.overrides), applied before the
site keys. plugin.quant.plan resolves all of it once per model (`resolve_plan`: one rule list, first match wins).

`sequential` is the calibration order: "block" sets each block's quantizers together from what the block's inputs
were with every earlier block quantized; "site" sets each quantizer as the forward reaches it, with everything
upstream, the same block included, already quantized (RepQ-ViT's order); "none" observes the whole float model once.
"""
from dataclasses import dataclass, field
from functools import partial
from typing import Dict, List, Optional

from .errors import ConfigError
from .overrides import normalize_overrides, overrides_to_dict
from .passes import PASSES, PassConfig, pass_config
from .registry import Registry
from .reparam import REPARAM_FOLDS, REPARAM_RULES
from .spec import QuantSpec, Role

RECIPE_VERSION = 6  # 3: passes are typed configs (plugin.quant.passes), written with every option and a version;
#                    4: per-module `overrides`; 5: `stat_fraction`; 6: `reparam_fold`
SEQUENTIAL_MODES = ("block", "site", "none")
RECIPES = Registry("method")  # name -> fn(w_bits, a_bits) -> Recipe


@dataclass
class Recipe:
    name: str
    w_bits: int
    a_bits: int
    weight: QuantSpec
    act: QuantSpec
    sites: Dict[str, Optional[QuantSpec]] = field(default_factory=dict)
    float_roles: tuple = ()
    reparam: Optional[str] = None          # None | "mean" (RepQ-ViT) | other registered scale rules
    reparam_skip_roles: tuple = ()         # consumers of these roles keep their own (unfolded) input quantizer
    reparam_fold: str = "exact"            # "exact" | "official" (RepQ-ViT's code: plugin.quant.reparam)
    sequential: str = "block"              # calibration order, see SEQUENTIAL_MODES and the module docstring
    observe_elems: int = 2 ** 20           # sampled activation values kept per quantizer for the range searches
    passes: List[PassConfig] = field(default_factory=list)  # dict entries are turned into configs (__setattr__)
    overrides: list = field(default_factory=list)  # [(pattern, None | {slot: spec | None})], plugin.quant.overrides
    calib_num: Optional[int] = None  # the method's own calibration size; None: the task runner's default
    # share of the calibration batches (the first ones) that set the quantizers; the passes see every batch. APHQ-ViT
    # and FIMA-Q calibrate on 128 images and optimise on 1024: calib_num 1024, stat_fraction 0.125
    stat_fraction: float = 1.0
    version: int = RECIPE_VERSION

    def __setattr__(self, name, value):
        if getattr(self, "_frozen", False):
            raise ConfigError(f"recipe {self.name} is frozen (resolved): build a new one with get_recipe")
        if name == "passes":  # whenever passes are set (built, loaded, edited): checked configs, bad options refused
            value = [pass_config(p, where=f"recipe {self.name}") for p in value]
        super().__setattr__(name, value)

    def __post_init__(self):
        if isinstance(self.sequential, bool):  # recipes of version 1 stored a flag
            self.sequential = "block" if self.sequential else "none"
        if self.sequential not in SEQUENTIAL_MODES:
            raise ConfigError(f"recipe {self.name}: sequential must be one of {SEQUENTIAL_MODES}, "
                              f"got {self.sequential!r}")
        if self.reparam is not None:
            REPARAM_RULES.lookup(self.reparam, where=f"recipe {self.name}")
        self.reparam_skip_roles = tuple(Role(r) for r in self.reparam_skip_roles)
        if self.reparam_fold not in REPARAM_FOLDS:
            raise ConfigError(f"recipe {self.name}: reparam_fold must be one of {REPARAM_FOLDS}, "
                              f"got {self.reparam_fold!r}")
        if self.reparam_fold != "exact" and self.reparam is None:
            raise ConfigError(f"recipe {self.name}: reparam_fold {self.reparam_fold!r} needs a reparam rule")
        for key, spec in self.sites.items():
            if spec is not None and not isinstance(spec, QuantSpec):
                raise ConfigError(f"recipe {self.name}: site {key!r} must map to a QuantSpec or None")
        self.overrides = normalize_overrides(self.overrides, where=f"recipe {self.name}")
        if isinstance(self.stat_fraction, bool) or not isinstance(self.stat_fraction, (int, float)) \
                or not 0 < self.stat_fraction <= 1:
            raise ConfigError(f"recipe {self.name}: stat_fraction must be in (0, 1], got {self.stat_fraction!r}")

    def freeze(self):
        """Make this recipe read-only (fields, sites, overrides, the pass list) and return it. Copies stay frozen."""
        for name, value in (("sites", _ReadOnlyDict(self.sites)), ("overrides", tuple(self.overrides)),
                            ("passes", tuple(self.passes)), ("_frozen", True)):
            object.__setattr__(self, name, value)
        return self

    def spec_for(self, keys):
        """The spec of the first key present in `sites` (None = float), else the default of the last key."""
        for key in keys:
            if key in self.sites:
                return self.sites[key]
        return self.weight if keys[-1] == "weight" else self.act

    def to_dict(self):
        return {
            "name": self.name, "w_bits": self.w_bits, "a_bits": self.a_bits,
            "weight": self.weight.to_dict(), "act": self.act.to_dict(),
            "sites": {k: (v.to_dict() if v is not None else None) for k, v in self.sites.items()},
            "float_roles": [Role(r).value for r in self.float_roles], "reparam": self.reparam,
            "reparam_skip_roles": [r.value for r in self.reparam_skip_roles], "reparam_fold": self.reparam_fold,
            "sequential": self.sequential, "observe_elems": self.observe_elems,
            "passes": [pass_config(p).to_dict() for p in self.passes], "overrides": overrides_to_dict(self.overrides),
            "calib_num": self.calib_num, "stat_fraction": self.stat_fraction, "version": self.version,
        }

    @classmethod
    def from_dict(cls, d):
        if d.get("version", 0) > RECIPE_VERSION:
            raise ConfigError(f"recipe version {d.get('version')} is newer than this library ({RECIPE_VERSION})")
        return cls(
            name=d["name"], w_bits=d["w_bits"], a_bits=d["a_bits"],
            weight=QuantSpec.from_dict(d["weight"]), act=QuantSpec.from_dict(d["act"]),
            sites={k: (QuantSpec.from_dict(v) if v is not None else None) for k, v in d["sites"].items()},
            float_roles=tuple(Role(r) for r in d.get("float_roles", ())), reparam=d.get("reparam"),
            reparam_skip_roles=tuple(d.get("reparam_skip_roles", ())), reparam_fold=d.get("reparam_fold", "exact"),
            sequential=d.get("sequential", "block"), observe_elems=d.get("observe_elems", 2 ** 20),
            passes=[dict(p) for p in d.get("passes", [])], overrides=d.get("overrides", []),
            calib_num=d.get("calib_num"), stat_fraction=d.get("stat_fraction", 1.0),
            version=d.get("version", RECIPE_VERSION),
        )


class _ReadOnlyDict(dict):
    """The sites of a frozen recipe: a dict that refuses changes (copies and pickles keep it read-only)."""

    def _refuse(self, *args, **kwargs):
        raise ConfigError("the sites of a frozen (resolved) recipe are read-only")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce_ex__(self, protocol):
        return type(self), (dict(self),)


def register_recipe(name):
    return RECIPES.register(name)


def get_recipe(name, w_bits=4, a_bits=4, **overrides) -> Recipe:
    """Build a registered recipe at the given bit widths; keyword overrides replace recipe fields."""
    build = RECIPES[name]
    for label, bits in (("weight", w_bits), ("activation", a_bits)):
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ConfigError(f"{label} bit width must be an integer from 2 to 8, got {bits!r}")
    recipe = build(w_bits, a_bits)
    for key, value in overrides.items():
        if not hasattr(recipe, key):
            raise ConfigError(f"recipe {name} has no field {key!r}")
        setattr(recipe, key, value)
    if overrides:
        recipe.__post_init__()  # overridden fields are validated like constructed ones
    return recipe


def first_layer_sites(w_bits):
    """The patch embedding sees raw pixels: its input stays at 8 bit in every method (the papers' setting)."""
    return {"patch_embed.input": QuantSpec(8, search="minmax")}


def setting_pass(kind, setting, **options):
    """A pass config (checked here: a bad `setting` fails when the recipe is built). Iterations and batch size come
    from the pass's `setting` (plugin.quant.recon.SETTINGS: "paper" is I&S-ViT's 1000 iterations at 3/4 bit, 200 at
    6 bit, batch 64) unless given here; options given as None take the pass's defaults."""
    return PASSES[kind].from_dict(dict(setting=setting, **options))


def mse_recipe(name, w_bits, a_bits, post_softmax, post_ln, **fields):
    """The base the reconstruction methods (I&S-ViT, DopQ-ViT, AIQViT) share: per-channel weights and per-tensor
    activations from an MSE range search, 8-bit patch-embedding input, and the given post-Softmax and post-LN specs."""
    sites = first_layer_sites(w_bits)
    sites["post_softmax"] = post_softmax
    sites["post_ln"] = post_ln
    return Recipe(name=name, w_bits=w_bits, a_bits=a_bits,
                  weight=QuantSpec(w_bits, granularity="channel", search="mse"),
                  act=QuantSpec(a_bits, search="mse"), sites=sites, **fields)


def register_ablations(ablations):
    """Register each {name: (recipe function, switches)} entry as the recipe `name` (the function with those switches
    and name=name)."""
    for name, (fn, switches) in ablations.items():
        register_recipe(name)(partial(fn, name=name, **switches))


__all__ = ["RECIPES", "RECIPE_VERSION", "Recipe", "SEQUENTIAL_MODES", "first_layer_sites", "get_recipe",
           "mse_recipe", "register_ablations", "register_recipe", "setting_pass"]
