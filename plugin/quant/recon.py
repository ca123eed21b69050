"""Block reconstruction (BRECQ, Li et al., ICLR 2021) and I&S-ViT's three-stage smooth optimisation (SOS, Zhong et
al., arXiv 2311.10126, Sec. 4.2).

Block reconstruction visits the reconstruction units in execution order: every transformer block the adapter names
and, with `layers=True`, every quantized module outside the blocks (patch embedding, classifier, Swin patch merging).
For each unit it
1. caches the unit's inputs (args and kwargs) as the quantized model gives them, over every calibration batch, and the
   float targets: the unit's outputs when the whole model runs as the float network (`FloatReference`). Both
   forwards stop at the unit (an exception raised from a hook), so unit k costs a forward up to k only;
2. minimises  E‖f_q(x_q) − f(x_fp)‖²  (mean squared error over elements) with Adam and a cosine learning-rate decay,
   on mini-batches drawn from the cache. What is learned is chosen by `learn`: quantizer scales (`act_scale`,
   `weight_scale`: the buffers become nn.Parameters for the duration; the rounding's straight-through estimator gives
   LSQ gradients), the quantized modules' `weight` and `bias`, plus whatever an extension adds (low-rank branches,
   plugin.quant.lowrank);
3. guards the result: a NaN/inf loss, a loss that grows past `max_loss_ratio` times the unit's starting error, or
   (with `rollback_if_worse`, the default) a final error above the starting one rolls the unit back to its state
   before the optimisation, with a log line saying which unit and why.

Sampling is deterministic given the context's seed. With `curriculum=True` mini-batches follow an easy-to-hard schedule
(AIQViT, arXiv 2502.04628): samples are ranked by their starting error (quantized unit output vs float target) and
drawn from the easiest fraction, which grows linearly from `curriculum_start` to all samples at `curriculum_full_at`
of the iterations.

Scale learning rates are relative: each scale tensor's Adam step size is `scale_lr` times its mean magnitude, so one
setting fits 8-bit activation scales and 3-bit weight scales alike. Weights, biases and branches use `lr`.
"""
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import CalibrationError, ConfigError
from .calibrate import CalibContext, Observer, Site, StopForward
from .passes import PassConfig, is_int, is_number, pass_config, register_pass
from .quantizers import Quantizer, TwinUniformQuantizer, UniformQuantizer, _LogQuantizer
from .registry import Registry
from .reparam import REPARAM_RULES, fold_channelwise
from .spec import Role

LEARNABLE = ("act_scale", "weight_scale", "weight", "bias")

# Iterations and batch size by setting. "paper": I&S-ViT's (Sec. 5.1; 1000 iterations at 3/4 bit, 200 at 6 bit, batch
# 64, Adam lr 4e-5). "small": for small models and small calibration sets (CIFAR-sized ViTs, 32-256 images), where
# 1000 steps of batch 64 would revisit every sample hundreds of times: a quarter of the steps, batch 32.
SETTINGS = {
    "paper": dict(low_bit_iters=1000, high_bit_iters=200, batch_size=64),
    "small": dict(low_bit_iters=250, high_bit_iters=100, batch_size=32),
}


def default_iters(recipe, setting="paper"):
    """The setting's iteration count: the low-bit one unless both weights and activations have 6 bits or more."""
    s = SETTINGS[setting]
    return s["high_bit_iters"] if min(recipe.w_bits, recipe.a_bits) >= 6 else s["low_bit_iters"]


@register_pass("block_recon")
@dataclass
class ReconConfig(PassConfig):
    """Options of the reconstruction passes: the `block_recon` pass itself, and the base of `sos` and `lowrank`.

    setting: "paper" or "small" (see SETTINGS): the iterations and batch size when they are not given.
    iters, batch_size: Adam steps per unit and samples per step (clipped to the calibration set); None: from the
        `setting` and the recipe's bit widths (`resolved`).
    lr: Adam step size of weights, biases (and, in lowrank, not the branches: see its `branch_lr`).
    scale_lr: relative step size of quantizer scales (times each scale tensor's mean magnitude).
    learn: any of "act_scale", "weight_scale", "weight", "bias".
    layers: also reconstruct the quantized modules outside blocks (patch embedding, head, Swin patch merging).
    curriculum, curriculum_start, curriculum_full_at: easy-to-hard sampling (see Sampler).
    input_source: "quant" (the unit's inputs in the quantized model, default) or "float" (in the float model).
    max_loss_ratio: roll a unit back when the loss averaged over a few steps exceeds this times its start error.
    rollback_if_worse: roll a unit back when its final error is above its start error.
    amp: bf16 autocast of the unit's forward while training. Off by default: it changes the rounding inside the
        quantizers (x / scale in bf16), and it gave no speed-up on small ViTs on an H100.
    log_every: progress line every N steps (default iters / 5).
    """
    setting: str = "paper"
    iters: Optional[int] = None
    batch_size: Optional[int] = None
    lr: float = 4e-5
    scale_lr: float = 1e-3
    learn: Tuple[str, ...] = ("act_scale", "weight_scale")
    layers: bool = True
    curriculum: bool = False
    curriculum_start: float = 0.5
    curriculum_full_at: float = 0.8
    input_source: str = "quant"
    max_loss_ratio: float = 10.0
    rollback_if_worse: bool = True
    amp: bool = False
    log_every: int = 0

    def __post_init__(self):
        if self.setting not in SETTINGS:
            raise ConfigError(f"{self.kind}: unknown setting {self.setting!r}; known: {', '.join(sorted(SETTINGS))}")
        self.learn = (self.learn,) if isinstance(self.learn, str) else tuple(self.learn)
        bad = [x for x in self.learn if x not in LEARNABLE]
        if bad:
            raise ConfigError(f"{self.kind}: cannot learn {bad}; choose from {LEARNABLE}")
        if self.input_source not in ("quant", "float"):
            raise ConfigError(f"{self.kind}: input_source must be 'quant' or 'float', got {self.input_source!r}")
        self.require(self.iters is None or is_int(self.iters) and self.iters >= 0, "iters", "a non-negative integer")
        self.require(self.batch_size is None or is_int(self.batch_size) and self.batch_size >= 1, "batch_size",
                     "a positive integer")
        self.require(is_int(self.log_every) and self.log_every >= 0, "log_every", "a non-negative integer")
        for name in ("lr", "scale_lr"):
            self.require(is_number(getattr(self, name)) and getattr(self, name) >= 0, name, "a non-negative number")
        self.require(is_number(self.max_loss_ratio) and self.max_loss_ratio > 0, "max_loss_ratio", "a positive number")
        for name in ("curriculum_start", "curriculum_full_at"):
            self.require(is_number(getattr(self, name)) and 0 < getattr(self, name) <= 1, name, "in (0, 1]")
        for name in ("layers", "curriculum", "rollback_if_worse", "amp"):
            self.require(isinstance(getattr(self, name), bool), name, "True or False")

    @property
    def tag(self):
        return self.kind

    def resolved(self, recipe):
        """A copy with iterations and batch size filled in from the setting and the recipe's bit widths."""
        return self.replace(iters=self.iters if self.iters is not None else default_iters(recipe, self.setting),
                            batch_size=self.batch_size if self.batch_size is not None
                            else SETTINGS[self.setting]["batch_size"])

    def run(self, ctx):
        """Block reconstruction of every unit (see the module docstring)."""
        return reconstruct(ctx, self.resolved(ctx.recipe))


# ----------------------------------------------------------------------------------------------------------------
# The float reference


def _is_switch(m):
    return isinstance(m, Quantizer) or getattr(m, "is_compensation", False)


class FloatReference:
    """Runs the model as the float network: every quantizer and compensation branch off and, with `snapshot=True`,
    every parameter back at its value when the reference was made.

    The snapshot matters once reconstruction trains weights or a reparameterisation edits them: the live parameters
    then no longer describe the float model. Parameters created after the snapshot (a bias a reparameterisation added)
    take their neutral value (bias 0, norm weight 1) while the reference runs.
    """

    def __init__(self, model, snapshot=False):
        self.model = model
        self.params = None
        if snapshot:
            clones = {}
            self.params = {}
            for name, p in model.named_parameters(remove_duplicate=False):
                if id(p) not in clones:
                    clones[id(p)] = p.detach().clone()
                self.params[name] = clones[id(p)]

    @contextmanager
    def active(self):
        switches = [m for m in self.model.modules() if _is_switch(m)]
        flags = [m.enabled for m in switches]
        swapped = []
        try:
            for m in switches:
                m.enabled = False
            if self.params is not None:
                self._swap_in(swapped)
            yield
        finally:
            for p, data in reversed(swapped):
                p.data = data
            for m, flag in zip(switches, flags):
                m.enabled = flag

    def _swap_in(self, swapped):
        skip = [n + "." for n, m in self.model.named_modules() if getattr(m, "is_compensation", False)]
        done = set()
        for mod_name, mod in self.model.named_modules(remove_duplicate=False):
            for pname, p in mod._parameters.items():
                full = f"{mod_name}.{pname}" if mod_name else pname
                if p is None or id(p) in done or any(full.startswith(s) for s in skip):
                    continue
                done.add(id(p))
                if full in self.params:
                    value = self.params[full]
                elif pname == "bias":
                    value = torch.zeros_like(p)
                elif pname == "weight" and hasattr(mod, "normalized_shape"):
                    value = torch.ones_like(p)
                else:
                    raise CalibrationError(f"float reference: parameter {full} appeared after the snapshot and has no "
                                           f"neutral value")
                swapped.append((p, p.data))
                p.data = value


def float_reference(ctx):
    """The context's float reference, made (with a parameter snapshot) by the first pass that asks for it, so a later
    pass still compares with the float model after an earlier one trained or merged weights."""
    ref = getattr(ctx, "float_reference", None)
    if ref is None:
        ref = ctx.float_reference = FloatReference(ctx.model, snapshot=True)
    return ref


# ----------------------------------------------------------------------------------------------------------------
# Units and their cached inputs / targets


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
        records[ctx.batch_index] = (_shapes(args, kwargs), _tensors(output))
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


def _depends_on_model(ctx, name):
    """Whether the unit's inputs depend on the model's own predictions (adapter.model_dependent_inputs)."""
    return any(name == p or name.startswith(p + ".") for p in ctx.adapter.model_dependent_inputs(ctx.model))


def _shapes(args, kwargs):
    return [t.shape for t in _tensors((args, kwargs))]


@torch.no_grad()
def _realign_targets(unit, reference, inputs, captured, batches):
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
            targets[i] = _tensors(unit.module(*args, **kwargs))
        count += 1
    return targets, count


def _tensors(obj, detach=True):
    """The floating-point tensors in a (nested) output, in a fixed order."""
    if torch.is_tensor(obj):
        return [obj.detach() if detach else obj] if obj.is_floating_point() else []
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o, detach)]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in _tensors(obj[k], detach)]
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


def _mse(output, targets):
    outs = _tensors(output, detach=False)
    if len(outs) != len(targets):
        raise CalibrationError(f"a unit returned {len(outs)} tensors, its float target {len(targets)}")
    return sum(F.mse_loss(o.float(), t.float()) for o, t in zip(outs, targets))


@torch.no_grad()
def item_errors(module, cache, batch_size):
    """Mean squared error of every item (sample or batch) between the unit's current output and its target."""
    errs = []
    for idx in cache.chunks(batch_size):
        args, kwargs, targets = cache.fetch(idx)
        outs = _tensors(module(*args, **kwargs))
        if cache.stacked:
            errs.append(sum((o.float() - t.float()).pow(2).flatten(1).mean(1) for o, t in zip(outs, targets)).cpu())
        else:
            errs.append(_mse(outs, targets).reshape(1).cpu())
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


# ----------------------------------------------------------------------------------------------------------------
# What a unit learns


def scale_names(q):
    """Names of a quantizer's learnable range buffers. A new quantizer kind declares `learnable_buffers`."""
    names = getattr(type(q), "learnable_buffers", None)
    if names is not None:
        return tuple(names)
    if isinstance(q, TwinUniformQuantizer):
        return ("delta1", "delta2")
    if isinstance(q, (UniformQuantizer, _LogQuantizer)) or "scale" in q._buffers:
        return ("scale",)
    return ()


class Learnables:
    """Freezes every parameter of a unit, then makes trainable what the config asks for: quantizer scale buffers
    become nn.Parameters, weights and biases of the unit's quantized modules get requires_grad. `release()` writes
    learned scales back as buffers and restores the requires_grad flags."""

    def __init__(self, unit, cfg):
        self.flags = [(p, p.requires_grad) for p in unit.module.parameters()]
        for p, _ in self.flags:
            p.requires_grad_(False)
        self.converted, self.scales, self.groups = [], [], []
        tensors, seen = [], set()
        for site in unit.sites:
            for slot, q in site.quantizers():
                kind = "weight_scale" if slot == "weight_quantizer" else "act_scale"
                if kind not in cfg.learn or not q.enabled or not q._ready:
                    continue
                for name in scale_names(q):
                    buf = q._buffers.pop(name)
                    p = nn.Parameter(buf.detach().clone())
                    q.register_parameter(name, p)
                    self.converted.append((q, name))
                    self.scales.append(p)
                    lr = cfg.scale_lr * float(buf.abs().mean().clamp_min(1e-12))
                    self.groups.append({"params": [p], "lr": lr})
            for attr in ("weight", "bias"):
                p = getattr(site.module, attr, None)
                if attr in cfg.learn and isinstance(p, nn.Parameter) and id(p) not in seen:
                    seen.add(id(p))
                    p.requires_grad_(True)
                    tensors.append(p)
        if tensors:
            self.groups.append({"params": tensors, "lr": cfg.lr})

    @torch.no_grad()
    def clamp(self):
        for p in self.scales:
            p.clamp_(min=1e-8)

    def release(self):
        for q, name in self.converted:
            p = q._parameters.pop(name)
            q.register_buffer(name, p.detach())
        self.converted = []
        for p, flag in self.flags:
            p.requires_grad_(flag)


# ----------------------------------------------------------------------------------------------------------------
# The optimisation of one unit


class _Rollback(Exception):
    pass


def _autocast(device, enabled):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _restore(unit, learn, extension, saved):
    learn.release()
    if extension is not None:
        extension.detach(unit)
    unit.module.load_state_dict(saved)


def reconstruct_unit(ctx, unit, cfg, reference, index=0, total=1, extension=None):
    """Reconstruct one unit; returns (error before, error after, status) with status 'ok', 'skipped' or the reason of
    a rollback."""
    t0 = time.time()
    where = f"[{cfg.tag}] {index + 1}/{total} {unit.name}"
    if cfg.input_source == "float":
        with reference.active():
            inputs = capture_inputs(ctx, unit)
    else:
        inputs = capture_inputs(ctx, unit)
    own_inputs = _depends_on_model(ctx, unit.name)
    if own_inputs:  # the float model's outputs belong to other inputs (its own boxes): no point capturing them
        targets = dict.fromkeys(inputs)
    else:
        with reference.active():
            targets = capture_outputs(ctx, unit)
    common = sorted(inputs.keys() & targets.keys())  # batches reaching the unit in both the current and float model
    if not common:
        ctx.log(f"{where}: not reached by the calibration data, skipped")
        return None, None, "skipped"
    if len(common) < len(ctx.calib.batches):
        ctx.log(f"{where}: reached by {len(common)} of {len(ctx.calib.batches)} calibration batches, learns on those")
    targets, realigned = _realign_targets(unit, reference, inputs, targets, common)
    if own_inputs:
        ctx.log(f"{where}: its inputs depend on the model's own predictions (adapter: model_dependent_inputs); "
                f"targets are the float unit on the quantized model's inputs")
    elif realigned:
        ctx.log(f"{where}: {realigned} batch(es) reach it with other shapes than in the float model (data-dependent "
                f"proposals); their targets are the float unit's output on the same inputs")
    cache = UnitCache([inputs[i] for i in common], [targets[i] for i in common])
    del inputs, targets
    bs = cfg.batch_size
    gen = torch.Generator().manual_seed(int(ctx.seed) * 1000003 + index)

    saved = {k: v.detach().clone() for k, v in unit.module.state_dict().items()}
    learn = Learnables(unit, cfg)
    ext_on = extension is not None and extension.attach(unit, gen)
    base_groups = learn.groups
    if not base_groups and not ext_on:
        learn.release()
        ctx.log(f"{where}: nothing to learn, skipped")
        return None, None, "skipped"

    errors = item_errors(unit.module, cache, bs)
    before = float(errors.mean())
    if not math.isfinite(before) or before <= 0 or cfg.iters == 0:
        learn.release()
        if ext_on:
            extension.detach(unit)
        reason = "zero error" if before == 0 else ("no iterations" if cfg.iters == 0 else "non-finite start error")
        ctx.log(f"{where}: {reason}, skipped")
        return before, before, "skipped"

    items = torch.arange(cache.n)
    val_items = None
    phases = extension.phases(cfg.iters) if ext_on else [(cfg.iters, False)]
    if any(search for _, search in phases) and cache.n >= 2:
        perm = torch.randperm(cache.n, generator=gen)
        n_val = max(1, cache.n // 5)
        items, val_items = perm[n_val:].sort().values, perm[:n_val].sort().values
    batch = bs if cache.stacked else 1
    sampler = Sampler(items, batch, gen, errors if cfg.curriculum else None, cfg.iters,
                      cfg.curriculum_start, cfg.curriculum_full_at)
    val_sampler = Sampler(val_items if val_items is not None else items, batch, gen)
    log_every = cfg.log_every or max(1, cfg.iters // 5)
    check_every = max(1, min(10, log_every))

    status = "ok"
    try:
        with torch.enable_grad():
            done = 0
            for phase_iters, search in phases:
                if phase_iters <= 0:
                    continue
                groups = base_groups + (extension.param_groups() if ext_on else [])
                opt = torch.optim.Adam(groups)
                sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=phase_iters, eta_min=0.0)
                arch = extension.arch_params() if (ext_on and search) else []
                arch_opt = torch.optim.Adam(arch, lr=extension.arch_lr) if arch else None
                # Every step's indices drawn up front and moved at once: a copy from host memory per step would
                # wait for the GPU each time.
                plan = torch.stack([sampler.sample(done + it) for it in range(phase_iters)]).to(cache.device)
                vplan = (torch.stack([val_sampler.sample(done + it) for it in range(phase_iters)]).to(cache.device)
                         if arch_opt is not None else None)
                window, bad, count = 0.0, None, 0
                for it in range(phase_iters):
                    git = done + it
                    args, kwargs, tgt = cache.fetch(plan[it])
                    with _autocast(tgt[0].device, cfg.amp):
                        out = unit.module(*args, **kwargs)
                    loss = _mse(out, tgt)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    learn.clamp()
                    if arch_opt is not None:
                        vargs, vkwargs, vtgt = cache.fetch(vplan[it])
                        with _autocast(vtgt[0].device, cfg.amp):
                            vloss = _mse(unit.module(*vargs, **vkwargs), vtgt)
                        vloss = vloss + extension.penalty(before)
                        grads = torch.autograd.grad(vloss, arch)
                        for p, g in zip(arch, grads):
                            p.grad = g
                        arch_opt.step()
                    detached = loss.detach()
                    window = window + detached
                    finite = torch.isfinite(detached)
                    bad = ~finite if bad is None else (bad | ~finite)
                    count += 1
                    if count == check_every or it == phase_iters - 1:
                        if bool(bad):
                            raise _Rollback(f"loss became NaN/inf by iteration {git + 1}")
                        mean = float(window) / count
                        if mean > cfg.max_loss_ratio * before:
                            raise _Rollback(f"loss grew to {mean:.3e}, over {cfg.max_loss_ratio:g}x its start "
                                            f"{before:.3e}, by iteration {git + 1}")
                        window, bad, count = 0.0, None, 0
                    if (git + 1) % log_every == 0:
                        pool = f", pool {sampler.pool_size(git)}/{len(items)}" if cfg.curriculum else ""
                        ctx.log(f"{where}: iter {git + 1}/{cfg.iters} loss {float(detached):.4e} "
                                f"(start {before:.4e}{pool})")
                if search:
                    extension.discretize(unit, ctx.log)
                done += phase_iters
        after = float(item_errors(unit.module, cache, bs).mean())
        if not math.isfinite(after):
            raise _Rollback("final error is NaN/inf")
        if cfg.rollback_if_worse and after > before:
            raise _Rollback(f"final error {after:.4e} is above the start {before:.4e}")
    except _Rollback as exc:
        status = str(exc)
        after = before
    except BaseException:  # an error (out of memory, a bug): leave the unit as it was, then report
        _restore(unit, learn, extension if ext_on else None, saved)
        raise
    if status != "ok":
        _restore(unit, learn, extension if ext_on else None, saved)
        ctx.log(f"{where}: rolled back ({status})")
    else:
        learn.release()
        if ext_on:
            extension.finish(unit)
    ctx.log(f"{where}: mse {before:.4e} -> {after:.4e} ({cfg.iters} iters, {cache.n} items, "
            f"{time.time() - t0:.1f}s)")
    return before, after, status


def reconstruct(ctx, cfg, reference=None, extension=None):
    """Reconstruct every unit in execution order. Returns {unit name: (before, after, status)}."""
    if torch.is_inference_mode_enabled():
        raise ConfigError(f"{cfg.tag} trains parameters: do not call quantize() under torch.inference_mode()")
    if reference is None:
        reference = float_reference(ctx)
    units = reconstruction_units(ctx, cfg.layers)
    ckpt = ctx.checkpoint
    report = {}
    for i, unit in enumerate(units):
        step, skip = ckpt.next_unit() if ckpt is not None else (None, False)
        if skip:  # a resumed run: this unit finished before; the last such one restores the saved state
            if step == ckpt.resume_step:
                ckpt.restore(ctx.model)
                if extension is not None and hasattr(extension, "resumed"):
                    extension.resumed(ctx.model)
                ctx.log(f"[{cfg.tag}] resumed after unit {i + 1}/{len(units)} {unit.name}")
            continue
        report[unit.name] = result = reconstruct_unit(ctx, unit, cfg, reference, i, len(units), extension)
        if result[2] not in ("ok", "skipped"):
            ctx.rollbacks.append({"pass": cfg.tag, "pass_index": ctx.pass_index, "unit": unit.name,
                                  "reason": result[2]})
        if ckpt is not None:
            ckpt.save(ctx.model, step, ctx.pass_index, ctx.pass_kind, i, unit.name, ctx.rollbacks)
    rolled = [n for n, (_, _, s) in report.items() if s not in ("ok", "skipped")]
    gains = [(b, a) for b, a, s in report.values() if s == "ok"]
    if gains:
        ratio = sum(a / b for b, a in gains) / len(gains)
        ctx.log(f"[{cfg.tag}] {len(gains)} units reconstructed, mean error ratio after/before {ratio:.3f}"
                + (f"; rolled back: {', '.join(rolled)}" if rolled else ""))
    return report


def context_for(model, calib, log=print, seed=0):
    """A CalibContext for a model quantize() (or load_quantized) already returned, to run passes on it later."""
    from .adapter import find_adapter
    recipe = getattr(model, "_vitq_recipe", None)
    if recipe is None:
        raise ConfigError("context_for needs a model returned by quantize() or load_quantized()")
    adapter = find_adapter(model, model._vitq_adapter)
    consumers = {c for _, cs in adapter.norm_consumers(model) for c in cs}
    sites = [Site(name, model.get_submodule(name), Role(role), post_ln=name in consumers)
             for name, role in adapter.roles(model).items() if Role(role) not in recipe.float_roles]
    return CalibContext(model, recipe, calib, adapter, sites, log, seed=seed)


def run_pass(ctx, spec):
    """Run one pass given as a config or a recipe entry ({"type": name, **options})."""
    return pass_config(spec).run(ctx)


# ----------------------------------------------------------------------------------------------------------------
# I&S-ViT: three-stage smooth optimisation


def _post_ln_pairs(ctx):
    """(norm name, consumer sites, their input quantizers) for every post-LN group quantized channel-wise by an
    asymmetric uniform quantizer, the only kind a layer-wise quantizer can absorb exactly."""
    pairs = []
    for norm_name, consumer_names in ctx.adapter.norm_consumers(ctx.model):
        sites = [ctx.by_name[c] for c in consumer_names if c in ctx.by_name]
        qs = [s.module.input_quantizer for s in sites]
        if not sites or any(q is None or not isinstance(q, UniformQuantizer) or q.spec.symmetric or not q._ready
                            or q.scale.numel() == 1 for q in qs):
            continue
        if len({q.scale.numel() for q in qs}) != 1:
            continue
        pairs.append((norm_name, sites, qs))
    return pairs


def _observe_inputs(ctx, pairs):
    observers = {}
    for _, sites, qs in pairs:
        q = qs[0]
        q.observer = observers[sites[0].name] = Observer(sites[0].name, q.channel_axis, ctx.max_elems, ctx.seed)
    try:
        with torch.no_grad():
            for batch in ctx.calib.batches:
                ctx.calib.forward(ctx.model, batch)
    finally:
        for _, _, qs in pairs:
            qs[0].observer = None
    return {k: o.observation() for k, o in observers.items()}


# Rules whose channel→layer step is not the exact fold: name -> fold(norm, consumers, scales, zeros, s̃, qmin, qmax)
# returning z̃, applied in place (DopQ-ViT's "mosf", plugin.quant.mosf). Rules without an entry fold exactly.
CHANNEL_FOLDS = Registry("channel fold")


def register_channel_fold(name):
    return CHANNEL_FOLDS.register(name)


def reparameterize_channelwise(ctx, rule="mean"):
    """SOS stage 2: turn every channel-wise post-LN quantizer into a layer-wise one.

    The same algebra as plugin.quant.reparam (RepQ-ViT): with channel scales s_c and zero points z_c, the layer-wise
    s̃ = rule(s_c), z̃ = round(mean z_c), r1 = s_c / s̃ and shift = s̃·(z_c − z̃) are folded into the LayerNorm affine
    and the consuming Linears (`reparam.fold_channelwise`), which keeps the codes. A rule with a registered channel
    fold (CHANNEL_FOLDS) folds its own way instead. When several consumers share a LayerNorm their (possibly
    separately learned) scales are averaged first. Returns the number of LayerNorms folded.
    """
    REPARAM_RULES.lookup(rule, where="sos")
    pairs = _post_ln_pairs(ctx)
    observations = _observe_inputs(ctx, pairs) if rule != "mean" and pairs else {}
    for norm_name, sites, qs in pairs:
        with torch.no_grad():
            scales = torch.stack([q.scale.reshape(-1) for q in qs]).mean(0)
            zeros = qs[0].zero_point.reshape(-1)
            s_layer = REPARAM_RULES[rule](scales, observations.get(sites[0].name)).reshape(())
        norm, consumers = ctx.model.get_submodule(norm_name), [s.module for s in sites]
        if rule in CHANNEL_FOLDS:
            z_layer = CHANNEL_FOLDS[rule](norm, consumers, scales, zeros, s_layer, qs[0].qmin, qs[0].qmax)
        else:
            z_layer, _, _ = fold_channelwise(norm, consumers, scales, zeros, s_layer)
        for site, q in zip(sites, qs):
            layerwise = UniformQuantizer(q.spec.replace(granularity="tensor"), channel_axis=q.channel_axis)
            layerwise.set_params(scale=s_layer.reshape(1), zero_point=z_layer.reshape(1))
            layerwise.enabled = q.enabled
            site.module.input_quantizer = layerwise.to(scales.device)
    return len(pairs)


@register_pass("sos")
@dataclass
class SosConfig(ReconConfig):
    """I&S-ViT's three-stage smooth optimisation.

    1. weights float (weight quantizers off), activations quantized with channel-wise post-LN quantizers: block
       reconstruction;
    2. channel-wise post-LN quantizers reparameterised to layer-wise (`reparameterize_channelwise`) with the scale
       rule `rule` (default: the recipe's `reparam`, else "mean"; basic calibration leaves channel-wise quantizers
       alone whatever `reparam` says): exactly, unless the rule registers its own channel fold (DopQ-ViT's "mosf");
    3. weight quantizers on and recalibrated on the current weights; block reconstruction again.
    `stages` picks which run. Both reconstructions take their targets from the float model as it was before stage 1.
    By default they learn the quantized modules' weights and biases with the quantizer scales fixed, as the public
    I&S-ViT code does. Other options: see ReconConfig.
    """
    learn: Tuple[str, ...] = ("weight", "bias")
    stages: Tuple[int, ...] = (1, 2, 3)
    rule: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        self.stages = tuple(self.stages) if isinstance(self.stages, (list, tuple)) else self.stages
        self.require(isinstance(self.stages, tuple) and set(self.stages) <= {1, 2, 3}, "stages",
                     "drawn from (1, 2, 3)")
        if self.rule is not None:
            REPARAM_RULES.lookup(self.rule, where="sos")

    def run(self, ctx):
        cfg = self.resolved(ctx.recipe)
        rule = self.rule or ctx.recipe.reparam or "mean"
        REPARAM_RULES.lookup(rule, where="sos")  # before stage 1's reconstruction, not after it
        reference = float_reference(ctx)
        weight_qs = [q for s in ctx.sites if (q := getattr(s.module, "weight_quantizer", None)) is not None]
        if 1 in self.stages:
            channelwise = len(_post_ln_pairs(ctx))
            ctx.log(f"[sos] stage 1: float weights, quantized activations ({channelwise} channel-wise post-LN groups)")
            flags = [q.enabled for q in weight_qs]
            for q in weight_qs:
                q.enabled = False
            try:
                reconstruct(ctx, cfg, reference)
            finally:
                for q, flag in zip(weight_qs, flags):
                    q.enabled = flag
        if 2 in self.stages:
            folded = reparameterize_channelwise(ctx, rule)
            ctx.log(f"[sos] stage 2: {folded} channel-wise post-LN quantizers reparameterised to layer-wise ({rule})")
        if 3 in self.stages:
            for s in ctx.sites:
                q = getattr(s.module, "weight_quantizer", None)
                if q is not None:
                    q.calibrate_tensor(s.module.weight)
            ctx.log(f"[sos] stage 3: {len(weight_qs)} weight quantizers recalibrated; reconstruction with quantized "
                    f"weights")
            reconstruct(ctx, cfg, reference)


__all__ = ["CHANNEL_FOLDS", "FloatReference", "LEARNABLE", "Learnables", "ReconConfig", "SETTINGS", "Sampler",
           "SosConfig", "Unit", "UnitCache", "capture_inputs", "capture_outputs", "context_for", "default_iters",
           "float_reference", "item_errors", "reconstruct", "reconstruct_unit", "reconstruction_units",
           "register_channel_fold", "reparameterize_channelwise", "run_pass", "scale_names"]
