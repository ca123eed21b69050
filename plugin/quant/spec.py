"""Quantization specs and roles: the vocabulary shared by recipes, adapters and quantized modules."""
from dataclasses import asdict, dataclass, field
from enum import Enum

from .errors import ConfigError
from .registry import Registry


class Role(str, Enum):
    """What a module does in the network. Only adapters map module names to roles."""
    PATCH_EMBED = "patch_embed"
    QKV = "qkv"
    PROJ = "proj"
    FC1 = "fc1"
    FC2 = "fc2"
    HEAD = "head"
    MATMUL_QK = "matmul_qk"
    MATMUL_AV = "matmul_av"
    OTHER = "other"


# kind -> Quantizer class, filled by plugin.quant.quantizers.register_quantizer (uniform in quantizers.py; the others
# in their method's package under plugin.quant.methods). Here, so a spec can refuse an unknown kind.
QUANTIZERS = Registry("quantizer kind")
GRANULARITIES = ("tensor", "channel", "head")
SEARCHES = ("minmax", "percentile", "mse", "quantile")


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    bits: 2..8. kind: the grid (see plugin.quant.quantizers). granularity: one scale per tensor, per channel (weights:
    output channel; activations: last dimension) or per attention head. search: how the range is chosen from data.
    options: extra keyword arguments of the quantizer kind, as a tuple of (name, value) pairs so specs stay hashable.
    """
    bits: int
    kind: str = "uniform"
    granularity: str = "tensor"
    symmetric: bool = False
    search: str = "minmax"
    options: tuple = field(default_factory=tuple)

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ConfigError(f"bit width must be an integer from 2 to 8, got {self.bits!r}")
        QUANTIZERS.lookup(self.kind)
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"unknown granularity {self.granularity!r}; known: {GRANULARITIES}")
        if self.search not in SEARCHES:
            raise ConfigError(f"unknown range search {self.search!r}; known: {SEARCHES}")
        if isinstance(self.options, dict):
            object.__setattr__(self, "options", tuple(sorted(self.options.items())))

    @property
    def opts(self):
        return dict(self.options)

    def replace(self, **changes):
        values = asdict(self)
        values.update(changes)
        return QuantSpec(**values)

    def to_dict(self):
        d = asdict(self)
        d["options"] = [list(p) for p in self.options]
        return d

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d["options"] = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in d.get("options", ()))
        return cls(**d)
