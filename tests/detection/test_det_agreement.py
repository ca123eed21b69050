"""Detection agreement with the float model and the paired bootstrap of COCO mAP (plugin/detection/agreement.py).

Synthetic COCO-format annotations and predictions (boxes and rectangle masks as RLE, a crowd region), checked against
pycocotools' own COCOeval: weights of 1 reproduce its mAP, resample weights reproduce it on renamed image copies.
"""
import contextlib
import io

import numpy as np
import pytest

pytest.importorskip("pycocotools")
from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from plugin.detection.agreement import MatchTable, _coco, agreement_map, map_change  # noqa: E402

H = W = 64
CAT_IDS = [3, 7]  # real category ids of labels 0 and 1 (not 1, 2: the label -> category map is used)


def _rle(box):
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    m = np.zeros((H, W), dtype=np.uint8)
    m[max(y1, 0):min(y2, H), max(x1, 0):min(x2, W)] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _boxes(rng, n):
    xy = rng.uniform(0, 40, (n, 2))
    wh = rng.uniform(8, 24, (n, 2))
    return np.concatenate([xy, xy + wh], 1)


def _dataset(n_images=12, seed=0):
    """(real annotations as COCO, predictions per image id): predictions are the objects moved a little, with
    random distinct scores, some objects missed, some false positives, and one image predicted empty."""
    rng = np.random.default_rng(seed)
    images, anns, preds = [], [], {}
    for i in range(n_images):
        img_id = 100 + 3 * i  # not 0..n-1: image ids are looked up, not assumed
        images.append({"id": img_id, "height": H, "width": W})
        n = int(rng.integers(0, 4))
        boxes, labels = _boxes(rng, n), rng.integers(0, 2, n)
        for b, l in zip(boxes, labels):
            rle = _rle(b)
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": CAT_IDS[l], "segmentation": rle,
                         "area": float(mask_utils.area(rle)), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                         "iscrowd": 0})
        if i == 1:  # a crowd region: detections on it are ignored, not false positives
            rle = _rle([40, 40, 60, 60])
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": CAT_IDS[0], "segmentation": rle,
                         "area": float(mask_utils.area(rle)), "bbox": [40.0, 40.0, 20.0, 20.0], "iscrowd": 1})
        keep = rng.random(n) > 0.2
        pb = boxes[keep] + rng.normal(0, 2.0, (int(keep.sum()), 4))
        pl = labels[keep]
        extra = int(rng.integers(0, 3))
        pb, pl = np.concatenate([pb, _boxes(rng, extra)]), np.concatenate([pl, rng.integers(0, 2, extra)])
        if i == 1:  # a detection on the crowd region: ignored at IoU thresholds up to .65, a false positive above
            pb, pl = np.concatenate([pb, [[36.0, 36.0, 58.0, 58.0]]]), np.concatenate([pl, [0]])
        if i == 2:
            pb, pl = pb[:0], pl[:0]
        preds[img_id] = _pred(pb, pl, rng.uniform(0.05, 1.0, len(pb)))
    gt = _coco(images, anns, [{"id": c, "name": f"c{c}"} for c in CAT_IDS])
    return gt, preds


def _pred(boxes, labels, scores):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return {"bboxes": boxes, "scores": np.asarray(scores, dtype=np.float32), "labels": np.asarray(labels),
            "masks": [_rle(b) for b in boxes], "height": H, "width": W}


def _cocoeval_map(gt, preds, iou_type):
    """mAP (percent) the way mmdet's CocoMetric gets it: json-style results, loadRes, COCOeval."""
    results = []
    for img_id, p in preds.items():
        for b, s, l, m in zip(p["bboxes"], p["scores"], p["labels"], p["masks"]):
            r = {"image_id": img_id, "category_id": CAT_IDS[int(l)], "score": float(s)}
            r.update({"bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
                     if iou_type == "bbox" else {"segmentation": m})
            results.append(r)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(results), iou_type)
        ev.params.maxDets = [100, 300, 1000]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[0] * 100.0


@pytest.fixture(scope="module")
def data():
    return _dataset()


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_a_model_agrees_fully_with_itself(data, iou_type):
    _, preds = data
    assert agreement_map(preds, preds, iou_type, 0.3) == (100.0, 100.0)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_moved_and_missed_detections_agree_less(data, iou_type):
    _, fp = data
    rng = np.random.default_rng(1)
    q = {}
    for img_id, p in fp.items():
        boxes = p["bboxes"] + rng.normal(0, 3.0, p["bboxes"].shape).astype(np.float32)
        q[img_id] = _pred(boxes[1:], p["labels"][1:], p["scores"][1:])  # every image loses its first detection
    m, m50 = agreement_map(fp, q, iou_type, 0.3)
    assert 0.0 < m < m50 < 100.0
    # the same with COCOeval's default parameters on json-style ground truth and loadRes detections
    images = [{"id": i, "height": H, "width": W} for i in fp]
    truth = [dict(a, id=n + 1) for n, a in enumerate(_as_json(fp, iou_type, thr=0.3))]
    for a in truth:
        a.update(iscrowd=0, area=float(mask_utils.area(a["segmentation"])) if iou_type == "segm"
                 else a["bbox"][2] * a["bbox"][3])
    gt = _coco(images, truth, [{"id": c, "name": str(c)} for c in (0, 1)])
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(_as_json(q, iou_type)), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert (m, m50) == pytest.approx((ev.stats[0] * 100, ev.stats[1] * 100), abs=1e-9)


def _as_json(preds, iou_type, thr=None):
    out = []
    for img_id, p in preds.items():
        for b, s, l, m in zip(p["bboxes"], p["scores"], p["labels"], p["masks"]):
            if thr is None or s >= thr:
                out.append({"image_id": img_id, "category_id": int(l), "score": float(s),
                            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
                           if iou_type == "bbox" else
                           {"image_id": img_id, "category_id": int(l), "score": float(s), "segmentation": m})
    return out


def test_images_without_float_predictions_follow_coco_semantics(data):
    _, fp = data
    empty_img = 106  # the image predicted empty in _dataset
    assert len(fp[empty_img]["labels"]) == 0
    base = agreement_map(fp, fp, "bbox", 0.3)
    q = dict(fp)
    q[empty_img] = _pred([[5, 5, 30, 30]], [0], [0.99])  # a detection where the float model saw nothing
    assert agreement_map(fp, q, "bbox", 0.3)[0] < base[0]  # a false positive, ranked first
    nothing = {i: _pred([], [], []) for i in fp}
    assert agreement_map(nothing, fp, "bbox", 0.3) == (None, None)  # no kept float prediction: undefined
    assert agreement_map(fp, nothing, "segm", 0.3) == (0.0, 0.0)
    high = agreement_map(fp, fp, "bbox", 2.0)  # a threshold above every score keeps nothing
    assert high == (None, None)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_unit_weights_reproduce_cocoeval(data, iou_type):
    gt, preds = data
    table = MatchTable(gt, preds, iou_type, CAT_IDS, gt.getImgIds())
    ours = table.weighted_map(np.ones(len(table.img_ids))).item()
    assert ours == pytest.approx(_cocoeval_map(gt, preds, iou_type), abs=1e-9)
    assert 0.0 < ours < 100.0


def test_resample_weights_equal_renamed_image_copies(data):
    gt, preds = data
    table = MatchTable(gt, preds, "bbox", CAT_IDS, gt.getImgIds())
    n = len(table.img_ids)
    counts = np.random.default_rng(5).multinomial(n, np.full(n, 1 / n))
    assert counts.max() > 1 and (counts == 0).any()
    images, anns, copies = [], [], {}
    for img_id, c in zip(table.img_ids, counts):  # each drawn image c times, under new ids
        for k in range(c):
            new_id = 10000 * (k + 1) + img_id
            images.append(dict(gt.imgs[img_id], id=new_id))
            anns += [dict(a, id=len(anns) + 1 + j, image_id=new_id)
                     for j, a in enumerate(gt.loadAnns(gt.getAnnIds(imgIds=[img_id])))]
            copies[new_id] = preds[img_id]
    anns = [dict(a, id=i + 1) for i, a in enumerate(anns)]
    copied_gt = _coco(images, anns, gt.dataset["categories"])
    assert table.weighted_map(counts[None]).item() == pytest.approx(_cocoeval_map(copied_gt, copies, "bbox"), abs=1e-9)


def test_change_interval_holds_the_estimate_and_is_seeded(data):
    gt, fp = data
    rng = np.random.default_rng(2)
    q = {i: _pred(p["bboxes"] + rng.normal(0, 3.0, p["bboxes"].shape).astype(np.float32), p["labels"], p["scores"])
         for i, p in fp.items()}
    fp_t, q_t = (MatchTable(gt, p, "bbox", CAT_IDS, gt.getImgIds()) for p in (fp, q))
    change, fp_resampled = map_change(fp_t, q_t, resamples=200, seed=0)
    assert change["diff"] == pytest.approx(_cocoeval_map(gt, q, "bbox") - _cocoeval_map(gt, fp, "bbox"), abs=1e-9)
    assert change["ci95"][0] <= change["diff"] <= change["ci95"][1] and change["resamples"] == 200
    again, _ = map_change(fp_t, q_t, resamples=200, seed=0, fp_resampled=fp_resampled)  # reused float resamples
    assert again == change
    assert map_change(fp_t, q_t, resamples=200, seed=1)[0]["ci95"] != change["ci95"]
    same, _ = map_change(fp_t, fp_t, resamples=200, seed=0)
    assert same["diff"] == 0.0 and same["ci95"] == [0.0, 0.0] and same["tie"]


def test_a_clear_drop_is_no_tie():
    gt, fp = _dataset(n_images=60, seed=3)
    q = {i: (p if k % 2 else _pred([], [], [])) for k, (i, p) in enumerate(fp.items())}  # half the images lose all
    fp_t, q_t = (MatchTable(gt, p, "segm", CAT_IDS, gt.getImgIds()) for p in (fp, q))
    change, _ = map_change(fp_t, q_t, resamples=300, seed=0)
    assert change["diff"] < 0 and change["ci95"][1] < 0 and not change["tie"]
