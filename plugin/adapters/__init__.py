"""Adapters for third-party architectures (timm ViT/DeiT/Swin, mmdet Swin). Importing this package registers them; the
adapter of the project's own point-cloud models lives with them (plugin.pointcloud.adapter)."""
from .base import ADAPTERS, Adapter, find_adapter, register_adapter, swap_class
from . import mmdet_swin, timm_vit  # noqa: F401

__all__ = ["ADAPTERS", "Adapter", "find_adapter", "register_adapter", "swap_class"]
