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

from ..tasks.agreement import bootstrap_counts, bootstrap_interval

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
    ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e10]], ["all"]  # mAP and AP50 only: area 'all'
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
        self.num_classes = len(ev.params.catIds)
        n_gt = np.zeros((n_img, self.num_classes))  # real (not ignored) annotations per image and class
        img, cls, tp, fp = [], [], [], []  # per detection, classes one after another, each in score order
        for k in range(self.num_classes):
            k_img, k_scores, k_tp, k_fp = [], [], [], []
            for i, e in enumerate(ev.evalImgs[k * n_img:(k + 1) * n_img]):
                if e is None:
                    continue
                n_gt[i, k] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
                d = min(len(e["dtScores"]), MAX_DETS)
                matched, ignored = e["dtMatches"][:, :d] > 0, e["dtIgnore"][:, :d].astype(bool)
                k_img.append(np.full(d, i))
                k_scores.append(np.asarray(e["dtScores"][:d], dtype=np.float64))
                k_tp.append(matched & ~ignored)
                k_fp.append(~matched & ~ignored)
            if not k_scores:
                continue
            order = np.argsort(-np.concatenate(k_scores), kind="mergesort")  # as COCOeval.accumulate sorts
            k_tp, k_fp = np.concatenate(k_tp, axis=1)[:, order], np.concatenate(k_fp, axis=1)[:, order]
            hits = np.flatnonzero(k_tp.any(0))
            keep = order[:hits[-1] + 1] if len(hits) else order[:0]  # false positives after the last hit change no AP
            img.append(np.concatenate(k_img)[keep])
            cls.append(np.full(len(keep), k))
            tp.append(k_tp[:, :len(keep)])
            fp.append(k_fp[:, :len(keep)])
        t_count = len(ev.params.iouThrs)
        cls = np.concatenate(cls).astype(np.int64) if cls else np.zeros(0, np.int64)
        img = np.concatenate(img).astype(np.int64) if img else np.zeros(0, np.int64)
        tp = np.concatenate(tp, 1) if tp else np.zeros((t_count, 0), bool)
        scored = tp | (np.concatenate(fp, 1) if fp else tp)
        # Detections are counted by IoU threshold only where that matters: "false" ones (a false positive at every
        # threshold; most of them) just add to the running count of scored detections, the same at every threshold.
        false = ~tp.any(0) & scored.all(0)
        kept = np.flatnonzero(~false)  # hits, and the rare detections ignored (on a crowd region) at some threshold
        per_class = np.bincount(cls, minlength=self.num_classes)
        class_start = np.cumsum(per_class) - per_class
        false_before = np.cumsum(np.concatenate([[0], false]))  # false detections before each position
        kept_before = np.cumsum(np.concatenate([[0], ~false]))  # kept detections before each position
        start = class_start[cls[kept]]  # position of the first detection of each kept one's class
        # Index 0 of the kept arrays is a placeholder counting nothing; kept detection m sits at m + 1.
        self.kept_img = torch.from_numpy(np.concatenate([[0], img[kept]]))
        self.kept_tp = torch.from_numpy(np.concatenate([np.zeros((t_count, 1), bool), tp[:, kept]], 1)).double()
        self.kept_scored = torch.from_numpy(np.concatenate([np.zeros((t_count, 1), bool), scored[:, kept]], 1)).double()
        self.kept_cls = torch.from_numpy(cls[kept])
        self.kept_false = torch.from_numpy(false_before[kept])  # false detections before it
        self.start_kept = torch.from_numpy(kept_before[start])  # kept detections of earlier classes (placeholder: 0)
        self.start_false = torch.from_numpy(false_before[start])  # false detections of earlier classes
        self.false_img = torch.from_numpy(img[false])
        self.n_gt = torch.from_numpy(n_gt)

    def weighted_map(self, weights, budget=1 << 22):
        """COCO mAP in percent (area 'all', 100 detections) for each row of `weights` ((B, num images) counts:
        how often each image is taken); NaN for a row whose images hold no annotation of any class.

        COCO's interpolated precision at recall threshold r is the highest precision at any detection whose recall
        reaches r (only hits matter: a false positive has the recall of the hit before it, and less precision); so
        each detection's precision goes (max-reduced) into a bin counting down the thresholds its recall reaches,
        and a running max over the bins gives the precision at every threshold (in reverse order, which the mean
        over thresholds does not see). Running counts are integer-valued, so exact in float64."""
        weights = torch.as_tensor(weights, dtype=torch.float64)
        weights = weights[None] if weights.dim() == 1 else weights
        rec = torch.from_numpy(self.rec_thrs)
        n_bins, (t_count, n_kept), n_cls = len(rec) + 1, self.kept_tp.shape, self.num_classes
        npig = weights @ self.n_gt  # (B, K) annotations each resample holds per class
        present = npig > 0
        ap = torch.zeros(len(weights), n_cls, dtype=torch.float64)
        cells = t_count * n_cls
        slot = torch.arange(t_count)[:, None] * n_cls + self.kept_cls  # (T, kept) (IoU, class) cell of each one
        step = max(1, budget // (t_count * n_kept + len(self.false_img)))
        kept = torch.arange(1, n_kept)
        for s in range(0, len(weights) if n_kept > 1 else 0, step):
            rows = weights[s:s + step]
            falses = torch.nn.functional.pad(rows[:, self.false_img].cumsum(1), (1, 0))  # (b, F + 1)
            w = rows[:, self.kept_img][:, None, :]  # (b, 1, kept + 1)
            tps, scored = (w * self.kept_tp).cumsum(2), (w * self.kept_scored).cumsum(2)  # over the kept ones
            tp_here = tps.index_select(2, kept) - tps.index_select(2, self.start_kept)  # restarted per class
            false_here = falses.index_select(1, self.kept_false) - falses.index_select(1, self.start_false)
            scored_here = scored.index_select(2, kept) - scored.index_select(2, self.start_kept) + false_here[:, None]
            precision = tp_here / (scored_here + np.spacing(1))
            recall = tp_here / npig[s:s + step, None, self.kept_cls].clamp(min=1)
            missed = torch.bucketize(recall, rec, right=True).neg_().add_(n_bins - 1)  # thresholds not reached
            best = torch.zeros(len(rows), n_bins * cells, dtype=torch.float64)  # (bin, IoU, class), bins outermost
            best.scatter_reduce_(1, (missed * cells + slot).flatten(1), precision.flatten(1), "amax")
            interp = np.maximum.accumulate(best.view(len(rows), n_bins, cells).numpy(), axis=1)[:, :-1]
            ap[s:s + step] = torch.from_numpy(interp.reshape(len(rows), -1, t_count, n_cls).mean((1, 2)))
        valid = present.sum(1)
        total = torch.where(present, ap, 0.0).sum(1)
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
