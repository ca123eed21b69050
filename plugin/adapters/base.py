"""The adapter protocol lives in the core library (plugin.quant.adapter); re-exported here for the adapters."""
from ..quant.adapter import ADAPTERS, Adapter, find_adapter, module_names, register_adapter, swap_class

__all__ = ["ADAPTERS", "Adapter", "find_adapter", "module_names", "register_adapter", "swap_class"]
