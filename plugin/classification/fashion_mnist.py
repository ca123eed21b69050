"""Fashion-MNIST from its original idx files (the source of the embedded default's data, tools/make_embedded_data.py,
and of tools/train_cls.py): the reader, the class names and the training statistics."""
import gzip
import struct

import numpy as np

from ..errors import UserInputError
from .data import resolve_path


def _read_idx(path):
    """An array from an idx file (the MNIST format), gzip-compressed or not."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte idx file")
        shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()
    except (OSError, ValueError, EOFError, struct.error) as exc:
        raise UserInputError(f"cannot read idx file {path}: {exc}") from exc


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)


def load_fashion_mnist(root, split):
    """(images uint8 N×28×28, labels int64) of Fashion-MNIST's 'train' or 'test' split from its idx .gz files."""
    root = resolve_path(root)
    prefix = {"train": "train", "test": "t10k"}[split]
    images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise UserInputError(f"{root}: {split} images {images.shape} and labels {labels.shape} do not match")
    return images, labels


__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD",
           "load_fashion_mnist"]
