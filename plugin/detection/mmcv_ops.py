"""torchvision kernels for mmcv-lite, so Mask R-CNN / Cascade Mask R-CNN run without a compiled mmcv.

mmcv-lite ships every ``mmcv.ops`` Python wrapper but not the compiled extension ``mmcv._ext``. Each wrapper module
fetches its kernels at import time through ``mmcv.utils.ext_loader.load_ext('_ext', names)``, which is
``importlib.import_module('mmcv._ext')`` followed by ``hasattr`` checks; the wrappers (``NMSop``, ``batched_nms``,
``RoIAlignFunction``, ``RoIAlign``) then call the kernels, e.g. ``ext_module.nms(boxes, scores, iou_threshold=...,
offset=...)``. mmdet imports ``mmcv.ops`` as soon as ``mmdet.models`` is imported, so without ``_ext`` nothing builds.

The mechanism: :func:`install` appends a finder to the *end* of ``sys.meta_path`` that answers for the single module
name ``mmcv._ext``. Python asks the finders in order, so the regular path finder is consulted first: when a compiled
mmcv is installed, its real extension is found and loaded as usual (and if it is broken, its import error is raised,
not hidden). Only when no ``mmcv._ext`` exists anywhere does the import reach this finder, which serves a module whose
kernels are torchvision's operators with mmcv's calling convention:

- ``nms``: ``torchvision.ops.nms`` (greedy NMS in descending score order, the same algorithm); mmcv's ``offset=1``
  (legacy ``x2 - x1 + 1`` box widths) is reproduced by widening the boxes by one before the call.
- ``roi_align_forward`` / ``roi_align_backward``: ``torchvision::roi_align`` and ``torchvision::_roi_align_backward``
  (average pooling, same ``aligned`` and ``sampling_ratio`` semantics; CPU and CUDA), written into the output tensors
  that mmcv's ``RoIAlignFunction`` preallocates, so training works too.

Every other kernel name resolves to a stub that raises ``NotImplementedError`` naming the op when *called*, so
``import mmcv.ops`` succeeds and models that need nothing else (Mask R-CNN, Cascade Mask R-CNN, Faster R-CNN, RetinaNet)
run unchanged; mmcv's and mmdet's own Python code is not touched. The finder must be installed before ``mmcv.ops`` is
first imported; ``import plugin.detection`` (or ``import plugin``) does that, and mmdet configs load ``plugin`` through
``custom_imports`` before the runner builds anything.
"""
import importlib.abc
import importlib.machinery
import importlib.util
import sys

import torch

EXT_NAME = "mmcv._ext"
SERVED_OPS = ("nms", "roi_align_forward", "roi_align_backward")


def nms(boxes, scores, iou_threshold, offset=0):
    """Indices of the boxes kept by greedy NMS, highest score first (mmcv's ``_ext.nms``)."""
    from torchvision.ops import nms as tv_nms
    if boxes.numel() == 0:
        return boxes.new_zeros(0, dtype=torch.long)
    if offset:
        boxes = torch.cat([boxes[:, :2], boxes[:, 2:] + offset], dim=1)
    dtype = torch.promote_types(boxes.dtype, scores.dtype)  # torchvision kernels need one dtype
    return tv_nms(boxes.to(dtype), scores.to(dtype), float(iou_threshold))


def _check_avg(pool_mode):
    if pool_mode != 1:  # mmcv encodes 'max' as 0, 'avg' as 1; torchvision has average pooling only
        raise NotImplementedError("RoIAlign with pool_mode='max' needs a compiled mmcv (mmcv._ext); "
                                  "the torchvision kernels serve pool_mode='avg' only")


def roi_align_forward(input, rois, output, argmax_y, argmax_x, aligned_height, aligned_width, spatial_scale,
                      sampling_ratio, pool_mode, aligned):
    """Fills ``output`` (K, C, aligned_height, aligned_width) with RoIAlign of ``rois`` (K, 5: index, x1, y1, x2, y2)."""
    _check_avg(pool_mode)
    dtype = torch.promote_types(input.dtype, rois.dtype)  # e.g. fp16 features with fp32 boxes under AMP
    out = torch.ops.torchvision.roi_align(input.to(dtype), rois.to(dtype), float(spatial_scale), int(aligned_height),
                                          int(aligned_width), int(sampling_ratio), bool(aligned))
    output.copy_(out)


def roi_align_backward(grad_output, rois, argmax_y, argmax_x, grad_input, aligned_height, aligned_width, spatial_scale,
                       sampling_ratio, pool_mode, aligned):
    """Fills ``grad_input`` (the feature map's shape) with the gradient of RoIAlign."""
    _check_avg(pool_mode)
    n, c, h, w = grad_input.shape
    dtype = torch.promote_types(grad_output.dtype, rois.dtype)
    grad = torch.ops.torchvision._roi_align_backward(
        grad_output.to(dtype), rois.to(dtype), float(spatial_scale), int(aligned_height), int(aligned_width),
        n, c, h, w, int(sampling_ratio), bool(aligned))
    grad_input.copy_(grad)


def _unserved(name):
    def op(*args, **kwargs):
        raise NotImplementedError(
            f"mmcv op {name!r} needs the compiled mmcv extension (mmcv._ext), which mmcv-lite does not ship; "
            f"plugin.detection serves only {', '.join(SERVED_OPS)} from torchvision. Install a compiled mmcv "
            "(see docs/detection.md) to run this model.")
    op.__name__ = name
    return op


def _module_getattr(name):
    if name.startswith("__"):  # the import system probes dunders (__path__, __file__, ...): answer as a plain module
        raise AttributeError(name)
    return _unserved(name)


class _TorchvisionExtLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module):
        for name in SERVED_OPS:
            setattr(module, name, globals()[name])
        module.__getattr__ = _module_getattr  # PEP 562: any other kernel name -> a stub that raises when called
        module.__doc__ = "mmcv._ext served by plugin.detection.mmcv_ops from torchvision (no compiled mmcv installed)."
        module.TORCHVISION_SHIM = True


class _TorchvisionExtFinder(importlib.abc.MetaPathFinder):
    """Answers only for ``mmcv._ext``, and only when no finder before it (the regular path finder) found one."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != EXT_NAME:
            return None
        return importlib.machinery.ModuleSpec(fullname, _TorchvisionExtLoader(), origin="torchvision.ops")


_FINDER = _TorchvisionExtFinder()


def install():
    """Make ``import mmcv._ext`` fall back to the torchvision kernels when no compiled extension exists (idempotent)."""
    if not any(isinstance(f, _TorchvisionExtFinder) for f in sys.meta_path):
        sys.meta_path.append(_FINDER)


def using_torchvision_ops():
    """True when ``mmcv._ext`` is (or, once imported, will be) served by this module instead of a compiled mmcv."""
    module = sys.modules.get(EXT_NAME)
    if module is not None:
        return bool(getattr(module, "TORCHVISION_SHIM", False))
    try:
        spec = importlib.util.find_spec(EXT_NAME)
    except ImportError:  # mmcv itself is not installed
        return False
    return spec is not None and isinstance(spec.loader, _TorchvisionExtLoader)
