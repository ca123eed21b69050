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
"""
import json
import os
from typing import Dict, List, Optional

import numpy as np

from ..errors import UserInputError
from ..utils.paths import resolve_data_path

# ShapeNetPart (Yi et al., 2016): the global part ids of each category; ids are contiguous in category order.
SHAPENETPART_PARTS = {
    "Airplane": [0, 1, 2, 3], "Bag": [4, 5], "Cap": [6, 7], "Car": [8, 9, 10, 11], "Chair": [12, 13, 14, 15],
    "Earphone": [16, 17, 18], "Guitar": [19, 20, 21], "Knife": [22, 23], "Lamp": [24, 25, 26, 27],
    "Laptop": [28, 29], "Motorbike": [30, 31, 32, 33, 34, 35], "Mug": [36, 37], "Pistol": [38, 39, 40],
    "Rocket": [41, 42, 43], "Skateboard": [44, 45, 46], "Table": [47, 48, 49],
}
CLS_FORMATS = ("modelnet40_h5", "modelnet_normal", "modelnet10_npz")
SEG_FORMATS = ("shapenetpart_h5", "shapenetpart_normal")
SPLITS = ("train", "val", "test", "trainval")


def normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centre on the mean and scale so the farthest point is at distance 1."""
    points = points - points.mean(0, keepdims=True)
    radius = np.sqrt((points ** 2).sum(1)).max()
    return points / radius if radius > 0 else points


def _need(path, what):
    if not os.path.exists(path):
        raise UserInputError(f"{what} not found: {path}")
    return path


def _read_lines(path):
    with open(_need(path, "list file")) as f:
        return [line.strip() for line in f if line.strip()]


def read_h5(path: str, keys) -> Dict[str, np.ndarray]:
    """Datasets `keys` of an HDF5 file; a missing, corrupted or truncated file raises UserInputError."""
    import h5py
    _need(path, "HDF5 file")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in keys if k not in f]
            if missing:
                raise UserInputError(f"HDF5 file {path} has no dataset(s) {missing}; it has {sorted(f.keys())}")
            return {k: f[k][()] for k in keys}
    except UserInputError:
        raise
    except Exception as exc:  # h5py raises OSError/KeyError/ValueError/RuntimeError for damaged files
        raise UserInputError(f"cannot read HDF5 file {path}: the file is corrupted or truncated "
                             f"({type(exc).__name__}: {exc}); download or generate it again") from exc


def _check_points(points, path, name="data"):
    if points.ndim != 3 or points.shape[-1] < 3:
        raise UserInputError(f"{path}: '{name}' must have shape (shapes, points, 3), got {points.shape}")
    points = np.asarray(points[..., :3], dtype=np.float32)
    if not np.isfinite(points).all():
        raise UserInputError(f"{path}: '{name}' contains NaN or inf coordinates")
    return points


def _h5_split_files(root, list_names, split):
    files = []
    for list_name in list_names:
        # Lists name files by the path of the original repository (e.g. data/modelnet40_ply_hdf5_2048/x.h5):
        # the file is looked up in `root` by its base name.
        files += [os.path.join(root, os.path.basename(line)) for line in _read_lines(os.path.join(root, list_name))]
    if not files:
        raise UserInputError(f"no HDF5 files listed for split {split!r} in {root}")
    return files


def _take(points, num_points, path):
    if num_points > points.shape[1]:
        raise UserInputError(f"{path}: shapes have {points.shape[1]} points, fewer than num_points={num_points}")
    return points[:, :num_points]


class PointCloudSet:
    """Map-style data set (works with torch DataLoader); subclasses fill the attributes below."""
    task = "cls"
    classes: List[str] = []

    def __len__(self):
        raise NotImplementedError

    def __getitem__(self, i):
        raise NotImplementedError


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
    classes = _read_lines(os.path.join(root, "shape_names.txt"))
    lists = {"train": ["train_files.txt"], "test": ["test_files.txt"]}
    if split not in lists:
        raise UserInputError(f"modelnet40_h5 has splits train/test, not {split!r}")
    points, labels = [], []
    for path in _h5_split_files(root, lists[split], split):
        d = read_h5(path, ["data", "label"])
        pts, lab = _check_points(d["data"], path), d["label"].reshape(-1)
        if len(lab) != len(pts):
            raise UserInputError(f"{path}: {len(pts)} shapes in 'data' but {len(lab)} in 'label'")
        points.append(_take(pts, num_points, path))
        labels.append(lab)
    return ClsArraySet(np.concatenate(points), np.concatenate(labels), classes, normalize)


def modelnet10_npz(path, split, num_points=1024, normalize=False):
    _need(path, "ModelNet10 npz")
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
    return ClsArraySet(_take(_check_points(pts[keep], path, "points"), num_points, path), labels, classes, normalize)


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
        self.classes = _read_lines(os.path.join(root, f"modelnet{num_classes}_shape_names.txt"))
        self.shapes = _read_lines(os.path.join(root, f"modelnet{num_classes}_{split}.txt"))
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
        pts = _load_txt(path, delimiter=",", max_rows=None if self.sample == "fps" else self.num_points)[:, :3]
        if len(pts) < self.num_points:
            raise UserInputError(f"{path}: {len(pts)} points, fewer than num_points={self.num_points}")
        if self.sample == "fps":
            import torch
            from .ops import farthest_point_sample
            pts = pts[farthest_point_sample(torch.from_numpy(pts)[None], self.num_points)[0].numpy()]
        return {"points": normalize_unit_sphere(pts) if self.normalize else pts, "label": self.labels[i]}


def _load_txt(path, delimiter=None, max_rows=None, min_cols=3):
    _need(path, "point file")
    try:
        a = np.loadtxt(path, delimiter=delimiter, max_rows=max_rows, dtype=np.float32, ndmin=2)
    except Exception as exc:
        raise UserInputError(f"cannot parse point file {path}: {exc}") from exc
    if a.shape[1] < min_cols or not np.isfinite(a).all():
        raise UserInputError(f"{path}: expected at least {min_cols} finite numbers per line, got shape {a.shape}")
    return a


def _part_map_from_json(root, catids):
    """Part ids per category from catid_partid_to_overallid.json ({"<catid>_<partid>": overall id}), or None."""
    path = os.path.join(root, "catid_partid_to_overallid.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            table = json.load(f)
        parts = {c: [] for c in catids}
        for key, overall in table.items():
            catid = key.rsplit("_", 1)[0]
            if catid in parts:
                parts[catid].append(int(overall))
        return [sorted(parts[c]) for c in catids]
    except Exception as exc:
        raise UserInputError(f"cannot read {path}: {exc}") from exc


def _standard_part_map(names, where):
    unknown = [n for n in names if n not in SHAPENETPART_PARTS]
    if unknown:
        raise UserInputError(f"{where}: categories {unknown} are not ShapeNetPart categories and no "
                             f"catid_partid_to_overallid.json gives their parts")
    return [SHAPENETPART_PARTS[n] for n in names]


SHAPENETPART_NUM_PARTS = 50


class PartSet(PointCloudSet):
    """Part-segmentation set; `part_map[c]` lists the global part ids of category c."""
    task = "partseg"
    categories: List[str] = []
    part_map: List[List[int]] = []

    total_parts = None   # size of the global part-id space when known (50 for ShapeNetPart's own categories)

    @property
    def num_parts(self):
        return self.total_parts or max(max(p) for p in self.part_map) + 1

    def _check_part_map(self, where):
        flat = [p for parts in self.part_map for p in parts]
        if any(not parts for parts in self.part_map) or len(set(flat)) != len(flat) or min(flat) < 0:
            raise UserInputError(f"{where}: every category needs its own non-negative part ids (got {self.part_map})")


class PartArraySet(PartSet):
    def __init__(self, points, seg, category, categories, part_map, normalize=False, where="", total_parts=None):
        self.points, self.seg, self.category = points, seg.astype(np.int64), category.astype(np.int64)
        self.categories, self.part_map, self.normalize = list(categories), part_map, normalize
        self.total_parts = total_parts
        self._check_part_map(where)
        if not (len(points) == len(seg) == len(category)):
            raise UserInputError(f"{where}: {len(points)} shapes but {len(seg)} part labels and {len(category)} "
                                 f"categories")
        if len(category) and (category.min() < 0 or category.max() >= len(self.categories)):
            raise UserInputError(f"{where}: category labels outside 0..{len(self.categories) - 1}")
        if len(seg) and (seg.min() < 0 or seg.max() >= self.num_parts):
            raise UserInputError(f"{where}: part labels outside 0..{self.num_parts - 1}")

    def __len__(self):
        return len(self.points)

    def __getitem__(self, i):
        p = self.points[i]
        return {"points": normalize_unit_sphere(p) if self.normalize else p, "seg": self.seg[i],
                "category": int(self.category[i])}


def shapenetpart_h5(root, split, num_points=2048, normalize=False):
    lines = [line.split() for line in _read_lines(os.path.join(root, "all_object_categories.txt"))]
    names, catids = [l[0] for l in lines], [l[-1] for l in lines]
    part_map = _part_map_from_json(root, catids)
    total_parts = None if part_map else SHAPENETPART_NUM_PARTS
    part_map = part_map or _standard_part_map(names, root)
    lists = {"train": ["train_hdf5_file_list.txt"], "val": ["val_hdf5_file_list.txt"],
             "test": ["test_hdf5_file_list.txt"], "trainval": ["train_hdf5_file_list.txt", "val_hdf5_file_list.txt"]}
    if split not in lists:
        raise UserInputError(f"shapenetpart_h5 has splits {sorted(lists)}, not {split!r}")
    points, seg, cat = [], [], []
    for path in _h5_split_files(root, lists[split], split):
        d = read_h5(path, ["data", "label", "pid"])
        pts, lab, pid = _check_points(d["data"], path), d["label"].reshape(-1), d["pid"]
        if pid.shape != pts.shape[:2] or len(lab) != len(pts):
            raise UserInputError(f"{path}: 'data' {pts.shape}, 'label' {d['label'].shape} and 'pid' {pid.shape} "
                                 f"do not match (expected (S, P, 3), (S, 1), (S, P))")
        points.append(_take(pts, num_points, path))
        seg.append(pid[:, :num_points])
        cat.append(lab)
    return PartArraySet(np.concatenate(points), np.concatenate(seg), np.concatenate(cat), names, part_map,
                        normalize, root, total_parts)


class ShapeNetPartNormal(PartSet):
    """shapenetcore_partanno_segmentation_benchmark_v0_normal: text files read on access; `num_points` points are
    drawn per shape with a generator seeded by (seed, index), with replacement when the shape has fewer."""

    def __init__(self, root, split, num_points=2048, normalize=True, seed=0):
        lines = [line.split() for line in _read_lines(os.path.join(root, "synsetoffset2category.txt"))]
        self.categories = sorted(l[0] for l in lines)
        synset_to_cat = {l[1]: self.categories.index(l[0]) for l in lines}
        self.part_map = _standard_part_map(self.categories, root)
        self.total_parts = SHAPENETPART_NUM_PARTS
        self._check_part_map(root)
        names = {"train": ["train"], "val": ["val"], "test": ["test"], "trainval": ["train", "val"]}
        if split not in names:
            raise UserInputError(f"shapenetpart_normal has splits {sorted(names)}, not {split!r}")
        self.files, self.category = [], []
        for name in names[split]:
            path = os.path.join(root, "train_test_split", f"shuffled_{name}_file_list.json")
            with open(_need(path, "split file")) as f:
                entries = json.load(f)
            for entry in entries:           # "shape_data/<synset>/<shape id>"
                synset, shape = entry.split("/")[-2:]
                if synset not in synset_to_cat:
                    raise UserInputError(f"{path}: synset {synset} is not in synsetoffset2category.txt")
                self.files.append(os.path.join(root, synset, shape + ".txt"))
                self.category.append(synset_to_cat[synset])
        self.num_points, self.normalize, self.seed = num_points, normalize, seed

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        a = _load_txt(self.files[i], min_cols=7)
        rng = np.random.default_rng([self.seed, i])
        choice = rng.choice(len(a), self.num_points, replace=len(a) < self.num_points)
        pts, seg = a[choice, :3], a[choice, -1].astype(np.int64)
        parts = self.part_map[self.category[i]]
        if seg.min() < parts[0] or seg.max() > parts[-1]:
            raise UserInputError(f"{self.files[i]}: part labels {np.unique(seg).tolist()} are not parts of "
                                 f"{self.categories[self.category[i]]} ({parts})")
        return {"points": normalize_unit_sphere(pts) if self.normalize else pts, "seg": seg,
                "category": self.category[i]}


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
