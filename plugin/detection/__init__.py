"""Object detection and instance segmentation with MMDetection: the ``detection`` task, its agreement metrics, the
``QuantSwin`` backbone and torchvision kernels for mmcv-lite.

Importing this package never fails for want of MMDetection: without mmdet (or with an mmcv that mmdet refuses) it
warns once and ``HAS_MMDET`` is False. With mmdet it

1. installs the ``mmcv._ext`` fallback of :mod:`plugin.detection.mmcv_ops` (``nms`` and ``roi_align`` from torchvision,
   used only when no compiled mmcv extension is installed), before anything imports ``mmcv.ops``;
2. registers :class:`QuantSwin` in mmdet's ``MODELS`` registry, so configs can say ``backbone=dict(type='QuantSwin')``
   after ``custom_imports=dict(imports=['plugin.detection'])``.

The task (:mod:`plugin.detection.task`, registered as ``detection`` in either case: without mmdet it refuses to build
with one line) and the adapter (``plugin.adapters.mmdet_swin``) build on this.
"""
import warnings

from . import mmcv_ops
from .mmcv_ops import using_torchvision_ops

try:
    import mmdet  # noqa: F401  (asserts a compatible mmcv version on import)
except (ImportError, AssertionError) as exc:
    HAS_MMDET = False
    MMDET_ERROR = f"{type(exc).__name__}: {exc}"
    warnings.warn(f"plugin.detection: MMDetection is not usable ({MMDET_ERROR}); QuantSwin and the detection task are "
                  "unavailable. Install them with: pip install -e '.[det]'", stacklevel=2)
else:
    HAS_MMDET = True
    MMDET_ERROR = None
    mmcv_ops.install()
    from .swin import QuantSwin, convert_original_swin_checkpoint, is_original_swin_layout  # noqa

__all__ = ["HAS_MMDET", "MMDET_ERROR", "using_torchvision_ops"]
if HAS_MMDET:
    __all__ += ["QuantSwin", "convert_original_swin_checkpoint", "is_original_swin_layout"]

from . import task  # noqa: F401,E402  (registers the detection task)
