"""The quantizer library (torch only): specs, quantizers, quantized modules, calibration, recipes, save/load, and
the adapter protocol that architectures register into (the core, this folder); the reconstruction engine (`recon/`);
one package per method (`methods/<name>/`); deployment: freeze, GPU int8/FP8, Triton, ONNX (`deploy/`)."""
from .adapter import ADAPTERS, Adapter, find_adapter, register_adapter
from .calibrate import CalibData, attach_quantizers, iter_quantizers, quantize, set_quant_enabled
from .errors import CalibrationError, CheckpointError, ConfigError, QuantError
from .io import load_quantized, read_meta, save_quantized
from .model_record import register_model_recorder
from .modules import MatMul, QuantConv2d, QuantLinear
from .passes import PASSES, PassConfig, register_pass
from .quant_state import QuantState, state
from .quantizers import QUANTIZERS, Observation, Quantizer, build_quantizer, register_quantizer
from .recipe import RECIPES, Recipe, get_recipe, register_recipe
from .registry import Registry
from .reparam import register_reparam_rule
from .spec import QuantSpec, Role

__all__ = [
    "ADAPTERS", "Adapter", "find_adapter", "register_adapter",
    "CalibData", "CalibrationError", "CheckpointError", "ConfigError", "QuantError", "Registry",
    "MatMul", "Observation", "PASSES", "PassConfig", "QUANTIZERS", "QuantConv2d", "QuantLinear", "QuantSpec",
    "QuantState", "Quantizer", "RECIPES", "Recipe", "Role", "attach_quantizers", "build_quantizer", "get_recipe",
    "iter_quantizers", "load_quantized", "quantize", "read_meta", "register_pass", "register_quantizer",
    "register_model_recorder", "register_recipe", "register_reparam_rule", "save_quantized", "set_quant_enabled",
    "state",
]

from . import recon  # noqa: F401,E402  (the reconstruction engine and its shared passes: block_recon, sos, qdrop_recon)
from . import adalog, output_search, percentile_grid  # noqa: F401,E402  (grids and the output search APHQ-ViT and FIMA-Q share)
from . import methods  # noqa: F401,E402  (each method registers its quantizers, recipes and passes)
from .deploy.freeze import Int8Linear, freeze, frozen_summary  # noqa: E402,F401  (W8A8 integer path)
