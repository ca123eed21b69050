"""Point-cloud data sets in their published formats, read with h5py / numpy.

Classification items are {'points': (P, 3) float32, 'label': int}; part-segmentation items are
{'points': (P, 3) float32, 'seg': (P,) int64 global part ids, 'category': int}. Reading is deterministic: fixed-size
formats take the first `num_points` points, variable-size ones draw a seeded sample per shape index.

Formats (`data.format` in a config; 'auto' looks at the files):
- modelnet40_h5: `modelnet40_ply_hdf5_2048/` — ply_data_*.h5 (data, label), shape_names.txt, train_files.txt,
  test_files.txt.
- modelnet_normal: `modelnet40_normal_resampled/` — <class>/<shape>.txt ("x,y,z,nx,ny,nz" per line),
  modelnet{40,10}_shape_names.txt, modelnet{40,10}_{train,test}.txt.
- modelnet10_npz: the ModelNet10 `modelnet10_1024.npz` (points, label, split).
- shapenetpart_h5: `shapenet_part_seg_hdf5_data/` — ply_data_*.h5 (data, label, pid), all_object_categories.txt,
  {train,val,test}_hdf5_file_list.txt, optionally catid_partid_to_overallid.json.
- shapenetpart_normal: `shapenetcore_partanno_segmentation_benchmark_v0_normal/` — <synset>/<shape>.txt
  ("x y z nx ny nz part" per line), synsetoffset2category.txt,
  train_test_split/shuffled_{train,val,test}_file_list.json.

The ModelNet sets and `build_dataset` are here; the ShapeNetPart sets in `shapenetpart`, the shared readers in
`readers`.
"""
import os
from typing import Dict, List, Optional

import numpy as np

from ..errors import UserInputError
from ..utils.paths import resolve_data_path
from .readers import (PointCloudSet, check_points, h5_split_files, load_txt, need_file, normalize_unit_sphere,
                      read_h5, read_lines, take_points)
from .shapenetpart import ShapeNetPartNormal, shapenetpart_h5

CLS_FORMATS = ("modelnet40_h5", "modelnet_normal", "modelnet10_npz")
SEG_FORMATS = ("shapenetpart_h5", "shapenetpart_normal")
SPLITS = ("train", "val", "test", "trainval")


class ClsArraySet(PointCloudSet):
    """Classification set held in memory."""

    def __init__(self, points, labels, classes, normalize=False):
        self.points, self.labels = points, labels.astype(np.int64)
        self.classes, self.normalize = list(classes), normalize
        if len(points) != len(labels):
            raise UserInputError(f"{len(points)} shapes but {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise UserInputError(f"labels outside 0..{len(self.classes) - 1} (got {labels.min()}..{labels.max()})")

    def __len__(self):
        return len(self.points)

    def __getitem__(self, i):
        p = self.points[i]
        return {"points": normalize_unit_sphere(p) if self.normalize else p, "label": int(self.labels[i])}


def modelnet40_h5(root, split, num_points=1024, normalize=False):
    classes = read_lines(os.path.join(root, "shape_names.txt"))
    lists = {"train": ["train_files.txt"], "test": ["test_files.txt"]}
    if split not in lists:
        raise UserInputError(f"modelnet40_h5 has splits train/test, not {split!r}")
    points, labels = [], []
    for path in h5_split_files(root, lists[split], split):
        d = read_h5(path, ["data", "label"])
        pts, lab = check_points(d["data"], path), d["label"].reshape(-1)
        if len(lab) != len(pts):
            raise UserInputError(f"{path}: {len(pts)} shapes in 'data' but {len(lab)} in 'label'")
        points.append(take_points(pts, num_points, path))
        labels.append(lab)
    return ClsArraySet(np.concatenate(points), np.concatenate(labels), classes, normalize)


def modelnet10_npz(path, split, num_points=1024, normalize=False):
    need_file(path, "ModelNet10 npz")
    try:
        d = np.load(path)
        pts, names, splits = d["points"], d["label"], d["split"]
    except Exception as exc:
        raise UserInputError(f"cannot read {path} as the ModelNet10 npz (points, label, split): {exc}") from exc
    if split not in ("train", "test"):
        raise UserInputError(f"modelnet10_npz has splits train/test, not {split!r}")
    classes = sorted(set(names.tolist()))
    keep = splits == split
    labels = np.array([classes.index(c) for c in names[keep]], dtype=np.int64)
    points = take_points(check_points(pts[keep], path, "points"), num_points, path)
    return ClsArraySet(points, labels, classes, normalize)


class ModelNetNormal(PointCloudSet):
    """modelnet40_normal_resampled: one text file per shape, read on access.

    sample='first' takes the first num_points points; sample='fps' takes a farthest-point sample (starting at point
    0) of all points, as Point-BERT/Point-MAE's ModelNet loaders do (slower: every line is parsed).
    """

    def __init__(self, root, split, num_points=1024, num_classes=40, normalize=True, sample="first"):
        if sample not in ("first", "fps"):
            raise UserInputError(f"modelnet_normal: sample must be 'first' or 'fps', not {sample!r}")
        self.sample = sample
        if split not in ("train", "test"):
            raise UserInputError(f"modelnet_normal has splits train/test, not {split!r}")
        self.classes = read_lines(os.path.join(root, f"modelnet{num_classes}_shape_names.txt"))
        self.shapes = read_lines(os.path.join(root, f"modelnet{num_classes}_{split}.txt"))
        self.root, self.num_points, self.normalize = root, num_points, normalize
        index = {c: i for i, c in enumerate(self.classes)}
        self.labels = []
        for shape in self.shapes:
            cls = shape.rsplit("_", 1)[0]
            if cls not in index:
                raise UserInputError(f"shape {shape} in the {split} list has unknown class {cls!r}")
            self.labels.append(index[cls])

    def __len__(self):
        return len(self.shapes)

    def __getitem__(self, i):
        shape = self.shapes[i]
        path = os.path.join(self.root, shape.rsplit("_", 1)[0], shape + ".txt")
        pts = load_txt(path, delimiter=",", max_rows=None if self.sample == "fps" else self.num_points)[:, :3]
        if len(pts) < self.num_points:
            raise UserInputError(f"{path}: {len(pts)} points, fewer than num_points={self.num_points}")
        if self.sample == "fps":
            import torch
            from .ops import farthest_point_sample
            pts = pts[farthest_point_sample(torch.from_numpy(pts)[None], self.num_points)[0].numpy()]
        return {"points": normalize_unit_sphere(pts) if self.normalize else pts, "label": self.labels[i]}


def detect_format(root: str) -> str:
    if os.path.isfile(root) and root.endswith(".npz"):
        return "modelnet10_npz"
    markers = [("shape_names.txt", "modelnet40_h5"), ("modelnet40_shape_names.txt", "modelnet_normal"),
               ("modelnet10_shape_names.txt", "modelnet_normal"), ("all_object_categories.txt", "shapenetpart_h5"),
               ("synsetoffset2category.txt", "shapenetpart_normal")]
    for marker, fmt in markers:
        if os.path.exists(os.path.join(root, marker)):
            return fmt
    raise UserInputError(f"cannot tell the data format of {root}: set data.format to one of "
                         f"{CLS_FORMATS + SEG_FORMATS}")


def resolve_root(root: str, base_dirs=()) -> str:
    """A data path as given, or relative to one of base_dirs (e.g. the repository root) when that exists (the rule
    of plugin.utils.paths.resolve_data_path); missing everywhere is a UserInputError."""
    resolved = resolve_data_path(root, base_dirs)
    if os.path.exists(resolved):
        return resolved
    raise UserInputError(f"data not found: {root} (looked relative to the working directory and {list(base_dirs)})")


def _generate_synthetic(root, spec, base_dirs):
    """Build the SYNTHETIC part set at root (relative roots go under the first base dir) when it is missing."""
    import sys
    from .synthetic import generate
    target = root if os.path.isabs(root) or not base_dirs else os.path.join(base_dirs[0], root)
    counts = {k: int(spec[k]) for k in ("train", "val", "test") if spec.get(k)}
    print(f"generating the SYNTHETIC part-segmentation set into {target} ({counts} shapes per category)",
          file=sys.stderr, flush=True)
    generate(target, counts, int(spec.get("points", 2048)), int(spec.get("seed", 0)))


def build_dataset(data_cfg: dict, split: str, base_dirs=()) -> PointCloudSet:
    """A data set from a config's `data` dict: root, format ('auto'), num_points, normalize, seed, num_classes.

    With `synthetic=dict(train=..., val=..., test=..., points=..., seed=...)` a missing root is generated first
    (plugin/pointcloud/synthetic.py)."""
    if "root" not in data_cfg:
        raise UserInputError("the config's data dict needs a 'root' (data folder or file)")
    if data_cfg.get("synthetic"):
        try:
            resolve_root(data_cfg["root"], base_dirs)
        except UserInputError:
            _generate_synthetic(data_cfg["root"], data_cfg["synthetic"], base_dirs)
    root = resolve_root(data_cfg["root"], base_dirs)
    fmt = data_cfg.get("format", "auto")
    fmt = detect_format(root) if fmt == "auto" else fmt
    n = data_cfg.get("num_points")
    kw = {} if data_cfg.get("normalize") is None else {"normalize": data_cfg["normalize"]}
    if fmt == "modelnet40_h5":
        return modelnet40_h5(root, split, n or 1024, **kw)
    if fmt == "modelnet10_npz":
        return modelnet10_npz(root, split, n or 1024, **kw)
    if fmt == "modelnet_normal":
        return ModelNetNormal(root, split, n or 1024, data_cfg.get("num_classes", 40),
                              sample=data_cfg.get("sample", "first"), **kw)
    if fmt == "shapenetpart_h5":
        return shapenetpart_h5(root, split, n or 2048, **kw)
    if fmt == "shapenetpart_normal":
        return ShapeNetPartNormal(root, split, n or 2048, seed=data_cfg.get("seed", 0), **kw)
    raise UserInputError(f"unknown point-cloud data format {fmt!r}; known: {CLS_FORMATS + SEG_FORMATS}")


def collate(items: List[dict]) -> Dict[str, "object"]:
    """Stack items into a batch of torch tensors."""
    import torch
    out = {"points": torch.from_numpy(np.stack([it["points"] for it in items]).astype(np.float32))}
    for key in ("label", "category"):
        if key in items[0]:
            out[key] = torch.tensor([it[key] for it in items], dtype=torch.long)
    if "seg" in items[0]:
        out["seg"] = torch.from_numpy(np.stack([it["seg"] for it in items]).astype(np.int64))
    return out


def batches(dataset, indices: Optional[List[int]] = None, batch_size=32):
    """Yield collated batches of `dataset[indices]` in order."""
    indices = list(range(len(dataset))) if indices is None else list(indices)
    for start in range(0, len(indices), batch_size):
        yield collate([dataset[i] for i in indices[start:start + batch_size]])
