#!/usr/bin/env python
"""Write a smaller packed CIFAR-10 file: a seeded random subset of the training images plus the whole test split.

    python tools/make_cifar_subset.py ../shared/data/cifar10/cifar10_jpeg_packed.npz OUT.npz [--train-num 2048]

Same keys and layout as the input (see plugin/classification/data.py), so configs read it unchanged. The CIFAR-10 results
in docs/results.md calibrate on images of this subset (seed 0), which keeps the file small enough to carry to a GPU
machine. Not for committing: CIFAR-10 images stay out of the repository.
"""
import argparse
import os
import sys
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plugin.errors import ToolParser, UserInputError, nonnegative_int, positive_int, tool_main  # noqa: E402


@tool_main
def main(argv=None):
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--train-num", type=positive_int, default=2048)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    args = p.parse_args(argv)
    try:
        d = np.load(args.src)
        offsets, data = d["train_offsets"], d["train_bytes"]
    except (ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:  # not a packed CIFAR-10 npz
        raise UserInputError(f"{args.src} is not a packed CIFAR-10 file ({type(exc).__name__}: {exc})") from None
    if args.train_num > len(offsets) - 1:
        raise UserInputError(f"--train-num {args.train_num} exceeds the {len(offsets) - 1} training images of {args.src}")
    idx = np.sort(np.random.RandomState(args.seed).choice(len(offsets) - 1, args.train_num, replace=False))
    parts = [data[offsets[i]:offsets[i + 1]] for i in idx]
    new_offsets = np.concatenate([[0], np.cumsum([len(x) for x in parts])]).astype(np.int64)
    np.savez(args.out, classes=d["classes"], train_bytes=np.concatenate(parts), train_offsets=new_offsets,
             train_labels=d["train_labels"][idx], test_bytes=d["test_bytes"], test_offsets=d["test_offsets"],
             test_labels=d["test_labels"])
    print(f"wrote {args.out}: {args.train_num} train images (seed {args.seed}), {len(d['test_labels'])} test images")


if __name__ == "__main__":
    sys.exit(main())
