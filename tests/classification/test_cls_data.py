"""plugin/classification/data.py on tiny fixtures in the real formats, tools/train_cls.py, and the embedded default."""
import gzip
import io
import json
import os
import struct
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from plugin.config import load_config
from plugin.errors import UserInputError
from plugin.classification.data import (REPO_ROOT, balanced_subset_indices, build_cls_datasets, calib_subset,
                                        resize_images, resolve_path)
from plugin.classification.fashion_mnist import load_fashion_mnist

EMBEDDED_CONFIG = REPO_ROOT / "configs" / "classification" / "fmnist_vit_tiny.py"


@pytest.fixture(scope="module")
def tiny_timm_model():
    timm = pytest.importorskip("timm")
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, embed_dim=32, depth=1, num_heads=2)


def _solid(color, size=(40, 30)):
    return Image.new("RGB", size, color)


def _make_imagefolder(root, layout):
    """layout: {split: {class: [(color, ext), ...]}}"""
    for split, classes in layout.items():
        for name, files in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, (color, ext) in enumerate(files):
                _solid(color).save(folder / f"{i}.{ext}")


def _packed_cifar(path, per_class_train=2, per_class_test=3, corrupt_offsets=False):
    """A packed-JPEG npz in the layout of shared/data/cifar10 (keys, dtypes, class-ordered images)."""
    arrays = {"classes": np.array([f"class{c}" for c in range(10)])}
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        blobs, labels = [], []
        for c in range(10):
            for k in range(per_class):
                buf = io.BytesIO()
                _solid((c * 25, k * 40, 200), (32, 32)).save(buf, format="JPEG", quality=95)
                blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
                labels.append(c)
        offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        if corrupt_offsets:
            offsets[-1] += 7
        arrays.update({f"{split}_bytes": np.concatenate(blobs), f"{split}_offsets": offsets,
                       f"{split}_labels": np.array(labels, np.uint8)})
    np.savez(path, **arrays)
    return path


def _npz(path, calib_shape=(6, 8, 8), eval_shape=(4, 8, 8), dtype=np.uint8, **overrides):
    rng = np.random.RandomState(0)
    arrays = dict(calib_images=rng.randint(0, 256, calib_shape).astype(dtype),
                  calib_labels=np.arange(calib_shape[0]) % 3,
                  eval_images=rng.randint(0, 256, eval_shape).astype(dtype),
                  eval_labels=np.arange(eval_shape[0]) % 3,
                  classes=np.array(["a", "b", "c"]))
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


# --- imagefolder ---------------------------------------------------------------------------------------------------

def test_imagefolder_uses_eval_transform_and_sorted_classes(tmp_path, tiny_timm_model):
    _make_imagefolder(tmp_path, {
        "train": {"n02": [((255, 0, 0), "JPEG")], "n01": [((0, 255, 0), "png"), ((0, 0, 255), "jpg")]},
        "val": {"n01": [((0, 255, 0), "png")], "n02": [((255, 0, 0), "JPEG"), ((9, 9, 9), "jpg")]},
    })
    (tmp_path / "val" / "n01" / "notes.txt").write_text("not an image")
    calib, evaluation = build_cls_datasets({"type": "imagefolder", "root": str(tmp_path)}, tiny_timm_model)
    assert calib.classes == evaluation.classes == ["n01", "n02"]
    assert len(calib) == 3 and len(evaluation) == 3
    assert sorted(label for _, label in evaluation.samples) == [0, 1, 1]
    image, label = evaluation[0]
    assert image.dtype == torch.float32 and image.shape == (3, 224, 224) and label == 0
    # timm's default ViT config normalises with mean = std = 0.5: pure green becomes (-1, 1, -1)
    assert torch.allclose(image[:, 100, 100], torch.tensor([-1.0, 1.0, -1.0]), atol=0.05)


def test_imagefolder_custom_splits(tmp_path, tiny_timm_model):
    _make_imagefolder(tmp_path, {"calibration": {"a": [((1, 2, 3), "png")]}, "test": {"a": [((1, 2, 3), "png")]}})
    calib, evaluation = build_cls_datasets(
        {"type": "imagefolder", "root": str(tmp_path), "calib_split": "calibration", "eval_split": "test"},
        tiny_timm_model)
    assert len(calib) == len(evaluation) == 1


def test_imagefolder_reads_every_pil_format_and_warns_about_skipped_and_tiny_images(tmp_path, tiny_timm_model,
                                                                                     caplog):
    formats = ["png", "webp", "bmp", "tif", "gif", "jpeg"]
    _make_imagefolder(tmp_path, {split: {"a": [((10, 20, 30), ext) for ext in formats]} for split in ("train", "val")})
    for split in ("train", "val"):
        (tmp_path / split / "a" / "notes.txt").write_text("not an image")
        (tmp_path / split / "a" / "data.csv").write_text("1,2")
        (tmp_path / split / "a" / ".DS_Store").write_bytes(b"\0")  # hidden: skipped without a word
    _solid((1, 2, 3), size=(1, 1)).save(tmp_path / "val" / "a" / "tiny.png")
    _solid((1, 2, 3), size=(200, 8)).save(tmp_path / "val" / "a" / "flat.webp")
    with caplog.at_level("WARNING"):
        calib, evaluation = build_cls_datasets({"type": "imagefolder", "root": str(tmp_path)}, tiny_timm_model)
    assert len(calib) == len(formats) and len(evaluation) == len(formats) + 2
    assert evaluation[len(formats)][0].shape == (3, 224, 224)  # the 1x1 image is still read (and upscaled)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("skipped 2 file(s)" in m for m in lines) == 2, lines  # one line per split, with the count
    small = [m for m in lines if "smaller than the model's 16x16 patch" in m]
    assert len(small) == 1 and ": 2 image(s)" in small[0], lines
    caplog.clear()
    with caplog.at_level("WARNING"):
        calib_subset(evaluation, len(evaluation), 0)
    assert any("calibration images: 2 image(s) smaller" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("case, match", [
    ("missing_root", "split not found"),
    ("missing_split", "split not found"),
    ("no_class_folders", "no class folders"),
    ("empty_split", "holds no"),
    ("class_mismatch", "differ"),
])
def test_imagefolder_errors(tmp_path, tiny_timm_model, case, match):
    root = tmp_path / "imagenet"
    if case == "missing_split":
        _make_imagefolder(root, {"val": {"a": [((0, 0, 0), "png")]}})
    elif case == "no_class_folders":
        (root / "train").mkdir(parents=True)
        _make_imagefolder(root, {"val": {"a": [((0, 0, 0), "png")]}})
    elif case == "empty_split":
        _make_imagefolder(root, {"val": {"a": [((0, 0, 0), "png")]}})
        (root / "train" / "a").mkdir(parents=True)
    elif case == "class_mismatch":
        _make_imagefolder(root, {"train": {"a": [((0, 0, 0), "png")], "b": [((0, 0, 0), "png")]},
                                 "val": {"a": [((0, 0, 0), "png")], "c": [((0, 0, 0), "png")]}})
    with pytest.raises(UserInputError, match=match) as info:
        build_cls_datasets({"type": "imagefolder", "root": str(root)}, tiny_timm_model)
    assert str(root) in str(info.value)


# --- npz ------------------------------------------------------------------------------------------------------------

def test_npz_grey_images_normalised(tmp_path):
    images = np.zeros((2, 8, 8), np.uint8)
    images[1] = 255
    path = _npz(tmp_path / "d.npz", calib_images=images, calib_labels=np.array([0, 2]))
    calib, evaluation = build_cls_datasets({"type": "npz", "path": str(path), "mean": (0.5,), "std": (0.25,)}, None)
    assert len(calib) == 2 and len(evaluation) == 4 and calib.classes == ["a", "b", "c"]
    x0, y0 = calib[0]
    x1, y1 = calib[1]
    assert x0.shape == (1, 8, 8) and x0.dtype == torch.float32 and (y0, y1) == (0, 2)
    assert isinstance(y1, int)
    assert torch.allclose(x0, torch.full_like(x0, -2.0)) and torch.allclose(x1, torch.full_like(x1, 2.0))


def test_npz_colour_images(tmp_path):
    images = np.zeros((6, 8, 8, 3), np.uint8)
    images[..., 0] = 255
    path = _npz(tmp_path / "d.npz", calib_shape=(6, 8, 8, 3), eval_shape=(4, 8, 8, 3), calib_images=images,
                classes=None)
    calib, _ = build_cls_datasets({"type": "npz", "path": str(path), "mean": (0, 0, 0), "std": (1, 1, 1)}, None)
    x, _ = calib[3]
    assert x.shape == (3, 8, 8) and calib.classes is None
    assert torch.equal(x[0], torch.ones(8, 8)) and torch.equal(x[1:], torch.zeros(2, 8, 8))


def test_relative_data_paths_working_folder_first_then_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    asset = "plugin/assets/fashion_mnist_subset.npz"
    assert resolve_path(asset) == REPO_ROOT / asset  # the shipped assets, from any working folder
    (tmp_path / "plugin" / "assets").mkdir(parents=True)
    (tmp_path / asset).write_bytes(b"")
    assert resolve_path(asset) == Path(asset)  # a file of the user's own, where they run, comes first
    assert str(resolve_path("/abs/x.npz")) == "/abs/x.npz"
    assert str(resolve_path("nowhere/x.npz")) == "nowhere/x.npz"  # missing: reported as the user wrote it


@pytest.mark.parametrize("case, match", [
    ("missing_file", "not found"),
    ("garbage", "cannot read npz"),
    ("float_images", "must be uint8"),
    ("two_dims", "must be uint8"),
    ("four_channels", "must be uint8"),
    ("missing_key", "lacks the arrays"),
    ("label_count", "labels"),
    ("label_range", ">= 3"),
    ("shape_mismatch", "differ in image shape"),
    ("empty", "is empty"),
    ("no_mean", "needs 'mean'"),
    ("wrong_mean_length", "1 value"),
])
def test_npz_errors(tmp_path, case, match):
    path = tmp_path / "bad.npz"
    cfg = {"type": "npz", "path": str(path), "mean": (0.5,), "std": (0.5,)}
    if case == "garbage":
        path.write_bytes(b"this is not a zip file")
    elif case == "float_images":
        _npz(path, dtype=np.float32)
    elif case == "two_dims":
        _npz(path, calib_images=np.zeros((6, 8), np.uint8))
    elif case == "four_channels":
        _npz(path, calib_images=np.zeros((6, 8, 8, 4), np.uint8))
    elif case == "missing_key":
        _npz(path, eval_labels=None)
    elif case == "label_count":
        _npz(path, eval_labels=np.zeros(3, np.int64))
    elif case == "label_range":
        _npz(path, calib_labels=np.full(6, 3))
    elif case == "shape_mismatch":
        _npz(path, eval_shape=(4, 9, 8))
    elif case == "empty":
        _npz(path, eval_images=np.zeros((0, 8, 8), np.uint8), eval_labels=np.zeros(0, np.int64))
    elif case == "no_mean":
        _npz(path)
        del cfg["mean"]
    elif case == "wrong_mean_length":
        _npz(path)
        cfg["mean"] = (0.5, 0.5, 0.5)
    with pytest.raises(UserInputError, match=match) as info:
        build_cls_datasets(cfg, None)
    assert str(path) in str(info.value)


def test_unknown_type_and_missing_path():
    with pytest.raises(UserInputError, match="unknown classification data type"):
        build_cls_datasets({"type": "lmdb"}, None)
    with pytest.raises(UserInputError, match="needs 'path'"):
        build_cls_datasets({"type": "npz"}, None)


# --- cifar10_packed -------------------------------------------------------------------------------------------------

def test_cifar10_packed_decodes_train_and_test(tmp_path):
    path = _packed_cifar(tmp_path / "c.npz")
    calib, evaluation = build_cls_datasets({"type": "cifar10_packed", "path": str(path)}, None)
    assert len(calib) == 20 and len(evaluation) == 30
    assert evaluation.classes == [f"class{c}" for c in range(10)]
    x, y = evaluation[8]  # class 2, third image: colour (50, 80, 200)
    assert x.shape == (3, 32, 32) and y == 2
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    pixel = (x[:, 16, 16] * std + mean) * 255
    assert torch.allclose(pixel, torch.tensor([50.0, 80.0, 200.0]), atol=4)
    assert calib[5][1] == 2


def test_cifar10_packed_eval_num_is_balanced_and_seeded(tmp_path):
    path = _packed_cifar(tmp_path / "c.npz")
    cfg = {"type": "cifar10_packed", "path": str(path), "eval_num": 20, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    _, a = build_cls_datasets(cfg, None)
    _, b = build_cls_datasets(cfg, None)
    assert len(a) == 20 and np.array_equal(a.indices, b.indices)
    assert np.bincount([a[i][1] for i in range(len(a))]).tolist() == [2] * 10
    _, c = build_cls_datasets(dict(cfg, eval_seed=1), None)
    assert not np.array_equal(a.indices, c.indices)


@pytest.mark.parametrize("case, match", [
    ("missing_file", "not found"),
    ("bad_offsets", "offsets"),
    ("missing_key", "lacks the arrays"),
    ("eval_num_too_large", "cannot take 31"),
])
def test_cifar10_packed_errors(tmp_path, case, match):
    path = tmp_path / "c.npz"
    cfg = {"type": "cifar10_packed", "path": str(path)}
    if case == "bad_offsets":
        _packed_cifar(path, corrupt_offsets=True)
    elif case == "missing_key":
        np.savez(path, train_bytes=np.zeros(3, np.uint8))
    elif case == "eval_num_too_large":
        _packed_cifar(path)
        cfg["eval_num"] = 31
    with pytest.raises(UserInputError, match=match) as info:
        build_cls_datasets(cfg, None)
    if case != "eval_num_too_large":
        assert str(path) in str(info.value)


# --- data.img_size: upscaling the array types ------------------------------------------------------------------------

def test_img_size_upscales_packed_cifar_and_npz_like_a_batch(tmp_path):
    """Each image is upscaled alone (ptq_test's data sets) exactly as tools/train_cls.py upscales whole batches."""
    path = _packed_cifar(tmp_path / "c.npz")
    cfg = {"type": "cifar10_packed", "path": str(path)}
    _, plain = build_cls_datasets(cfg, None)
    calib, big = build_cls_datasets(dict(cfg, img_size=64), None)
    assert calib[0][0].shape == (3, 64, 64) and big[8][0].shape == (3, 64, 64) and big[8][1] == plain[8][1]
    batch = torch.stack([plain[i][0] for i in range(6)])
    torch.testing.assert_close(torch.stack([big[i][0] for i in range(6)]), resize_images(batch, (64, 64)),
                               rtol=0, atol=1e-6)
    x = big[8][0]  # a solid colour stays that colour
    assert torch.allclose(x[:, 32, 32], plain[8][0][:, 16, 16], atol=1e-5)
    npz = _npz(tmp_path / "d.npz")
    calib, evaluation = build_cls_datasets({"type": "npz", "path": str(npz), "mean": (0.5,), "std": (0.25,),
                                            "img_size": [12, 16]}, None)
    assert calib[0][0].shape == (1, 12, 16) and evaluation[0][0].shape == (1, 12, 16)
    assert resize_images(batch, None) is batch and resize_images(batch, (32, 32)) is batch


@pytest.mark.parametrize("value, match", [
    (0, "positive integer"), (-32, "positive integer"), (True, "positive integer"), ("64", "positive integer"),
    ((64,), "positive integer"), ((64, 0), "positive integer"), (64.0, "positive integer"),
    (16, "smaller than the stored 32x32"), ((64, 31), "smaller than the stored 32x32"),
])
def test_img_size_errors(tmp_path, value, match):
    path = _packed_cifar(tmp_path / "c.npz")
    with pytest.raises(UserInputError, match=match) as info:
        build_cls_datasets({"type": "cifar10_packed", "path": str(path), "img_size": value}, None)
    assert "data.img_size" in str(info.value)


def test_img_size_is_refused_for_image_folders(tmp_path, tiny_timm_model):
    _make_imagefolder(tmp_path, {s: {"a": [("red", "png")]} for s in ("train", "val")})
    with pytest.raises(UserInputError, match="data.input_size"):
        build_cls_datasets({"type": "imagefolder", "root": str(tmp_path), "img_size": 64}, tiny_timm_model)


# --- subsets --------------------------------------------------------------------------------------------------------

def test_calib_subset_bounds_and_seed(tmp_path):
    path = _npz(tmp_path / "d.npz")
    calib, _ = build_cls_datasets({"type": "npz", "path": str(path), "mean": (0,), "std": (1,)}, None)
    for bad in (0, -1, 7):
        with pytest.raises(UserInputError, match="between 1 and 6"):
            calib_subset(calib, bad, seed=0)
    a, b, c = calib_subset(calib, 4, seed=0), calib_subset(calib, 4, seed=0), calib_subset(calib, 4, seed=1)
    assert len(a) == 4 and len(set(a.indices)) == 4 and a.indices == b.indices and a.indices != c.indices
    assert a.classes == calib.classes
    assert sorted(calib_subset(calib, 6, seed=3).indices) == list(range(6))


def test_balanced_subset_fills_up_small_classes():
    labels = np.array([0] * 10 + [1] * 2 + [2] * 10)
    idx = balanced_subset_indices(labels, 9, seed=0)
    assert len(set(idx)) == 9 and np.bincount(labels[idx]).tolist()[1] == 2


# --- Fashion-MNIST reader and the trainer -------------------------------------------------------------------------

def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion_mnist(tmp_path):
    rng = np.random.RandomState(0)
    for prefix, n in (("train", 64), ("t10k", 40)):
        labels = np.arange(n) % 10
        images = rng.randint(0, 50, (n, 28, 28)) + labels[:, None, None] * 20  # brightness tells the class
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return tmp_path


def test_load_fashion_mnist_reads_idx(fake_fashion_mnist):
    images, labels = load_fashion_mnist(fake_fashion_mnist, "test")
    assert images.shape == (40, 28, 28) and images.dtype == np.uint8 and labels.tolist()[:3] == [0, 1, 2]
    (fake_fashion_mnist / "t10k-labels-idx1-ubyte.gz").write_bytes(b"broken")
    with pytest.raises(UserInputError, match="t10k-labels"):
        load_fashion_mnist(fake_fashion_mnist, "test")


def test_train_cls_smoke(fake_fashion_mnist, tmp_path):
    pytest.importorskip("timm")
    pytest.importorskip("safetensors")
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "train_cls.py"), str(EMBEDDED_CONFIG), "--out", str(out),
           "--data-path", str(fake_fashion_mnist), "--epochs", "2", "--batch-size", "16", "--half", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_test"] == 40 and metrics["dtype"] == "float16" and metrics["epochs"] == 2
    assert "train_cls.py" in metrics["command"] and 0 <= metrics["top1"] <= 100
    from safetensors.torch import load_file
    assert all(v.dtype == torch.float16 for v in load_file(out / "model.safetensors").values())


TINY_SWIN_CONFIG = """
task = 'classification'
model = dict(name='swin_tiny_patch4_window7_224',
             kwargs=dict(img_size=64, patch_size=4, window_size=4, num_classes=10, embed_dim=16, depths=(1, 1),
                         num_heads=(1, 2)))
data = dict(type='cifar10_packed', path={path!r}, img_size=64)
eval = dict(batch_size=8)
train = dict(data='cifar10', epochs=3, batch_size=5, lr=1e-3, warmup_epochs=1, hflip=True, eval_every=1)
"""


def _train_cls():
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import train_cls
    return train_cls


def test_train_cls_upscales_and_stops_at_max_time(tmp_path):
    """A Swin trained at 64 px on 32-px packed CIFAR (data.img_size) and stopped by --max-time after its first epoch:
    saved, evaluated, and its top-1 is what tools/ptq_test.py's classification task measures on the saved weights."""
    pytest.importorskip("timm")
    from plugin.classification.task import ClassificationTask
    cfg_path = tmp_path / "tiny_swin.py"
    cfg_path.write_text(TINY_SWIN_CONFIG.format(path=str(_packed_cifar(tmp_path / "c.npz"))))
    out = tmp_path / "run"
    train_cls = _train_cls()
    metrics = train_cls.train(train_cls.parse_args([str(cfg_path), "--out", str(out), "--max-time", "1e-6", "--half"]))
    assert metrics["epochs"] == 1 and metrics["epochs_planned"] == 3 and metrics["stopped_by_max_time"]
    assert metrics["img_size"] == [64, 64] and [h["epoch"] for h in metrics["history"]] == [1]
    task = ClassificationTask(load_config(str(cfg_path)), str(out / "model.safetensors"))
    assert task.evaluate(task.build_model(), progress_enabled=False)["top1"] == pytest.approx(metrics["top1"],
                                                                                              abs=0.01)


def test_train_cls_max_time_and_img_size_options(tmp_path):
    pytest.importorskip("timm")
    train_cls = _train_cls()
    assert train_cls.fitted_epochs(40, 2, elapsed=30.0, epoch_s=10.0, max_time=240.0) == 23
    assert train_cls.fitted_epochs(10, 2, elapsed=30.0, epoch_s=10.0, max_time=240.0) == 10  # never lengthens
    assert train_cls.fitted_epochs(40, 2, elapsed=300.0, epoch_s=10.0, max_time=240.0) == 2
    cfg_path = tmp_path / "tiny_swin.py"
    cfg_path.write_text(TINY_SWIN_CONFIG.format(path=str(_packed_cifar(tmp_path / "c.npz"))))
    base = [str(cfg_path), "--out", str(tmp_path / "run")]
    for bad in (["--max-time", "0"], ["--max-time", "-5"], ["--max-time", "soon"], ["--fit-schedule"],
                ["--img-size", "0"]):
        with pytest.raises(SystemExit) as info:
            train_cls.parse_args(base + bad)
        assert info.value.code == 2
    with pytest.raises(UserInputError, match="--img-size=16x16 is smaller than the stored 32x32"):
        train_cls.train(train_cls.parse_args(base + ["--img-size", "16"]))
    with pytest.raises(UserInputError, match="built for 64x64 inputs but would be trained at 48x48"):
        train_cls.train(train_cls.parse_args(base + ["--img-size", "48"]))
    # A budget that is never reached changes nothing: all epochs, the schedule as planned.
    metrics = train_cls.train(train_cls.parse_args(base + ["--img-size", "64", "--max-time", "1e6", "--fit-schedule",
                                                           "--epochs", "3"]))
    assert metrics["epochs"] == 3 and not metrics["stopped_by_max_time"] and metrics["img_size"] == [64, 64]


# --- the embedded default -------------------------------------------------------------------------------------------

def test_embedded_model_loads_and_classifies():
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file
    cfg = load_config(str(EMBEDDED_CONFIG))
    model = timm.create_model(cfg["model"]["name"], pretrained=False, **cfg["model"]["kwargs"]).eval()
    state = load_file(REPO_ROOT / "plugin" / "assets" / "fmnist_vit_tiny.safetensors")
    result = model.load_state_dict(state, strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    calib, evaluation = build_cls_datasets(dict(cfg["data"]), model)
    assert len(calib) == 512 and len(evaluation) == 1000 and evaluation.classes[0] == "T-shirt/top"
    x = torch.stack([evaluation[i][0] for i in range(200)])
    y = torch.tensor([evaluation[i][1] for i in range(200)])
    with torch.no_grad():
        top1 = (model(x).argmax(-1) == y).float().mean().item()
    assert top1 > 0.75, top1  # guards the data path: decoding and normalisation must match the training
    assert os.path.getsize(REPO_ROOT / "plugin" / "assets" / "fmnist_vit_tiny.safetensors") < 1_000_000
