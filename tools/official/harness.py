"""What every official peer of tools/compare_official.py shares: how a peer is described (`OfficialCode`), how its
checkout is recognised and imported for one run and dropped after it, and the CPU stand-in for its hard-coded CUDA
calls (smoke tests only; on a GPU nothing is patched)."""
import contextlib
import os
import sys
from dataclasses import dataclass, field


@dataclass(frozen=True)
class OfficialCode:
    """One official code base: how to recognise its checkout, import it and run it."""
    title: str
    run: object                 # (checkout, fp_model, images, w_bits, a_bits, seed, device, options) -> (model, s)
    paths: tuple                # folders (relative to the checkout) put on sys.path, the first one holding `markers`
    markers: tuple              # files that identify the checkout
    modules: tuple              # top-level module names it imports, dropped after each run so codes never mix
    calib_num: int              # its calibration set size
    ours: str                   # our recipe it is compared with
    options: dict = field(default_factory=dict)   # --official-args KEY -> type
    chdir: bool = False         # run with the checkout as working folder
    # (checkout, fp_model, bits list, options, calib_num) -> None: refuses what the code cannot run, before any work
    preflight: object = None
    # (options, calib_num, w_bits, a_bits) -> dict: the settings the official side runs with (fidelity.json)
    settings: object = None
    # (recipe, options, calib_num) -> None: our recipe given the official counts it has a knob for, beyond the
    # passes' (compare_official.OURS_KNOBS)
    tune_ours: object = None


def check_checkout(code, repo_dir):
    """Raise a UserInputError unless `repo_dir` holds the named official code base."""
    from plugin.errors import UserInputError
    if not os.path.isdir(repo_dir):
        raise UserInputError(f"official checkout {repo_dir} is not a folder")
    root = os.path.join(repo_dir, code.paths[0])
    missing = [m for m in code.markers if not os.path.isfile(os.path.join(root, m))]
    if missing:
        where = "/".join(p for p in (code.paths[0], "") if p)
        raise UserInputError(f"{repo_dir} does not look like a {code.title} checkout (no {where}{', '.join(missing)})")


@contextlib.contextmanager
def official_import_path(code, repo_dir):
    """Make the official code importable (and, if it needs it, the working folder) for the duration of one run."""
    check_checkout(code, repo_dir)
    repo_dir = os.path.abspath(repo_dir)
    saved_path, saved_cwd = list(sys.path), os.getcwd()

    def drop_modules():
        for name in list(sys.modules):
            if name.split(".")[0] in code.modules:
                del sys.modules[name]

    drop_modules()
    for p in reversed(code.paths):
        sys.path.insert(0, os.path.join(repo_dir, p))
    if code.chdir:
        os.chdir(repo_dir)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        sys.path[:] = saved_path  # the official scripts add their own entries ('.', '..') at import
        drop_modules()


@contextlib.contextmanager
def cuda_calls_stay_on(device):
    """On a CPU, make the official code's hard-coded `.cuda()` / `.to('cuda')` leave tensors where they are."""
    if str(device).startswith("cuda"):
        yield
        return
    import torch

    def cpu(d):
        is_cuda = (isinstance(d, str) and d.startswith("cuda")) or (isinstance(d, torch.device) and d.type == "cuda")
        return "cpu" if is_cuda else d

    saved = torch.Tensor.to, torch.Tensor.cuda, torch.nn.Module.cuda
    tensor_to = saved[0]

    def to(self, *args, **kwargs):
        if args:
            args = (cpu(args[0]),) + args[1:]
        if "device" in kwargs:
            kwargs["device"] = cpu(kwargs["device"])
        return tensor_to(self, *args, **kwargs)

    torch.Tensor.to, torch.Tensor.cuda, torch.nn.Module.cuda = to, lambda self, *a, **k: self, lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.to, torch.Tensor.cuda, torch.nn.Module.cuda = saved


def is_swin(model):
    from timm.models.swin_transformer import SwinTransformer
    return isinstance(model, SwinTransformer)


def labelled(images):
    """(images, zero labels): the (input, target) batches the official loaders yield; the targets are never read
    for anything but their own (replaced) evaluation."""
    import torch
    return images, torch.zeros(len(images), dtype=torch.long)
