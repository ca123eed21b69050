"""Hostile and broken inputs (hypothesis, bounded): every file reader and the CLI surface answer a truncated,
corrupted or random-bytes file, wrong shapes/dtypes and absurd arguments with plugin.errors.UserInputError (the CLI:
exit code 2, or argparse's exit 2), never another exception type, a hang or an output file.

`pytest -s tests/tools/test_fuzz.py` prints how many examples each target ran (docs/reliability.md lists them)."""
import collections
import contextlib
import io
import json
import os
import signal
import sys

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import plugin  # noqa: E402,F401
from plugin.errors import UserInputError  # noqa: E402

from repo_paths import REPO  # noqa: E402
CONFIG = os.path.join(REPO, "configs/classification/fmnist_vit_tiny.py")
CKPT = os.path.join(REPO, "plugin/assets/fmnist_vit_tiny.safetensors")
COUNTS = collections.Counter()
FUZZ = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print("\nfuzz examples run:", dict(sorted(COUNTS.items())), "total", sum(COUNTS.values()))


@contextlib.contextmanager
def time_limit(seconds=20):
    """A reader that hangs fails the test instead of blocking the suite."""
    def alarm(*_):
        raise TimeoutError(f"no answer within {seconds}s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def accepts_or_refuses(target, fn, *args, **kwargs):
    """Run a reader: a result or UserInputError are fine; any other exception fails the example."""
    COUNTS[target] += 1
    with time_limit():
        try:
            return fn(*args, **kwargs)
        except UserInputError as exc:
            assert str(exc)
            return None


def damaged(base: bytes, max_random=4096):
    """Truncations, byte overwrites and insertions of a valid file, and random bytes."""
    n = len(base)
    truncated = st.integers(0, max(0, n - 1)).map(lambda k: base[:k])

    def overwrite(edits):
        b = bytearray(base)
        for pos, value in edits:
            b[pos % n] = value
        return bytes(b)
    overwritten = st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 255)), min_size=1, max_size=16).map(overwrite)
    spliced = st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=64)).map(
        lambda t: base[:t[0]] + t[1] + base[t[0]:])
    return st.one_of(truncated, overwritten, spliced, st.binary(max_size=max_random))


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: safetensors and .pth through plugin.utils.checkpoint

def _valid_checkpoints():
    from safetensors.torch import save as st_save
    state = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.zeros(3)}
    buf = io.BytesIO()
    torch.save({"state_dict": state}, buf)
    return st_save(state), buf.getvalue()


SAFETENSORS, PTH = _valid_checkpoints()


def _load_damaged_checkpoint(tmp_path_factory, data, kind, filename):
    from plugin.utils.checkpoint import load_state_dict_file
    path = write(tmp_path_factory.mktemp(kind) / filename, data)
    state = accepts_or_refuses(kind, load_state_dict_file, path)
    assert state is None or all(torch.is_tensor(v) for v in state.values())


@FUZZ
@given(data=damaged(SAFETENSORS))
def test_fuzz_safetensors_checkpoint(tmp_path_factory, data):
    _load_damaged_checkpoint(tmp_path_factory, data, "safetensors", "model.safetensors")


@FUZZ
@given(data=damaged(PTH))
def test_fuzz_pth_checkpoint(tmp_path_factory, data):
    _load_damaged_checkpoint(tmp_path_factory, data, "pth", "model.pth")


# ---------------------------------------------------------------------------------------------------------------
# Classification data: npz arrays, packed JPEG (CIFAR-10 layout), image folders

def _npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _jpeg(seed, size=8):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


rng0 = np.random.default_rng(0)
CLS_NPZ = _npz_bytes(calib_images=rng0.integers(0, 255, (4, 6, 6), dtype=np.uint8), calib_labels=np.arange(4),
                     eval_images=rng0.integers(0, 255, (3, 6, 6), dtype=np.uint8), eval_labels=np.arange(3))
_J = [_jpeg(i) for i in range(3)]
_OFF = np.cumsum([0] + [len(j) for j in _J])
PACKED_NPZ = _npz_bytes(**{f"{s}_{k}": v for s in ("train", "test") for k, v in
                           (("bytes", np.frombuffer(b"".join(_J), np.uint8)), ("offsets", _OFF),
                            ("labels", np.arange(3)))})


def _read_cls_npz(path):
    from plugin.classification.data import build_cls_datasets
    calib, ev = build_cls_datasets({"type": "npz", "path": path, "mean": (0.5,), "std": (0.5,)}, None)
    return [calib[i] for i in range(len(calib))] + [ev[i] for i in range(len(ev))]


def _read_packed(path):
    from plugin.classification.data import build_cls_datasets
    calib, ev = build_cls_datasets({"type": "cifar10_packed", "path": path}, None)
    return [calib[i] for i in range(len(calib))] + [ev[i] for i in range(len(ev))]


@FUZZ
@given(data=damaged(CLS_NPZ))
def test_fuzz_cls_npz(tmp_path_factory, data):
    accepts_or_refuses("npz (classification)", _read_cls_npz, write(tmp_path_factory.mktemp("n") / "d.npz", data))


@FUZZ
@given(data=damaged(PACKED_NPZ))
def test_fuzz_packed_jpeg_npz(tmp_path_factory, data):
    accepts_or_refuses("npz (packed JPEG)", _read_packed, write(tmp_path_factory.mktemp("n") / "d.npz", data))


@FUZZ
@given(jpeg=damaged(_J[0], max_random=512))
def test_fuzz_packed_jpeg_payload(tmp_path_factory, jpeg):
    """A valid npz whose first JPEG is damaged: the decode error is a UserInputError."""
    parts = [jpeg or b"\0", _J[1], _J[2]]
    off = np.cumsum([0] + [len(j) for j in parts])
    data = _npz_bytes(**{f"{s}_{k}": v for s in ("train", "test") for k, v in
                         (("bytes", np.frombuffer(b"".join(parts), np.uint8)), ("offsets", off),
                          ("labels", np.arange(3)))})
    accepts_or_refuses("packed JPEG payload", _read_packed, write(tmp_path_factory.mktemp("n") / "d.npz", data))


ARRAY = st.builds(lambda shape, dtype, fill: np.full(shape, fill).astype(dtype),
                  st.lists(st.integers(0, 4), min_size=0, max_size=5).map(tuple),
                  st.sampled_from(["uint8", "int64", "float32", "float64", "bool", "int8", "U3", "complex64"]),
                  st.sampled_from([0, 1, -1, 255, 7, float("nan"), float("inf")]))


@FUZZ
@given(arrays=st.dictionaries(st.sampled_from(["calib_images", "calib_labels", "eval_images", "eval_labels",
                                               "classes"]), ARRAY, min_size=3))
def test_fuzz_cls_npz_shapes_and_dtypes(tmp_path_factory, arrays):
    with np.errstate(all="ignore"):
        data = _npz_bytes(**arrays)
    accepts_or_refuses("npz (classification, shapes/dtypes)", _read_cls_npz,
                       write(tmp_path_factory.mktemp("n") / "d.npz", data))


@pytest.fixture(scope="module")
def vit():
    timm = pytest.importorskip("timm")
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=2, depth=1,
                             embed_dim=32, num_heads=2)


@FUZZ
@given(data=damaged(_jpeg(5, 16)))
def test_fuzz_imagefolder_image(tmp_path_factory, vit, data):
    from plugin.classification.data import build_cls_datasets
    root = tmp_path_factory.mktemp("imgs")
    for split in ("train", "val"):
        os.makedirs(root / split / "a")
        write(root / split / "a" / "good.jpg", _jpeg(1, 16))
        write(root / split / "a" / "x.jpg", data)

    def read():
        calib, ev = build_cls_datasets({"type": "imagefolder", "root": str(root)}, vit)
        return [calib[i] for i in range(len(calib))] + [ev[i] for i in range(len(ev))]
    accepts_or_refuses("image folder", read)


# ---------------------------------------------------------------------------------------------------------------
# Point clouds: h5 (ModelNet40 / ShapeNetPart layouts), ModelNet10 npz, ply/pcd/off through Open3D

def _h5_bytes(**arrays):
    h5py = pytest.importorskip("h5py")
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.h5")
        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                f.create_dataset(k, data=v)
        return open(path, "rb").read()


H5 = _h5_bytes(data=np.random.default_rng(0).normal(size=(2, 16, 3)).astype(np.float32),
               label=np.array([[0], [1]]), pid=np.zeros((2, 16), np.int64))


def _modelnet40_root(root, h5_data):
    with open(root / "shape_names.txt", "w") as f:
        f.write("a\nb\n")
    for split in ("train", "test"):
        with open(root / f"{split}_files.txt", "w") as f:
            f.write(f"data/modelnet40_ply_hdf5_2048/{split}0.h5\n")
        write(root / f"{split}0.h5", h5_data)
    return str(root)


def _read_modelnet40(root):
    from plugin.pointcloud.data import modelnet40_h5
    ds = modelnet40_h5(root, "train", num_points=8)
    return [ds[i] for i in range(len(ds))]


@FUZZ
@given(data=damaged(H5))
def test_fuzz_h5(tmp_path_factory, data):
    accepts_or_refuses("h5 (modelnet40)", _read_modelnet40, _modelnet40_root(tmp_path_factory.mktemp("h5"), data))


@FUZZ
@given(arrays=st.dictionaries(st.sampled_from(["data", "label", "pid"]), ARRAY.filter(lambda a: a.dtype.kind != "c"),
                              min_size=1))
def test_fuzz_h5_shapes_and_dtypes(tmp_path_factory, arrays):
    arrays = {k: (v.astype("S3") if v.dtype.kind == "U" else v) for k, v in arrays.items()}  # h5py has no unicode
    root = _modelnet40_root(tmp_path_factory.mktemp("h5"), _h5_bytes(**arrays))
    accepts_or_refuses("h5 (shapes/dtypes)", _read_modelnet40, root)


MN10 = _npz_bytes(points=np.random.default_rng(0).normal(size=(4, 16, 3)).astype(np.float32),
                  label=np.array(["a", "b", "a", "b"]), split=np.array(["train", "train", "test", "test"]))


@FUZZ
@given(data=damaged(MN10))
def test_fuzz_modelnet10_npz(tmp_path_factory, data):
    from plugin.pointcloud.data import modelnet10_npz

    def read(path):
        ds = modelnet10_npz(path, "train", num_points=8)
        return [ds[i] for i in range(len(ds))]
    accepts_or_refuses("npz (modelnet10)", read, write(tmp_path_factory.mktemp("mn") / "m.npz", data))


def _o3d_files():
    pytest.importorskip("open3d")
    pts = np.random.default_rng(0).normal(size=(20, 3))
    ply = ("ply\nformat ascii 1.0\nelement vertex 20\nproperty float x\nproperty float y\nproperty float z\n"
           "end_header\n" + "".join(f"{x:.4f} {y:.4f} {z:.4f}\n" for x, y, z in pts)).encode()
    pcd = ("# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 20\nHEIGHT 1\n"
           "VIEWPOINT 0 0 0 1 0 0 0\nPOINTS 20\nDATA ascii\n" + "".join(f"{x:.4f} {y:.4f} {z:.4f}\n"
                                                                   for x, y, z in pts)).encode()
    off = b"OFF\n4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n3 0 2 3\n3 1 2 3\n"
    return {".ply": ply, ".pcd": pcd, ".off": off}


try:
    import open3d  # noqa: F401
    O3D = _o3d_files()
except Exception:  # open3d missing or unusable: the cases below skip
    O3D = {".ply": b"ply\n", ".pcd": b"# .PCD\n", ".off": b"OFF\n"}


@pytest.mark.parametrize("ext", [".ply", ".pcd", ".off"])
def test_fuzz_open3d_files(tmp_path_factory, ext):
    pytest.importorskip("open3d")
    from plugin.pointcloud.open3d_io import read_points

    @settings(max_examples=30, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(data=damaged(O3D[ext], max_random=512))
    def check(data):
        path = write(tmp_path_factory.mktemp("o3d") / f"f{ext}", data)
        pts = accepts_or_refuses(f"open3d {ext}", read_points, path, num_points=16)
        assert pts is None or (pts.shape == (16, 3) and np.isfinite(pts).all())
    check()


# ---------------------------------------------------------------------------------------------------------------
# COCO json through the detection task (mmdet)

@pytest.fixture(scope="module")
def coco_task(tmp_path_factory):
    import plugin.detection
    if not plugin.detection.HAS_MMDET:
        pytest.skip(f"MMDetection is not usable: {plugin.detection.MMDET_ERROR}")
    sys.path.insert(0, os.path.join(REPO, "tests", "detection"))
    import test_det
    root = tmp_path_factory.mktemp("coco")
    os.makedirs(root / "images")
    _write = test_det._write_split
    _write(str(root), "train", 1, 2, np.random.default_rng(0), crowd=True)
    _write(str(root), "val", 100, 1, np.random.default_rng(1), crowd=False)
    cfg_path = root / "tiny.py"
    cfg_path.write_text(test_det.TINY_CONFIG.format(root=str(root)))
    return root, str(cfg_path)


def test_fuzz_coco_json(coco_task):
    from plugin.config import load_config
    from plugin.detection.task import DetectionTask
    root, cfg_path = coco_task
    valid = open(root / "instances_train.json", "rb").read()
    doc = json.loads(valid)
    structural = st.one_of(
        st.just(b"{}"), st.just(b"[]"), st.just(b"null"),
        st.sampled_from(sorted(doc)).map(lambda k: json.dumps({**doc, k: None}).encode()),
        st.sampled_from(sorted(doc)).map(lambda k: json.dumps({**doc, k: "x"}).encode()),
        st.sampled_from(["image_id", "bbox", "category_id", "segmentation"]).map(
            lambda k: json.dumps({**doc, "annotations": [{**a, k: "bad"} for a in doc["annotations"]]}).encode()))

    @settings(max_examples=25, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(data=st.one_of(damaged(valid, max_random=1024), structural))
    def check(data):
        write(root / "instances_fuzz.json", data)
        cfg = load_config(cfg_path)
        cfg.train_dataloader.dataset.ann_file = "instances_fuzz.json"
        task = DetectionTask(cfg, os.path.join(root, "none.pth"), device="cpu", work_dir=str(root / "wd"))

        def read():
            return task.calib_data(None, 1, 0)
        accepts_or_refuses("COCO json", read)
    check()


# ---------------------------------------------------------------------------------------------------------------
# The CLI surface

sys.path.insert(0, os.path.join(REPO, "tools"))


def run_cli(argv, out):
    import ptq_test
    COUNTS["cli"] += 1
    with time_limit(60):
        try:
            code = ptq_test.main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            code = exc.code
    files = [f for _, _, fs in os.walk(out) for f in fs] if os.path.isdir(out) else []
    return code, files


WORDS = st.text(st.characters(codec="ascii", exclude_characters="\x00"), max_size=6)


@settings(max_examples=60, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(bits=st.lists(st.one_of(st.integers(-3, 40), WORDS), min_size=1, max_size=3),
       calib=st.one_of(st.integers(-5, 0), st.integers(10 ** 6, 10 ** 12), WORDS),
       methods=st.lists(st.one_of(st.sampled_from(["minmax", "repq", "isvit", "nope", "", "-x"]), WORDS),
                        min_size=0, max_size=3),
       which=st.sampled_from(["bits", "calib", "method"]))
def test_fuzz_cli_arguments(tmp_path_factory, bits, calib, methods, which):
    """Absurd bit widths, calibration sizes and method names: exit 2, no output. One argument is broken per example
    and the others are valid, so each check is reached."""
    out = tmp_path_factory.mktemp("cli")
    good_bits, good_calib, good_method = ["4"], "8", ["minmax"]
    bad_bits = [b for b in bits if not (isinstance(b, int) and 2 <= b <= 8) and not str(b).strip() in map(str, range(2, 9))]
    bad_methods = [m for m in methods if m not in ("minmax", "repq", "isvit")]
    argv = [CONFIG, CKPT, "--out", out, "--device", "cpu", "--quiet", "--no-fp"]
    argv += ["--bits", *(bad_bits or ["99"])] if which == "bits" else ["--bits", *good_bits]
    argv += ["--calib-num", calib] if which == "calib" else ["--calib-num", good_calib]
    argv += ["--method", *(bad_methods or ["nope"])] if which == "method" else ["--method", *good_method]
    code, files = run_cli(argv, out)
    assert code == 2 and files == [], (argv, code, files)


CONFIG_TEXT = open(CONFIG).read()
CONFIG_KEYS = ["task", "model", "data", "calib", "eval"]
WRONG = st.sampled_from(["None", "3", "'x'", "[]", "dict()", "dict(name=3)", "dict(type='npz', path=5)",
                         "dict(num='a', batch_size=-1)", "dict(batch_size=0)", "(1, 2)", "float('nan')",
                         "dict(name='vit_tiny_patch16_224', kwargs=dict(img_size=-3))",
                         "dict(type='npz', path='plugin/assets/fashion_mnist_subset.npz', mean=(0.2,), std=(0,))"])


@settings(max_examples=30, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(key=st.sampled_from(CONFIG_KEYS), value=WRONG, mode=st.sampled_from(["wrong", "missing", "empty", "garbage"]),
       garbage=st.binary(max_size=200))
def test_fuzz_cli_configs(tmp_path_factory, key, value, mode, garbage):
    """Missing, empty, unparsable configs and configs with a wrongly typed entry: exit 2 and no output, or (where the
    entry is not needed by the run) a normal run."""
    out = tmp_path_factory.mktemp("cfg")
    cfg = out.parent / f"{out.name}_cfg.py"
    if mode == "wrong":
        lines = CONFIG_TEXT.split("\n")
        start = next(i for i, l in enumerate(lines) if l.startswith(f"{key} ="))
        end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith(" ")), len(lines))
        cfg.write_text("\n".join(lines[:start] + [f"{key} = {value}"] + lines[end:]))
    elif mode == "empty":
        cfg.write_text("")
    elif mode == "garbage":
        cfg.write_bytes(garbage)
    argv = [cfg, CKPT, "--out", out, "--device", "cpu", "--quiet", "--bits", "4", "--method", "minmax", "--calib-num",
            "8"]
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        code, files = run_cli(argv, out)
    finally:
        os.chdir(cwd)
    assert code in (0, 2), (mode, key, value, code)
    if code == 2:
        assert files == [], files
    else:
        assert sorted(files) == ["report.json", "report.md"]


def test_nan_checkpoint_is_refused(tmp_path):
    """NaN weights: the NaN activations are caught in calibration (exit 2, no report)."""
    from safetensors.torch import load_file, save_file
    state = load_file(CKPT)
    key = next(k for k in state if k.endswith("weight") and state[k].dim() == 2)
    state[key][0, 0] = float("nan")
    bad = write(tmp_path / "nan.safetensors", b"")
    save_file(state, bad)
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        code, files = run_cli([CONFIG, bad, "--out", tmp_path / "out", "--device", "cpu", "--quiet", "--no-fp",
                               "--method", "minmax", "--calib-num", "8"], tmp_path / "out")
    finally:
        os.chdir(cwd)
    assert code == 2 and files == []
