"""The calibration engine: swap in quantized modules, collect statistics, run the recipe's passes.

`quantize(model, recipe, calib)` works in place:
1. the adapter makes attention matmuls explicit and names the role of each module;
2. every Linear/Conv2d with a role becomes a QuantLinear/QuantConv2d (sharing the float parameters), every MatMul
   gets operand quantizers, each from the recipe's spec for that site;
3. calibration runs group by group in execution order (one group per transformer block, plus the runs of modules
   between blocks): observers record the group's inputs while every earlier group is already quantized, then the
   post-LayerNorm reparameterisation of the group (if the recipe has one), then the group's weight and activation
   quantizers are set from what was seen. A forward stops early after the group's last module when it can;
4. the recipe's extra passes (block reconstruction, low-rank compensation, …) run in order.

`quantize(model, "repq", w_bits=4, a_bits=4, calib=loader)` is the same call with a recipe name and a DataLoader or
list of batches (plugin/quant/calib_input.py). Progress goes to the `logging` logger "plugin.quant" (INFO).
Passes whose STAGE is "pre" (they change the float network: APHQ-ViT's ReLU MLP reconstruction) run between 1 and 2,
before any quantizer exists. Step 3 sees the first `Recipe.stat_fraction` of the calibration batches, step 4 all.
"""
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import torch
import torch.nn as nn

from .attach import Site, attach_quantizers, set_submodule  # noqa: F401  (Site, set_submodule: re-exported)
from .plan import resolve_plan
from .block_skip import BlockSkip, StopForward  # noqa: F401  (StopForward: re-exported)
from .calib_input import calib_batches, resolve_recipe
from .errors import CalibrationError, CheckpointError, ConfigError
from .passes import check_passes
from .progress import Progress
from .quant_state import QuantState, attach_state
from .quantizers import Observation
from .reparam import REPARAM_RULES, finish_official_folds, reparameterize_group  # noqa: F401  (REPARAM_RULES)

logger = logging.getLogger("plugin.quant")


@dataclass
class CalibData:
    """Calibration batches (from a training split) and how to run the model on one of them."""
    batches: List[Any]
    forward: Callable[[nn.Module, Any], Any]

    def __post_init__(self):
        if len(self.batches) == 0:
            raise CalibrationError("the calibration set is empty")


class Observer:
    """Records what flows into one quantizer: exact per-channel min/max and a seeded reservoir sample of rows."""

    def __init__(self, site_name, channel_axis, max_elems, seed):
        self.site_name, self.channel_axis, self.max_elems = site_name, channel_axis, max_elems
        self.gen = torch.Generator().manual_seed(seed)
        self.min = self.max = self.rows = self.keys = None
        self.count = 0

    def record(self, x):
        x = x.detach()
        if not torch.isfinite(x).all():
            raise CalibrationError(f"non-finite values (NaN/inf) in the activations entering {self.site_name}")
        rows = x.movedim(self.channel_axis, -1).reshape(-1, x.shape[self.channel_axis]).float()
        lo, hi = rows.amin(0), rows.amax(0)
        self.min = lo if self.min is None else torch.minimum(self.min, lo)
        self.max = hi if self.max is None else torch.maximum(self.max, hi)
        self.count += rows.shape[0]
        cap = max(1, self.max_elems // rows.shape[1])
        keys = torch.rand(rows.shape[0], generator=self.gen).to(rows.device)
        if self.rows is not None:
            rows, keys = torch.cat([self.rows, rows]), torch.cat([self.keys, keys])
        if rows.shape[0] > cap:
            keep = keys.topk(cap).indices.sort().values
            rows, keys = rows[keep], keys[keep]
        self.rows, self.keys = rows, keys

    def observation(self):
        if self.min is None:
            return None
        return Observation(self.min, self.max, self.rows, self.count)


class CalibContext:
    """Everything a pass needs: the model, recipe, data, adapter and the quantized sites, and the QuantState that the
    passes fill in (`state`: the model's own one when given, else a new one that quantize() attaches at the end)."""

    def __init__(self, model, recipe, calib, adapter, sites, log, max_elems=2 ** 20, seed=0, checkpoint=None,
                 state=None, plan=None):
        self.model, self.recipe, self.calib, self.adapter, self.sites = model, recipe, calib, adapter, sites
        self.plan = plan  # the resolved plan (plugin.quant.plan) the sites were built from; None before attaching
        self.log, self.max_elems, self.seed = log, max_elems, seed
        self.by_name = {s.name: s for s in sites}
        # plugin.quant.resume.CalibCheckpoint (or None): reconstruction writes one after each unit, skips finished ones
        self.checkpoint = checkpoint
        self.pass_index, self.pass_kind = None, None
        # (norm, consumers, s_c, z_c, s̃) of the folds done after calibration (reparam_fold "official")
        self.official_folds = []
        self.batch_index = None  # the calibration batch run_calib is running
        # {module name: the original float module} for the modules a "pre" pass replaced (plugin.quant.recon.mlp_relu):
        # the float reference of reconstruction runs these, so it follows the original network
        self.float_originals = {}
        self.state = state if state is not None else QuantState(recipe, adapter.name)
        if checkpoint is not None:  # a resumed run carries on the units' records of the run it continues
            self.state.rollbacks, self.state.units = checkpoint.rollbacks, checkpoint.units

    def run_calib(self, stop_after: Optional[nn.Module] = None, desc=None, first=None):
        """Run every calibration batch (the `first` N only, when given; no grad); stop each forward right after
        `stop_after` ran, if given."""
        handle = None
        if stop_after is not None:
            def _stop(*_):
                raise StopForward
            handle = stop_after.register_forward_hook(_stop)
        try:
            with torch.no_grad():
                for self.batch_index, batch in enumerate(self.calib.batches[:first]):
                    try:
                        self.calib.forward(self.model, batch)
                    except StopForward:
                        pass
        finally:
            if handle is not None:
                handle.remove()

    def stat_batches(self):
        """How many of the first calibration batches set the quantizers (`Recipe.stat_fraction` of them, at least
        one); passes that train use every batch."""
        return max(1, round(len(self.calib.batches) * self.recipe.stat_fraction))

    def execution_order(self):
        """Sites in the order the first calibration batch reaches them, and how often each runs per forward."""
        order, calls, handles = [], {}, []
        for site in self.sites:
            def _hook(mod, args, site=site):
                if site.name not in calls:
                    order.append(site)
                calls[site.name] = calls.get(site.name, 0) + 1
            handles.append(site.module.register_forward_pre_hook(_hook))
        try:
            with torch.no_grad():
                self.calib.forward(self.model, self.calib.batches[0])
        finally:
            for h in handles:
                h.remove()
        unreached = [s for s in self.sites if s.name not in calls]
        return order + unreached, calls

    def block_runs(self, sites, per_site=False):
        """Consecutive runs of `sites` (in the order given) that share a block, as (block index, [sites]); sites
        outside every block form runs too (index None). With `per_site`, every site is a run of its own."""
        blocks = self.adapter.blocks(self.model)

        def block_of(name):
            for i, b in enumerate(blocks):
                if name.startswith(b + "."):
                    return i
            return None

        runs = []
        for site in sites:
            key = block_of(site.name)
            if runs and runs[-1][0] == key and not per_site:
                runs[-1][1].append(site)
            else:
                runs.append((key, [site]))
        return runs

    def groups(self, per_site=False):
        """`block_runs` of the sites in execution order, each with whether all its sites run once per forward."""
        order, calls = self.execution_order()
        return [(key, members, all(calls.get(s.name, 0) == 1 for s in members))
                for key, members in self.block_runs(order, per_site)]


def _observe(ctx, members, stop_after):
    observers = {}
    for site in members:
        for slot, q in site.act_quantizers():
            obs = Observer(f"{site.name}.{slot}", q.channel_axis, ctx.max_elems, ctx.seed)
            q.observer = observers[(site.name, slot)] = obs
    try:
        ctx.run_calib(stop_after=stop_after)
    finally:
        for site in members:
            for _, q in site.act_quantizers():
                q.observer = None
    return {k: o.observation() for k, o in observers.items()}


def calibrate_group(ctx, members, stop_after=None):
    observations = _observe(ctx, members, stop_after)
    if ctx.recipe.reparam:
        reparameterize_group(ctx, members, observations)
    for site in members:
        for slot, q in site.quantizers():
            if slot == "weight_quantizer":
                q.calibrate_tensor(site.module.weight)
            elif not q.ready:
                obs = observations.get((site.name, slot))
                if obs is None:
                    raise CalibrationError(f"{site.name} was never reached by the calibration data")
                q.calibrate(obs)


def quantize(model: nn.Module, recipe, calib=None, adapter=None, log=None, seed=0, checkpoint_dir=None,
             resume=False, skip_finished_blocks=True, *, w_bits=None, a_bits=None, forward=None, calib_num=None):
    """Quantize `model` in place with `recipe`, calibrating on `calib`. Returns the model (eval mode).

    `recipe` is a Recipe or a registered name, built at `w_bits`/`a_bits`; `calib` is a CalibData, or a DataLoader /
    list of batches run through `forward(model, batch)` (default: the model on the batch's `x`), `calib_num` samples
    of it at most (plugin.quant.calib_input). `log(message)` receives progress lines (default: logging, INFO, logger
    "plugin.quant").

    With `checkpoint_dir`, the reconstruction and search passes write a checkpoint there after each finished unit; with
    `resume` as well, a run continues after the last unit such a checkpoint holds (plugin.quant.resume). What the run
    left (recipe, adapter, per-unit errors, rollbacks, ranks) is the model's QuantState: `plugin.quant.state(model)`.
    `skip_finished_blocks` (plugin.quant.block_skip) keeps the calibration forwards from recomputing the blocks
    already calibrated; False runs every forward from the input (the same model, slower on deep models)."""
    from .adapter import Adapter, find_adapter
    recipe = resolve_recipe(recipe, w_bits, a_bits)
    if not isinstance(calib, CalibData):
        calib = CalibData(*calib_batches(calib, model, forward, calib_num))
    elif forward is not None or calib_num is not None:
        raise ConfigError("forward/calib_num apply to a DataLoader or list; a CalibData has its own batches and "
                          "forward")
    if log is None:
        log = logger.info
    if resume and not checkpoint_dir:
        raise ConfigError("resume needs a checkpoint directory")
    passes = check_passes(recipe)
    if not isinstance(adapter, Adapter):
        adapter = find_adapter(model, adapter)
    model.eval()
    checkpoint = None
    if checkpoint_dir:
        from .resume import CalibCheckpoint
        checkpoint = CalibCheckpoint(checkpoint_dir, recipe, model, calib, seed, resume=resume, log=log)
    adapter.prepare(model)
    pre_ctx = CalibContext(model, recipe, calib, adapter, [], log, max_elems=recipe.observe_elems, seed=seed,
                           checkpoint=checkpoint)
    for pass_index, p in enumerate(passes):
        if p.STAGE == "pre":  # passes that change the float network run before any quantizer exists
            pre_ctx.pass_index, pre_ctx.pass_kind = pass_index, p.kind
            t1 = time.time()
            p.run(pre_ctx)
            log(f"[calibrate {recipe.name}] pass {p.kind} (before quantization) done, {time.time() - t1:.1f}s")
    plan = resolve_plan(model, recipe, adapter)
    sites = attach_quantizers(model, plan)
    ctx = CalibContext(model, recipe, calib, adapter, sites, log, max_elems=recipe.observe_elems, seed=seed,
                       checkpoint=checkpoint, state=pre_ctx.state, plan=plan)
    ctx.state.plan = plan
    ctx.float_originals = pre_ctx.float_originals
    if ctx.float_originals:
        # the reference runs the original modules, so it must also see the parameters around them as the pre passes
        # left them: a fold (reparameterize_group) rescales a norm whose consumer inside an original module it
        # cannot rescale. Made now, before any quantizer or fold; without originals the first pass that asks makes it
        from .recon.reference import float_reference
        float_reference(ctx)
    ctx.calib = CalibData(calib.batches[:ctx.stat_batches()], calib.forward)  # the quantizers' images (stat_fraction)
    if recipe.sequential == "none":
        groups = [(None, ctx.sites, False)]
    elif recipe.sequential == "site":
        groups = ctx.groups(per_site=True)
    else:
        groups = ctx.groups()
    progress = Progress(len(groups), f"[calibrate {recipe.name}]", log)
    skip = None
    if skip_finished_blocks and len(groups) > 1:
        skip = BlockSkip(ctx)
    # groups after the last block's last group may read earlier blocks' outputs (multi-scale features): never skipped
    last_in_blocks = max((i for i, g in enumerate(groups) if g[0] is not None), default=-1)
    last_group_of = {key: i for i, (key, _, _) in enumerate(groups)}
    try:
        for i, (key, members, single_call) in enumerate(groups):
            stop_after = members[-1].module if (single_call and i < len(groups) - 1) else None
            if skip is not None:
                skip.enabled(stop_after is not None and i <= last_in_blocks)
            calibrate_group(ctx, members, stop_after)
            progress.step(f"groups ({f'block {key}' if key is not None else 'between blocks'})")
            if i + 1 == len(groups) or groups[i + 1][0] != key:
                if skip is not None and key is not None and i == last_group_of[key] and i < last_in_blocks:
                    skip.block_done(key)
    finally:
        if skip is not None:
            skip.remove()
        ctx.calib = calib
    finish_official_folds(ctx)  # reparam_fold "official": RepQ-ViT's code folds after calibration (reparam.py)
    for pass_index, p in enumerate(passes):
        if p.STAGE == "pre":
            continue
        ctx.pass_index, ctx.pass_kind = pass_index, p.kind
        t1 = time.time()
        p.run(ctx)
        log(f"[calibrate {recipe.name}] pass {p.kind} done, {time.time() - t1:.1f}s")
    ctx.float_originals = {}
    if checkpoint is not None and checkpoint.resume_step is not None:
        raise CheckpointError(f"the checkpoint in {checkpoint_dir} is past the end of this recipe's units")
    return attach_state(model, ctx.state)


def iter_quantizers(model):
    from .quantizers import Quantizer
    for name, m in model.named_modules():
        if isinstance(m, Quantizer):
            yield name, m


def set_quant_enabled(model, enabled: bool):
    """Turn every quantizer on or off (off = the float model, for parity checks and float teachers)."""
    for _, q in iter_quantizers(model):
        q.enabled = enabled
