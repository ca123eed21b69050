"""Point-cloud transformers: data formats, metrics, official key layout, grouping ops, quantization, CLI end to end.

Every data file here is a tiny one written by the test in the published format; no real data set is needed.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from plugin.errors import UserInputError
from plugin.pointcloud import PointMAECls, PointMAEPartSeg, build_model, checkpoint_filter_fn
from plugin.pointcloud.data import build_dataset, detect_format, modelnet10_npz, modelnet40_h5
from plugin.pointcloud.readers import read_h5
from plugin.pointcloud.shapenetpart import SHAPENETPART_PARTS, shapenetpart_h5
from plugin.pointcloud.metrics import (PartIoU, classification_metrics, part_miou, restricted_argmax,
                                       shape_iou)
from plugin.pointcloud.ops import farthest_point_sample, group_points, knn, three_nn_interpolate

h5py = pytest.importorskip("h5py")
from repo_paths import REPO  # noqa: E402
TINY = dict(trans_dim=16, depth=2, num_heads=2, group_size=8, encoder_channels=(8, 16))
TINY_CLS = dict(type="PointMAECls", num_classes=3, num_group=8, head_hidden=(16,), **TINY)
TINY_SEG = dict(type="PointMAEPartSeg", num_categories=2, num_parts=6, num_group=8, propagation_mlp=(16, 16),
                head_hidden=(16, 8), **TINY)
try:
    import open3d  # noqa: F401
    HAVE_O3D = True
except ImportError:
    HAVE_O3D = False


def _cloud(rng, n):
    return rng.normal(size=(n, 3)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- tiny data files
def write_modelnet40_h5(root, n_points=64, per_split=(6, 4), seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "shape_names.txt"), "w") as f:
        f.write("airplane\nbathtub\nbed\n")
    for split, count in zip(("train", "test"), per_split):
        name = f"ply_data_{split}0.h5"
        with h5py.File(os.path.join(root, name), "w") as f:
            f.create_dataset("data", data=rng.normal(size=(count, n_points, 3)).astype(np.float32))
            f.create_dataset("label", data=(np.arange(count) % 3).astype(np.uint8)[:, None])
        with open(os.path.join(root, f"{split}_files.txt"), "w") as f:   # paths as in the official lists
            f.write(f"data/modelnet40_ply_hdf5_2048/{name}\n")
    return root


def write_shapenetpart_h5(root, n_points=64, per_split=(6, 2, 4), seed=0, with_json=False):
    """Two categories with 2 and 4 parts: ShapeNetPart's Bag and Car (global ids 4-5, 8-11) without a json,
    otherwise own categories with ids 0-1 and 2-5 given by catid_partid_to_overallid.json."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    names = ["Bag", "Car"] if not with_json else ["Blob", "Thing"]
    with open(os.path.join(root, "all_object_categories.txt"), "w") as f:
        f.write(f"{names[0]}\t02773838\n{names[1]}\t02958343\n")
    if with_json:
        json.dump({"02773838_1": 0, "02773838_2": 1, "02958343_1": 2, "02958343_2": 3, "02958343_3": 4,
                   "02958343_4": 5}, open(os.path.join(root, "catid_partid_to_overallid.json"), "w"))
    parts = [[0, 1], [2, 3, 4, 5]] if with_json else [SHAPENETPART_PARTS["Bag"], SHAPENETPART_PARTS["Car"]]
    for split, count in zip(("train", "val", "test"), per_split):
        cat = np.arange(count) % 2
        pid = np.stack([rng.choice(parts[c], n_points) for c in cat]).astype(np.uint8)
        name = f"ply_data_{split}0.h5"
        with h5py.File(os.path.join(root, name), "w") as f:
            f.create_dataset("data", data=rng.normal(size=(count, n_points, 3)).astype(np.float32))
            f.create_dataset("label", data=cat.astype(np.uint8)[:, None])
            f.create_dataset("pid", data=pid)
        with open(os.path.join(root, f"{split}_hdf5_file_list.txt"), "w") as f:
            f.write(name + "\n")
    return root


def write_modelnet_normal(root, n_points=40, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"train": ["chair_0001", "night_stand_0001", "chair_0002"], "test": ["night_stand_0002"]}
    with open(os.path.join(root, "modelnet40_shape_names.txt"), "w") as f:
        f.write("chair\nnight_stand\n")
    for split, ids in shapes.items():
        with open(os.path.join(root, f"modelnet40_{split}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
        for sid in ids:
            cls = sid.rsplit("_", 1)[0]
            os.makedirs(os.path.join(root, cls), exist_ok=True)
            a = np.concatenate([_cloud(rng, n_points) * 3 + 5, rng.normal(size=(n_points, 3))], 1)
            np.savetxt(os.path.join(root, cls, sid + ".txt"), a, fmt="%.6f", delimiter=",")
    return root


def write_shapenet_normal(root, seed=0):
    rng = np.random.default_rng(seed)
    with open(os.path.join(root, "synsetoffset2category.txt"), "w") as f:
        f.write("Mug\t03797390\nAirplane\t02691156\n")
    os.makedirs(os.path.join(root, "train_test_split"))
    lists = {"train": [("02691156", "a1", 50), ("03797390", "m1", 30)], "val": [("03797390", "m2", 20)],
             "test": [("02691156", "a2", 10)]}
    for split, entries in lists.items():
        json.dump([f"shape_data/{s}/{n}" for s, n, _ in entries],
                  open(os.path.join(root, "train_test_split", f"shuffled_{split}_file_list.json"), "w"))
        for synset, name, n in entries:
            os.makedirs(os.path.join(root, synset), exist_ok=True)
            parts = SHAPENETPART_PARTS["Airplane" if synset == "02691156" else "Mug"]
            a = np.concatenate([_cloud(rng, n), rng.normal(size=(n, 3)), rng.choice(parts, (n, 1))], 1)
            np.savetxt(os.path.join(root, synset, name + ".txt"), a, fmt="%.6f")
    return root


# ---------------------------------------------------------------------------------------------------- loaders
def test_modelnet40_h5(tmp_path):
    root = write_modelnet40_h5(str(tmp_path / "m40"))
    ds = modelnet40_h5(root, "train", num_points=32)
    assert len(ds) == 6 and ds.classes == ["airplane", "bathtub", "bed"]
    item = ds[4]
    assert item["points"].shape == (32, 3) and item["points"].dtype == np.float32 and item["label"] == 1
    raw = h5py.File(os.path.join(root, "ply_data_train0.h5"))["data"][4, :32]
    np.testing.assert_array_equal(item["points"], raw)      # first num_points points, untouched
    assert len(build_dataset({"root": root, "num_points": 16}, "test")) == 4
    with pytest.raises(UserInputError, match="fewer than num_points"):
        modelnet40_h5(root, "train", num_points=128)


def test_modelnet_normal_first_and_fps(tmp_path):
    root = write_modelnet_normal(str(tmp_path))
    assert detect_format(root) == "modelnet_normal"
    ds = build_dataset({"root": root, "num_points": 16}, "train")
    assert [ds[i]["label"] for i in range(3)] == [0, 1, 0] and ds.classes == ["chair", "night_stand"]
    p = ds[1]["points"]
    assert p.shape == (16, 3) and np.allclose(p.mean(0), 0, atol=1e-5)
    assert np.isclose(np.linalg.norm(p, axis=1).max(), 1.0)
    fps = build_dataset({"root": root, "num_points": 16, "sample": "fps"}, "train")[1]["points"]
    assert fps.shape == (16, 3) and not np.allclose(fps, p)
    np.testing.assert_array_equal(fps, build_dataset({"root": root, "num_points": 16, "sample": "fps"}, "train")[1]
                                  ["points"])


def test_modelnet10_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = str(tmp_path / "modelnet10_1024.npz")
    labels = np.array(["chair", "bed", "chair", "toilet", "bed"])
    np.savez(path, points=rng.normal(size=(5, 20, 3)).astype(np.float16), label=labels,
             split=np.array(["test", "train", "train", "train", "test"]), center=np.zeros((5, 3), np.float32),
             scale=np.ones(5, np.float32), name=np.array([f"s_{i}.pcd" for i in range(5)]))
    ds = modelnet10_npz(path, "train", num_points=10)
    assert ds.classes == ["bed", "chair", "toilet"] and [ds[i]["label"] for i in range(3)] == [0, 1, 2]
    assert ds[0]["points"].dtype == np.float32 and ds[0]["points"].shape == (10, 3)
    assert detect_format(path) == "modelnet10_npz"


@pytest.mark.parametrize("with_json", [False, True])
def test_shapenetpart_h5(tmp_path, with_json):
    root = write_shapenetpart_h5(str(tmp_path / "spp"), with_json=with_json)
    ds = shapenetpart_h5(root, "trainval", num_points=64)
    if with_json:
        assert ds.part_map == [[0, 1], [2, 3, 4, 5]] and ds.num_parts == 6
    else:
        assert ds.part_map == [[4, 5], [8, 9, 10, 11]] and ds.num_parts == 50   # ShapeNetPart's id space
    assert len(ds) == 8
    for i in range(len(ds)):
        item = ds[i]
        assert set(np.unique(item["seg"])) <= set(ds.part_map[item["category"]])
    assert detect_format(root) == "shapenetpart_h5"


def test_shapenetpart_normal_sampling(tmp_path):
    root = write_shapenet_normal(str(tmp_path))
    ds = build_dataset({"root": root, "num_points": 32}, "trainval")
    assert ds.categories == ["Airplane", "Mug"] and len(ds) == 3 and ds.num_parts == 50
    a, b = ds[1], ds[1]
    np.testing.assert_array_equal(a["points"], b["points"])      # seeded per shape: deterministic
    assert a["points"].shape == (32, 3) and a["category"] == 1 and set(a["seg"]) <= {36, 37}
    assert np.isclose(np.linalg.norm(a["points"], axis=1).max(), 1.0)
    assert build_dataset({"root": root, "num_points": 32}, "test")[0]["points"].shape == (32, 3)  # 10 pts: replaced


def test_truncated_and_corrupted_h5(tmp_path):
    root = write_modelnet40_h5(str(tmp_path / "m40"))
    path = os.path.join(root, "ply_data_train0.h5")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(UserInputError, match="corrupted or truncated"):
        modelnet40_h5(root, "train")
    with open(path, "wb") as f:
        f.write(b"this is not an hdf5 file" * 100)
    with pytest.raises(UserInputError, match="corrupted or truncated"):
        read_h5(path, ["data"])


def test_wrong_shapes_and_missing_keys(tmp_path):
    root = write_shapenetpart_h5(str(tmp_path / "spp"))
    path = os.path.join(root, "ply_data_train0.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.zeros((4, 64), np.float32))
        f.create_dataset("label", data=np.zeros((4, 1), np.uint8))
        f.create_dataset("pid", data=np.zeros((4, 64), np.uint8))
    with pytest.raises(UserInputError, match="shape"):
        shapenetpart_h5(root, "train")
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.zeros((4, 64, 3), np.float32))
        f.create_dataset("label", data=np.zeros((4, 1), np.uint8))
        f.create_dataset("pid", data=np.zeros((4, 32), np.uint8))
    with pytest.raises(UserInputError, match="do not match"):
        shapenetpart_h5(root, "train")
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.zeros((4, 64, 3), np.float32))
    with pytest.raises(UserInputError, match="no dataset"):
        shapenetpart_h5(root, "train")
    with pytest.raises(UserInputError, match="not found"):
        build_dataset({"root": str(tmp_path / "nowhere")}, "train")


# ---------------------------------------------------------------------------------------------------- metrics
def test_classification_metrics():
    m = classification_metrics([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], num_classes=4)
    assert m["OA"] == pytest.approx(100 * 4 / 6)
    assert m["mAcc"] == pytest.approx(100 * (0.5 + 0.5 + 1.0) / 3)   # class 3 absent from targets: not counted


def test_shape_iou_convention():
    gt = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    # part 0: I=1, U=2 -> 0.5; part 1: I=2, U=3 -> 2/3; part 2 absent in both -> 1
    assert shape_iou(pred, gt, [0, 1, 2]) == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert shape_iou(pred, gt, [0, 1]) == pytest.approx((0.5 + 2 / 3) / 2)
    assert restricted_argmax(np.array([[5.0, 1, 2, 3], [0, 9, 1, 2]]), [2, 3]).tolist() == [3, 3]


def test_instance_vs_class_miou():
    part_map = [[0, 1], [2, 3]]
    pred = np.array([[0, 0], [0, 1], [0, 1], [2, 2]])
    gt = np.array([[0, 1], [0, 1], [0, 1], [2, 3]])
    # shape ious: (0.5 + 1 (part 1 absent in both? no: gt has 1) ...) computed by hand:
    # s0: part0 I1 U2 .5, part1 I0 U1 0 -> .25; s1, s2: 1; s3: part2 I1 U2 .5, part3 I0 U1 0 -> .25
    m = part_miou(pred, gt, [0, 0, 0, 1], part_map)
    assert m["instance_mIoU"] == pytest.approx(100 * (0.25 + 1 + 1 + 0.25) / 4)
    assert m["class_mIoU"] == pytest.approx(100 * ((0.25 + 1 + 1) / 3 + 0.25) / 2)
    meter = PartIoU(part_map, ["a", "b"])
    meter.add(np.array([0, 0]), np.array([0, 0]), 0)             # part 1 absent in both: IoU 1
    assert meter.summary(per_category=True) == {"instance_mIoU": 100.0, "class_mIoU": 100.0, "mIoU/a": 100.0}


# ------------------------------------------------------------------------------------------------ grouping ops
def test_fps_knn_grouping():
    torch.manual_seed(0)
    xyz = torch.randn(2, 50, 3)
    idx = farthest_point_sample(xyz, 10)
    assert idx.shape == (2, 10) and (idx[:, 0] == 0).all()
    assert all(len(set(row.tolist())) == 10 for row in idx)
    assert torch.equal(idx, farthest_point_sample(xyz.clone(), 10))
    # the second pick is the point farthest from point 0
    assert idx[0, 1] == ((xyz[0] - xyz[0, 0]) ** 2).sum(-1).argmax()
    nb = knn(xyz[:, :5], xyz, 4)
    assert nb.shape == (2, 5, 4) and torch.equal(nb[:, :, 0], torch.arange(5).expand(2, 5))
    neighborhood, centre = group_points(xyz, 10, 4)
    assert neighborhood.shape == (2, 10, 4, 3) and centre.shape == (2, 10, 3)
    assert torch.allclose(neighborhood[:, :, 0], torch.zeros(2, 10, 3))     # nearest to a centre is itself
    feat = torch.randn(2, 10, 5)
    assert torch.allclose(three_nn_interpolate(centre, centre, feat), feat, atol=1e-4)


# ---------------------------------------------------------------------------------------- models and key layout
OFFICIAL_CONV1D = ("encoder.first_conv.0.", "encoder.first_conv.3.", "encoder.second_conv.0.",
                   "encoder.second_conv.3.", "label_conv.0.", "propagation_0.mlp_convs.", "convs1.", "convs2.",
                   "convs3.")


def to_official(state, wrapper="base_model", prefix="module."):
    """A state dict as the official Point-MAE code saves it: 1x1 Conv1d weights, DataParallel prefix, wrapper."""
    out = {}
    for k, v in state.items():
        if k.endswith(".weight") and k.startswith(OFFICIAL_CONV1D):
            v = v[..., None]
        out[prefix + k] = v.clone()
    return {wrapper: out, "epoch": 300}


def test_official_classifier_layout_loads(tmp_path):
    ref = build_model(TINY_CLS).eval()
    keys = set(ref.state_dict())
    for k in ("cls_token", "cls_pos", "encoder.first_conv.0.weight", "encoder.second_conv.3.bias",
              "pos_embed.2.weight", "blocks.blocks.1.attn.qkv.weight", "blocks.blocks.1.attn.proj.bias",
              "blocks.blocks.0.mlp.fc2.weight", "norm.weight", "cls_head_finetune.0.weight",
              "cls_head_finetune.1.running_var", "cls_head_finetune.4.weight"):
        assert k in keys, k
    assert not any("qkv.bias" in k or "matmul" in k for k in keys)      # Point-MAE: qkv without bias
    official = to_official(ref.state_dict())
    assert official["base_model"]["module.encoder.first_conv.0.weight"].dim() == 3
    model = build_model(TINY_CLS).eval()
    model.load_state_dict(checkpoint_filter_fn(official))
    x = torch.randn(2, 64, 3)
    assert torch.equal(model(x), ref(x))
    # Through the task (file on disk, torch.load weights_only), with the 'model' wrapper.
    path = str(tmp_path / "ckpt.pth")
    torch.save(to_official(ref.state_dict(), wrapper="model"), path)
    from plugin.pointcloud.task import PointCloudClsTask
    cfg = {"task": "pointcloud_cls", "model": TINY_CLS,
           "data": {"root": write_modelnet40_h5(str(tmp_path / "m40")), "num_points": 64}}
    assert torch.equal(PointCloudClsTask(cfg, path).build_model()(x), ref(x))


def test_official_pretrain_and_segmentation_layouts():
    ref = build_model(TINY_SEG).eval()
    keys = set(ref.state_dict())
    for k in ("label_conv.0.weight", "label_conv.1.running_mean", "propagation_0.mlp_convs.1.weight",
              "propagation_0.mlp_bns.0.weight", "convs1.weight", "bns1.weight", "bns2.running_var", "convs3.bias"):
        assert k in keys, k
    model = build_model(TINY_SEG).eval()
    model.load_state_dict(checkpoint_filter_fn(to_official(ref.state_dict(), "model_state_dict")))
    x, c = torch.randn(2, 64, 3), torch.tensor([0, 1])
    assert torch.equal(model(x, c), ref(x, c))
    assert torch.equal(model(x, c), model(x, torch.nn.functional.one_hot(c, 2).float()))
    # Pre-training checkpoint: encoder under MAE_encoder., decoder parts dropped; with a model, head keys absent.
    pre = {f"MAE_encoder.{k}": v for k, v in ref.state_dict().items()
           if k.startswith(("encoder.", "pos_embed.", "blocks.", "norm."))}
    pre.update({"MAE_decoder.blocks.blocks.0.norm1.weight": torch.ones(16), "mask_token": torch.zeros(1, 1, 16),
                "increase_dim.0.weight": torch.zeros(8, 16, 1)})
    filtered = checkpoint_filter_fn({"base_model": pre}, model)
    assert set(filtered) == {k for k in keys if k.startswith(("encoder.", "pos_embed.", "blocks.", "norm."))}


def test_models_registered_in_mmengine():
    registry = pytest.importorskip("mmengine.registry")
    import plugin.pointcloud  # noqa: F401
    assert isinstance(registry.MODELS.build(dict(TINY_CLS)), PointMAECls)
    assert isinstance(registry.MODELS.build(dict(TINY_SEG)), PointMAEPartSeg)


# ------------------------------------------------------------------------------------------------ quantization
def _adapter():
    import plugin.pointcloud.adapter as ad
    return ad.PointMAEAdapter()


def test_adapter_roles():
    from plugin.adapters.base import find_adapter
    from plugin.quant import Role
    model = build_model(TINY_SEG)
    adapter = _adapter()
    assert isinstance(find_adapter(model), type(adapter))
    roles = adapter.roles(model)
    assert roles["encoder.first_conv.0"] == Role.PATCH_EMBED and roles["pos_embed.0"] == Role.PATCH_EMBED
    assert roles["encoder.second_conv.3"] == Role.OTHER
    assert roles["blocks.blocks.1.attn.qkv"] == Role.QKV and roles["blocks.blocks.1.attn.matmul_av"] == Role.MATMUL_AV
    assert roles["convs3"] == Role.HEAD and roles["propagation_0.mlp_convs.0"] == Role.HEAD
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears <= set(roles)                                   # every Linear is quantized
    assert adapter.blocks(model) == ["blocks.blocks.0", "blocks.blocks.1"]
    assert ("blocks.blocks.0.norm2", ["blocks.blocks.0.mlp.fc1"]) in adapter.norm_consumers(model)


@pytest.mark.parametrize("cfg", [TINY_CLS, TINY_SEG], ids=["cls", "partseg"])
def test_repq_w4a4_quantizes_tiny_models(cfg):
    from plugin.quant import CalibData, get_recipe, quantize, set_quant_enabled
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    seg = cfg["type"] == "PointMAEPartSeg"
    x, c = torch.randn(4, 64, 3), torch.tensor([0, 1, 1, 0])
    run = (lambda m, b: m(b[0], b[1])) if seg else (lambda m, b: m(b[0]))
    ref = run(model, (x, c))
    quantize(model, get_recipe("repq", w_bits=4, a_bits=4), CalibData([(x[:2], c[:2]), (x[2:], c[2:])], run),
             log=lambda *_: None)
    out = run(model, (x, c))
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    set_quant_enabled(model, False)
    assert torch.allclose(run(model, (x, c)), ref, atol=1e-5)     # quantizers off: the float function again


@pytest.mark.parametrize("method", ["dopq", "isvit", "aiqvit", "aphq", "fimaq", "relu_fisher"])
@pytest.mark.parametrize("cfg", [TINY_CLS, TINY_SEG], ids=["cls", "partseg"])
def test_seed_recipes_run_unchanged(cfg, method):
    """The seed and frontier methods' recipes (reconstruction passes included, a few steps) quantize both point-cloud
    models."""
    from plugin.quant import CalibData, get_recipe, quantize
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    seg = cfg["type"] == "PointMAEPartSeg"
    x, c = torch.randn(4, 64, 3), torch.tensor([0, 1, 1, 0])
    run = (lambda m, b: m(b[0], b[1])) if seg else (lambda m, b: m(b[0]))
    recipe = get_recipe(method, w_bits=4, a_bits=4)
    recipe.passes = [dict(p, iters=2, batch_size=2) if "iters" in p else p for p in recipe.passes]
    quantize(model, recipe, CalibData([(x[:2], c[:2]), (x[2:], c[2:])], run), log=lambda *_: None)
    assert torch.isfinite(run(model, (x, c))).all()


# ------------------------------------------------------------------------------------------------- end to end
def _write_config(path, task, model, root, num_points):
    with open(path, "w") as f:
        f.write(f"task = {task!r}\nmodel = {model!r}\n"
                f"data = dict(root={root!r}, num_points={num_points})\n"
                f"calib = dict(num=4, batch_size=2)\neval = dict(batch_size=4)\n")
    return path


def _save_tiny(cfg, path):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in build_model(cfg).state_dict().items()}, path)
    return path


def _tiny_run_files(tmp_path, kind):
    """(config, checkpoint, task name) of a tiny random-init model of `kind` ("cls" or "partseg") on a tiny h5 set."""
    if kind == "cls":
        root, model, task = write_modelnet40_h5(str(tmp_path / "m40")), TINY_CLS, "pointcloud_cls"
    else:
        root, model, task = (write_shapenetpart_h5(str(tmp_path / "spp"), with_json=True), TINY_SEG,
                             "pointcloud_partseg")
    cfg = _write_config(str(tmp_path / "cfg.py"), task, model, root, 64)
    return cfg, _save_tiny(model, str(tmp_path / "tiny.safetensors")), task


@pytest.mark.parametrize("kind", ["cls", "partseg"])
def test_ptq_test_cli_end_to_end(tmp_path, kind):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    ptq_test = pytest.importorskip("ptq_test", reason="tools/ptq_test.py does not exist yet")
    cfg, ckpt, task = _tiny_run_files(tmp_path, kind)
    out = tmp_path / "out"
    code = ptq_test.main([cfg, ckpt, "--bits", "4", "--method", "repq", "--out", str(out), "--quiet",
                          "--device", "cpu"])
    assert code == 0
    report = json.load(open(out / "report.json"))
    metric = "OA" if kind == "cls" else "instance_mIoU"
    assert report["primary_metric"] == metric and report["task"] == task
    assert 0 <= report["fp"][metric] <= 100 and 0 <= report["results"][0]["metrics"][metric] <= 100
    assert report["results"][0]["calib_num"] == 4
    assert f"{report['fp'][metric]:.2f}" in open(out / "report.md").read()
    agreement = report["results"][0]["agreement"]  # with the float model, shape by shape (point by point)
    share, change = ("oa_agreement", "OA_change") if kind == "cls" else ("point_agreement", "instance_mIoU_change")
    assert 0 <= agreement[share] <= 100
    assert agreement[change]["diff"] == pytest.approx(report["results"][0]["metrics"][metric] - report["fp"][metric],
                                                      abs=1e-6)


@pytest.mark.parametrize("kind", ["cls", "partseg"])
def test_pc_predict_tool(tmp_path, kind, capsys):
    """tools/pc_predict.py on shape 0 of the test split: the top classes (cls), or the rendered parts and the shape
    mIoU (partseg, matplotlib); a bad index or category is one line and exit code 2."""
    pytest.importorskip("matplotlib")
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import pc_predict
    cfg, ckpt, task = _tiny_run_files(tmp_path, kind)
    out = tmp_path / "pred.png"
    assert pc_predict.main([cfg, ckpt, "--index", "0", "--out", str(out), "--backend", "matplotlib"]) == 0
    printed = capsys.readouterr().out
    if kind == "cls":
        assert "ground truth:" in printed and 1 <= printed.count("%") <= 5 and not out.exists()
    else:
        assert "shape mIoU" in printed and out.exists()
    assert pc_predict.main([cfg, ckpt, "--index", "999", "--out", str(out)]) == 2
    assert "outside the test split" in capsys.readouterr().err


def test_task_calibration_from_train_split_and_deterministic_eval(tmp_path):
    from plugin.pointcloud.task import PointCloudPartSegTask
    root = write_shapenetpart_h5(str(tmp_path / "spp"), per_split=(6, 2, 3), with_json=True)
    cfg = {"task": "pointcloud_partseg", "model": TINY_SEG, "data": {"root": root, "num_points": 64},
           "calib": {"num": 5, "batch_size": 2}}
    task = PointCloudPartSegTask(cfg, _save_tiny(TINY_SEG, str(tmp_path / "t.safetensors")))
    model = task.build_model()
    calib = task.calib_data(model, 5, seed=0)  # the config's calib.num is applied by tools/ptq_test.py
    assert [b["points"].shape[0] for b in calib.batches] == [2, 2, 1]
    train_pts = task.dataset("train").points
    for b in calib.batches:                                        # every calibration shape is a training shape
        for p in b["points"].numpy():
            assert any(np.array_equal(p, t) for t in train_pts)
    assert task.evaluate(model, False) == task.evaluate(model, False)
    bad = dict(cfg, model=dict(TINY_SEG, num_parts=7))
    with pytest.raises(UserInputError):
        PointCloudPartSegTask(bad, None).build_model()


def test_train_script_without_mmengine_or_open3d(tmp_path):
    root = write_modelnet40_h5(str(tmp_path / "m40"), per_split=(8, 4))
    cfg = _write_config(str(tmp_path / "cfg.py"), "pointcloud_cls", dict(TINY_CLS), root, 64)
    with open(cfg, "a") as f:
        f.write("train = dict(epochs=2, batch_size=4, warmup_epochs=1)\n")
    block = "import sys; sys.modules['mmengine'] = None; sys.modules['open3d'] = None; sys.modules['timm'] = None; "
    script = os.path.join(REPO, "tools/train_pc.py")
    run = ("import runpy; sys.argv = ['train_pc.py', %r, '--out', %r, '--workers', '0', '--fp16']; "
           "runpy.run_path(%r, run_name='__main__')" % (cfg, str(tmp_path / "run"), script))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", block + run], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.load(open(tmp_path / "run" / "metrics.json"))
    assert metrics["complete"] and metrics["epochs_done"] == 2 and "train_pc.py" in metrics["command"]
    assert set(metrics["final"]) >= {"OA", "mAcc"}
    from safetensors.torch import load_file
    half = load_file(str(tmp_path / "run" / "model_fp16.safetensors"))
    assert half["blocks.blocks.0.attn.qkv.weight"].dtype == torch.float16
    model = build_model(TINY_CLS)
    model.load_state_dict(load_file(str(tmp_path / "run" / "model.safetensors")))


# --------------------------------------------------------------------------------------------- open3d features
@pytest.mark.skipif(not HAVE_O3D, reason="open3d is not installed")
def test_synthetic_generator(tmp_path):
    from plugin.pointcloud.synthetic import CATEGORIES, generate
    n_parts = generate(str(tmp_path / "syn"), {"train": 2, "test": 1}, num_points=128, seed=3)
    ds = shapenetpart_h5(str(tmp_path / "syn"), "train", num_points=128)
    assert len(ds) == 2 * len(CATEGORIES) and ds.num_parts == n_parts and len(ds.categories) == len(CATEGORIES)
    for i in range(len(ds)):
        item = ds[i]
        assert set(np.unique(item["seg"])) <= set(ds.part_map[item["category"]])
        assert np.linalg.norm(item["points"], axis=1).max() == pytest.approx(1.0, abs=1e-5)
    assert "SYNTHETIC" in open(tmp_path / "syn" / "README.txt").read()
    generate(str(tmp_path / "again"), {"train": 2, "test": 1}, num_points=128, seed=3)
    a, b = (h5py.File(tmp_path / d / "ply_data_train0.h5")["data"][()] for d in ("syn", "again"))
    np.testing.assert_array_equal(a, b)                              # deterministic for a seed


@pytest.mark.skipif(not HAVE_O3D, reason="open3d is not installed")
def test_read_points_from_files(tmp_path):
    import open3d as o3d
    from plugin.pointcloud.open3d_io import read_points
    mesh = o3d.geometry.TriangleMesh.create_box(1.0, 2.0, 3.0)
    o3d.io.write_triangle_mesh(str(tmp_path / "box.off"), mesh)
    o3d.io.write_triangle_mesh(str(tmp_path / "box.ply"), mesh)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.random.default_rng(0).normal(size=(500, 3))))
    o3d.io.write_point_cloud(str(tmp_path / "cloud.pcd"), cloud)
    for name in ("box.off", "box.ply", "cloud.pcd"):
        p = read_points(str(tmp_path / name), 256)
        assert p.shape == (256, 3) and np.linalg.norm(p, axis=1).max() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_array_equal(p, read_points(str(tmp_path / name), 256))
    (tmp_path / "empty.pcd").write_text("garbage")
    with pytest.raises(UserInputError):
        read_points(str(tmp_path / "empty.pcd"))


def test_render_parts_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    from plugin.pointcloud.open3d_io import render_parts
    pts = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    lab = (pts[:, 1] > 0).astype(int)
    out = str(tmp_path / "parts.png")
    assert render_parts([pts, pts], [lab, 1 - lab], out, titles=["a", "b"], size=(120, 100),
                        backend="matplotlib") == "matplotlib"
    assert Image.open(out).size == (240, 100)


def test_calibration_size_beyond_the_split_is_refused_not_clamped(tmp_path):
    from plugin.errors import UserInputError
    from plugin.pointcloud.task import PointCloudPartSegTask
    root = write_shapenetpart_h5(str(tmp_path / "spp"), per_split=(6, 2, 3), with_json=True)
    cfg = {"task": "pointcloud_partseg", "model": TINY_SEG, "data": {"root": root, "num_points": 64}}
    task = PointCloudPartSegTask(cfg, _save_tiny(TINY_SEG, str(tmp_path / "t.safetensors")))
    model = task.build_model()
    assert task.calib_available(model) == 6
    with pytest.raises(UserInputError, match="between 1 and 6"):
        task.calib_data(model, 100, seed=0)
