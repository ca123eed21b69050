#!/usr/bin/env python
"""Generate the SYNTHETIC part-segmentation set (composite Open3D primitives with labelled parts) in the ShapeNetPart
HDF5 format. The generator itself is plugin/pointcloud/synthetic.py (its docstring lists the categories and files).

    python tools/make_synthetic_parts.py OUT_DIR [--train 150] [--val 10] [--test 50] [--points 2048] [--seed 0]

Counts are shapes per category. Results on this set must be reported as SYNTHETIC.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    from plugin.errors import UserInputError
    from plugin.pointcloud.synthetic import CATEGORIES, generate
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--train", type=int, default=150, help="training shapes per category")
    ap.add_argument("--val", type=int, default=10, help="validation shapes per category")
    ap.add_argument("--test", type=int, default=50, help="test shapes per category")
    ap.add_argument("--points", type=int, default=2048, help="points per shape")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    counts = {k: v for k, v in (("train", args.train), ("val", args.val), ("test", args.test)) if v > 0}
    try:
        n = generate(args.out_dir, counts, args.points, args.seed)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote SYNTHETIC part-segmentation set to {args.out_dir}: {len(CATEGORIES)} categories, {n} parts, "
          f"shapes per category {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
