#!/usr/bin/env python
"""Time the detection agreement and the paired bootstrap of the mAP change on synthetic COCO-like data (CPU).

    python tools/bench_det_agreement.py --images 100 5000 --dets 50 --classes 80 --resamples 1000

Per image: `--objects` annotated rectangles (masks as RLE) of random classes; the "float" predictions are those moved a
little, some missed, plus false positives, `--dets` in all with random scores; the "quantized" predictions are the
float ones moved again. Prints, per image count, the seconds of each step that tools/ptq_test.py runs per quantized
model (the float model's matches and resampled mAPs are computed once and reused for every method).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plugin.errors import ToolParser, positive_int, tool_main  # noqa: E402


def synthetic(n_images, n_objects, n_dets, n_classes, size, seed, masks=True):
    from pycocotools import mask as mask_utils

    from plugin.detection.agreement import _coco
    rng = np.random.default_rng(seed)
    h, w = size

    def rles(boxes):
        if not masks:  # boxes only: masks are the slow part of making the data
            return [{"size": [h, w], "counts": b""}] * len(boxes)
        out = []
        for x1, y1, x2, y2 in boxes.astype(int):
            m = np.zeros((h, w), dtype=np.uint8)
            m[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = 1
            out.append(mask_utils.encode(np.asfortranarray(m)))
        return out

    def boxes(n):
        xy = rng.uniform(0, [w - 40, h - 40], (n, 2))
        return np.concatenate([xy, xy + rng.uniform(8, 200, (n, 2))], 1).clip(0, [w, h, w, h])

    images, anns, fp, q = [], [], {}, {}
    for img_id in range(1, n_images + 1):
        images.append({"id": img_id, "height": h, "width": w})
        gt_boxes, gt_labels = boxes(n_objects), rng.integers(0, n_classes, n_objects)
        for b, l, r in zip(gt_boxes, gt_labels, rles(gt_boxes)):
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": int(l) + 1, "iscrowd": 0,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": float(mask_utils.area(r)) if masks
                         else float((b[2] - b[0]) * (b[3] - b[1])),
                         "segmentation": {"size": r["size"], "counts": r["counts"].decode()}})
        extra = max(0, n_dets - n_objects)
        fb = np.concatenate([gt_boxes + rng.normal(0, 4, gt_boxes.shape), boxes(extra)])[:n_dets]
        fl = np.concatenate([gt_labels, rng.integers(0, n_classes, extra)])[:n_dets]
        fs = np.concatenate([rng.uniform(0.3, 1, n_objects), rng.uniform(0.05, 0.6, extra)])[:n_dets]
        qb = fb + rng.normal(0, 4, fb.shape)
        fp[img_id] = {"bboxes": fb, "scores": fs, "labels": fl, "masks": rles(fb), "height": h, "width": w}
        q[img_id] = {"bboxes": qb, "scores": fs * rng.uniform(0.8, 1.2, len(fs)), "labels": fl, "masks": rles(qb),
                     "height": h, "width": w}
    gt = _coco(images, anns, [{"id": c + 1, "name": str(c)} for c in range(n_classes)])
    return gt, fp, q, list(range(1, n_classes + 1))


@tool_main
def main(argv=None):
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=positive_int, nargs="+", default=[100])
    p.add_argument("--objects", type=positive_int, default=7, help="annotated objects per image (COCO val: about 7)")
    p.add_argument("--dets", type=positive_int, default=50, help="predictions per image")
    p.add_argument("--classes", type=positive_int, default=80)
    p.add_argument("--resamples", type=positive_int, default=1000)
    p.add_argument("--size", type=positive_int, nargs=2, default=[480, 640], metavar=("H", "W"))
    p.add_argument("--iou-types", nargs="+", default=["bbox", "segm"], choices=["bbox", "segm"])
    args = p.parse_args(argv)
    import torch

    from plugin.detection.agreement import MatchTable, agreement_map, map_change
    print(f"torch threads {torch.get_num_threads()}, {args.objects} objects / {args.dets} predictions per image, "
          f"{args.classes} classes, {args.resamples} resamples", flush=True)
    for n in args.images:
        gt, fp, q, cat_ids = synthetic(n, args.objects, args.dets, args.classes, tuple(args.size), seed=0,
                                       masks="segm" in args.iou_types)
        labels = [c - 1 for c in cat_ids]
        cat_of = {l: c for l, c in zip(labels, cat_ids)}
        for kind in args.iou_types:
            t = time.perf_counter()
            m, m50 = agreement_map(fp, q, kind, 0.3)
            t_agree = time.perf_counter() - t
            t = time.perf_counter()
            fp_t = MatchTable(gt, fp, kind, cat_of, gt.getImgIds())
            t_fp = time.perf_counter() - t
            t = time.perf_counter()
            q_t = MatchTable(gt, q, kind, cat_of, gt.getImgIds())
            t_q = time.perf_counter() - t
            t = time.perf_counter()
            change, fp_resampled = map_change(fp_t, q_t, args.resamples)
            t_first = time.perf_counter() - t
            t = time.perf_counter()
            map_change(fp_t, q_t, args.resamples, fp_resampled=fp_resampled)
            t_next = time.perf_counter() - t
            print(f"{n} images {kind}: agreement mAP {m:.1f} (AP50 {m50:.1f}) {t_agree:.1f}s; matches float "
                  f"{t_fp:.1f}s, quantized {t_q:.1f}s; bootstrap first model {t_first:.1f}s, next {t_next:.1f}s; "
                  f"change {change['diff']:+.2f} [{change['ci95'][0]:+.2f}, {change['ci95'][1]:+.2f}]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
