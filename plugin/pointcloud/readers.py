"""Readers shared by the point-cloud formats (plugin.pointcloud.data, .shapenetpart): files that must exist, list
files, HDF5 arrays, point text files, checks, and the data-set base class."""
import os
from typing import Dict, List

import numpy as np

from ..errors import UserInputError


def normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centre on the mean and scale so the farthest point is at distance 1."""
    points = points - points.mean(0, keepdims=True)
    radius = np.sqrt((points ** 2).sum(1)).max()
    return points / radius if radius > 0 else points


def need_file(path, what):
    if not os.path.exists(path):
        raise UserInputError(f"{what} not found: {path}")
    return path


def read_lines(path):
    with open(need_file(path, "list file")) as f:
        return [line.strip() for line in f if line.strip()]


def read_h5(path: str, keys) -> Dict[str, np.ndarray]:
    """Datasets `keys` of an HDF5 file; a missing, corrupted or truncated file raises UserInputError."""
    import h5py
    need_file(path, "HDF5 file")
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


def check_points(points, path, name="data"):
    if points.ndim != 3 or points.shape[-1] < 3:
        raise UserInputError(f"{path}: '{name}' must have shape (shapes, points, 3), got {points.shape}")
    points = np.asarray(points[..., :3], dtype=np.float32)
    if not np.isfinite(points).all():
        raise UserInputError(f"{path}: '{name}' contains NaN or inf coordinates")
    return points


def h5_split_files(root, list_names, split):
    files = []
    for list_name in list_names:
        # Lists name files by the path of the original repository (e.g. data/modelnet40_ply_hdf5_2048/x.h5):
        # the file is looked up in `root` by its base name.
        files += [os.path.join(root, os.path.basename(line)) for line in read_lines(os.path.join(root, list_name))]
    if not files:
        raise UserInputError(f"no HDF5 files listed for split {split!r} in {root}")
    return files


def take_points(points, num_points, path):
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


def load_txt(path, delimiter=None, max_rows=None, min_cols=3):
    need_file(path, "point file")
    try:
        a = np.loadtxt(path, delimiter=delimiter, max_rows=max_rows, dtype=np.float32, ndmin=2)
    except Exception as exc:
        raise UserInputError(f"cannot parse point file {path}: {exc}") from exc
    if a.shape[1] < min_cols or not np.isfinite(a).all():
        raise UserInputError(f"{path}: expected at least {min_cols} finite numbers per line, got shape {a.shape}")
    return a


__all__ = ["PointCloudSet", "check_points", "h5_split_files", "load_txt", "need_file", "normalize_unit_sphere",
           "read_h5", "read_lines", "take_points"]
