"""Classification accuracy and ShapeNetPart part-segmentation mIoU.

Part IoU follows the ShapeNetPart convention (as in PointNet/PointNet++/Point-MAE evaluation): a shape's IoU is the
mean over the parts of its own category only; a part absent from both prediction and ground truth has IoU 1.
Instance mIoU averages shape IoUs over all shapes; class mIoU averages, over categories, the mean shape IoU of
each category present. Accuracy and mIoU are returned as percentages.
"""
from typing import Dict, List, Sequence

import numpy as np


def classification_metrics(pred: Sequence[int], target: Sequence[int], num_classes: int) -> Dict[str, float]:
    """Overall accuracy 'OA' and mean per-class accuracy 'mAcc' (over classes present in target), in percent."""
    pred, target = np.asarray(pred).reshape(-1), np.asarray(target).reshape(-1)
    if pred.shape != target.shape or len(target) == 0:
        raise ValueError(f"need equally long non-empty predictions and targets ({pred.shape} vs {target.shape})")
    correct = pred == target
    per_class = [correct[target == c].mean() for c in range(num_classes) if (target == c).any()]
    return {"OA": 100.0 * float(correct.mean()), "mAcc": 100.0 * float(np.mean(per_class))}


def shape_iou(pred: np.ndarray, target: np.ndarray, parts: Sequence[int]) -> float:
    """Mean IoU over `parts` (the parts of the shape's category) for one shape's per-point labels."""
    ious = []
    for p in parts:
        inter = np.sum((pred == p) & (target == p))
        union = np.sum((pred == p) | (target == p))
        ious.append(1.0 if union == 0 else inter / union)
    return float(np.mean(ious))


def restricted_argmax(logits: np.ndarray, parts: Sequence[int]) -> np.ndarray:
    """Per-point prediction among the category's parts only: logits (P, num_parts) -> global part ids (P,)."""
    parts = np.asarray(parts)
    return parts[np.asarray(logits)[:, parts].argmax(-1)]


class PartIoU:
    """Accumulates shape IoUs; `summary()` gives instance and class mIoU in percent."""

    def __init__(self, part_map: List[List[int]], categories: List[str] = None):
        self.part_map = part_map
        self.categories = categories or [str(i) for i in range(len(part_map))]
        self.ious: List[List[float]] = [[] for _ in part_map]

    def add(self, pred: np.ndarray, target: np.ndarray, category: int) -> float:
        iou = shape_iou(np.asarray(pred), np.asarray(target), self.part_map[category])
        self.ious[category].append(iou)
        return iou

    def summary(self, per_category=False) -> Dict[str, float]:
        all_ious = [i for cat in self.ious for i in cat]
        if not all_ious:
            raise ValueError("no shapes were evaluated")
        out = {"instance_mIoU": 100.0 * float(np.mean(all_ious)),
               "class_mIoU": 100.0 * float(np.mean([np.mean(c) for c in self.ious if c]))}
        if per_category:
            out.update({f"mIoU/{name}": 100.0 * float(np.mean(c)) for name, c in zip(self.categories, self.ious) if c})
        return out


def part_miou(pred, target, category, part_map) -> Dict[str, float]:
    """Instance and class mIoU (percent) of per-point predictions pred/target (S, P) for shapes of `category` (S,)."""
    meter = PartIoU(part_map)
    for p, t, c in zip(pred, target, category):
        meter.add(p, t, int(c))
    return meter.summary()
