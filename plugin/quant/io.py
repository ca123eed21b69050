"""Save and reload a calibrated model: safetensors for tensors, JSON for the recipe, adapter and versions.

Nothing here needs pickle. `load_quantized(fp_model, path)` rebuilds the quantized structure on a freshly built float
model from the saved plan (plugin.quant.plan: every module's specs and its quantizers' buffer shapes; files written
before plans resolve the recipe's plan through the adapter instead), then loads every tensor (reparameterised weights,
added biases, quantizer parameters);
`load_quantized(path)` first builds that float model from the JSON's `model` record (plugin.quant.model_record).
A frozen model (plugin.quant.deploy.freeze) is saved as it is: the JSON lists its Int8Linear layers with their constructor
arguments, and loading rebuilds them in place of the quantized Linears before the tensors load.
Weights on a plain integer grid are stored as packed codes (plugin.quant.pack; format 2, the JSON's `packed` record
says which weights are packed and why the others stay float); files of format 1 hold every weight as float and load
as they always did.
"""
import inspect
import json
import os
import platform
import tempfile

import torch
import torch.nn as nn

from .errors import CheckpointError, ConfigError
from .quant_state import QuantState, attach_state, require_state
from .registry import Registry

FORMAT = "vitq-quantized"
FORMAT_VERSION = 2  # 2: packed integer weight codes (plugin.quant.pack); 1: float weights only
# Functions (model, state) run after the quantized structure is rebuilt and before the tensors load: passes that add
# submodules (e.g. unmerged low-rank branches) register one to re-create them.
LOAD_HOOKS = Registry("load hook")


def register_load_hook(fn):
    return LOAD_HOOKS.register(fn.__name__, fn)


def package_versions():
    """Versions of the packages a saved model or report depends on, read from their installed metadata (the core
    imports none of the optional libraries)."""
    from importlib import metadata
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for key, dists in (("timm", ("timm",)), ("mmdet", ("mmdet",)), ("mmengine", ("mmengine",)),
                       ("mmcv", ("mmcv", "mmcv-lite")), ("plugin", ("vitq",))):
        for dist in dists:
            try:
                versions[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def umask_mode(directory=False):
    """The mode `open()` / `os.makedirs` would give a new file (0o666) or folder (0o777) under the process umask,
    e.g. 0o644 / 0o755 under umask 022. Temporary files from `tempfile` are private (0600, 0700): whatever is moved
    into place from one gets this mode first, so a colleague can read the outputs as with any other file."""
    mask = os.umask(0)  # the only way to read the umask: set it and put it back at once
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def _atomic_write(path, write_fn):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path, text):
    """Write `text` to `path` atomically: an interrupted write leaves the old file or none, never part of one."""
    def put(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    _atomic_write(path, put)


def write_json(path, obj, indent=2):
    """`obj` as JSON (sorted keys) at `path`, atomically."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=True))


def save_quantized(model: nn.Module, path: str, extra_meta=None, pack=True):
    """Write `path.safetensors` and `path.json` (each atomically; a `.safetensors` suffix on `path` is dropped).
    The JSON's `model` entry (how to build the float model again) is `extra_meta["model"]` when given, else what a
    registered model recorder says of `model` (timm models, once `import plugin` ran). `pack`: weights on a plain
    integer grid as packed codes (plugin.quant.pack); False keeps every weight float (e.g. to calibrate further from
    the file). The JSON's `size` holds the file's bytes and those it would have with float weights. Returns the two
    file paths."""
    path = model_prefix(path)
    from safetensors.torch import save_file
    qstate = require_state(model, "save_quantized")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "recipe": qstate.recipe.to_dict(),
            "adapter": qstate.adapter, "versions": package_versions(),
            "state": {"rollbacks": qstate.rollbacks, "units": qstate.units, "ranks": qstate.ranks},
            **(extra_meta or {})}
    if "model" not in meta:
        from .model_record import describe_model
        record = describe_model(model)
        if record is not None:
            meta["model"] = record
    if qstate.plan is not None:  # loading builds the quantized modules from it (files without one: the recipe)
        from .plan import with_buffers
        meta["plan"] = with_buffers(model, qstate.plan).to_dict()
    frozen = _frozen_layers(model)
    if frozen or qstate.frozen:
        meta["frozen"] = frozen
    extra_float = 0
    if pack:
        from .pack import float_extra_bytes, pack_state
        meta["packed"] = pack_state(model, state)
        extra_float = float_extra_bytes(meta["packed"], state)
    tensors_path, meta_path = path + ".safetensors", path + ".json"
    _atomic_write(tensors_path, lambda p: save_file(state, p, metadata={"format": FORMAT}))
    size = os.path.getsize(tensors_path)
    meta["size"] = {"file_bytes": size, "float_bytes": size + extra_float}
    write_json(meta_path, meta)
    return tensors_path, meta_path


def _frozen_layers(model):
    """{name: constructor arguments} of the model's Int8Linear layers (each argument is an attribute of its name)."""
    from .deploy.freeze import Int8Linear
    args = [a for a in inspect.signature(Int8Linear.__init__).parameters if a != "self"]
    return {name: {a: getattr(m, a) for a in args} for name, m in model.named_modules() if isinstance(m, Int8Linear)}


def _rebuild_frozen(model, frozen, state, where):
    """Put an Int8Linear of the saved arguments in place of each frozen layer (a quantized Linear after the rebuild),
    on that layer's device, with a bias buffer where the state has one."""
    from .attach import set_submodule
    from .deploy.freeze import Int8Linear
    if not isinstance(frozen, dict):
        raise CheckpointError(f"{where}: 'frozen' must map layer names to Int8Linear arguments")
    for name, kwargs in frozen.items():
        try:
            old = model.get_submodule(name)
            layer = Int8Linear(**kwargs)
        except (AttributeError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: cannot rebuild frozen layer {name!r}: {exc}") from exc
        if f"{name}.bias" in state:
            layer.bias = torch.empty_like(state[f"{name}.bias"])
        device = next((t.device for t in old.parameters()), None)
        set_submodule(model, name, layer.to(device) if device is not None else layer)


def model_prefix(path: str) -> str:
    """The common prefix of a saved model's two files: `out/m`, `out/m.safetensors` and `out/m.json` all name it."""
    for suffix in (".safetensors", ".json"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def read_meta(path: str):
    path = model_prefix(path)
    meta_path = path + ".json"
    if not os.path.isfile(meta_path):
        raise CheckpointError(f"quantized model metadata not found: {meta_path}")
    try:
        meta = json.load(open(meta_path))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("recipe"), dict):
        raise CheckpointError(f"{meta_path} is not a {FORMAT} file")
    version = meta.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{meta_path} has format version {version!r}, newer than this code reads "
                              f"({FORMAT_VERSION}): update vitq")
    return meta


def load_quantized(fp_model, path=None, device=None):
    """Rebuild the quantized model saved at `path` on top of `fp_model` (a float model of the same architecture).

    `path` is the prefix given to save_quantized, or either of its two files. `load_quantized(path)` (no float model)
    builds it from the JSON's `model` record; CheckpointError when the file has none."""
    if path is None and isinstance(fp_model, (str, os.PathLike)):
        fp_model, path = None, fp_model
    path = model_prefix(os.fspath(path))
    from safetensors.torch import load_file
    from .adapter import find_adapter
    from .attach import attach_quantizers
    from .plan import Plan, resolve_plan, shape_buffers
    from .recipe import Recipe
    from safetensors import SafetensorError
    meta = read_meta(path)
    if fp_model is None:
        from .model_record import build_recorded_model
        fp_model = build_recorded_model(meta.get("model"), f"{path}.json")
        if device is not None:
            fp_model = fp_model.to(device)
    try:
        recipe = Recipe.from_dict(meta["recipe"])
    except ConfigError as exc:  # a well-formed recipe this library refuses (a newer version, a bit width out of range)
        raise CheckpointError(f"{path}.json: {exc}") from exc
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}.json holds a malformed recipe: {type(exc).__name__}: {exc}") from exc
    adapter = find_adapter(fp_model, meta.get("adapter"))
    if not adapter.matches(fp_model):
        raise CheckpointError(f"{path} was saved from a model of adapter {adapter.name!r}, which does not match "
                              f"the given {type(fp_model).__name__}")
    try:
        state = load_file(path + ".safetensors", device=str(device) if device else "cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {path}.safetensors: {exc}") from exc
    if "packed" in meta:  # format 2: the float weights back from their codes before anything reads the state
        from .pack import unpack_state
        try:
            unpack_state(state, meta["packed"])
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
    fp_model.eval()
    adapter.prepare(fp_model)
    for p in recipe.passes:  # structural changes of the float network (GELU -> ReLU) come before the quantizers
        if p.STAGE == "pre":
            p.restore(fp_model, adapter)
    if "plan" in meta:  # the saved plan, buffer shapes included: no adapter rules, no resizing while loading
        plan = Plan.from_dict(meta["plan"], where=f"{path}.json")
        if plan.adapter != adapter.name:
            raise CheckpointError(f"{path}.json: the plan was resolved for adapter {plan.adapter!r}, "
                                  f"the file names {adapter.name!r}")
        try:
            attach_quantizers(fp_model, plan)
        except ConfigError as exc:
            raise CheckpointError(f"{path}.json: the saved plan does not fit the model: {exc}") from exc
        shape_buffers(fp_model, plan, device, where=f"{path}.json")
    else:  # saved before plans: resolve the recipe's plan on this model as quantize() did
        plan = resolve_plan(fp_model, recipe, adapter)
        attach_quantizers(fp_model, plan)
    for hook in LOAD_HOOKS.values():
        hook(fp_model, state)
    if "frozen" in meta:
        _rebuild_frozen(fp_model, meta["frozen"], state, f"{path}.json")
    for name, module in fp_model.named_modules():
        key = f"{name}.bias" if name else "bias"
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.LayerNorm)) and getattr(module, "bias", None) is None \
                and key in state:
            module.bias = nn.Parameter(torch.zeros_like(state[key]))  # added by reparameterisation
    try:
        missing, unexpected = fp_model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{path}.safetensors does not match the model: "
                              f"{str(exc).splitlines()[-1].strip()}") from exc
    if missing or unexpected:
        raise CheckpointError(f"{path}.safetensors does not match the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    saved = meta.get("state", {})
    try:  # the records of the run (absent from files written before QuantState)
        records = dict(rollbacks=list(saved.get("rollbacks", [])), units=list(saved.get("units", [])),
                       ranks=dict(saved.get("ranks", {})))
    except (AttributeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}.json holds a malformed 'state': {exc}") from exc
    return attach_state(fp_model, QuantState(recipe, adapter.name, frozen="frozen" in meta, plan=plan,
                                                      **records))
