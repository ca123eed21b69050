"""Point-cloud transformers (Point-MAE / Point-BERT style), their data sets, metrics, adapter and tasks.

Importing this package registers the adapter and the ``pointcloud_cls`` / ``pointcloud_partseg`` tasks, and the models
in mmengine's MODELS registry when mmengine is installed (the training script runs without it).
"""
from .models import (MODEL_TYPES, PointMAECls, PointMAEPartSeg, PointTransformerBase, build_model,
                     checkpoint_filter_fn)
from . import adapter, task  # noqa: F401,E402  (registration)

try:
    from mmengine.registry import MODELS
except ImportError:  # training machines without OpenMMLab
    MODELS = None
else:
    for _name, _cls in MODEL_TYPES.items():
        MODELS.register_module(name=_name, module=_cls, force=True)

__all__ = ["PointMAECls", "PointMAEPartSeg", "PointTransformerBase", "build_model", "checkpoint_filter_fn", "MODELS"]
