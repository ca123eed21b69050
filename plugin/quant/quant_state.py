"""What quantization leaves on a model: one `QuantState` object, read through `state(model)`.

`quantize` attaches it when it returns, `load_quantized` when it rebuilds a saved model, `freeze` marks it frozen.
Everything the library knows about a quantized model beyond its modules lives here (nothing else is stored on the
user's model), so callers (the CLI, save/load, later passes) read one public object instead of private attributes.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch.nn as nn

from .errors import ConfigError

_ATTR = "_vitq_state"  # the one attribute the library sets on a model


@dataclass
class QuantState:
    """recipe: the Recipe the model was quantized with; adapter: the registered adapter's name.
    rollbacks: units a reconstruction guard rolled back, [{"pass", "pass_index", "unit", "reason"}].
    units: every unit a reconstruction pass visited, [{"pass", "pass_index", "unit", "before", "after", "status"}]
        (mean squared error to the float target before and after; None where the unit was skipped).
    ranks: low-rank pass, {Linear name: rank kept}. frozen: `freeze` turned qualifying layers into Int8Linear.
    deployed: on a `plugin.quant.deploy.deploy` copy, {"mode", "dtype", "tile", "stem", "sites"} (else None).
    float_edits: the "pre" passes that changed the float network (their JSON entries); float_params: the parameters
        they fitted, as they were before quantization (CPU copies; in this process only, not saved), which
        `plugin.quant.recon.mlp_relu.relu_float_model` uses to rebuild that float network.
    plan: the resolved plan (plugin.quant.plan.Plan) the quantized modules were built from; saved with the model."""
    recipe: Any
    adapter: str
    rollbacks: List[dict] = field(default_factory=list)
    units: List[dict] = field(default_factory=list)
    ranks: Dict[str, int] = field(default_factory=dict)
    frozen: bool = False
    deployed: Optional[dict] = None
    float_edits: List[dict] = field(default_factory=list)
    float_params: Dict[str, Any] = field(default_factory=dict)
    plan: Any = None


def state(model: nn.Module) -> Optional[QuantState]:
    """The model's QuantState, or None for a model quantize()/load_quantized() did not return."""
    return getattr(model, _ATTR, None)


def require_state(model: nn.Module, what: str) -> QuantState:
    """The model's QuantState; ConfigError "<what> needs a model returned by quantize() or load_quantized()"."""
    st = state(model)
    if st is None:
        raise ConfigError(f"{what} needs a model returned by quantize() or load_quantized()")
    return st


def attach_state(model: nn.Module, st: QuantState) -> nn.Module:
    setattr(model, _ATTR, st)
    return model


__all__ = ["QuantState", "attach_state", "require_state", "state"]
