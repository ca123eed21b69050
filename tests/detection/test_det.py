"""MMDetection plugin: QuantSwin, the mmcv-lite ops, the mmdet Swin adapter and the detection task (CPU, tiny data).

A tiny COCO-format set is written in the real format (JPEG files, polygon masks, one crowd RLE) and a tiny Swin
Mask R-CNN config is built on mmdet's own Swin config. Skipped as a whole when mmdet is not installed.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mmdet", reason="MMDetection is not installed (pip install -e '.[det]')")
pytest.importorskip("pycocotools", reason="pycocotools is not installed (pip install -e '.[det]')")

import plugin.detection  # noqa: E402

if not plugin.detection.HAS_MMDET:
    pytest.skip(f"MMDetection is not usable: {plugin.detection.MMDET_ERROR}", allow_module_level=True)

import plugin.adapters.mmdet_swin  # noqa: E402,F401
import plugin.detection.task  # noqa: E402,F401

from repo_paths import REPO  # noqa: E402
sys.path.insert(0, os.path.join(REPO, "tools"))
import ptq_test  # noqa: E402
H, W = 96, 128


def _polygon_image(rng, shapes):
    """A noisy background with filled polygons; returns the image and the polygons (flat x, y lists)."""
    from PIL import Image, ImageDraw
    img = Image.fromarray(rng.integers(0, 60, (H, W, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(img)
    polys = []
    for x0, y0, w, h, color in shapes:
        pts = [(x0, y0), (x0 + w, y0 + h // 4), (x0 + w * 3 // 4, y0 + h), (x0, y0 + h * 3 // 4)]
        draw.polygon(pts, fill=color)
        polys.append([float(c) for p in pts for c in p])
    return img, polys


def _crowd_rle(x0, y0, w, h):
    """Uncompressed COCO RLE (column-major run lengths, starting with zeros) of a filled rectangle."""
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[y0:y0 + h, x0:x0 + w] = 1
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"counts": counts, "size": [H, W]}


def _write_split(root, name, first_id, n_images, rng, crowd):
    from pycocotools import mask as mask_utils
    images, anns = [], []
    for i in range(n_images):
        img_id = first_id + i
        shapes = [(8 + 10 * i, 10, 40, 44, (220, 40, 40)), (70, 30 + 5 * i, 36, 40, (40, 200, 60))]
        img, polys = _polygon_image(rng, shapes)
        file_name = f"{img_id:012d}.jpg"
        img.save(os.path.join(root, "images", file_name), quality=90)
        images.append({"id": img_id, "file_name": file_name, "height": H, "width": W, "license": 1})
        for poly, (cat, _) in zip(polys, ((1, 0), (2, 0))):
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], H, W))
            x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
            anns.append({"id": len(anns) + 1 + first_id * 10, "image_id": img_id, "category_id": cat,
                         "segmentation": [poly], "area": float(mask_utils.area(rle)), "bbox": [x, y, w, h],
                         "iscrowd": 0})
    if crowd:  # one crowd region in the first image, as COCO stores crowds: iscrowd=1 with an uncompressed RLE
        rle = _crowd_rle(100, 70, 24, 20)
        compressed = mask_utils.frPyObjects(rle, H, W)
        anns.append({"id": 9999 + first_id, "image_id": first_id, "category_id": 1, "segmentation": rle,
                     "area": float(mask_utils.area(compressed)),
                     "bbox": [float(v) for v in mask_utils.toBbox(compressed)], "iscrowd": 1})
    data = {"info": {"description": "tiny test set"}, "licenses": [{"id": 1, "name": "test", "url": ""}],
            "images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "red", "supercategory": "shape"},
                           {"id": 2, "name": "green", "supercategory": "shape"}]}
    with open(os.path.join(root, f"instances_{name}.json"), "w") as f:
        json.dump(data, f)


TINY_CONFIG = """
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['plugin.detection'], allow_failed_imports=False)
task = 'detection'
data_root = {root!r}
metainfo = dict(classes=('red', 'green'))
model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(type='QuantSwin', embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=4,
                  drop_path_rate=0.0, init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=32, num_classes=2),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(num_convs=1, in_channels=32, conv_out_channels=32, num_classes=2)),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=50),
                  rcnn=dict(score_thr=0.0, max_per_img=10)))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False, dataset=dict(
    data_root=data_root, metainfo=metainfo, ann_file='instances_train.json', data_prefix=dict(img='images/'),
    filter_cfg=dict(filter_empty_gt=True, min_size=8)))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False, dataset=dict(
    data_root=data_root, metainfo=metainfo, ann_file='instances_val.json', data_prefix=dict(img='images/'),
    pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + '/instances_val.json')
test_evaluator = val_evaluator
default_hooks = dict(logger=dict(interval=1))
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config path, float checkpoint path, work dir) of a random-init tiny Swin Mask R-CNN on a tiny COCO set."""
    root = tmp_path_factory.mktemp("tiny_coco")
    os.makedirs(root / "images")
    rng = np.random.default_rng(0)
    _write_split(str(root), "train", 1, 3, rng, crowd=True)
    _write_split(str(root), "val", 100, 2, rng, crowd=True)
    cfg_path = root / "tiny_mask_rcnn_quantswin.py"
    cfg_path.write_text(TINY_CONFIG.format(root=str(root)))
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    cfg = Config.fromfile(str(cfg_path))
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope("mmdet"):
        model = MODELS.build(cfg.model)
    ckpt = root / "tiny.pth"
    torch.save({"meta": {"mmdet_version": "3.3.0", "dataset_meta": {"classes": ["red", "green"]}},
                "state_dict": model.state_dict()}, str(ckpt))
    return str(cfg_path), str(ckpt), str(root / "work_dir")


TRAIN_CONFIG = """
_base_ = ['tiny_mask_rcnn_quantswin.py']
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
train_cfg = dict(max_epochs=3, val_interval=100)
default_hooks = dict(checkpoint=dict(interval=100))
find_unused_parameters = True  # a tiny detector on three images leaves some heads without a loss in a step
"""


def test_train_det_two_processes(tiny, tmp_path):
    """tools/train_det.py as its multi-GPU command runs it (torchrun, --launcher pytorch), here two CPU processes
    over gloo: DDP training of the tiny detector, --max-time stopping every rank after the same epoch (rank 0
    decides), and final weights that load with weights_only=True into the same architecture."""
    cfg_path, _, _ = tiny
    train_cfg = os.path.join(os.path.dirname(cfg_path), "tiny_train.py")
    with open(train_cfg, "w") as f:
        f.write(TRAIN_CONFIG)
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(REPO, "tools", "train_det.py"), train_cfg, "--launcher", "pytorch", "--work-dir", str(work),
           "--max-time", "0.01"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=540, cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = torch.load(str(work / "model_final.pth"), weights_only=True)
    assert saved["meta"]["epoch"] == 1  # stopped after the first of three epochs, on both ranks
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope("mmdet"):
        model = MODELS.build(Config.fromfile(cfg_path).model)
    model.load_state_dict(saved["state_dict"], strict=True)  # raises on any missing or unexpected key
    from safetensors import safe_open
    with safe_open(str(work / "model_final.safetensors"), "pt") as f:  # the same tensors, without pickle
        assert json.loads(f.metadata()["meta"]) == saved["meta"]
        assert sorted(f.keys()) == sorted(saved["state_dict"])
        assert all(torch.equal(f.get_tensor(k), v) for k, v in saved["state_dict"].items())
    assert "stopping after epoch 1 of 3" in proc.stdout + proc.stderr


def test_train_det_console_is_quiet_and_work_dir_explicit(tiny, tmp_path, monkeypatch, capfd):
    """One process, the default console: a progress line per epoch and the validation line, no mmengine INFO lines
    or pycocotools tables (those go to the log file in the work dir); no ./work_dirs made in the current folder, and
    without --work-dir (and no work_dir in the config) one error line, exit 2."""
    if os.path.join(REPO, "tools") not in sys.path:
        sys.path.insert(0, os.path.join(REPO, "tools"))
    import train_det
    cfg_path, _, _ = tiny
    train_cfg = os.path.join(os.path.dirname(cfg_path), "tiny_train.py")
    with open(train_cfg, "w") as f:
        f.write(TRAIN_CONFIG)
    monkeypatch.chdir(tmp_path)
    assert train_det.main([train_cfg]) == 2
    err = capfd.readouterr().err
    assert "--work-dir" in err and len([ln for ln in err.splitlines() if "error:" in ln]) == 1
    work = tmp_path / "work"
    assert train_det.main([train_cfg, "--work-dir", str(work), "--cfg-options", "train_cfg.max_epochs=1",
                           "train_cfg.val_interval=1"]) == 0
    out = capfd.readouterr().out
    assert "epoch 1/1  loss " in out and "validation after epoch 1: bbox_mAP " in out, out
    assert "mmengine - INFO" not in out and "Average Precision" not in out, out
    assert sorted(os.listdir(tmp_path)) == ["work"]
    logs = [os.path.join(d, f) for d, _, fs in os.walk(work) for f in fs if f.endswith(".log")]
    assert logs and "Epoch(train)" in open(logs[0]).read()


def test_cpu_first_run_chain(tmp_path, monkeypatch, capfd):
    """The commands of docs/detection.md "A first run on a CPU" on a stand-in COCO root: make_coco_subset (one
    category, images shrunk) -> train_det with the shipped micro config (one epoch here) -> ptq_test on its
    model_final.safetensors (float only: a one-epoch detector may detect nothing to calibrate the heads on)."""
    import make_coco_subset
    import train_det
    root = tmp_path / "coco"
    os.makedirs(root / "images")
    rng = np.random.default_rng(0)
    _write_split(str(root), "train", 1, 4, rng, crowd=True)
    _write_split(str(root), "val", 100, 2, rng, crowd=False)
    for split in ("train", "val"):  # the config's one class is 'person'
        data = json.loads((root / f"instances_{split}.json").read_text())
        data["categories"][0]["name"] = "person"
        (root / f"instances_{split}.json").write_text(json.dumps(data))
    sub = tmp_path / "subset"
    assert make_coco_subset.main([str(root), str(sub), "--train-num", "4", "--val-num", "2", "--category", "person",
                                  "--max-side", "96"]) == 0
    monkeypatch.setenv("COCO_SUBSET_ROOT", str(sub) + "/")
    monkeypatch.chdir(tmp_path)
    config = os.path.join(REPO, "configs/detection/mask-rcnn_quantswin-micro-p4-w7_fpn_coco-person-cpu.py")
    assert train_det.main([config, "--work-dir", str(tmp_path / "det"), "--cfg-options", "train_cfg.max_epochs=1",
                           "train_cfg.val_interval=1"]) == 0
    assert "epoch 1/1" in capfd.readouterr().out
    assert ptq_test.main([config, str(tmp_path / "det" / "model_final.safetensors"), "--fp-only", "--out",
                          str(tmp_path / "ptq"), "--quiet"]) == 0
    report = json.loads((tmp_path / "ptq" / "report.json").read_text())
    assert report["fp"]["num_images"] == 2 and "bbox_mAP" in report["fp"]
    assert sorted(os.listdir(tmp_path)) == ["coco", "det", "ptq", "subset"]  # no ./work_dirs


def test_train_det_fit_schedule_scales_epochs_and_lr_steps():
    """--fit-schedule's fit_schedule on real mmengine schedulers: 36 epochs cut to 12 move the MultiStepLR steps from
    27 and 33 to 9 and 11 and its end to 12; the iteration-based warmup is left alone; the lr then decays at 9."""
    import types
    from mmengine.optim import LinearLR, MultiStepLR
    import train_det
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    warmup = LinearLR(opt, start_factor=0.5, by_epoch=False, begin=0, end=100)
    steps = MultiStepLR(opt, milestones=[27, 33], gamma=0.1, by_epoch=True, begin=0, end=36)
    loop = types.SimpleNamespace(_max_epochs=36, _max_iters=36 * 22, dataloader=[None] * 22)
    runner = types.SimpleNamespace(train_loop=loop, max_epochs=36, param_schedulers=[warmup, steps])
    train_det.fit_schedule(runner, 12)
    assert (loop._max_epochs, loop._max_iters) == (12, 12 * 22)
    assert sorted(steps.milestones) == [9, 11] and steps.end == 12 and warmup.end == 100
    opt.param_groups[0]["lr"] = 1.0
    for _ in range(9):
        steps.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.fixture(scope="module")
def task_and_model(tiny):
    from plugin.config import load_config
    from plugin.detection.task import DetectionTask
    cfg_path, ckpt, work_dir = tiny
    task = DetectionTask(load_config(cfg_path), ckpt, device="cpu", work_dir=work_dir)
    return task, task.build_model()


@pytest.mark.parametrize("verbose", [False, True])
def test_mmengine_quiet_unless_verbose_and_no_work_dirs_in_the_working_folder(tiny, tmp_path, monkeypatch, capfd,
                                                                              verbose):
    import logging

    from plugin.config import load_config
    from plugin.detection.task import DetectionTask
    cfg_path, ckpt, _ = tiny
    monkeypatch.chdir(tmp_path)
    logger = logging.getLogger("plugin")
    old = logger.level
    logger.setLevel(logging.INFO if verbose else old)  # what tools/ptq_test.py --verbose sets
    try:
        task = DetectionTask(load_config(cfg_path), ckpt, device="cpu")
        model = task.build_model()
        capfd.readouterr()
        task.evaluate(model, progress=True)
        out = capfd.readouterr()
    finally:
        logger.setLevel(old)
    lines = (out.out + out.err).strip().splitlines()
    assert (len(lines) > 10) if verbose else (lines == []), lines  # runner log and pycocotools tables
    assert os.listdir(tmp_path) == []  # the runner's work dir is a temporary folder, not ./work_dirs


def test_registry_holds_quantswin():
    from mmdet.models.backbones import SwinTransformer
    from mmdet.registry import MODELS
    assert MODELS.get("QuantSwin") is plugin.detection.QuantSwin
    assert issubclass(plugin.detection.QuantSwin, SwinTransformer)


def test_swin_state_dict_loads_into_quantswin():
    from mmdet.models.backbones import SwinTransformer
    kw = dict(embed_dims=16, depths=[2, 2], num_heads=[1, 2], out_indices=(0, 1), strides=(4, 2), window_size=4)
    torch.manual_seed(0)
    ref, q = SwinTransformer(**kw), plugin.detection.QuantSwin(**kw)
    ref.eval(), q.eval()  # (mmdet's Swin.train() returns None, so no chaining)
    result = q.load_state_dict(ref.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(q.state_dict()) == set(ref.state_dict())
    x = torch.randn(1, 3, 36, 52)  # not a multiple of the window: exercises padding and shifted-window masks
    with torch.no_grad():
        for a, b in zip(ref(x), q(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_original_swin_checkpoint_layout_is_converted():
    from mmdet.models.backbones import SwinTransformer
    kw = dict(embed_dims=16, depths=[2, 2], num_heads=[1, 2], out_indices=(0, 1), strides=(4, 2), window_size=4)
    model = SwinTransformer(**kw)
    own = {"backbone." + k: v for k, v in model.state_dict().items()}
    # Rename mmdet 3.x keys into the authors' layout (the inverse of mmdet's swin_converter, for the keys it renames).
    orig = {}
    for k, v in own.items():
        k2 = k.replace("backbone.stages.", "backbone.layers.").replace("attn.w_msa.", "attn.")
        k2 = k2.replace("ffn.layers.0.0.", "mlp.fc1.").replace("ffn.layers.1.", "mlp.fc2.")
        k2 = k2.replace("patch_embed.projection", "patch_embed.proj")
        orig[k2] = v
    orig["neck.lateral_convs.0.conv.weight"] = torch.zeros(1)
    assert plugin.detection.is_original_swin_layout(orig)
    out = plugin.detection.convert_original_swin_checkpoint(orig)
    backbone_keys = {k for k in out if k.startswith("backbone.")}
    assert backbone_keys == {k for k in own if not k.endswith("relative_position_index")}
    assert "neck.lateral_convs.0.conv.weight" in out


def test_torchvision_ops_serve_mmcv():
    import mmcv.ops
    from plugin.detection.mmcv_ops import nms as shim_nms
    if not plugin.detection.using_torchvision_ops():
        pytest.skip("a compiled mmcv is installed; its own ops are used")
    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(40, 4, generator=g) * 40
    boxes[:, 2:] += boxes[:, :2] + 1
    scores = torch.rand(40, generator=g)
    for offset in (0, 1):  # a direct greedy NMS with mmcv's box-width convention as the reference
        area = (boxes[:, 2] - boxes[:, 0] + offset) * (boxes[:, 3] - boxes[:, 1] + offset)
        keep, order = [], scores.argsort(descending=True).tolist()
        while order:
            i = order.pop(0)
            keep.append(i)
            lt = torch.maximum(boxes[i, :2], boxes[order, :2])
            rb = torch.minimum(boxes[i, 2:], boxes[order, 2:])
            inter = (rb - lt + offset).clamp(min=0).prod(1)
            iou = inter / (area[i] + area[order] - inter)
            order = [j for j, o in zip(order, iou.tolist()) if o <= 0.5]
        assert shim_nms(boxes, scores, 0.5, offset).tolist() == keep
    dets, inds = mmcv.ops.batched_nms(boxes, scores, torch.arange(40) % 2, dict(type="nms", iou_threshold=0.5))
    assert len(inds) == len(dets) > 0
    feats = torch.randn(2, 3, 16, 16, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 2.0, 20.0, 24.0], [1, 0.0, 0.0, 31.0, 31.0]])
    out = mmcv.ops.RoIAlign((7, 7), 0.5, 2, aligned=True)(feats, rois)
    out.square().sum().backward()
    feats_ref = feats.detach().clone().requires_grad_(True)
    from torchvision.ops import roi_align
    ref = roi_align(feats_ref, rois, (7, 7), 0.5, 2, True)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(feats.grad, feats_ref.grad)
    with pytest.raises(NotImplementedError, match="nms_rotated"):
        mmcv.ops.nms_rotated(torch.rand(3, 5), torch.rand(3), 0.5)


def test_unsafe_checkpoint_refused(tiny, tmp_path):
    from plugin.config import load_config
    from plugin.errors import UserInputError
    from plugin.detection.task import DetectionTask
    cfg_path, ckpt, _ = tiny
    state = torch.load(ckpt, weights_only=True)
    state["meta"]["hook"] = np.random.RandomState(0)  # a pickled object, as mmengine training checkpoints carry
    bad = tmp_path / "pickled.pth"
    torch.save(state, str(bad))
    task = DetectionTask(load_config(cfg_path), str(bad), work_dir=str(tmp_path / "wd"))
    with pytest.raises(UserInputError, match="--unsafe-load"):
        task.build_model()


def test_float_detector_bbox_and_segm_map(task_and_model):
    task, model = task_and_model
    metrics = task.evaluate(model, progress=False)
    for kind in ("bbox", "segm"):
        for suffix in ("", "_50", "_75", "_s", "_m", "_l"):
            value = metrics[f"{kind}_mAP{suffix}"]
            assert isinstance(value, float) and (value == -1.0 or 0.0 <= value <= 100.0)
    assert metrics["num_images"] == 2


def test_calib_data_from_train_split(task_and_model):
    task, model = task_and_model
    calib = task.calib_data(model, 2, seed=0)
    assert len(calib.batches) == 2
    train_ids = {1, 2, 3}
    for batch in calib.batches:
        assert batch["data_samples"][0].img_id in train_ids
    with torch.no_grad():
        calib.forward(model, calib.batches[0])
    assert "pred_instances" not in calib.batches[0]["data_samples"][0]


def test_adapter_roles_cover_backbone(task_and_model):
    import copy

    import torch.nn as nn
    from mmdet.models.backbones.swin import WindowMSA

    from plugin.adapters.base import find_adapter
    from plugin.quant.spec import Role
    task, model = task_and_model
    model = copy.deepcopy(model)
    adapter = find_adapter(model)
    assert adapter.name == "mmdet_swin"
    calib = task.calib_data(model, 1, seed=0)
    with torch.no_grad():
        before = model.test_step(calib.batches[0])[0].pred_instances.bboxes.clone()
    adapter.prepare(model)
    adapter.prepare(model)  # idempotent
    with torch.no_grad():  # explicit matmuls, float: the same detections
        after = model.test_step(calib.batches[0])[0].pred_instances.bboxes
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    roles = adapter.roles(model)
    for name, m in model.backbone.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            assert "backbone." + name in roles, name
        if isinstance(m, WindowMSA):
            assert roles["backbone." + name + ".matmul_qk"] == Role.MATMUL_QK
            assert roles["backbone." + name + ".matmul_av"] == Role.MATMUL_AV
    counts = {r: sum(1 for v in roles.values() if v == r) for r in Role}
    assert counts[Role.PATCH_EMBED] == 1 and counts[Role.QKV] == counts[Role.FC1] == counts[Role.FC2] == 8
    heads = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
             and not n.startswith("backbone.")]
    assert heads and all(roles[n] == Role.OTHER for n in heads)
    for norm, consumers in adapter.norm_consumers(model):
        assert isinstance(model.get_submodule(norm), nn.LayerNorm)
        assert all(isinstance(model.get_submodule(c), nn.Linear) for c in consumers)
    assert len(adapter.norm_consumers(model)) == 2 * 8 + 3
    assert adapter.blocks(model) == [f"backbone.stages.{i}.blocks.{j}" for i in range(4) for j in range(2)]
    assert adapter.model_dependent_inputs(model) == ["roi_head"]  # RoI heads see the model's own proposals
    from plugin.quant.overrides import find_override
    from plugin.detection.task import DetectionTask
    overrides = DetectionTask.recipe_overrides({"keep_heads_float": True})
    kept_float = {n for n, r in adapter.roles(model).items() if find_override(overrides, n, r) == (True, None)}
    assert kept_float == {n for n in adapter.roles(model) if not n.startswith("backbone.")}


@pytest.mark.parametrize("method", ["repq", "isvit"])
def test_plan_on_the_detector_matches_the_pre_plan_rules(task_and_model, method):
    """The resolved plan (plugin.quant.plan) of the Swin Mask R-CNN, with the task's keep_heads_float rules first:
    the answers of the per-site rules attach used before the plan (tests/plan_oracle.py)."""
    import copy
    from plan_oracle import assert_plan_matches_legacy_rules
    from plugin.adapters.base import find_adapter
    from plugin.detection.task import DetectionTask
    from plugin.quant import get_recipe
    from plugin.quant.plan import resolve_plan
    model = copy.deepcopy(task_and_model[1])
    adapter = find_adapter(model)
    adapter.prepare(model)
    recipe = get_recipe(method, 4, 4, overrides=DetectionTask.recipe_overrides({"keep_heads_float": True}))
    plan = resolve_plan(model, recipe, adapter)
    assert_plan_matches_legacy_rules(plan, model, recipe, adapter)
    assert {n for n, s in plan.sites.items() if s.specs is None} == {n for n in plan.sites
                                                                     if not n.startswith("backbone.")}


def test_repq_w4a4_quantized_detector(task_and_model):
    import copy

    from plugin.quant import get_recipe, quantize
    task, fp_model = task_and_model
    model = copy.deepcopy(fp_model)
    quantize(model, get_recipe("repq", w_bits=4, a_bits=4), task.calib_data(model, 1, seed=0), log=lambda s: None)
    from plugin.quant import QuantLinear
    assert isinstance(model.backbone.stages[0].blocks[0].attn.w_msa.qkv, QuantLinear)
    assert isinstance(model.roi_head.bbox_head.fc_cls, QuantLinear)
    metrics = task.evaluate(model, progress=False)
    assert "bbox_mAP" in metrics and "segm_mAP" in metrics


def test_ptq4vit_hessian_search_on_the_detector(task_and_model, monkeypatch):
    """PTQ4ViT's Hessian search back-propagates from the detector's predicted boxes and scores: backbone sites get a
    gradient signal; the mask head, whose masks are thresholded, is searched on its output MSE (no zero weights)."""
    import copy

    import plugin.quant.methods.ptq4vit.hessian as hessian
    from plugin.quant import get_recipe, quantize
    task, fp_model = task_and_model
    model = copy.deepcopy(fp_model)
    searched, search = {}, hessian._search_site

    def recording(site, calls, cfg):
        searched[site.name] = [g for _, _, g in calls]
        return search(site, calls, cfg)

    monkeypatch.setattr(hessian, "_search_site", recording)
    quantize(model, get_recipe("ptq4vit", w_bits=4, a_bits=4), task.calib_data(model, 1, seed=0), log=lambda s: None)
    backbone = [n for n in searched if n.startswith("backbone.")]
    assert backbone and all(g is not None and g.abs().sum() > 0 for n in backbone for g in searched[n])
    mask_head = [n for n in searched if n.startswith("roi_head.mask_head.")]
    assert mask_head and all(g is None for n in mask_head for g in searched[n])
    assert len(searched["rpn_head.rpn_conv"]) > 1  # one entry per FPN level (calls of different sizes)
    metrics = task.evaluate(model, progress=False)
    assert "bbox_mAP" in metrics and "segm_mAP" in metrics


def test_block_skipping_gives_the_same_detector(task_and_model):
    """plugin.quant.block_skip on a detector: Swin blocks are skipped in the backbone's calibration forwards, the
    neck and heads (which read every stage's output) run the whole model; the result equals calibration without it."""
    import copy

    from plugin.quant import get_recipe, quantize
    task, fp_model = task_and_model
    models, logs = [], []
    for skip in (True, False):
        model = copy.deepcopy(fp_model)
        quantize(model, get_recipe("repq", w_bits=4, a_bits=4), task.calib_data(model, 2, seed=0),
                 log=logs.append if skip else (lambda s: None), skip_finished_blocks=skip)
        models.append(model.state_dict())
    assert not any("recompute" in line for line in logs)  # the Swin blocks were skipped throughout
    assert models[0].keys() == models[1].keys()
    for k in models[0]:
        assert torch.equal(models[0][k], models[1][k]), k


@pytest.mark.parametrize("method", ["dopq", "isvit", "aiqvit", "aphq", "fimaq", "relu_fisher"])
def test_seed_recipes_run_unchanged_on_the_detector(task_and_model, method):
    """The seed and frontier methods' recipes (reconstruction passes included, a few steps) quantize and evaluate a
    detector."""
    import copy

    from plugin.quant import get_recipe, quantize
    task, fp_model = task_and_model
    model = copy.deepcopy(fp_model)
    recipe = get_recipe(method, w_bits=4, a_bits=4)
    recipe.passes = [dict(p, iters=2, batch_size=1) if "iters" in p else p for p in recipe.passes]
    quantize(model, recipe, task.calib_data(model, 2, seed=0), log=lambda s: None)
    metrics = task.evaluate(model, progress=False)
    assert "bbox_mAP" in metrics and "segm_mAP" in metrics


def test_fisher_loss_falls_back_where_the_items_depend_on_the_model(task_and_model):
    """FIMA-Q's D row pairs a unit's outputs in the float forward with its cached targets: the ROI heads' items (boxes
    from the model's own proposals) are other items there, so those units use MSE, logged; the backbone keeps the
    Fisher loss."""
    import copy

    from plugin.quant import get_recipe, quantize
    task, fp_model = task_and_model
    recipe = get_recipe("fimaq", w_bits=4, a_bits=4)
    recipe.passes = [dict(p, iters=5, batch_size=1) if "iters" in p else p for p in recipe.passes]
    logs = []
    quantize(copy.deepcopy(fp_model), recipe, task.calib_data(fp_model, 2, seed=0), log=logs.append)
    fallbacks = [line for line in logs if "depend on the model's own predictions (other items" in line]
    assert fallbacks and all("roi_head" in line and "uses mse" in line for line in fallbacks), fallbacks
    assert not any("backbone" in line and "uses mse" in line for line in logs)


def test_ptq_test_cli_end_to_end(tiny, tmp_path):
    cfg_path, ckpt, _ = tiny
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(REPO, "tools", "ptq_test.py"), cfg_path, ckpt, "--bits", "4", "--method",
           "repq", "--calib-num", "1", "--out", str(out), "--device", "cpu", "--work-dir", str(tmp_path / "wd"),
           "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "detection"
    for metrics in (report["fp"], report["results"][0]["metrics"]):
        assert "bbox_mAP" in metrics and "segm_mAP" in metrics
    assert "segm_mAP" in proc.stdout
    agreement, metrics = report["results"][0]["agreement"], report["results"][0]["metrics"]
    assert agreement["float_score_thr"] == 0.3
    for kind in ("bbox", "segm"):
        assert 0.0 <= agreement[f"{kind}_mAP_agreement"] <= agreement[f"{kind}_mAP_50_agreement"] <= 100.0
        change = agreement[f"{kind}_mAP_change"]  # CocoMetric rounds each mAP to 0.1
        assert change["diff"] == pytest.approx(metrics[f"{kind}_mAP"] - report["fp"][f"{kind}_mAP"], abs=0.11)
        assert change["ci95"][0] <= change["diff"] <= change["ci95"][1] and change["resamples"] == 1000
    assert "bbox_mAP_agreement" in (out / "report.md").read_text()


def test_agreement_of_the_float_detector_with_itself_and_a_damaged_copy(task_and_model, monkeypatch):
    task, model = task_and_model
    task.evaluate(model, progress=False)
    fp = task.last_outputs
    assert sorted(fp["preds"]) == [100, 101] and fp["iou_types"] == ["bbox", "segm"]
    assert all(len(p["masks"]) == len(p["labels"]) > 0 for p in fp["preds"].values())
    monkeypatch.setattr(task, "agreement_score_thr", 0.0)  # every prediction: the random-init scores are near 0.3-0.5
    same = task.agreement(fp, fp)
    for kind in ("bbox", "segm"):
        assert same[f"{kind}_mAP_agreement"] == same[f"{kind}_mAP_50_agreement"] == 100.0
        assert same[f"{kind}_mAP_change"] == {"diff": 0.0, "ci95": [0.0, 0.0], "tie": True, "resamples": 1000}
    damaged = {"preds": {}}
    for img_id, p in fp["preds"].items():  # every box moved by a quarter of its size; the second image predicts none
        keep = slice(None) if img_id == 100 else slice(0, 0)
        shift = (p["bboxes"][:, 2:] - p["bboxes"][:, :2]) / 4
        damaged["preds"][img_id] = dict(p, bboxes=(p["bboxes"] + np.concatenate([shift, shift], 1))[keep],
                                        scores=p["scores"][keep], labels=p["labels"][keep], masks=p["masks"][keep])
    worse = task.agreement(fp, damaged)
    assert worse["bbox_mAP_agreement"] < 100.0 and worse["segm_mAP_agreement"] < 100.0
    assert task.agreement(fp, damaged) == worse  # the same seeded resamples


def test_agreement_options_are_checked(tiny):
    from plugin.config import load_config
    from plugin.errors import UserInputError
    from plugin.detection.task import DetectionTask
    cfg_path, ckpt, work_dir = tiny
    for bad, words in (({"score_thr": 1.5}, "score_thr"), ({"resamples": 0}, "resamples"), ({"thr": 0.3}, "unknown")):
        cfg = load_config(cfg_path)
        cfg.agreement = bad
        with pytest.raises(UserInputError, match=words):
            DetectionTask(cfg, ckpt, work_dir=work_dir)


def test_no_fp_says_agreement_is_unavailable(tiny, tmp_path):
    cfg_path, ckpt, _ = tiny
    out = tmp_path / "out"
    assert ptq_test.main([cfg_path, ckpt, "--bits", "4", "--method", "minmax", "--calib-num", "1", "--out", str(out),
                          "--device", "cpu", "--work-dir", str(tmp_path / "wd"), "--quiet", "--no-fp"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "agreement" not in report["results"][0] and "--no-fp" in report["agreement_unavailable"]
    assert "Agreement with the full-precision model: unavailable (--no-fp" in (out / "report.md").read_text()


def test_import_without_mmdet_warns_once():
    code = ("import sys, warnings; sys.modules['mmdet'] = None\n"  # makes `import mmdet` raise ImportError
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import plugin.detection, plugin.detection\n"
            "    import plugin.detection.task as d\n"
            "assert not plugin.detection.HAS_MMDET and 'QuantSwin' not in plugin.detection.__all__\n"
            "print(sum('MMDetection is not usable' in str(x.message) for x in w))\n"
            "from plugin.errors import UserInputError\n"
            "try:\n"
            "    d.DetectionTask({}, 'x.pth')\n"
            "except UserInputError as e:\n"
            "    print('refused', 'pip install' in str(e))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", "refused", "True"]


def test_data_root_moves_every_data_path(tiny, tmp_path, monkeypatch):
    """--data-root points the datasets and the evaluator's annotations at another folder, from any working folder."""
    cfg_path, ckpt, _ = tiny
    real_root = os.path.dirname(cfg_path)
    moved = tmp_path / "moved.py"
    moved.write_text(open(cfg_path).read().replace(real_root, "/nonexistent/coco"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code = ptq_test.main([str(moved), ckpt, "--bits", "8", "--method", "minmax", "--calib-num", "1", "--no-fp",
                          "--data-root", real_root, "--out", str(out), "--device", "cpu", "--quiet",
                          "--work-dir", str(tmp_path / "wd")])
    assert code == 0
    assert "bbox_mAP" in json.loads((out / "report.json").read_text())["results"][0]["metrics"]


def test_move_data_root_rewrites_loaders_and_evaluators():
    from plugin.detection.task import move_data_root
    cfg = {"data_root": "data/coco/",
           "train_dataloader": {"dataset": {"type": "RepeatDataset", "dataset": {"data_root": "data/coco/"}}},
           "val_dataloader": {"dataset": {"data_root": "data/coco/"}},
           "test_dataloader": {"dataset": {"data_root": "data/coco/"}},
           "val_evaluator": {"ann_file": "data/coco/annotations/instances_val2017.json"},
           "test_evaluator": [{"ann_file": "data/coco/annotations/instances_val2017.json"}, {"type": "Other"}]}
    move_data_root(cfg, "/d/coco")
    assert cfg["train_dataloader"]["dataset"]["dataset"]["data_root"] == "/d/coco/"
    assert cfg["val_dataloader"]["dataset"]["data_root"] == cfg["test_dataloader"]["dataset"]["data_root"] == "/d/coco/"
    assert cfg["val_evaluator"]["ann_file"] == "/d/coco/annotations/instances_val2017.json"
    assert cfg["test_evaluator"][0]["ann_file"] == "/d/coco/annotations/instances_val2017.json"


def test_missing_annotations_are_one_line_before_any_work(tiny, tmp_path, capsys):
    cfg_path, ckpt, _ = tiny
    moved = tmp_path / "moved.py"
    moved.write_text(open(cfg_path).read().replace(os.path.dirname(cfg_path), "/nonexistent/coco"))
    code = ptq_test.main([str(moved), ckpt, "--method", "minmax", "--out", str(tmp_path / "out"), "--device", "cpu",
                          "--quiet", "--work-dir", str(tmp_path / "wd")])
    err = capsys.readouterr().err
    assert code == 2 and "annotation file(s) not found: /nonexistent/coco/instances_train.json" in err, err
    assert "--data-root" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_timm_swin_checkpoint_as_quantswin_backbone(tmp_path, capsys):
    """tools/timm_swin_to_mmdet.py: a timm Swin's weights loaded as a QuantSwin backbone (mmdet's own pretrained
    path, convert_weights=True) give the same stage features as the timm model, and the printed config matches."""
    import timm
    import torch.nn.functional as F
    from mmdet.registry import MODELS
    from safetensors.torch import save_file
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import timm_swin_to_mmdet
    torch.manual_seed(0)
    tm = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, embed_dim=32, depths=(2, 2, 2, 2),
                           num_heads=(1, 2, 4, 8), num_classes=5, img_size=448).eval()
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    out = str(tmp_path / "backbone.pth")
    assert timm_swin_to_mmdet.main([str(tmp_path / "timm.safetensors"), out]) == 0
    assert "embed_dims=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=7" in capsys.readouterr().out
    from mmengine.config import ConfigDict  # nested dicts become ConfigDicts, as in a config file
    backbone = MODELS.build(ConfigDict(type="QuantSwin", embed_dims=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8],
                                 window_size=7, convert_weights=True, out_indices=(0, 1, 2, 3),
                                 init_cfg=dict(type="Pretrained", checkpoint=out)))
    backbone.init_weights()
    backbone.eval()
    # 448 px: every stage is larger than a window. At 224 the last stage is one 7x7 window, where the original code
    # (and timm) turn the shift off and mmdet's Swin does not, so the two architectures differ there.
    x = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        ours = backbone(x)
        y, want = tm.patch_embed(x), []
        for layer in tm.layers:  # timm: merging at the start of a stage; mmdet: at the end (its output norms are plain)
            y = layer(y)
            want.append(F.layer_norm(y, y.shape[-1:]).permute(0, 3, 1, 2))
    for a, b in zip(ours, want):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert timm_swin_to_mmdet.main([str(tmp_path / "backbone.pth"), str(tmp_path / "again.pth")]) == 2


def test_cifar_pretrained_detector_config_starts_from_a_converted_classifier(tmp_path, capsys, monkeypatch):
    """configs/classification/cifar10_swin_det_backbone.py has the reference detector's backbone shape; its weights
    (float16, as tools/train_cls.py --half writes them) go through tools/timm_swin_to_mmdet.py --check-config into
    the CIFAR-pretrained detector config, whose backbone then holds them; a backbone of another shape is refused."""
    import timm
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from safetensors.torch import save_file
    from plugin.config import load_config
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import timm_swin_to_mmdet
    det_config = os.path.join(REPO, "configs/detection/mask-rcnn_quantswin-mini-p4-w7_fpn_coco-person_cifar-pretrained.py")
    cls = load_config(os.path.join(REPO, "configs/classification/cifar10_swin_det_backbone.py"))
    torch.manual_seed(0)
    tm = timm.create_model(cls.model.name, pretrained=False, **cls.model.kwargs)
    state = {k: v.to(torch.float16).contiguous() for k, v in tm.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    out = str(tmp_path / "backbone_mmdet.pth")
    assert timm_swin_to_mmdet.main([str(tmp_path / "model.safetensors"), out, "--check-config", det_config]) == 0
    printed = capsys.readouterr().out
    assert "takes all 169 pretrained parameter tensors" in printed
    monkeypatch.setenv("CIFAR_BACKBONE", out)
    monkeypatch.setenv("DET_EPOCHS", "12")
    cfg = Config.fromfile(det_config)
    mini = Config.fromfile(os.path.join(REPO, "configs/detection/mask-rcnn_quantswin-mini-p4-w7_fpn_coco-person.py"))
    arch = timm_swin_to_mmdet.describe(state)
    for key in ("embed_dims", "depths", "num_heads", "window_size", "patch_size"):  # mmdet's default patch: 4
        assert list(np.atleast_1d(cfg.model.backbone.get(key, 4))) == list(np.atleast_1d(arch[key])) \
            == list(np.atleast_1d(mini.model.backbone.get(key, 4)))
    assert cfg.train_cfg.max_epochs == 12 and cfg.param_scheduler[1].milestones == [9, 11]
    assert cfg.auto_scale_lr.base_batch_size == 32 and cfg.optim_wrapper.optimizer.lr == 4e-4
    assert cfg.model.backbone.init_cfg == dict(type="Pretrained", checkpoint=out)
    with DefaultScope.overwrite_default_scope("mmdet"):
        detector = MODELS.build(cfg.model)
    detector.init_weights()
    backbone = detector.backbone
    assert torch.equal(backbone.patch_embed.projection.weight, state["patch_embed.proj.weight"].float())
    assert torch.equal(backbone.stages[2].blocks[5].attn.w_msa.qkv.weight,
                       state["layers.2.blocks.5.attn.qkv.weight"].float())
    # timm's stage-2 merging (start of layers.3) is mmdet's stage-2 downsample (end of stages.2), reordered
    assert backbone.stages[2].downsample.reduction.weight.shape == state["layers.3.downsample.reduction.weight"].shape
    # A classifier of another shape does not fit the detector: one error, exit code 2.
    small = timm.create_model(cls.model.name, pretrained=False, img_size=224, embed_dim=32, depths=(2, 2, 6, 2),
                              num_heads=(1, 2, 4, 8))
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(tmp_path / "small.safetensors"))
    assert timm_swin_to_mmdet.main([str(tmp_path / "small.safetensors"), str(tmp_path / "small.pth"),
                                    "--check-config", det_config]) == 2
    assert "does not fit the backbone" in capsys.readouterr().err


PIPELINE_CLS_CONFIG = """
task = 'classification'
model = dict(name='swin_tiny_patch4_window7_224',
             kwargs=dict(img_size=64, patch_size=4, window_size=2, num_classes=10, embed_dim=8, depths=(1, 1, 1, 1),
                         num_heads=(1, 1, 2, 2)))
data = dict(type='cifar10_packed', path='unused.npz', img_size=64)
eval = dict(batch_size=10)
train = dict(data='cifar10', epochs=1, batch_size=10, lr=1e-3, warmup_epochs=0, eval_every=1)
"""

PIPELINE_DET_CONFIG = """
_base_ = ['tiny_mask_rcnn_quantswin.py']
model = dict(
    backbone=dict(embed_dims=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=2, convert_weights=True,
                  init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='{{$CIFAR_BACKBONE:missing.pth}}')),
    neck=dict(in_channels=[8, 16, 32, 64]))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
train_cfg = dict(max_epochs=1, val_interval=100)
default_hooks = dict(checkpoint=dict(interval=100))
find_unused_parameters = True
auto_scale_lr = dict(base_batch_size=2)
"""


def _packed_cifar_file(path, per_class=2):
    """A packed-JPEG CIFAR-10 npz (the layout of shared/data/cifar10) of solid 32x32 images."""
    import io
    from PIL import Image
    arrays = {"classes": np.array([f"class{c}" for c in range(10)])}
    for split in ("train", "test"):
        blobs = []
        for c in range(10):
            for k in range(per_class):
                buf = io.BytesIO()
                Image.new("RGB", (32, 32), (c * 25, k * 60, 200)).save(buf, format="JPEG")
                blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        arrays.update({f"{split}_bytes": np.concatenate(blobs),
                       f"{split}_offsets": np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64),
                       f"{split}_labels": np.repeat(np.arange(10), per_class).astype(np.uint8)})
    np.savez(path, **arrays)
    return path


def test_run_det_reference_script_end_to_end(tiny, tmp_path):
    """tools/run_det_reference.sh with tiny stand-ins for its configs (CLS_CONFIG, DET_CONFIG) and data: pretrain at
    64 px from 32-px CIFAR files, convert and check, two gloo processes of detector training, float16 weights with
    their sha256, float evaluation, summary; LAST_STAGE=1 stops after pretraining and the next run continues; a run after the
    last skips every finished stage; bad settings are one error."""
    import hashlib
    cfg_path, _, _ = tiny
    root = os.path.dirname(cfg_path)
    cls_cfg, det_cfg = tmp_path / "cls.py", os.path.join(root, "pipeline_det.py")
    cls_cfg.write_text(PIPELINE_CLS_CONFIG)
    with open(det_cfg, "w") as f:
        f.write(PIPELINE_DET_CONFIG)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=REPO, OMP_NUM_THREADS="1", OUT=str(out), NGPUS="2",
               DEVICE="cpu", CLS_CONFIG=str(cls_cfg), DET_CONFIG=det_cfg,
               CIFAR_NPZ=str(_packed_cifar_file(tmp_path / "cifar.npz")), COCO_PERSON_ROOT=root,
               CLS_MAX_TIME="60", DET_MAX_TIME="60", EVAL_ARGS="--quiet")
    script = os.path.join(REPO, "tools", "run_det_reference.sh")
    # LAST_STAGE=1 pretrains only and needs no COCO data; the next run continues with stage 2
    first = subprocess.run(["bash", script], capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
                           env=dict(env, LAST_STAGE="1", COCO_PERSON_ROOT="/nonexistent"))
    assert first.returncode == 0 and "stop: LAST_STAGE=1" in first.stdout, (first.stdout + first.stderr)[-3000:]
    assert sorted(os.listdir(out / ".done")) == ["1_pretrain"]
    proc = subprocess.run(["bash", script], capture_output=True, text=True, timeout=540, cwd=str(tmp_path), env=env)
    assert proc.returncode == 0 and proc.stdout.count("skip ") == 1, (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["detector_fp"]) >= {"bbox_mAP", "segm_mAP"} and summary["classifier_epochs"] == 1
    weights = out / "detector_fp16.pth"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert summary["detector_sha256"] == digest and digest in proc.stdout
    assert (out / "detector_fp16.pth.sha256").read_text().split() == [digest, "detector_fp16.pth"]
    saved = torch.load(str(weights), weights_only=True)
    assert all(v.dtype == torch.float16 for v in saved["state_dict"].values() if v.is_floating_point())
    curve = json.loads((out / "train_curve.json").read_text())
    assert (out / "train_curve.png").stat().st_size > 0 and "loss" in curve["train"]
    progress = (out / "progress.log").read_text()
    for stage in ("1_pretrain", "2_convert", "3_detector", "4_float16", "5_evaluate"):
        assert f"done {stage}" in progress and (out / "logs" / f"{stage}.log").stat().st_size > 0
    assert "takes all" in (out / "logs" / "2_convert.log").read_text()
    # the detector started from the converted classifier: its patch embedding is the classifier's (to float16)
    from safetensors.torch import load_file
    cls_state = load_file(str(out / "cls" / "model.safetensors"))
    assert cls_state["patch_embed.proj.weight"].shape == saved["state_dict"]["backbone.patch_embed.projection.weight"].shape
    again = subprocess.run(["bash", script], capture_output=True, text=True, timeout=120, cwd=str(tmp_path), env=env)
    assert again.returncode == 0 and again.stdout.count("skip ") == 5, again.stdout + again.stderr
    for bad, word in (({"NGPUS": "0"}, "NGPUS"), ({"DET_MAX_TIME": "soon"}, "DET_MAX_TIME"),
                      ({"LAST_STAGE": "6"}, "LAST_STAGE"), ({"CIFAR_NPZ": "/nonexistent.npz", "FORCE": "1"},
                                                            "CIFAR_NPZ not found")):
        failed = subprocess.run(["bash", script], capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
                                env=dict(env, **bad))
        assert failed.returncode == 2 and word in failed.stderr and "Traceback" not in failed.stderr, failed.stderr
