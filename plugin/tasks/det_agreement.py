"""Detection agreement with the float model, and paired-bootstrap intervals of COCO mAP changes (numpy, pycocotools).

Predictions are kept per image as ``{'bboxes': (N, 4) xyxy, 'scores': (N,), 'labels': (N,), 'masks': [RLE] or absent,
'mask_scores': (N,) or absent, 'height', 'width'}`` (what mmdet's CocoMetric keeps, plus the image size).

* **Agreement mAP** (`agreement_map`): the quantized model's predictions scored by pycocotools' COCOeval against the
  float model's predictions with score >= `score_thr` as ground truth (labels as categories; masks as RLE for
  ``segm``). COCO semantics throughout: on an image where the float model keeps nothing, the quantized model's
  detections are false positives of their class; a class the float model never keeps has no AP and is left out of the
  mean (so detections of such a class cost nothing). With no kept float prediction at all the agreement is undefined
  (None).
* **Change of mAP against the real annotations** (`MatchTable`, `map_change`): COCOeval's per-image matching
  (``evaluate()``) runs once per model; its per-image, per-class matches are pooled per class, and COCO's
  ``accumulate()`` is recomputed with each image weighted by how often a bootstrap resample drew it. A weight of c is
  exactly c renamed copies of the image (its detections and its annotations), up to the order of detections of equal
  score from different images. Weight 1 everywhere reproduces COCOeval's mAP (area 'all', 100 detections per image).
"""
import contextlib
import io

import numpy as np
import torch

from .agreement import bootstrap_counts, bootstrap_interval

MAX_DETS = 100  # COCO mAP counts the first 100 detections of each image and class (CocoMetric's bbox_mAP / segm_mAP)


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())  # pycocotools prints progress on stdout


def _coco(images, annotations, categories):
    """A pycocotools COCO object from in-memory lists (no json round trip)."""
    from pycocotools.coco import COCO
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with _quiet():
        coco.createIndex()
    return coco


def _xywh(box):
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _rle(mask_rle):
    """A compressed RLE with str counts (json-able; pycocotools takes str or bytes)."""
    counts = mask_rle["counts"]
    return {"size": list(mask_rle["size"]), "counts": counts.decode() if isinstance(counts, bytes) else counts}


def _annotations(preds, iou_type, image_ids, category_of=int, score_thr=None):
    """COCO annotation dicts of the predictions of `image_ids`: as detections (with scores), or, given `score_thr`,
    as ground truth (the predictions with score >= score_thr, iscrowd 0). Ids start at 1 (0 means "unmatched")."""
    from pycocotools import mask as mask_utils
    anns = []
    for img_id in image_ids:
        pred = preds.get(img_id)
        if pred is None:
            continue
        scores = np.asarray(pred["scores"], dtype=np.float64)
        if iou_type == "segm":
            scores = np.asarray(pred.get("mask_scores", scores), dtype=np.float64)
        for i, label in enumerate(np.asarray(pred["labels"]).tolist()):
            if score_thr is not None and scores[i] < score_thr:
                continue
            ann = {"id": len(anns) + 1, "image_id": img_id, "category_id": category_of(label),
                   "bbox": _xywh(pred["bboxes"][i])}
            if iou_type == "segm":
                ann["segmentation"] = _rle(pred["masks"][i])
                ann["area"] = float(mask_utils.area(ann["segmentation"]))
            else:
                ann["area"] = ann["bbox"][2] * ann["bbox"][3]
            if score_thr is None:
                ann["score"] = float(scores[i])
            else:
                ann["iscrowd"] = 0
            anns.append(ann)
    return anns


def _images(preds, image_ids):
    return [{"id": i, "height": int(preds[i]["height"]), "width": int(preds[i]["width"])} for i in image_ids]


def agreement_map(fp_preds, q_preds, iou_type, score_thr):
    """(mAP, AP50) in percent of the quantized predictions against the float predictions with score >= score_thr
    as ground truth, over the images of `fp_preds`; (None, None) when the float model keeps no prediction."""
    from pycocotools.cocoeval import COCOeval
    image_ids = sorted(fp_preds)
    labels = sorted({int(l) for p in list(fp_preds.values()) + list(q_preds.values()) for l in p["labels"]})
    categories = [{"id": c, "name": str(c)} for c in labels]
    gt_anns = _annotations(fp_preds, iou_type, image_ids, score_thr=score_thr)
    if not gt_anns:
        return None, None
    dt_anns = _annotations(q_preds, iou_type, image_ids)
    if not dt_anns:
        return 0.0, 0.0
    images = _images(fp_preds, image_ids)
    gt, dt = _coco(images, gt_anns, categories), _coco(images, dt_anns, categories)
    ev = COCOeval(gt, dt, iou_type)
    with _quiet():
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]) * 100.0, float(ev.stats[1]) * 100.0


class MatchTable:
    """COCOeval's per-image matching of one model's predictions against the real annotations, pooled per class for
    re-accumulation under image weights (see the module docstring).

    `gt` is the annotations' COCO object; `cat_ids[label]` the category id of a predicted label; `img_ids` the images
    evaluated (their order is the order of the weights); `iou_thrs` COCOeval's IoU thresholds.
    """

    def __init__(self, gt, preds, iou_type, cat_ids, img_ids, iou_thrs=None):
        from pycocotools.cocoeval import COCOeval
        self.img_ids = sorted(set(int(i) for i in img_ids))
        images = [gt.imgs[i] for i in self.img_ids]
        dt = _coco(images, _annotations(preds, iou_type, self.img_ids, category_of=lambda l: cat_ids[l]),
                   gt.dataset.get("categories", []))
        ev = COCOeval(gt, dt, iou_type)
        ev.params.imgIds, ev.params.catIds = self.img_ids, sorted(set(cat_ids))
        ev.params.maxDets = [MAX_DETS]
        ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e10]], ["all"]  # only mAP: area 'all'
        if iou_thrs is not None:
            ev.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
        with _quiet():
            ev.evaluate()
        self.rec_thrs = np.asarray(ev.params.recThrs, dtype=np.float64)
        n_img = len(self.img_ids)
        self.classes = []  # per class: image index, tp / fp (T, D) of detections in score order, real gts per image
        for k in range(len(ev.params.catIds)):
            evals = ev.evalImgs[k * n_img:(k + 1) * n_img]
            img, scores, tp, fp = [], [], [], []
            n_gt = np.zeros(n_img, dtype=np.int64)
            for i, e in enumerate(evals):
                if e is None:
                    continue
                n_gt[i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
                d = min(len(e["dtScores"]), MAX_DETS)
                if d == 0:
                    continue
                matched, ignored = e["dtMatches"][:, :d] > 0, e["dtIgnore"][:, :d].astype(bool)
                img.append(np.full(d, i))
                scores.append(np.asarray(e["dtScores"][:d], dtype=np.float64))
                tp.append(matched & ~ignored)
                fp.append(~matched & ~ignored)
            if scores:
                order = np.argsort(-np.concatenate(scores), kind="mergesort")  # as COCOeval.accumulate sorts
                img = np.concatenate(img)[order]
                tp, fp = np.concatenate(tp, axis=1)[:, order], np.concatenate(fp, axis=1)[:, order]
            else:
                img, tp = np.zeros(0, dtype=np.int64), np.zeros((len(ev.params.iouThrs), 0), bool)
                fp = tp
            self.classes.append((torch.from_numpy(img), torch.from_numpy(tp.astype(np.float64)),
                                 torch.from_numpy(fp.astype(np.float64)), torch.from_numpy(n_gt.astype(np.float64))))

    def weighted_map(self, weights, budget=1 << 22):
        """COCO mAP in percent (area 'all', 100 detections) for each row of `weights` ((B, num images) counts:
        how often each image is taken); NaN for a row whose images hold no annotation of any class."""
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.dim() == 1:
            weights = weights[None]
        rec = torch.from_numpy(self.rec_thrs)
        total = torch.zeros(len(weights), dtype=torch.float64)
        valid = torch.zeros(len(weights), dtype=torch.float64)
        for img, tp, fp, n_gt in self.classes:
            t_count, d = tp.shape
            npig = weights @ n_gt  # (B,)
            present = npig > 0
            if not present.any():
                continue
            ap = torch.zeros(len(weights), dtype=torch.float64)
            if d:
                step = max(1, budget // max(1, t_count * d))
                for s in range(0, len(weights), step):
                    w = weights[s:s + step, img][:, None, :]  # (b, 1, D) weight of each detection
                    tps, fps = (w * tp).cumsum(2), (w * fp).cumsum(2)  # integer-valued: exact in float64
                    n = npig[s:s + step, None, None]
                    recall = tps / n.clamp(min=1)
                    precision = tps / (fps + tps + np.spacing(1))
                    envelope = precision.flip(2).cummax(2).values.flip(2)  # COCO's interpolated precision
                    pos = torch.searchsorted(recall.contiguous(), rec.expand(*recall.shape[:2], -1).contiguous())
                    q = envelope.gather(2, pos.clamp(max=d - 1)).masked_fill(pos >= d, 0.0)
                    ap[s:s + step] = q.mean((1, 2))
            total += torch.where(present, ap, 0.0)
            valid += present.double()
        return torch.where(valid > 0, total / valid.clamp(min=1), float("nan")) * 100.0


def map_change(fp_table, q_table, resamples=1000, seed=0, fp_resampled=None):
    """Quantized-minus-float mAP on the whole set (points), with the 95 % interval of `resamples` paired resamples
    of the images (fixed seed). `fp_resampled`: the float model's resampled mAPs of an earlier call with the same
    images, resamples and seed (computed here when None; returned for reuse)."""
    if fp_table.img_ids != q_table.img_ids:
        raise ValueError("the two match tables cover different images")
    n = len(fp_table.img_ids)
    ones = torch.ones(1, n, dtype=torch.float64)
    diff = (q_table.weighted_map(ones) - fp_table.weighted_map(ones)).item()
    counts = bootstrap_counts(n, resamples, seed)
    if fp_resampled is None:
        fp_resampled = fp_table.weighted_map(counts)
    return bootstrap_interval(diff, q_table.weighted_map(counts) - fp_resampled), fp_resampled
