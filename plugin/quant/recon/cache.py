"""Reconstruction units, their cached inputs and float targets, and the sampler of mini-batches.

A unit is a transformer block (as the adapter names them) or a quantized module outside blocks. Its inputs are captured
as the quantized model gives them (or the float model, `input_source="float"`), its targets are its outputs when the
whole model runs as the float network; both forwards stop at the unit (an exception raised from a hook), so unit k
costs a forward up to k only.
"""
import math
from dataclasses import dataclass
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..calibrate import StopForward
from ..errors import CalibrationError


@dataclass
class Unit:
    name: str
    module: nn.Module
    sites: list


def reconstruction_units(ctx, layers=True) -> List[Unit]:
    """Blocks (and, with `layers`, the quantized modules outside blocks) in execution order."""
    blocks = ctx.adapter.blocks(ctx.model)
    units, seen = [], set()
    for key, members, _ in ctx.groups():
        if key is not None:
            name = blocks[key]
            if name not in seen:
                seen.add(name)
                sites = [s for s in ctx.sites if s.name.startswith(name + ".")]
                units.append(Unit(name, ctx.model.get_submodule(name), sites))
        elif layers:
            for s in members:
                if s.name not in seen:
                    seen.add(s.name)
                    units.append(Unit(s.name, s.module, [s]))
    return units


def _capture(ctx, unit, inputs):
    """{batch index: the unit's (args, kwargs) (`inputs`), or the shapes of its input tensors and its output tensors}
    for every calibration batch that reaches the unit (in detection a RoI head is skipped on an image without
    proposals); each forward stops there."""
    records = {}

    def pre_hook(mod, args, kwargs):
        records[ctx.batch_index] = (args, dict(kwargs))
        raise StopForward

    def post_hook(mod, args, kwargs, output):
        records[ctx.batch_index] = (_shapes(args, kwargs), float_tensors(output))
        raise StopForward

    handle = (unit.module.register_forward_pre_hook(pre_hook, with_kwargs=True) if inputs
              else unit.module.register_forward_hook(post_hook, with_kwargs=True))
    try:
        ctx.run_calib()
    finally:
        handle.remove()
    return records


def capture_inputs(ctx, unit):
    """(args, kwargs) the unit receives, per calibration batch that reaches it."""
    return _capture(ctx, unit, inputs=True)


def capture_outputs(ctx, unit):
    """(the shapes of the unit's input tensors, its output tensors), per calibration batch that reaches it."""
    return _capture(ctx, unit, inputs=False)


def depends_on_model(ctx, name):
    """Whether the unit's inputs depend on the model's own predictions (adapter.model_dependent_inputs)."""
    return any(name == p or name.startswith(p + ".") for p in ctx.adapter.model_dependent_inputs(ctx.model))


def _shapes(args, kwargs):
    return [t.shape for t in float_tensors((args, kwargs))]


@torch.no_grad()
def realign_targets(unit, reference, inputs, captured, batches):
    """The targets of `batches` for the unit's own `inputs`: a float output captured (`capture_outputs`) with inputs of
    the same shapes is kept; where none was captured (None) or the float model fed the unit other shapes (the
    quantized model proposed another number of boxes), the float unit runs on these inputs. Returns (targets, how
    many batches were realigned)."""
    targets, count = {}, 0
    for i in batches:
        args, kwargs = inputs[i]
        if captured[i] is not None and captured[i][0] == _shapes(args, kwargs):
            targets[i] = captured[i][1]
            continue
        with reference.active():
            targets[i] = float_tensors(unit.module(*args, **kwargs))
        count += 1
    return targets, count


def float_tensors(obj, detach=True):
    """The floating-point tensors in a (nested) output, in a fixed order."""
    if torch.is_tensor(obj):
        return [obj.detach() if detach else obj] if obj.is_floating_point() else []
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in float_tensors(o, detach)]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in float_tensors(obj[k], detach)]
    return []


def _flatten(obj, leaves):
    if isinstance(obj, (tuple, list)):
        return (tuple if isinstance(obj, tuple) else list, [_flatten(o, leaves) for o in obj])
    if isinstance(obj, dict):
        return (dict, [(k, _flatten(v, leaves)) for k, v in obj.items()])
    leaves.append(obj)
    return None


def _unflatten(spec, leaves):
    if spec is None:
        return next(leaves)
    kind, items = spec
    if kind is dict:
        return {k: _unflatten(s, leaves) for k, s in items}
    return kind(_unflatten(s, leaves) for s in items)


def _same(a, b):
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
    return a == b


class UnitCache:
    """A unit's cached inputs and targets. Items are samples when every batch-sized tensor can be stacked along dim 0
    (fixed shapes), else whole calibration batches (variable image sizes in detection)."""

    def __init__(self, inputs, targets):
        specs, leaves = [], []
        for args, kwargs in inputs:
            leaf = []
            specs.append(_flatten((args, kwargs), leaf))
            leaves.append(leaf)
        self.specs = specs
        self.stacked = self._plan(specs, leaves, targets)
        if self.stacked:
            self.leaves = [torch.cat([lv[i] for lv in leaves]) if batched else leaves[0][i]
                           for i, batched in enumerate(self.batched)]
            self.targets = [torch.cat([t[j] for t in targets]) for j in range(len(targets[0]))]
            self.n = self.targets[0].shape[0]
        else:
            self.records, self.target_records = leaves, targets
            self.n = len(leaves)

    def _plan(self, specs, leaves, targets):
        if any(s != specs[0] for s in specs) or any(len(t) != len(targets[0]) for t in targets) or not targets[0]:
            return False
        sizes = []
        for leaf in leaves:
            first = next((x for x in leaf if torch.is_tensor(x) and x.dim() > 0), None)
            if first is None:
                return False
            sizes.append(first.shape[0])
        self.batched = []
        for i in range(len(leaves[0])):
            col = [lv[i] for lv in leaves]
            if all(torch.is_tensor(x) and x.dim() > 0 and x.shape[0] == b and x.shape[1:] == col[0].shape[1:]
                   for x, b in zip(col, sizes)):
                self.batched.append(True)
            elif all(_same(x, col[0]) for x in col):
                self.batched.append(False)
            else:
                return False
        for j in range(len(targets[0])):
            if not all(t[j].dim() > 0 and t[j].shape[0] == b and t[j].shape[1:] == targets[0][j].shape[1:]
                       for t, b in zip(targets, sizes)):
                return False
        return True

    @property
    def device(self):
        return self.targets[0].device if self.stacked else torch.device("cpu")

    def fetch(self, idx):
        """(args, kwargs, targets) of the items `idx` (a LongTensor; on `self.device` saves a copy per call)."""
        if self.stacked:
            idx = idx.to(self.device)
            leaves = [x.index_select(0, idx) if b else x for x, b in zip(self.leaves, self.batched)]
            targets = [t.index_select(0, idx) for t in self.targets]
            spec = self.specs[0]
        else:
            i = int(idx[0])
            leaves, targets, spec = self.records[i], self.target_records[i], self.specs[i]
        args, kwargs = _unflatten(spec, iter(leaves))
        return args, kwargs, targets

    def chunks(self, batch_size):
        step = batch_size if self.stacked else 1
        for start in range(0, self.n, step):
            yield torch.arange(start, min(start + step, self.n))


def mse(output, targets):
    outs = float_tensors(output, detach=False)
    if len(outs) != len(targets):
        raise CalibrationError(f"a unit returned {len(outs)} tensors, its float target {len(targets)}")
    return sum(F.mse_loss(o.float(), t.float()) for o, t in zip(outs, targets))


@torch.no_grad()
def item_errors(module, cache, batch_size):
    """Mean squared error of every item (sample or batch) between the unit's current output and its target."""
    errs = []
    for idx in cache.chunks(batch_size):
        args, kwargs, targets = cache.fetch(idx)
        outs = float_tensors(module(*args, **kwargs))
        if cache.stacked:
            errs.append(sum((o.float() - t.float()).pow(2).flatten(1).mean(1) for o, t in zip(outs, targets)).cpu())
        else:
            errs.append(mse(outs, targets).reshape(1).cpu())
    return torch.cat(errs)


# ----------------------------------------------------------------------------------------------------------------
# Sampling and the curriculum


class Sampler:
    """Mini-batches of item indices, deterministic for a generator. With a difficulty per item (curriculum) only the
    easiest `pool_size(it)` items are eligible; the pool grows linearly from `start` of the items to all of them at
    `full_at` of the iterations (an easy-to-hard schedule)."""

    def __init__(self, items, batch_size, generator, difficulty=None, iters=1, start=0.5, full_at=0.8):
        self.items = items
        self.batch_size = min(batch_size, len(items))
        self.gen = generator
        self.iters, self.start, self.full_at = max(1, iters), start, full_at
        self.order = items if difficulty is None else items[torch.argsort(difficulty[items], stable=True)]
        self.curriculum = difficulty is not None

    def pool_size(self, it):
        n = len(self.order)
        if not self.curriculum:
            return n
        frac = self.start + (1.0 - self.start) * min(1.0, it / (self.full_at * self.iters))
        return min(n, max(self.batch_size, math.ceil(frac * n)))

    def sample(self, it):
        k = self.pool_size(it)
        pick = torch.randperm(k, generator=self.gen)[: self.batch_size]
        return self.order[pick]


__all__ = ["Sampler", "Unit", "UnitCache", "capture_inputs", "capture_outputs", "depends_on_model", "float_tensors",
           "item_errors", "mse", "realign_targets", "reconstruction_units"]
