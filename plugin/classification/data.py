"""Classification data sets: ImageNet-style folders, uint8 arrays in an npz, and CIFAR-10 as packed JPEG files.

Every data set yields `(image, label)` with `image` a normalised float CHW tensor and `label` an int, and carries
`classes` (label names, index = label). `build_cls_datasets` returns the calibration set (from a training split) and
the evaluation set. The readers of the raw training files (`load_cifar10_packed` here, `load_fashion_mnist` in
fashion_mnist.py) share these helpers, so that tools/train_cls.py decodes pixels exactly as the evaluation does. The array types (npz, cifar10_packed) take
`img_size` (an int or (H, W)): each image is upscaled bilinearly after normalisation (`resize_images`, the function
tools/train_cls.py applies to whole batches on its device).
"""
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..errors import UserInputError, check_calib_num
from ..utils.paths import REPO_ROOT as PATHS_REPO_ROOT, resolve_data_path
from .timm_models import image_data_config  # noqa: F401  (used by _imagefolder_datasets; re-exported)
from .image_files import ImageFolderDataset, image_errors, image_files, open_rgb, patch_size

REPO_ROOT = Path(PATHS_REPO_ROOT)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def resolve_path(path):
    """A config's data path (plugin.utils.paths.resolve_data_path: the working folder first, then the repository)."""
    return Path(resolve_data_path(path))


def normalize_uint8(images, mean, std):
    """uint8 channel-last images (..., H, W, C), numpy or torch -> float (..., C, H, W) as (x/255 - mean) / std."""
    x = torch.as_tensor(images).movedim(-1, -3).float().div_(255)
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - mean) / std


def parse_img_size(value, where="data.img_size"):
    """None (keep the stored size), or (H, W) from a positive int or a pair of positive ints."""
    if value is None:
        return None
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(pair, (list, tuple)) or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair)):
        raise UserInputError(f"{where} must be a positive integer or a pair (H, W) of positive integers, "
                             f"got {value!r}")
    return tuple(pair)


def check_upscale(stored_hw, size, where="data.img_size"):
    """`size` may only enlarge the stored images (bilinear upscaling; downscaling would alias)."""
    if size is not None and (size[0] < stored_hw[0] or size[1] < stored_hw[1]):
        raise UserInputError(f"{where}={size[0]}x{size[1]} is smaller than the stored {stored_hw[0]}x{stored_hw[1]} "
                             f"images: the option upscales only")


def resize_images(x, size):
    """Float NCHW images (normalised or not) upscaled to `size` = (H, W), bilinear (align_corners=False), in one call
    on their device; None or the same size returns `x`. Bilinear weights sum to 1, so resizing commutes with the
    per-channel normalisation: tools/train_cls.py resizes whole batches, the data sets below single images, and both
    give the same pixels."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    return torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def balanced_subset_indices(labels, num, seed):
    """`num` indices, as equal a share of each class as `num` allows, drawn with a seeded generator; sorted."""
    labels = np.asarray(labels)
    if not 1 <= num <= len(labels):
        raise UserInputError(f"cannot take {num} samples from a split of {len(labels)}")
    rng = np.random.RandomState(seed)
    classes = np.unique(labels)
    per_class = {c: num // len(classes) for c in classes}
    for c in rng.permutation(classes)[: num % len(classes)]:
        per_class[c] += 1
    pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    short = sum(max(per_class[c] - len(pools[c]), 0) for c in classes)
    picked = [pools[c][: per_class[c]] for c in classes]
    if short:  # a class smaller than its share: fill up from the others' leftovers
        rest = rng.permutation(np.concatenate([pools[c][per_class[c]:] for c in classes]))
        picked.append(rest[:short])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def calib_subset(dataset, num, seed):
    """A seeded random subset of `num` samples of `dataset` (keeps its `classes`)."""
    check_calib_num(num, len(dataset), "the calibration split's size", integer=True)
    indices = np.random.RandomState(seed).choice(len(dataset), int(num), replace=False)
    subset = Subset(dataset, indices.tolist())
    subset.classes = getattr(dataset, "classes", None)
    if hasattr(dataset, "warn_small"):  # image folders: the sampled images only (a training split can be huge)
        dataset.warn_small(subset.indices, "calibration images")
    return subset


def _to_input(image, mean, std, img_size):
    """uint8 H×W×C -> the normalised float C×H×W input, upscaled to img_size (None: as stored)."""
    x = normalize_uint8(image, mean, std)
    return resize_images(x[None], img_size)[0] if img_size is not None else x


class ArrayDataset(Dataset):
    """uint8 images, (N, H, W) or (N, H, W, C), with integer labels, normalised on access (and upscaled to `img_size`
    = (H, W) when given)."""

    def __init__(self, images, labels, mean, std, classes=None, img_size=None):
        self.images = images[..., None] if images.ndim == 3 else images
        self.labels, self.mean, self.std, self.classes = labels, mean, std, classes
        self.img_size = img_size

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return _to_input(self.images[i], self.mean, self.std, self.img_size), int(self.labels[i])


class PackedJpegDataset(Dataset):
    """JPEG files joined end to end in one uint8 array (`offsets[i]:offsets[i+1]` is file i), decoded on access (and
    upscaled to `img_size` = (H, W) when given)."""

    def __init__(self, data, offsets, labels, mean, std, classes=None, indices=None, img_size=None):
        self.data, self.offsets, self.labels = data, offsets, labels
        self.mean, self.std, self.classes = mean, std, classes
        self.indices = np.arange(len(labels)) if indices is None else np.asarray(indices)
        self.img_size = img_size

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        j = int(self.indices[i])
        image = decode_jpeg(self.data, self.offsets, j)
        return _to_input(image, self.mean, self.std, self.img_size), int(self.labels[j])


def decode_jpeg(data, offsets, i):
    with image_errors(f"number {i} of the packed file"):
        return np.array(open_rgb(io.BytesIO(data[offsets[i]:offsets[i + 1]].tobytes())))


def _load_npz(path, keys):
    if not path.is_file():
        raise UserInputError(f"data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise UserInputError(f"npz file {path} lacks the arrays {missing} (has {sorted(npz.files)})")
            return {k: npz[k] for k in npz.files}
    except UserInputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserInputError(f"cannot read npz file {path}: {exc}") from exc


def _check_labels(labels, count, what, path, num_classes=None):
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or len(labels) != count:
        raise UserInputError(f"{path}: {what} must be a 1-D integer array of {count} labels, "
                             f"got {labels.dtype} {labels.shape}")
    if count and labels.min() < 0:
        raise UserInputError(f"{path}: {what} holds negative labels")
    if count and num_classes is not None and labels.max() >= num_classes:
        raise UserInputError(f"{path}: {what} holds labels >= {num_classes}, the number of classes")


def _classes(arrays, path):
    if "classes" not in arrays:
        return None
    classes = arrays["classes"]
    if classes.ndim != 1 or classes.dtype.kind not in "US":
        raise UserInputError(f"{path}: 'classes' must be a 1-D string array, got {classes.dtype} {classes.shape}")
    return [str(c) for c in classes]


def _mean_std(data_cfg, channels, path, default_mean=None, default_std=None):
    mean, std = data_cfg.get("mean", default_mean), data_cfg.get("std", default_std)
    if mean is None or std is None:
        raise UserInputError(f"data config for {path} needs 'mean' and 'std' (one value per channel)")
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise UserInputError(f"data config for {path}: 'mean' and 'std' need {channels} value(s) each, std > 0; "
                             f"got mean={mean} std={std}")
    return mean, std


def _npz_datasets(data_cfg):
    img_size = parse_img_size(data_cfg.get("img_size"))
    path = resolve_path(_required(data_cfg, "path"))
    arrays = _load_npz(path, ["calib_images", "calib_labels", "eval_images", "eval_labels"])
    classes = _classes(arrays, path)
    out = []
    for split in ("calib", "eval"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        channels_ok = images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3))
        if images.dtype != np.uint8 or not channels_ok:
            raise UserInputError(f"{path}: {split}_images must be uint8 N×H×W or N×H×W×C (C 1 or 3), "
                                 f"got {images.dtype} {images.shape}")
        if len(images) == 0:
            raise UserInputError(f"{path}: {split}_images is empty")
        _check_labels(labels, len(images), f"{split}_labels", path, len(classes) if classes else None)
        channels = 1 if images.ndim == 3 else images.shape[-1]
        mean, std = _mean_std(data_cfg, channels, path)
        out.append(ArrayDataset(images, labels.astype(np.int64), mean, std, classes, img_size))
    if out[0].images.shape[1:] != out[1].images.shape[1:]:
        raise UserInputError(f"{path}: calib_images {out[0].images.shape[1:]} and eval_images "
                             f"{out[1].images.shape[1:]} differ in image shape")
    check_upscale(out[0].images.shape[1:3], img_size)
    return tuple(out)


def load_cifar10_packed(path, split):
    """(bytes, offsets, labels, classes) of one split ('train' or 'test') of the packed-JPEG CIFAR-10 file."""
    path = resolve_path(path)
    keys = [f"{split}_bytes", f"{split}_offsets", f"{split}_labels"]
    arrays = _load_npz(path, keys)
    data, offsets, labels = (arrays[k] for k in keys)
    if data.dtype != np.uint8 or data.ndim != 1:
        raise UserInputError(f"{path}: {split}_bytes must be a 1-D uint8 array, got {data.dtype} {data.shape}")
    if (offsets.ndim != 1 or not np.issubdtype(offsets.dtype, np.integer) or len(offsets) < 2 or offsets[0] != 0
            or offsets[-1] != len(data) or np.any(np.diff(offsets) <= 0)):
        raise UserInputError(f"{path}: {split}_offsets must rise from 0 to len({split}_bytes) with at least one file")
    classes = _classes(arrays, path)
    _check_labels(labels, len(offsets) - 1, f"{split}_labels", path, len(classes) if classes else None)
    return data, offsets.astype(np.int64), labels.astype(np.int64), classes


def _cifar10_packed_datasets(data_cfg):
    img_size = parse_img_size(data_cfg.get("img_size"))
    path = resolve_path(_required(data_cfg, "path"))
    mean, std = _mean_std(data_cfg, 3, path, CIFAR10_MEAN, CIFAR10_STD)
    data, offsets, labels, classes = load_cifar10_packed(path, data_cfg.get("calib_split", "train"))
    calib = PackedJpegDataset(data, offsets, labels, mean, std, classes, img_size=img_size)
    if img_size is not None:
        check_upscale(decode_jpeg(data, offsets, 0).shape[:2], img_size)
    data, offsets, labels, classes = load_cifar10_packed(path, data_cfg.get("eval_split", "test"))
    indices = None
    if data_cfg.get("eval_num") is not None:
        indices = balanced_subset_indices(labels, int(data_cfg["eval_num"]), int(data_cfg.get("eval_seed", 0)))
    return calib, PackedJpegDataset(data, offsets, labels, mean, std, classes, indices, img_size)


def _imagefolder_datasets(data_cfg, model):
    import timm.data
    if data_cfg.get("img_size") is not None:
        raise UserInputError("data.img_size applies to the array types (npz, cifar10_packed); image folders are "
                             "resized by their transform: set data.input_size")
    root = resolve_path(_required(data_cfg, "root"))
    splits = data_cfg.get("calib_split", "train"), data_cfg.get("eval_split", "val")
    class_sets = []
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            raise UserInputError(f"image folder split not found: {split_dir}")
        class_sets.append(sorted(e.name for e in os.scandir(split_dir) if e.is_dir()))
        if not class_sets[-1]:
            raise UserInputError(f"image folder split {split_dir} has no class folders")
    classes = class_sets[1]
    if class_sets[0] != classes:
        only_calib, only_eval = sorted(set(class_sets[0]) - set(classes)), sorted(set(classes) - set(class_sets[0]))
        raise UserInputError(f"class folders of {root / splits[0]} and {root / splits[1]} differ: "
                             f"only in {splits[0]}: {only_calib[:5]}, only in {splits[1]}: {only_eval[:5]}")
    transform = timm.data.create_transform(**image_data_config(data_cfg, model))
    out = []
    for split in splits:
        samples = image_files(root / split, classes)
        if not samples:
            raise UserInputError(f"image folder split {root / split} holds no images (no file of a format PIL reads)")
        out.append(ImageFolderDataset(samples, classes, transform, patch_size(model)))
    out[1].warn_small(range(len(out[1])), f"image folder {root / splits[1]}")  # every one is evaluated
    return tuple(out)


def _required(data_cfg, key):
    if data_cfg.get(key) in (None, ""):
        raise UserInputError(f"data config of type {data_cfg.get('type')!r} needs {key!r}")
    return data_cfg[key]


DATASET_TYPES = {
    "imagefolder": _imagefolder_datasets,
    "npz": lambda data_cfg, model: _npz_datasets(data_cfg),
    "cifar10_packed": lambda data_cfg, model: _cifar10_packed_datasets(data_cfg),
}


def build_cls_datasets(data_cfg, model):
    """(calibration set from a training split, evaluation set) for a config's `data` dict."""
    kind = data_cfg.get("type")
    if kind not in DATASET_TYPES:
        raise UserInputError(f"unknown classification data type {kind!r}; known: {sorted(DATASET_TYPES)}")
    return DATASET_TYPES[kind](data_cfg, model)
