"""ShapeNetPart (Yi et al., 2016) part segmentation in its two published formats: `shapenetpart_h5` (HDF5 with the
part ids) and `ShapeNetPartNormal` (per-shape text files with normals), with the global part ids per category."""
import json
import os
from typing import List

import numpy as np

from ..errors import UserInputError
from .readers import (PointCloudSet, check_points, h5_split_files, load_txt, need_file, normalize_unit_sphere,
                      read_h5, read_lines, take_points)

# ShapeNetPart (Yi et al., 2016): the global part ids of each category; ids are contiguous in category order.
SHAPENETPART_PARTS = {
    "Airplane": [0, 1, 2, 3], "Bag": [4, 5], "Cap": [6, 7], "Car": [8, 9, 10, 11], "Chair": [12, 13, 14, 15],
    "Earphone": [16, 17, 18], "Guitar": [19, 20, 21], "Knife": [22, 23], "Lamp": [24, 25, 26, 27],
    "Laptop": [28, 29], "Motorbike": [30, 31, 32, 33, 34, 35], "Mug": [36, 37], "Pistol": [38, 39, 40],
    "Rocket": [41, 42, 43], "Skateboard": [44, 45, 46], "Table": [47, 48, 49],
}


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
    lines = [line.split() for line in read_lines(os.path.join(root, "all_object_categories.txt"))]
    names, catids = [l[0] for l in lines], [l[-1] for l in lines]
    part_map = _part_map_from_json(root, catids)
    total_parts = None if part_map else SHAPENETPART_NUM_PARTS
    part_map = part_map or _standard_part_map(names, root)
    lists = {"train": ["train_hdf5_file_list.txt"], "val": ["val_hdf5_file_list.txt"],
             "test": ["test_hdf5_file_list.txt"], "trainval": ["train_hdf5_file_list.txt", "val_hdf5_file_list.txt"]}
    if split not in lists:
        raise UserInputError(f"shapenetpart_h5 has splits {sorted(lists)}, not {split!r}")
    points, seg, cat = [], [], []
    for path in h5_split_files(root, lists[split], split):
        d = read_h5(path, ["data", "label", "pid"])
        pts, lab, pid = check_points(d["data"], path), d["label"].reshape(-1), d["pid"]
        if pid.shape != pts.shape[:2] or len(lab) != len(pts):
            raise UserInputError(f"{path}: 'data' {pts.shape}, 'label' {d['label'].shape} and 'pid' {pid.shape} "
                                 f"do not match (expected (S, P, 3), (S, 1), (S, P))")
        points.append(take_points(pts, num_points, path))
        seg.append(pid[:, :num_points])
        cat.append(lab)
    return PartArraySet(np.concatenate(points), np.concatenate(seg), np.concatenate(cat), names, part_map,
                        normalize, root, total_parts)


class ShapeNetPartNormal(PartSet):
    """shapenetcore_partanno_segmentation_benchmark_v0_normal: text files read on access; `num_points` points are
    drawn per shape with a generator seeded by (seed, index), with replacement when the shape has fewer."""

    def __init__(self, root, split, num_points=2048, normalize=True, seed=0):
        lines = [line.split() for line in read_lines(os.path.join(root, "synsetoffset2category.txt"))]
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
            with open(need_file(path, "split file")) as f:
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
        a = load_txt(self.files[i], min_cols=7)
        rng = np.random.default_rng([self.seed, i])
        choice = rng.choice(len(a), self.num_points, replace=len(a) < self.num_points)
        pts, seg = a[choice, :3], a[choice, -1].astype(np.int64)
        parts = self.part_map[self.category[i]]
        if seg.min() < parts[0] or seg.max() > parts[-1]:
            raise UserInputError(f"{self.files[i]}: part labels {np.unique(seg).tolist()} are not parts of "
                                 f"{self.categories[self.category[i]]} ({parts})")
        return {"points": normalize_unit_sphere(pts) if self.normalize else pts, "seg": seg,
                "category": self.category[i]}


__all__ = ["PartArraySet", "PartSet", "SHAPENETPART_NUM_PARTS", "SHAPENETPART_PARTS", "ShapeNetPartNormal",
           "shapenetpart_h5"]
