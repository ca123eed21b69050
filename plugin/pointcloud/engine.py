"""Running point-cloud models over a data set: batches to the model, evaluation to metrics.

Shared by the PTQ task (plugin/pointcloud/task.py) and the training script (tools/train_pc.py); needs torch and
numpy only.
"""
import numpy as np
import torch

from ..errors import UserInputError
from ..quant.progress import progress, to_stderr
from .data import batches
from .metrics import PartIoU, classification_metrics, restricted_argmax


def forward_batch(model, batch, device=None):
    """Logits of one collated batch: (B, classes) for classification, (B, N, parts) for part segmentation."""
    device = device or next(model.parameters()).device
    points = batch["points"].to(device)
    if "category" in batch:
        return model(points, batch["category"].to(device))
    return model(points)


def _checked(logits):
    if not torch.isfinite(logits).all():
        raise UserInputError("the model produced NaN/inf logits during evaluation")
    return logits.float().cpu().numpy()


@torch.no_grad()
def evaluate_cls(model, dataset, batch_size=32, device=None, progress_enabled=True, desc="eval", outputs=None):
    """{'OA', 'mAcc'} in percent, plus the number of shapes, over `dataset` in order. A dict given as `outputs`
    receives the per-shape predictions and labels (for agreement with another model)."""
    model.eval()
    preds, labels = [], []
    total = (len(dataset) + batch_size - 1) // batch_size
    for batch in progress(batches(dataset, batch_size=batch_size), f"[{desc}]", total, to_stderr, progress_enabled):
        preds.append(_checked(forward_batch(model, batch, device)).argmax(-1))
        labels.append(batch["label"].numpy())
    if not preds:
        raise UserInputError("the evaluation set is empty")
    out = classification_metrics(np.concatenate(preds), np.concatenate(labels), len(dataset.classes))
    out["num_shapes"] = len(dataset)
    if outputs is not None:
        outputs.update(preds=np.concatenate(preds), labels=np.concatenate(labels))
    return out


@torch.no_grad()
def evaluate_partseg(model, dataset, batch_size=16, device=None, progress_enabled=True, desc="eval",
                     per_category=False, outputs=None):
    """{'instance_mIoU', 'class_mIoU'} in percent (ShapeNetPart convention), plus the number of shapes.

    Each point is labelled with the best-scoring part of its shape's own category. A dict given as `outputs` receives
    the per-point predictions and the per-shape IoUs, in dataset order."""
    model.eval()
    meter = PartIoU(dataset.part_map, dataset.categories)
    point_preds, shape_ious = [], []
    total = (len(dataset) + batch_size - 1) // batch_size
    for batch in progress(batches(dataset, batch_size=batch_size), f"[{desc}]", total, to_stderr, progress_enabled):
        logits = _checked(forward_batch(model, batch, device))
        for lg, seg, cat in zip(logits, batch["seg"].numpy(), batch["category"].tolist()):
            pred = restricted_argmax(lg, dataset.part_map[cat])
            shape_ious.append(meter.add(pred, seg, cat))
            point_preds.append(np.asarray(pred))
    out = meter.summary(per_category)
    out["num_shapes"] = len(dataset)
    if outputs is not None:
        outputs.update(point_preds=np.stack(point_preds), shape_ious=np.asarray(shape_ious))
    return out


def evaluate(model, dataset, batch_size=32, device=None, progress_enabled=True, desc="eval", **kwargs):
    fn = evaluate_partseg if getattr(dataset, "task", "cls") == "partseg" else evaluate_cls
    return fn(model, dataset, batch_size, device, progress_enabled, desc, **kwargs)
