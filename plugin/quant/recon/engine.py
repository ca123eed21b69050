"""The reconstruction engine: one unit at a time, minimise the distance between its output in the quantized model and
its float target; the method (`ReconMethod`) says what is learned and how.

For each unit (`reconstruct_unit`) the engine
1. caches the unit's inputs and float targets (plugin.quant.recon.cache) over every calibration batch that reaches it;
2. asks the method to make the unit's learnables trainable (`attach`), measures the start error per item, and runs
   the method's phases (`phases`): Adam with a cosine learning-rate decay on mini-batches drawn from the cache
   (a curriculum, `cfg.curriculum`, draws the easiest items first: AIQViT, arXiv 2502.04628). In a searching phase
   the method's architecture parameters (`arch_params`) also take first-order DARTS steps on a held-out fifth of the
   items (Liu et al., ICLR 2019);
3. guards the result: a NaN/inf loss, a loss that grows past `max_loss_ratio` times the unit's start error, or (with
   `rollback_if_worse`) a final error above the start one rolls the unit back (`restore`) to its state before the
   optimisation, with a log line saying which unit and why; otherwise the method keeps what was learned (`keep`).

`reconstruct` drives the units in execution order and the checkpoints of a run (plugin.quant.resume): after each unit
it writes one; a resumed run skips the units a checkpoint holds, restores the state at the last of them and tells the
method (`resumed`). Sampling is deterministic given the context's seed: every unit has its own seeded generator.
"""
import math
import time
from abc import ABC, abstractmethod

import torch

from ..errors import ConfigError
from ..progress import Progress
from ..resume import UnitSteps
from .cache import (Sampler, UnitCache, capture_inputs, capture_outputs, depends_on_model, item_errors, mse,
                    realign_targets, reconstruction_units)
from .reference import float_reference


class ReconMethod(ABC):
    """What a reconstruction pass learns and how: the engine's one extension point.

    A pass builds one per run from its options (`cfg`, a plugin.quant.recon.ReconConfig: iterations, batch size,
    curriculum, guards) and hands it to `reconstruct`. Per unit the engine calls, in this order:
    - what to learn: `save` (the state a rollback returns to), `attach` (make the unit's learnables trainable, add
      what the method adds, with random initialisations from the unit's `generator`);
    - per-stage schedule: `phases(iters)`: [(iterations, searching)]; per phase `param_groups()` (Adam groups, asked
      again each phase since a phase may replace parameters) and, when searching, `arch_params()` stepped with
      `arch_lr`; `end_phase` after each;
    - what it trains on: `unit_cache(ctx, unit, reference, where)` (the unit's cached inputs and float targets;
      a method may cache more, e.g. the float-model inputs beside the quantized ones) and `fetch(cache, idx)` (a
      training mini-batch; the start and final errors always use `cache.fetch`);
    - how to step: `loss(output, targets)` per step, `after_step()` after each optimizer step, and, when searching,
      `loss + arch_penalty(start error)` on held-out items for the architecture step; the divergence guard watches
      `loss_ratio(loss, start error)` (default loss / start error);
    - what to save and restore: `keep(unit)` on success, `restore(unit, saved)` on a rollback or an error,
      `detach(unit)` when the unit is skipped after `attach`; `resumed(model)` when a resumed run restored units it
      skips.
    """
    arch_lr = 0.0

    def __init__(self, cfg):
        self.cfg = cfg

    @property
    def tag(self):
        return self.cfg.tag

    def save(self, unit):
        return {k: v.detach().clone() for k, v in unit.module.state_dict().items()}

    @abstractmethod
    def attach(self, unit, generator) -> bool:
        """Make what the unit learns trainable; return whether there is anything to learn."""

    @abstractmethod
    def param_groups(self) -> list:
        """The optimizer's parameter groups for the phase about to start."""

    def arch_params(self) -> list:
        return []

    def phases(self, iters):
        return [(iters, False)]

    def end_phase(self, unit, searching, log):
        pass

    def unit_cache(self, ctx, unit, reference, where):
        return unit_cache(ctx, unit, self.cfg, reference, where)

    def fetch(self, cache, idx):
        return cache.fetch(idx)

    def loss(self, output, targets):
        return mse(output, targets)

    def loss_ratio(self, loss, start_error):
        """What the divergence guard compares with `max_loss_ratio`: a method whose loss is not on the scale of the
        unit's mean squared error (a normalised or regularised objective) says how far it grew from its start."""
        return loss / start_error

    def arch_penalty(self, start_error):
        return 0.0

    def after_step(self):
        pass

    @abstractmethod
    def keep(self, unit):
        """The unit's optimisation succeeded: keep what it learned, leave nothing trainable."""

    @abstractmethod
    def detach(self, unit):
        """Undo `attach` without keeping anything learned (what the method added is removed)."""

    def restore(self, unit, saved):
        self.detach(unit)
        unit.module.load_state_dict(saved)

    def resumed(self, model):
        """A resumed run restored the state after the units it skips; `model` holds what they learned."""


class _Rollback(Exception):
    pass


def _autocast(device, enabled):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def unit_cache(ctx, unit, cfg, reference, where, float_inputs=False):
    """The unit's inputs (as the quantized model gives them, or the float model with `input_source="float"`) and
    float targets over the calibration batches that reach it, as a UnitCache; None where none reaches it.

    With `float_inputs` (QDrop-style methods) the cache also carries `float_inputs`: a UnitCache of the unit's inputs
    in the float model with the same items and targets, or None where they do not exist or cannot be paired (inputs
    already from the float model, inputs that depend on the model's own predictions)."""
    if cfg.input_source == "float":
        with reference.active():
            inputs = capture_inputs(ctx, unit)
    else:
        inputs = capture_inputs(ctx, unit)
    own_inputs = depends_on_model(ctx, unit.name)
    if own_inputs:  # the float model's outputs belong to other inputs (its own boxes): no point capturing them
        targets = dict.fromkeys(inputs)
    else:
        with reference.active():
            targets = capture_outputs(ctx, unit)
    common = sorted(inputs.keys() & targets.keys())  # batches reaching the unit in both the current and float model
    if not common:
        return None
    if len(common) < len(ctx.calib.batches):
        ctx.log(f"{where}: reached by {len(common)} of {len(ctx.calib.batches)} calibration batches, learns on those")
    targets, realigned = realign_targets(unit, reference, inputs, targets, common)
    if own_inputs:
        ctx.log(f"{where}: its inputs depend on the model's own predictions (adapter: model_dependent_inputs); "
                f"targets are the float unit on the quantized model's inputs")
    elif realigned:
        ctx.log(f"{where}: {realigned} batch(es) reach it with other shapes than in the float model (data-dependent "
                f"proposals); their targets are the float unit's output on the same inputs")
    cache = UnitCache([inputs[i] for i in common], [targets[i] for i in common])
    cache.batches = common  # the calibration batch of each cached batch, in order
    cache.float_inputs = None
    if float_inputs and cfg.input_source != "float" and not own_inputs:
        with reference.active():
            fp_inputs = capture_inputs(ctx, unit)
        if all(i in fp_inputs for i in common):
            paired = UnitCache([fp_inputs[i] for i in common], [targets[i] for i in common])
            cache.float_inputs = paired if paired.stacked == cache.stacked else None
    return cache


class _Phase:
    """One phase of a unit's optimisation: Adam with a cosine decay over its iterations, every step's mini-batch
    drawn up front, the loss guards checked every few steps."""

    def __init__(self, ctx, method, cache, samplers, start, iters, search, before, where):
        self.ctx, self.method, self.cache, self.before, self.where = ctx, method, cache, before, where
        self.start, self.iters = start, iters
        self.sampler, val_sampler, self.total_items = samplers
        self.opt = torch.optim.Adam(method.param_groups())
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=iters, eta_min=0.0)
        self.arch = method.arch_params() if search else []
        self.arch_opt = torch.optim.Adam(self.arch, lr=method.arch_lr) if self.arch else None
        # Every step's indices drawn up front and moved at once: a copy from host memory per step would wait for the
        # GPU each time.
        self.plan = torch.stack([self.sampler.sample(start + it) for it in range(iters)]).to(cache.device)
        self.vplan = (torch.stack([val_sampler.sample(start + it) for it in range(iters)]).to(cache.device)
                      if self.arch_opt is not None else None)

    def run(self, module):
        cfg, method, cache = self.method.cfg, self.method, self.cache
        log_every = cfg.log_every or max(1, cfg.iters // 5)
        check_every = max(1, min(10, log_every))
        window, bad, count = 0.0, None, 0
        for it in range(self.iters):
            git = self.start + it
            args, kwargs, tgt = method.fetch(cache, self.plan[it])
            with _autocast(tgt[0].device, cfg.amp):
                out = module(*args, **kwargs)
            loss = method.loss(out, tgt)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            method.after_step()
            if self.arch_opt is not None:
                self._arch_step(module, it)
            detached = loss.detach()
            window = window + method.loss_ratio(detached, self.before)
            finite = torch.isfinite(detached)
            bad = ~finite if bad is None else (bad | ~finite)
            count += 1
            if count == check_every or it == self.iters - 1:
                if bool(bad):
                    raise _Rollback(f"loss became NaN/inf by iteration {git + 1}")
                ratio = float(window) / count
                if ratio > cfg.max_loss_ratio:
                    raise _Rollback(f"loss grew to {ratio:.3g}x its start (over {cfg.max_loss_ratio:g}x; start error "
                                    f"{self.before:.3e}) by iteration {git + 1}")
                window, bad, count = 0.0, None, 0
            if (git + 1) % log_every == 0:
                pool = f", pool {self.sampler.pool_size(git)}/{self.total_items}" if cfg.curriculum else ""
                self.ctx.log(f"{self.where}: iter {git + 1}/{cfg.iters} loss {float(detached):.4e} "
                             f"(start {self.before:.4e}{pool})")

    def _arch_step(self, module, it):
        """First-order DARTS: the architecture parameters follow the loss on held-out items."""
        vargs, vkwargs, vtgt = self.method.fetch(self.cache, self.vplan[it])
        with _autocast(vtgt[0].device, self.method.cfg.amp):
            vloss = self.method.loss(module(*vargs, **vkwargs), vtgt)
        vloss = vloss + self.method.arch_penalty(self.before)
        grads = torch.autograd.grad(vloss, self.arch)
        for p, g in zip(self.arch, grads):
            p.grad = g
        self.arch_opt.step()


def reconstruct_unit(ctx, unit, method, reference, index=0, total=1):
    """Reconstruct one unit; returns (error before, error after, status) with status 'ok', 'skipped' or the reason of
    a rollback."""
    cfg = method.cfg
    t0 = time.time()
    where = f"[{cfg.tag}] {index + 1}/{total} {unit.name}"
    cache = method.unit_cache(ctx, unit, reference, where)
    if cache is None:
        ctx.log(f"{where}: not reached by the calibration data, skipped")
        return None, None, "skipped"
    bs = cfg.batch_size
    gen = torch.Generator().manual_seed(int(ctx.seed) * 1000003 + index)

    saved = method.save(unit)
    if not method.attach(unit, gen):
        method.detach(unit)
        ctx.log(f"{where}: nothing to learn, skipped")
        return None, None, "skipped"

    errors = item_errors(unit.module, cache, bs)
    before = float(errors.mean())
    if not math.isfinite(before) or before <= 0 or cfg.iters == 0:
        method.detach(unit)
        reason = "zero error" if before == 0 else ("no iterations" if cfg.iters == 0 else "non-finite start error")
        ctx.log(f"{where}: {reason}, skipped")
        return before, before, "skipped"

    items = torch.arange(cache.n)
    val_items = None
    phases = method.phases(cfg.iters)
    if any(search for _, search in phases) and cache.n >= 2:  # a held-out fifth for the architecture steps
        perm = torch.randperm(cache.n, generator=gen)
        n_val = max(1, cache.n // 5)
        items, val_items = perm[n_val:].sort().values, perm[:n_val].sort().values
    batch = bs if cache.stacked else 1
    samplers = (Sampler(items, batch, gen, errors if cfg.curriculum else None, cfg.iters, cfg.curriculum_start,
                        cfg.curriculum_full_at),
                Sampler(val_items if val_items is not None else items, batch, gen), len(items))

    status = "ok"
    try:
        with torch.enable_grad():
            done = 0
            for phase_iters, search in phases:
                if phase_iters <= 0:
                    continue
                _Phase(ctx, method, cache, samplers, done, phase_iters, search, before, where).run(unit.module)
                method.end_phase(unit, search, ctx.log)
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
        method.restore(unit, saved)
        raise
    if status != "ok":
        method.restore(unit, saved)
        ctx.log(f"{where}: rolled back ({status})")
    else:
        method.keep(unit)
    ctx.log(f"{where}: mse {before:.4e} -> {after:.4e} ({cfg.iters} iters, {cache.n} items, "
            f"{time.time() - t0:.1f}s)")
    return before, after, status


def reconstruct(ctx, method, reference=None):
    """Reconstruct every unit in execution order with `method` (a ReconMethod), writing a checkpoint after each
    where the context has a checkpoint driver. Returns {unit name: (before, after, status)}."""
    cfg = method.cfg
    if torch.is_inference_mode_enabled():
        raise ConfigError(f"{cfg.tag} trains parameters: do not call quantize() under torch.inference_mode()")
    if reference is None:
        reference = float_reference(ctx)
    units = reconstruction_units(ctx, cfg.layers)
    report = {}
    steps = UnitSteps(ctx, len(units), cfg.tag)
    progress = Progress(len(units), f"[{cfg.tag}]", ctx.log, done=sum(map(steps.finished, range(len(units)))))
    for i, unit in enumerate(units):
        if steps.skip(i, unit.name, lambda _: method.resumed(ctx.model)):  # a resumed run: finished before
            continue
        report[unit.name] = before, after, status = reconstruct_unit(ctx, unit, method, reference, i, len(units))
        where = {"pass": cfg.tag, "pass_index": ctx.pass_index, "unit": unit.name}
        ctx.state.units.append(dict(where, before=before, after=after, status=status))
        if status not in ("ok", "skipped"):
            ctx.state.rollbacks.append(dict(where, reason=status))
        steps.save(i, unit.name)
        progress.step("units")
    rolled = [n for n, (_, _, s) in report.items() if s not in ("ok", "skipped")]
    gains = [(b, a) for b, a, s in report.values() if s == "ok"]
    if gains:
        ratio = sum(a / b for b, a in gains) / len(gains)
        ctx.log(f"[{cfg.tag}] {len(gains)} units reconstructed, mean error ratio after/before {ratio:.3f}"
                + (f"; rolled back: {', '.join(rolled)}" if rolled else ""))
    return report


__all__ = ["ReconMethod", "reconstruct", "reconstruct_unit", "unit_cache"]
