#!/usr/bin/env python
"""Plot an MMDetection training run from mmengine's scalars log: training loss per iteration (total and each part)
and the validation box/mask mAP per evaluated epoch.

    python tools/plot_train_curve.py WORK_DIR/<timestamp>/vis_data/scalars.json --out curve.png [--json curve.json]

scalars.json holds one JSON object per line: training lines carry `loss*`, `epoch` and `step` (the iteration),
validation lines carry `coco/bbox_mAP` (and `coco/segm_mAP`) and `step` (the epoch). With --json the plotted points
are also written as JSON (validation mAP in percent, by epoch). tools/run_det_reference.sh calls this at its end.
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plugin.errors import ToolParser, UserInputError, tool_main  # noqa: E402


def read_scalars(path):
    """(train, val): train {name: [(iteration, value)]} for every loss*, val {metric: [(epoch, percent)]}."""
    train, val = {}, {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserInputError(f"{path}:{n}: not a JSON line ({exc.msg})") from None
            for k, v in row.items():
                if not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
                    continue
                if k.startswith("loss") and "step" in row:
                    train.setdefault(k, []).append((row["step"], v))
                elif k in ("coco/bbox_mAP", "coco/segm_mAP") and "step" in row:
                    val.setdefault(k.split("/")[1], []).append((row["step"], 100.0 * v))
    if not train and not val:
        raise UserInputError(f"{path}: no training losses or validation mAP (not an mmengine scalars.json?)")
    return train, val


def plot(train, val, out, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, pts in sorted(train.items()):
        ax1.plot(*zip(*pts), lw=2 if name == "loss" else 1, label=name)
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("training loss")
    ax1.set_yscale("log")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    for name, pts in sorted(val.items()):
        ax2.plot(*zip(*pts), marker="o", label=name)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation mAP (%)")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = out + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)


@tool_main
def main(argv=None):
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scalars", help="mmengine vis_data/scalars.json")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--json", help="also write the plotted points here")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    if not os.path.isfile(args.scalars):
        raise UserInputError(f"no such file: {args.scalars}")
    train, val = read_scalars(args.scalars)
    plot(train, val, args.out, args.title or os.path.basename(args.scalars))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"train": train, "val": val}, f)
    last = {k: v[-1][1] for k, v in val.items()}
    print(f"wrote {args.out}: {sum(len(v) for v in train.values())} training points, validation {last}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
