"""Recipes: which quantizer goes where, and which calibration passes run. Registered by name.

A recipe is data: default weight and activation specs, per-site overrides (`sites`), the post-LayerNorm
reparameterisation rule and a list of extra passes. Site keys, looked up in this order for each quantizer:

- weights: `<role>.weight`, then `weight`;
- inputs of Linear/Conv: `<role>.input`, then `post_gelu` (input of FC2), `post_ln` (input of a LayerNorm consumer),
  then `act`;
- `q`, `k` (operands of q@kᵀ), `post_softmax`, `v` (operands of attn@v), then `act`.

A site mapped to None stays in float. Roles listed in `float_roles` are not quantized at all. `overrides` are
per-module rules by name, regex or role, applied before all of that (plugin.quant.overrides: first match wins).

`sequential` is the calibration order: "block" sets each block's quantizers together from what the block's inputs
were with every earlier block quantized; "site" sets each quantizer as the forward reaches it, with everything
upstream, the same block included, already quantized (RepQ-ViT's order); "none" observes the whole float model once.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .errors import ConfigError
from .overrides import find_override, normalize_overrides, overrides_to_dict
from .passes import PassConfig, pass_config
from .registry import Registry
from .reparam import REPARAM_RULES
from .spec import QuantSpec, Role

RECIPE_VERSION = 5  # 3: passes are typed configs (plugin.quant.passes), written with every option and a version;
#                    4: per-module `overrides`; 5: `stat_fraction`
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
    sequential: str = "block"              # calibration order, see SEQUENTIAL_MODES and the module docstring
    observe_elems: int = 2 ** 20           # sampled activation values kept per quantizer for the range searches
    passes: List[PassConfig] = field(default_factory=list)  # dict entries are turned into configs (__setattr__)
    overrides: list = field(default_factory=list)  # [(pattern, None | {slot: spec | None})], plugin.quant.overrides
    calib_num: int = 32
    # share of the calibration batches (the first ones) that set the quantizers; the passes see every batch. APHQ-ViT
    # and FIMA-Q calibrate on 128 images and optimise on 1024: calib_num 1024, stat_fraction 0.125
    stat_fraction: float = 1.0
    version: int = RECIPE_VERSION

    def __setattr__(self, name, value):
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
        for key, spec in self.sites.items():
            if spec is not None and not isinstance(spec, QuantSpec):
                raise ConfigError(f"recipe {self.name}: site {key!r} must map to a QuantSpec or None")
        self.overrides = normalize_overrides(self.overrides, where=f"recipe {self.name}")
        if isinstance(self.stat_fraction, bool) or not isinstance(self.stat_fraction, (int, float)) \
                or not 0 < self.stat_fraction <= 1:
            raise ConfigError(f"recipe {self.name}: stat_fraction must be in (0, 1], got {self.stat_fraction!r}")

    def override_for(self, name, role):
        """(True, rule) of the first override matching this module (rule None = float), else (False, None)."""
        return find_override(self.overrides, name, role)

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
            "reparam_skip_roles": [r.value for r in self.reparam_skip_roles],
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
            reparam_skip_roles=tuple(d.get("reparam_skip_roles", ())),
            sequential=d.get("sequential", "block"), observe_elems=d.get("observe_elems", 2 ** 20),
            passes=[dict(p) for p in d.get("passes", [])], overrides=d.get("overrides", []),
            calib_num=d.get("calib_num", 32), stat_fraction=d.get("stat_fraction", 1.0),
            version=d.get("version", RECIPE_VERSION),
        )


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


def _first_layer_sites(w_bits):
    # The patch embedding sees raw pixels: its input stays at 8 bit in every method (the papers' setting).
    return {"patch_embed.input": QuantSpec(8, search="minmax")}


@register_recipe("minmax")
def minmax_recipe(w_bits, a_bits):
    """Plain min-max uniform quantization: per-channel weights, per-tensor activations, uniform everywhere."""
    return Recipe(
        name="minmax", w_bits=w_bits, a_bits=a_bits,
        weight=QuantSpec(w_bits, granularity="channel"),
        act=QuantSpec(a_bits),
        sites=_first_layer_sites(w_bits),
    )


@register_recipe("ptq4vit")
def ptq4vit_recipe(w_bits, a_bits, metric="hessian", grad="label"):
    """PTQ4ViT (Yuan et al., ECCV 2022) as its official code (hahnyuan/PTQ4ViT) does it: symmetric uniform grids,
    Linear weights per tensor (a fused qkv weight per q/k/v slice), the patch embedding's weights per output channel
    and its input in float, attention operands q, k and v per head, twin-uniform post-Softmax and post-GELU; every
    scale starts at min-max and is then searched on the module's output error weighted by squared task-loss gradients,
    all from the float model (`hessian_search`)."""
    act = QuantSpec(a_bits, symmetric=True)
    per_head = QuantSpec(a_bits, granularity="head", symmetric=True)
    sites = {
        "patch_embed.input": None,
        "patch_embed.weight": QuantSpec(w_bits, granularity="channel", symmetric=True),
        "qkv.weight": QuantSpec(w_bits, granularity="channel", symmetric=True, options=(("groups", 3),)),
        "q": per_head, "k": per_head, "v": per_head,
        "post_softmax": QuantSpec(a_bits, kind="twin_uniform", options=(("mode", "magnitude"),)),
        "post_gelu": QuantSpec(a_bits, kind="twin_uniform", options=(("mode", "sign"),)),
    }
    return Recipe(
        name="ptq4vit", w_bits=w_bits, a_bits=a_bits,
        weight=QuantSpec(w_bits, symmetric=True), act=act, sites=sites, sequential="none",
        passes=[dict(type="hessian_search", metric=metric, grad=grad)],
    )


@register_recipe("ptq4vit_mse")
def ptq4vit_mse_recipe(w_bits, a_bits):
    """Our earlier PTQ4ViT reading: twin-uniform post-Softmax and post-GELU, every other range from an MSE search on
    the quantizer's own input (weights per output channel, asymmetric activations), block-sequential calibration."""
    sites = _first_layer_sites(w_bits)
    sites["post_softmax"] = QuantSpec(a_bits, kind="twin_uniform", options=(("mode", "magnitude"),))
    sites["post_gelu"] = QuantSpec(a_bits, kind="twin_uniform", options=(("mode", "sign"),))
    return Recipe(
        name="ptq4vit_mse", w_bits=w_bits, a_bits=a_bits,
        weight=QuantSpec(w_bits, granularity="channel", search="mse"),
        act=QuantSpec(a_bits, search="mse"),
        sites=sites,
    )


def _repq(name, w_bits, a_bits, masked_zero):
    """RepQ-ViT as its official code does it (zkkli/RepQ-ViT): every range from the 0.999/0.9999/0.99999 quantile
    search, each quantizer set as the forward reaches it, post-LN channel-wise ranges folded into the LayerNorm of
    each block (the classifier's input stays a plain per-tensor quantizer), log√2 post-Softmax."""
    act = QuantSpec(a_bits, search="quantile")
    options = (("masked_zero", True),) if masked_zero else ()
    return Recipe(
        name=name, w_bits=w_bits, a_bits=a_bits,
        weight=QuantSpec(w_bits, granularity="channel", search="quantile"),
        act=act,
        sites={"patch_embed.input": QuantSpec(8, search="quantile"), "post_ln": act,
               "post_softmax": QuantSpec(a_bits, kind="log_sqrt2", search="quantile", options=options)},
        reparam="mean", reparam_skip_roles=(Role.HEAD,), sequential="site", observe_elems=2 ** 24,
    )


@register_recipe("repq")
def repq_recipe(w_bits, a_bits):
    """RepQ-ViT (Li et al., ICCV 2023): post-LN channel-wise scales folded into LayerNorm + next Linear, log√2 softmax.

    The post-Softmax grid is the official code's: 2^b non-zero log√2 levels plus a masked zero, one value more than
    b bits hold; `repq_strict` is the same recipe with an honest b-bit grid."""
    return _repq("repq", w_bits, a_bits, masked_zero=True)


@register_recipe("repq_strict")
def repq_strict_recipe(w_bits, a_bits):
    """RepQ-ViT with a strict b-bit post-Softmax grid (2^b − 1 log√2 levels and a zero code)."""
    return _repq("repq_strict", w_bits, a_bits, masked_zero=False)
