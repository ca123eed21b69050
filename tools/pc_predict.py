"""Run a point-cloud model on one shape and render the result.

    python tools/pc_predict.py CONFIG CHECKPOINT (--input FILE | --index I [--split test])
        [--category NAME] [--quantized PREFIX] [--out pred.png] [--backend auto|open3d|matplotlib]

--input reads .ply/.pcd/.off/... with Open3D; --index takes shape I of the config's data set (then the ground truth
is drawn beside the prediction). Part segmentation needs the object category (--category, by name or index; taken
from the data set with --index). --quantized PREFIX loads a model saved by tools/ptq_test.py --save-model
(PREFIX.safetensors + PREFIX.json) onto the float model first. Classification prints the top classes.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plugin.errors import ToolParser  # noqa: E402
from plugin.errors import UserInputError, run_cli  # noqa: E402


def _category(arg, names):
    if arg is None:
        raise UserInputError("part segmentation needs --category (name or index)")
    if arg.isdigit() and int(arg) < len(names):
        return int(arg)
    if arg not in names:
        raise UserInputError(f"unknown category {arg!r}; known: {names}")
    return names.index(arg)


def run(args):
    from plugin.config import load_config
    from plugin.pointcloud.task import PointCloudClsTask, PointCloudPartSegTask
    cfg = load_config(args.config)
    task_cls = {"pointcloud_cls": PointCloudClsTask, "pointcloud_partseg": PointCloudPartSegTask}.get(cfg.get("task"))
    if task_cls is None:
        raise UserInputError(f"{args.config} is not a point-cloud config (task = {cfg.get('task')!r})")
    task = task_cls(cfg, args.checkpoint, device=args.device)
    model = task.build_model()
    if args.quantized:
        from plugin.quant import load_quantized
        model = load_quantized(model, args.quantized)
    data_cfg = dict(cfg.get("data", {}))
    ds = task.dataset(args.split)
    gt = label = None
    if args.input:
        from plugin.pointcloud.open3d_io import read_points
        default_points = 2048 if task.dataset_task == "partseg" else 1024
        points = read_points(args.input, data_cfg.get("num_points") or default_points)
        name = os.path.basename(args.input)
    else:
        if not 0 <= args.index < len(ds):
            raise UserInputError(f"--index {args.index} outside the {args.split} split (0..{len(ds) - 1})")
        item = ds[args.index]
        points, gt, label, name = item["points"], item.get("seg"), item.get("label"), f"{args.split}[{args.index}]"
    x = torch.from_numpy(np.asarray(points, dtype=np.float32))[None].to(args.device)
    with torch.no_grad():
        if task.dataset_task == "cls":
            probs = model(x).softmax(-1)[0].cpu()
            top = probs.topk(min(5, len(probs)))
            for p, i in zip(top.values.tolist(), top.indices.tolist()):
                print(f"{name}: {ds.classes[i]:<16} {100 * p:.1f}%")
            if label is not None:
                print(f"ground truth: {ds.classes[label]}")
            return
        cat = ds[args.index]["category"] if not args.input else _category(args.category, ds.categories)
        logits = model(x, torch.tensor([cat], device=args.device))[0].cpu().numpy()
    from plugin.pointcloud.metrics import restricted_argmax, shape_iou
    parts = ds.part_map[cat]
    pred = restricted_argmax(logits, parts)
    panels, labels, titles = [points], [pred - parts[0]], [f"prediction ({ds.categories[cat]})"]
    if gt is not None:
        panels.append(points), labels.append(gt - parts[0]), titles.append("ground truth")
        print(f"{name}: {ds.categories[cat]}, shape mIoU {100 * shape_iou(pred, gt, parts):.1f}%")
    from plugin.pointcloud.open3d_io import render_parts
    backend = render_parts(panels, labels, args.out, titles=titles, backend=args.backend)
    print(f"wrote {args.out} (rendered with {backend})")


def main(argv=None):
    ap = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("checkpoint")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="a .ply/.pcd/.off/.obj/.stl/.xyz file")
    src.add_argument("--index", type=int, help="shape index in the config's data set")
    ap.add_argument("--split", default="test")
    ap.add_argument("--category", help="object category for part segmentation (name or index)")
    ap.add_argument("--quantized", help="prefix of a quantized model saved by ptq_test.py --save-model")
    ap.add_argument("--out", default="prediction.png")
    ap.add_argument("--backend", default="auto", choices=["auto", "open3d", "matplotlib"])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    return run_cli(run, args)


if __name__ == "__main__":
    sys.exit(main())
