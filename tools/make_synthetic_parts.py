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
from plugin.errors import ToolParser, nonnegative_int, positive_int, tool_main  # noqa: E402


@tool_main
def main(argv=None):
    from plugin.pointcloud.synthetic import CATEGORIES, generate
    ap = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--train", type=nonnegative_int, default=150, help="training shapes per category")
    ap.add_argument("--val", type=nonnegative_int, default=10, help="validation shapes per category")
    ap.add_argument("--test", type=nonnegative_int, default=50, help="test shapes per category")
    ap.add_argument("--points", type=positive_int, default=2048, help="points per shape")
    ap.add_argument("--seed", type=nonnegative_int, default=0)
    args = ap.parse_args(argv)
    counts = {k: v for k, v in (("train", args.train), ("val", args.val), ("test", args.test)) if v > 0}
    n = generate(args.out_dir, counts, args.points, args.seed)
    print(f"wrote SYNTHETIC part-segmentation set to {args.out_dir}: {len(CATEGORIES)} categories, {n} parts, "
          f"shapes per category {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
