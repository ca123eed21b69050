"""A SYNTHETIC part-segmentation data set in the ShapeNetPart HDF5 format, built from Open3D primitive meshes.

Each object is a composite of Open3D primitive meshes (boxes, cylinders, cones, tori, spheres) whose parts carry
labels, e.g. a lamp = disc base + pole + cone shade, a table = box top + 4 box legs. Part sizes are drawn at
random, the object is scaled anisotropically, turned about the vertical axis and tilted slightly, its surface is
sampled uniformly by area, jittered, and normalised into the unit sphere (y up, as in ShapeNetPart). Generation is
deterministic for a given seed.

Written files (the layout of shapenet_part_seg_hdf5_data): ply_data_{train,val,test}0.h5 with data (S, P, 3)
float32, label (S, 1) uint8 category, pid (S, P) uint8 global part id; {train,val,test}_hdf5_file_list.txt;
all_object_categories.txt; catid_partid_to_overallid.json; overallid_to_catid_partid.json; part_names.json; and
README.txt. These are not real shapes: anything reported on them must say SYNTHETIC.
"""
import json
import os
import shutil
import tempfile

import numpy as np

from ..errors import UserInputError
from ..quant.io import umask_mode


def _o3d():
    try:
        import open3d as o3d
    except ImportError as exc:
        raise UserInputError(f"the synthetic part set is built with open3d (pip install open3d-cpu==0.20.0; it needs "
                             f"libusb-1.0): {exc}") from exc
    return o3d


class Part:
    """A labelled triangle mesh (numpy vertices/triangles) taken from an Open3D primitive."""

    def __init__(self, mesh, label):
        self.v = np.asarray(mesh.vertices, dtype=np.float64).copy()
        self.t = np.asarray(mesh.triangles, dtype=np.int64).copy()
        self.label = label

    def scale(self, s):
        self.v = self.v * np.asarray(s, dtype=np.float64)
        return self

    def rotate(self, axis, angle):
        self.v = self.v @ _rot(axis, angle).T
        return self

    def move(self, *xyz):
        self.v = self.v + np.asarray(xyz, dtype=np.float64)
        return self


def _rot(axis, angle):
    c, s = np.cos(angle), np.sin(angle)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


# Primitive constructors, all centred on the origin with z as the up axis while building.
def box(o3d, w, d, h, label):
    return Part(o3d.geometry.TriangleMesh.create_box(w, d, h), label).move(-w / 2, -d / 2, -h / 2)


def cylinder(o3d, r, h, label, res=32):
    return Part(o3d.geometry.TriangleMesh.create_cylinder(r, h, res, 4), label)


def cone(o3d, r, h, label, res=32):   # base at z=0, apex at z=h
    return Part(o3d.geometry.TriangleMesh.create_cone(r, h, res, 2), label)


def torus(o3d, R, r, label):          # in the xy plane
    return Part(o3d.geometry.TriangleMesh.create_torus(R, r, 32, 12), label)


def sphere(o3d, r, label):
    return Part(o3d.geometry.TriangleMesh.create_sphere(r, 16), label)


# Each builder returns parts with category-local labels 0..len(names)-1.
def lamp(o3d, rng):
    base_r, base_h = rng.uniform(0.3, 0.5), rng.uniform(0.04, 0.1)
    pole_h, pole_r = rng.uniform(0.8, 1.5), rng.uniform(0.03, 0.06)
    shade_r, shade_h = rng.uniform(0.3, 0.55), rng.uniform(0.3, 0.5)
    return [cylinder(o3d, base_r, base_h, 0).move(0, 0, base_h / 2),
            cylinder(o3d, pole_r, pole_h, 1).move(0, 0, base_h + pole_h / 2),
            cone(o3d, shade_r, shade_h, 2).move(0, 0, base_h + pole_h - shade_h * 0.3)]


def table(o3d, rng):
    w, d, t = rng.uniform(1.0, 1.8), rng.uniform(0.6, 1.2), rng.uniform(0.05, 0.12)
    h, leg = rng.uniform(0.6, 1.0), rng.uniform(0.06, 0.12)
    parts = [box(o3d, w, d, t, 0).move(0, 0, h + t / 2)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(box(o3d, leg, leg, h, 1).move(sx * (w / 2 - leg), sy * (d / 2 - leg), h / 2))
    return parts


def chair(o3d, rng):
    w, d, t = rng.uniform(0.5, 0.8), rng.uniform(0.5, 0.8), rng.uniform(0.05, 0.1)
    h, leg, back_h = rng.uniform(0.4, 0.6), rng.uniform(0.04, 0.08), rng.uniform(0.5, 0.9)
    parts = [box(o3d, w, d, t, 0).move(0, 0, h + t / 2),
             box(o3d, w, t, back_h, 1).move(0, -d / 2 + t / 2, h + t + back_h / 2)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(box(o3d, leg, leg, h, 2).move(sx * (w / 2 - leg), sy * (d / 2 - leg), h / 2))
    return parts


def mug(o3d, rng):
    r, h = rng.uniform(0.3, 0.45), rng.uniform(0.6, 1.0)
    R, tube = rng.uniform(0.22, 0.32) * h / 0.8, rng.uniform(0.05, 0.09)
    return [cylinder(o3d, r, h, 0).move(0, 0, h / 2),
            torus(o3d, R, tube, 1).rotate("x", np.pi / 2).move(r + 0.5 * R, 0, h / 2)]


def rocket(o3d, rng):
    r, h, nose = rng.uniform(0.12, 0.22), rng.uniform(1.2, 2.0), rng.uniform(0.3, 0.6)
    fin_w, fin_h = rng.uniform(0.2, 0.35), rng.uniform(0.3, 0.5)
    parts = [cylinder(o3d, r, h, 0).move(0, 0, h / 2), cone(o3d, r, nose, 1).move(0, 0, h)]
    n_fins = int(rng.integers(3, 5))
    for k in range(n_fins):
        fin = box(o3d, fin_w, 0.03, fin_h, 2).move(r + fin_w / 2, 0, fin_h / 2)
        parts.append(fin.rotate("z", 2 * np.pi * k / n_fins))
    return parts


def mushroom(o3d, rng):
    stem_r, stem_h = rng.uniform(0.08, 0.18), rng.uniform(0.4, 0.9)
    cap_r, flat = rng.uniform(0.35, 0.6), rng.uniform(0.35, 0.7)
    return [cylinder(o3d, stem_r, stem_h, 0).move(0, 0, stem_h / 2),
            sphere(o3d, cap_r, 1).scale((1, 1, flat)).move(0, 0, stem_h)]


def dumbbell(o3d, rng):
    bar_l, bar_r = rng.uniform(0.8, 1.4), rng.uniform(0.03, 0.06)
    w_r, w_t = rng.uniform(0.2, 0.35), rng.uniform(0.1, 0.25)
    parts = [cylinder(o3d, bar_r, bar_l, 0).rotate("y", np.pi / 2)]
    for s in (-1, 1):
        parts.append(cylinder(o3d, w_r, w_t, 1).rotate("y", np.pi / 2).move(s * (bar_l / 2 - w_t / 2), 0, 0))
    return parts


def guitar(o3d, rng):
    body_r, body_t = rng.uniform(0.3, 0.45), rng.uniform(0.08, 0.15)
    neck_l, neck_w = rng.uniform(0.8, 1.2), rng.uniform(0.06, 0.1)
    head_l = rng.uniform(0.15, 0.25)
    body = [cylinder(o3d, body_r, body_t, 0).rotate("x", np.pi / 2),
            cylinder(o3d, body_r * 0.8, body_t, 0).rotate("x", np.pi / 2).move(0, 0, body_r * 1.1)]
    return body + [box(o3d, neck_w, body_t * 0.6, neck_l, 1).move(0, 0, body_r * 1.1 + neck_l / 2),
                   box(o3d, neck_w * 1.8, body_t * 0.6, head_l, 2).move(0, 0, body_r * 1.1 + neck_l + head_l / 2)]


CATEGORIES = [
    ("Lamp", lamp, ["base", "pole", "shade"]),
    ("Table", table, ["top", "leg"]),
    ("Chair", chair, ["seat", "back", "leg"]),
    ("Mug", mug, ["body", "handle"]),
    ("Rocket", rocket, ["body", "nose", "fin"]),
    ("Mushroom", mushroom, ["stem", "cap"]),
    ("Dumbbell", dumbbell, ["bar", "weight"]),
    ("Guitar", guitar, ["body", "neck", "head"]),
]


def part_offsets():
    offsets, n = [], 0
    for _, _, names in CATEGORIES:
        offsets.append(n)
        n += len(names)
    return offsets, n


def sample_object(o3d, builder, offset, num_points, rng):
    """(P, 3) float32 points and (P,) global part ids of one random object."""
    parts = builder(o3d, rng)
    verts, tris, labels, base = [], [], [], 0
    for p in parts:
        verts.append(p.v)
        tris.append(p.t + base)
        labels.append(np.full(len(p.t), p.label))
        base += len(p.v)
    v = np.concatenate(verts) * rng.uniform(0.85, 1.15, size=3)
    t, lab = np.concatenate(tris), np.concatenate(labels)
    tri = v[t]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    pick = rng.choice(len(t), num_points, p=area / area.sum())
    u, w = rng.random(num_points), rng.random(num_points)
    flip = u + w > 1
    u[flip], w[flip] = 1 - u[flip], 1 - w[flip]
    a, b, c = tri[pick, 0], tri[pick, 1], tri[pick, 2]
    pts = a + u[:, None] * (b - a) + w[:, None] * (c - a)
    pts += rng.normal(0, 0.005, pts.shape)
    # Slight tilt, free turn about the vertical axis, then z-up -> y-up (ShapeNet convention).
    pts = pts @ _rot("x", rng.uniform(-0.17, 0.17)).T @ _rot("z", rng.uniform(0, 2 * np.pi)).T
    pts = pts[:, [0, 2, 1]] * np.array([1, 1, -1])
    pts -= pts.mean(0)
    pts /= np.linalg.norm(pts, axis=1).max()
    order = rng.permutation(num_points)
    return pts[order].astype(np.float32), (lab[pick] + offset)[order].astype(np.uint8)


def generate(out_dir, per_category, num_points=2048, seed=0):
    """Write the data set into out_dir (built in a temporary folder beside it, then moved into place).

    per_category maps split name -> shapes per category, e.g. {'train': 250, 'val': 25, 'test': 50}.
    Returns the number of parts.
    """
    import h5py
    o3d = _o3d()
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-synthetic-")
    try:
        offsets, num_parts = part_offsets()
        catids = [f"syn{i:05d}" for i in range(len(CATEGORIES))]
        for s_idx, (split, count) in enumerate(per_category.items()):
            rng = np.random.default_rng([seed, s_idx])
            data, label, pid = [], [], []
            for c, (_, builder, _) in enumerate(CATEGORIES):
                for _ in range(count):
                    pts, seg = sample_object(o3d, builder, offsets[c], num_points, rng)
                    data.append(pts), pid.append(seg), label.append(c)
            order = rng.permutation(len(data))
            name = f"ply_data_{split}0.h5"
            with h5py.File(os.path.join(tmp, name), "w") as f:
                packed = dict(compression="gzip", compression_opts=4, shuffle=True)   # smaller files to carry
                f.create_dataset("data", data=np.stack(data)[order], **packed)
                f.create_dataset("label", data=np.asarray(label, dtype=np.uint8)[order, None])
                f.create_dataset("pid", data=np.stack(pid)[order], **packed)
            with open(os.path.join(tmp, f"{split}_hdf5_file_list.txt"), "w") as f:
                f.write(name + "\n")
        with open(os.path.join(tmp, "all_object_categories.txt"), "w") as f:
            f.writelines(f"{name}\t{catid}\n" for (name, _, _), catid in zip(CATEGORIES, catids))
        c2o, o2c, names = {}, [], {}
        for c, ((cat, _, parts), catid) in enumerate(zip(CATEGORIES, catids)):
            for j, part in enumerate(parts):
                c2o[f"{catid}_{j + 1}"] = offsets[c] + j
                o2c.append([catid, j + 1])
                names[str(offsets[c] + j)] = f"{cat}/{part}"
        for fname, obj in (("catid_partid_to_overallid.json", c2o), ("overallid_to_catid_partid.json", o2c),
                           ("part_names.json", names)):
            with open(os.path.join(tmp, fname), "w") as f:
                json.dump(obj, f, indent=1)
        with open(os.path.join(tmp, "README.txt"), "w") as f:
            f.write(f"SYNTHETIC part-segmentation data (not ShapeNetPart): {len(CATEGORIES)} categories, {num_parts} "
                    f"parts, composite objects of Open3D primitives, made by plugin/pointcloud/synthetic.py "
                    f"(tools/make_synthetic_parts.py) with seed {seed}, {num_points} points per shape, shapes per "
                    f"category {per_category}. Report results on it as SYNTHETIC.\n")
        os.chmod(tmp, umask_mode(directory=True))   # mkdtemp makes it private
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return num_parts
