"""Write the embedded default's data, plugin/assets/fashion_mnist_subset.npz, and plugin/assets/README.md.

    python tools/make_embedded_data.py [--fashion-mnist /usr/share/datasets/fashion-mnist] [--seed 0]

Takes 512 calibration images at random from Fashion-MNIST's train split and 1000 class-balanced evaluation images
(100 per class) from its test split, both with a seeded generator, from the idx .gz files (Debian's package
`dataset-fashion-mnist` installs them in /usr/share/datasets/fashion-mnist). The model trained on the full train split
ships beside it (configs/classification/fmnist_vit_tiny.py, trained with tools/train_cls.py).
"""
import hashlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plugin.errors import ToolParser, nonnegative_int, tool_main  # noqa: E402

from plugin.classification import data as cls_data  # noqa: E402
from plugin.classification import fashion_mnist  # noqa: E402

ASSETS = os.path.join(cls_data.REPO_ROOT, "plugin", "assets")
NUM_CALIB, NUM_EVAL = 512, 1000

README = """# Embedded default: Fashion-MNIST subset and a tiny ViT

`configs/classification/fmnist_vit_tiny.py` runs with nothing but these files, so the toolkit works (and CI tests it)
with no data set or checkpoint to download.

| file | what |
| --- | --- |
| `fashion_mnist_subset.npz` | {num_calib} calibration images (`calib_images`, `calib_labels`) drawn at random from Fashion-MNIST's train split, and {num_eval} evaluation images (`eval_images`, `eval_labels`), {per_class} per class, drawn from its test split; uint8 28×28 grey images, uint8 labels, `classes` the label names |
| `fmnist_vit_tiny.safetensors` | float16 state dict of the config's timm ViT (28×28 input, 4×4 patches, width 64, 4 blocks, 4 heads), trained from scratch on the full 60,000-image train split |
| `fmnist_vit_tiny.json` | its top-1 on the full 10,000-image test split, the recipe, the training time and the exact command |

## Provenance

Fashion-MNIST, Han Xiao, Kashif Rasul and Roland Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
Machine Learning Algorithms", arXiv:1708.07747 (2017); https://github.com/zalandoresearch/fashion-mnist.
Read from Debian's package `dataset-fashion-mnist` (version 0.0~git20200523.55506a9-1), which installs the original
idx files unchanged in `/usr/share/datasets/fashion-mnist`. SHA-256 of the files read:

{hashes}

The images and labels are copied unchanged (no resizing or re-encoding); only the subset is chosen.

Made with `python tools/make_embedded_data.py --seed {seed}`: the calibration images are
`numpy.random.RandomState({seed}).choice(60000, {num_calib}, replace=False)` of the train split (sorted); the evaluation
images are `plugin.classification.data.balanced_subset_indices(test_labels, {num_eval}, {seed})`. The model was trained with
the command recorded in `fmnist_vit_tiny.json`.

## Licence

Fashion-MNIST is © 2017 Zalando SE and released under the MIT licence:

> The MIT License (MIT) Copyright © 2017 Zalando SE, https://tech.zalando.com
>
> Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
> documentation files (the "Software"), to deal in the Software without restriction, including without limitation the
> rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to permit
> persons to whom the Software is furnished to do so, subject to the following conditions:
>
> The above copyright notice and this permission notice shall be included in all copies or substantial portions of the
> Software.
>
> THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE
> WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR
> COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
> OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.

The subset and the trained weights derived from it are distributed under the same terms.
"""


@tool_main
def main(argv=None):
    p = ToolParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fashion-mnist", default=fashion_mnist.FASHION_MNIST_DIR, help="folder of the idx .gz files")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--out", default=ASSETS, help="assets folder to write into")
    args = p.parse_args(argv)

    train_x, train_y = fashion_mnist.load_fashion_mnist(args.fashion_mnist, "train")
    test_x, test_y = fashion_mnist.load_fashion_mnist(args.fashion_mnist, "test")
    calib_idx = np.sort(np.random.RandomState(args.seed).choice(len(train_y), NUM_CALIB, replace=False))
    eval_idx = cls_data.balanced_subset_indices(test_y, NUM_EVAL, args.seed)
    os.makedirs(args.out, exist_ok=True)
    npz_path = os.path.join(args.out, "fashion_mnist_subset.npz")
    np.savez_compressed(
        npz_path,
        calib_images=train_x[calib_idx], calib_labels=train_y[calib_idx].astype(np.uint8),
        eval_images=test_x[eval_idx], eval_labels=test_y[eval_idx].astype(np.uint8),
        classes=np.array(fashion_mnist.FASHION_MNIST_CLASSES))

    names = sorted(f for f in os.listdir(args.fashion_mnist) if f.endswith("-ubyte.gz"))
    hashes = "\n".join(f"- `{name}`: `{_sha256(os.path.join(args.fashion_mnist, name))}`" for name in names)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(README.format(num_calib=NUM_CALIB, num_eval=NUM_EVAL, per_class=NUM_EVAL // 10, seed=args.seed,
                              hashes=hashes))
    print(f"wrote {npz_path} ({os.path.getsize(npz_path) / 1024:.0f} KiB): {NUM_CALIB} calibration images from the "
          f"train split, {NUM_EVAL} evaluation images from the test split "
          f"(per class {np.bincount(test_y[eval_idx]).tolist()})")


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


if __name__ == "__main__":
    sys.exit(main())
