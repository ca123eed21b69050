"""Architecture adapters. Importing this package registers every adapter whose library is installed."""
from .base import ADAPTERS, Adapter, find_adapter, register_adapter, swap_class
from . import mmdet_swin, pointcloud, timm_vit  # noqa: F401

__all__ = ["ADAPTERS", "Adapter", "find_adapter", "register_adapter", "swap_class"]
