"""Checkpoints of a running calibration, so a crashed or pre-empted run continues where it stopped.

The reconstruction passes (block_recon, sos, lowrank, qdrop_recon) and the search passes (hessian_search,
output_search) visit units one by one; every unit they visit gets a step number (counted over the whole `quantize`
call). After each finished unit the whole model state is written to `DIR/calib-<step>.safetensors`, then
`DIR/calib.json` (recipe, model and calibration-data fingerprints, seed, pass index, unit index and name, step, the
per-unit errors and rollbacks so far, and the pass's own `pass_state`) is replaced to point at it; both writes are
atomic (temporary file, then rename), and the JSON is written last, so a kill at any moment leaves the previous complete
checkpoint in force.

Resuming replays the same `quantize` call: the basic calibration and the passes run as before, but every unit up to
the checkpoint's step is skipped, and the saved state is loaded in place of the last one. Work done between units
(SOS stage 2 reparameterisation, low-rank merging) runs again, so the model has the structure the saved state was
taken from. Units are independent given their inputs (each has its own seeded generator, or, in output_search, the
pass's one generator continues from the state saved in `pass_state`), so the resumed run gives the same tensors as an
uninterrupted one.
"""
import hashlib
import json
import logging
import os

import torch

from .errors import CheckpointError
from .io import LOAD_HOOKS, _atomic_write, write_json

FORMAT = "vitq-calib-checkpoint"
FORMAT_VERSION = 1
META = "calib.json"


def _hash_tensor(h, t):
    t = t.detach().cpu().contiguous().reshape(-1)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def model_fingerprint(model):
    """sha256 of the model's class, state-dict keys, shapes, dtypes and values."""
    h = hashlib.sha256(type(model).__name__.encode())
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        _hash_tensor(h, value)
    return h.hexdigest()


def data_fingerprint(batches):
    """sha256 over the tensors of the calibration batches (nested lists, tuples, dicts; other objects by type)."""
    h = hashlib.sha256(str(len(batches)).encode())

    def walk(obj):
        if torch.is_tensor(obj):
            _hash_tensor(h, obj)
        elif isinstance(obj, (list, tuple)):
            for o in obj:
                walk(o)
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                h.update(str(k).encode())
                walk(obj[k])
        elif isinstance(obj, (int, float, str, bool)) or obj is None:
            h.update(repr(obj).encode())
        else:
            h.update(type(obj).__name__.encode())
            walk(getattr(obj, "__dict__", {}))
    walk(list(batches))
    return h.hexdigest()


def _comparable_recipe(d):
    """A stored recipe in the current JSON form, its version left out: a checkpoint written before the recipe format
    changed (version 2 dict passes, version 3 without overrides) still resumes when the recipe itself is the same."""
    from .recipe import Recipe
    try:
        d = Recipe.from_dict(d).to_dict()
    except Exception:  # noqa: BLE001  (unreadable: compared as stored, and so refused as a different recipe)
        return d
    d.pop("version", None)
    return d


class CalibCheckpoint:
    """Writes a checkpoint after every finished unit; with `resume`, says which units to skip and restores the state."""

    def __init__(self, directory, recipe, model, calib, seed, resume=False, log=None):
        self.dir, self.log = directory, log or logging.getLogger("plugin.quant").info
        self.identity = {"recipe": recipe.to_dict(), "model": model_fingerprint(model),
                         "calib": data_fingerprint(calib.batches), "seed": int(seed)}
        self.step = 0
        self.resuming = bool(resume)  # passes that keep their own progress files read them only when resuming
        self.resume_step = None
        self.resume_meta = None
        if resume:
            self._read()

    @property
    def meta_path(self):
        return os.path.join(self.dir, META)

    def _read(self):
        if not os.path.isfile(self.meta_path):
            self.log(f"[resume] no checkpoint in {self.dir}: starting from the beginning")
            return
        try:
            with open(self.meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read calibration checkpoint {self.meta_path}: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{self.meta_path} is not a calibration checkpoint (format {FORMAT!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{self.meta_path} has checkpoint version {meta.get('format_version')!r}; "
                                  f"this code reads version {FORMAT_VERSION}")
        what = {"recipe": "a different recipe (method, bit widths or pass options)",
                "model": "a different model or checkpoint", "calib": "different calibration data",
                "seed": "a different seed"}
        stored = dict(meta)
        stored["recipe"] = _comparable_recipe(meta.get("recipe"))
        current = dict(self.identity, recipe=_comparable_recipe(self.identity["recipe"]))
        for key, label in what.items():
            if stored.get(key) != current[key]:
                raise CheckpointError(f"cannot resume from {self.dir}: it was written for {label}; remove it or "
                                      f"choose another --checkpoint-dir")
        if not isinstance(meta.get("step"), int) or not os.path.isfile(os.path.join(self.dir, str(meta.get("file")))):
            raise CheckpointError(f"calibration checkpoint {self.meta_path} is incomplete (no state file)")
        self.resume_step, self.resume_meta = meta["step"], meta
        self.log(f"[resume] {self.dir}: continuing after pass {meta['pass_index']} ({meta['pass']}) unit "
                 f"{meta['unit_index'] + 1} ({meta['unit']}), step {meta['step'] + 1}")

    @property
    def rollbacks(self):
        """The rollbacks recorded up to the checkpoint a resumed run continues from (QuantState.rollbacks)."""
        return list(self.resume_meta.get("rollbacks", [])) if self.resume_meta else []

    @property
    def units(self):
        """The per-unit errors recorded up to that checkpoint (QuantState.units)."""
        return list(self.resume_meta.get("units", [])) if self.resume_meta else []

    def next_unit(self):
        """(step, skip): this unit's step number and whether a resumed run already has it."""
        step = self.step
        self.step += 1
        return step, self.resume_step is not None and step <= self.resume_step

    @property
    def pass_state(self):
        """What the pass that wrote the checkpoint saved beside the model state (`save(pass_state=...)`), or None."""
        return self.resume_meta.get("pass_state") if self.resume_meta else None

    def restore(self, model, pass_index, unit_index):
        """Load the checkpoint's state into the model (at the step it was written), which the caller, unit
        `unit_index` of pass `pass_index`, is about to skip. A checkpoint written by another unit at that step (by an
        older version, before a pass got units of its own) is refused instead of loaded out of place."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        meta = self.resume_meta
        if (meta.get("pass_index"), meta.get("unit_index")) != (pass_index, unit_index):
            raise CheckpointError(
                f"cannot resume from {self.dir}: its step {self.resume_step + 1} is unit {meta.get('unit_index')} "
                f"(from 0) of pass {meta.get('pass_index')} ({meta.get('pass')}), where this version has unit "
                f"{unit_index} of pass {pass_index}: it was written by an older version; remove it or choose another "
                f"--checkpoint-dir")
        path = os.path.join(self.dir, self.resume_meta["file"])
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        try:
            state = load_file(path, device=str(device))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read calibration checkpoint {path}: {exc}") from exc
        for hook in LOAD_HOOKS.values():
            hook(model, state)
        for name, module in model.named_modules():
            key = f"{name}.bias" if name else "bias"
            if getattr(module, "bias", False) is None and key in state:
                module.bias = torch.nn.Parameter(torch.zeros_like(state[key]))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"calibration checkpoint {path} does not match the model at step "
                                  f"{self.resume_step + 1}: {str(exc).splitlines()[-1].strip()}") from exc
        self.resume_step = None  # from here on, units run and write checkpoints again

    def save(self, model, step, pass_index, pass_kind, unit_index, unit_name, qstate, pass_state=None):
        """Write the model state after a finished unit; `pass_state` (JSON data) is what the pass needs besides the
        model to continue exactly (output_search: its random generator), read back as `pass_state` on resume."""
        from safetensors.torch import save_file
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        name = f"calib-{step:05d}.safetensors"
        _atomic_write(os.path.join(self.dir, name), lambda p: save_file(state, p, metadata={"format": FORMAT}))
        meta = dict(format=FORMAT, format_version=FORMAT_VERSION, **self.identity, step=step, file=name,
                    pass_index=pass_index, **{"pass": pass_kind}, unit_index=unit_index, unit=unit_name,
                    rollbacks=list(qstate.rollbacks), units=list(qstate.units))
        if pass_state is not None:
            meta["pass_state"] = pass_state
        write_json(self.meta_path, meta, indent=1)
        for old in os.listdir(self.dir):  # earlier states are superseded once the JSON points at the new one
            if old.startswith("calib-") and old.endswith(".safetensors") and old != name:
                try:
                    os.remove(os.path.join(self.dir, old))
                except OSError:
                    pass


class UnitSteps:
    """The checkpoint side of a pass that runs in units (hessian_search, output_search, reconstruction): each unit is
    one step of the run's checkpoint (`ctx.checkpoint`, a CalibCheckpoint, or None without a checkpoint directory);
    a resumed run skips the units it holds, loading the saved state at the last of them, and a save follows each unit
    that runs."""

    def __init__(self, ctx, count, tag):
        self.ctx, self.ckpt, self.tag, self.count = ctx, ctx.checkpoint, tag, count
        self.steps = [self.ckpt.next_unit() if self.ckpt is not None else (None, False) for _ in range(count)]

    def finished(self, i):
        """Whether unit i finished in the run this one resumes."""
        return self.steps[i][1]

    def skip(self, i, where, on_restore=None):
        """`finished(i)`; at the last finished unit the checkpoint is loaded into the model, `on_restore(checkpoint)`
        runs (what the pass restores besides the model) and the resume is logged."""
        step, skip = self.steps[i]
        if skip and step == self.ckpt.resume_step:
            self.ckpt.restore(self.ctx.model, self.ctx.pass_index, i)
            if on_restore is not None:
                on_restore(self.ckpt)
            self.ctx.log(f"[{self.tag}] resumed after unit {i + 1}/{self.count} ({where})")
        return skip

    def save(self, i, where, pass_state=None):
        """The checkpoint after unit i (`where` names it), when there is a checkpoint directory; `pass_state`: a
        function returning what the pass saves besides the model (called only then)."""
        if self.ckpt is not None:
            ctx = self.ctx
            self.ckpt.save(ctx.model, self.steps[i][0], ctx.pass_index, ctx.pass_kind, i, where, ctx.state,
                           pass_state=None if pass_state is None else pass_state())


__all__ = ["CalibCheckpoint", "UnitSteps", "data_fingerprint", "model_fingerprint"]
