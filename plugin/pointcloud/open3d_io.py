"""Reading .ply / .pcd / .off (and other Open3D formats) into model input, and rendering part labels to a PNG.

Rendering uses Open3D's offscreen renderer (Filament; on machines without a GPU it needs a Vulkan driver such as
Mesa's llvmpipe: `apt-get install libvulkan1 mesa-vulkan-drivers`). When that is not available the image is drawn
as a matplotlib 3-D scatter instead; `render_parts` returns which one was used.
"""
import os
import sys

import numpy as np

from ..errors import UserInputError
from .readers import normalize_unit_sphere

MESH_EXTS = (".off", ".obj", ".stl", ".gltf", ".glb")
CLOUD_EXTS = (".pcd", ".xyz", ".xyzn", ".xyzrgb", ".pts")


def _open3d():
    try:
        import open3d as o3d
    except ImportError as exc:
        raise UserInputError(f"reading this file needs open3d (pip install open3d-cpu; it needs libusb-1.0): {exc}")
    return o3d


def read_points(path: str, num_points: int = 1024, seed: int = 0, normalize: bool = True) -> np.ndarray:
    """(num_points, 3) float32 points from a point-cloud or mesh file.

    Meshes (.off, .obj, .stl, and .ply files with faces) are sampled uniformly on their surface with a seeded
    generator; clouds with more points than needed are subsampled, with fewer resampled with replacement.
    """
    if not os.path.isfile(path):
        raise UserInputError(f"point file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in MESH_EXTS + CLOUD_EXTS + (".ply",):
        raise UserInputError(f"unsupported point file type {ext!r}; use one of {MESH_EXTS + CLOUD_EXTS + ('.ply',)}")
    o3d = _open3d()
    rng = np.random.default_rng(seed)
    pts = None
    if ext in MESH_EXTS or ext == ".ply":
        mesh = _checked_read(o3d, o3d.io.read_triangle_mesh, path)
        if len(mesh.triangles):
            pts = _sample_mesh(np.asarray(mesh.vertices), np.asarray(mesh.triangles), num_points, rng)
        elif ext in MESH_EXTS:
            raise UserInputError(f"{path}: no triangles could be read (corrupted or empty mesh)")
    if pts is None:
        pts = np.asarray(_checked_read(o3d, o3d.io.read_point_cloud, path).points)
        if len(pts) == 0:
            raise UserInputError(f"{path}: no points could be read (corrupted or empty file)")
        pts = pts[rng.choice(len(pts), num_points, replace=len(pts) < num_points)]
    if not np.isfinite(pts).all():
        raise UserInputError(f"{path}: NaN or inf coordinates")
    pts = pts.astype(np.float32)
    if not np.isfinite(pts).all():
        raise UserInputError(f"{path}: coordinates beyond the float32 range")
    return normalize_unit_sphere(pts) if normalize else pts


def _flush_c_stdout():
    try:
        import ctypes
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


def _checked_read(o3d, reader, path):
    """Run an Open3D reader and refuse the file when the reader reports a failure.

    Open3D only prints a warning when a file is damaged ("Read PLY failed: unable to read file") and may return the
    points read so far plus uninitialised memory, so its own messages (written by C++ to the process's stdout) are
    captured and searched."""
    import tempfile
    with tempfile.TemporaryFile(mode="w+b") as log, \
            o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Warning):
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            result = reader(path)
        except (UnicodeDecodeError, RuntimeError, ValueError) as exc:  # binary junk in a text format's header
            raise UserInputError(f"{path}: Open3D could not read the file: {type(exc).__name__}: {exc}") from exc
        finally:
            _flush_c_stdout()  # a file stdout is block-buffered in C: flush before switching back
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        messages = log.read().decode("utf-8", "replace")
    failures = [line for line in messages.splitlines() if "fail" in line.lower()]
    if failures:
        message = failures[0].replace("\x1b[1;33m", "").replace("\x1b[0;m", "").strip()
        raise UserInputError(f"{path}: Open3D could not read the file (corrupted or truncated): {message}")
    return result


def _sample_mesh(vertices, triangles, n, rng):
    """Area-weighted uniform surface sampling (barycentric coordinates)."""
    tri = vertices[triangles]                                            # (T, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if area.sum() <= 0:
        raise UserInputError("the mesh has zero surface area")
    t = rng.choice(len(tri), n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    a, b, c = tri[t, 0], tri[t, 1], tri[t, 2]
    return a + u[:, None] * (b - a) + v[:, None] * (c - a)


def part_colors(labels: np.ndarray) -> np.ndarray:
    """A distinct RGB colour in [0, 1] per label: the ten tab10 colours, then the lighter tab20 ones, cycled."""
    import matplotlib
    palette = np.concatenate([np.asarray(matplotlib.colormaps["tab10"].colors),
                              np.asarray(matplotlib.colormaps["tab20"].colors)[1::2]])
    return palette[np.asarray(labels) % len(palette)]


_RENDERERS = {}


def _render_open3d(points, colors, size, point_size):
    o3d = _open3d()
    rendering = o3d.visualization.rendering
    if size not in _RENDERERS:  # Filament allows few renderers per process: keep one per size
        _RENDERERS[size] = rendering.OffscreenRenderer(*size)
    r = _RENDERERS[size]
    r.scene.clear_geometry()
    r.scene.set_background([1.0, 1.0, 1.0, 1.0])
    r.scene.view.set_post_processing(False)  # no tone mapping: colours come out as given
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
    cloud.colors = o3d.utility.Vector3dVector(colors.astype(np.float64))
    mat = rendering.MaterialRecord()
    mat.shader, mat.point_size = "defaultUnlit", float(point_size)
    r.scene.add_geometry("cloud", cloud, mat)
    centre = points.mean(0)
    radius = float(np.linalg.norm(points - centre, axis=1).max()) or 1.0
    eye = centre + radius * np.array([1.6, 1.2, 1.9])
    r.setup_camera(45.0, centre, eye, [0.0, 1.0, 0.0])
    return np.asarray(r.render_to_image())


def _render_matplotlib(points, colors, size, point_size):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    ax = fig.add_subplot(projection="3d")
    # Matplotlib's z axis is up; the data sets use y up.
    ax.scatter(points[:, 0], points[:, 2], points[:, 1], c=colors, s=point_size, depthshade=False)
    ax.set_axis_off()
    lim = np.abs(points).max()
    ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_zlim(-lim, lim)
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img


def render_parts(points, labels, out_path, titles=None, size=(480, 480), point_size=4.0, backend="auto"):
    """Render one or more clouds coloured by label side by side into a PNG.

    points/labels: an array each, or lists of arrays (one panel per entry, e.g. prediction and ground truth).
    Returns the backend used: 'open3d' (offscreen renderer) or 'matplotlib' (fallback scatter).
    """
    from PIL import Image, ImageDraw
    if isinstance(points, np.ndarray):
        points, labels = [points], [labels]
    panels = None
    if backend in ("auto", "open3d"):
        try:
            panels = [_render_open3d(np.asarray(p), part_colors(l), tuple(size), point_size)
                      for p, l in zip(points, labels)]
            backend = "open3d"
        except Exception:
            if backend == "open3d":
                raise
            panels = None
    if panels is None:
        panels = [_render_matplotlib(np.asarray(p), part_colors(l), tuple(size), point_size)
                  for p, l in zip(points, labels)]
        backend = "matplotlib"
    img = Image.fromarray(np.concatenate(panels, axis=1).astype(np.uint8))
    if titles:
        draw = ImageDraw.Draw(img)
        for i, title in enumerate(titles):
            draw.text((i * panels[0].shape[1] + 8, 8), title, fill=(0, 0, 0))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    img.save(out_path)
    return backend
