"""The AdaLog family's output-driven range search (AdaLog, ECCV 2024; used unchanged by APHQ-ViT and FIMA-Q, CVPR
2025) as a pass: `output_search`.

For every quantized module with `percentile_grid` quantizers (plugin.quant.percentile_grid), the candidates of each
such quantizer are scored by the squared error of the module's **output** against its float output, the module's
other quantizers at their current values. Inputs and outputs come from the float model (every quantizer off while
they are captured; the official calibrator runs every module unquantized until all are searched), on the images
that set the quantizers (`Recipe.stat_fraction`: the official `calib_size` 128 of its 1024). A weight's error is
split by output channel, an attention operand's per head, so each channel or head keeps its own best candidate.

The order follows the official `hyperparameter_searching` of each module type:
- "range" quantizers (Linear weights and inputs): the candidate with the least error on the quantizer's own input
  first, then `rounds` rounds of the output search over all candidates, weight then input;
- "pair" quantizers (attention operands, Conv weights): every one starts at candidate eq_n − 1, each is searched over
  the paired (lower, upper) candidates, then `rounds` rounds of a coordinate search per quantizer: the lower bound over
  all lower candidates with the upper one fixed, then the upper bound with the lower one fixed.
Quantizers of other kinds (the patch embedding's 8-bit input) keep their calibration. Last, quantizers with a
`token_axis` get one scale per token (FIMA-Q's `token_channel_wise`; plugin.quant.percentile_grid).

Our choice, for speed (the official code also scores candidates in batches): at Linear and attention-matmul sites the
module's other operand is quantized once per search and the candidates are scored together, stacked on a leading axis
in chunks of at most `CHUNK_ELEMS` values per stacked tensor (`_Search.errors`); the errors equal the one-pass-per-
candidate ones (`_Search.error`, kept for Conv sites) up to float summation order.
"""
import base64
from dataclasses import dataclass

import torch

from .calibrate import iter_quantizers, set_quant_enabled
from .errors import CalibrationError, CheckpointError
from .modules import MatMul, QuantConv2d, QuantLinear
from .passes import PassConfig, is_int, register_pass
from .percentile_grid import PercentileGridQuantizer
from .progress import Progress
from .resume import UnitSteps

MAX_ROWS = 2 ** 22  # candidate quantiles and the own-input error are taken on at most this many rows
CHUNK_ELEMS = 2 ** 26  # candidates scored together: at most this many float32 values (256 MB) per stacked tensor


def _rows(x, q):
    """The (rows, C) matrix of `x` along the quantizer's channels (C = 1 per tensor)."""
    x = x.detach().float()
    return x.movedim(q.channel_axis, -1).reshape(-1, x.shape[q.channel_axis]) if q.per_channel else x.reshape(-1, 1)


def _subsample(rows, gen):
    if rows.shape[0] <= MAX_ROWS:
        return rows
    return rows[torch.randperm(rows.shape[0], generator=gen)[:MAX_ROWS].to(rows.device)]


def _capture(ctx, site, once):
    """[(args, float output)] of every call of the site over the statistics images (each forward stops after the
    site when it runs once per forward)."""
    calls = []
    handle = site.module.register_forward_hook(lambda m, args, out: calls.append((args, out)))
    switches = list(iter_quantizers(ctx.model))
    flags = [q.enabled for _, q in switches]
    set_quant_enabled(ctx.model, False)
    try:
        ctx.run_calib(stop_after=site.module if once else None, first=ctx.stat_batches())
    finally:
        handle.remove()
        for (_, q), flag in zip(switches, flags):
            q.enabled = flag
    if not calls:
        raise CalibrationError(f"output_search: {site.name} was never reached by the calibration data")
    return calls


class _Search:
    """The searches of one module: its calls, and how an output error splits per channel of a quantizer."""

    def __init__(self, site, calls):
        self.module, self.calls = site.module, calls

    def out_axis(self, slot, q):
        if slot == "weight_quantizer":
            return 1 if isinstance(self.module, QuantConv2d) else -1
        if isinstance(self.module, MatMul) and q.spec.granularity == "head":
            return 1
        return None  # a per-tensor input (or a per-channel one, whose channels do not split the output)

    def error(self, slot, q, scale, zero):
        """Output squared error of the module with (scale, zero) in quantizer `q`, per channel of q (or (1,))."""
        saved = q.scale, q.zero_point
        q.scale, q.zero_point = scale, zero
        axis, total = self.out_axis(slot, q), 0.0
        try:
            for args, out in self.calls:
                err = (self.module(*args) - out).pow(2)
                total = total + (err.movedim(axis, -1).reshape(-1, err.shape[axis]).sum(0) if axis is not None
                                 else err.sum().reshape(1))
        finally:
            q.scale, q.zero_point = saved
        if axis is None and scale.numel() > 1:
            total = total.expand(scale.numel())
        return total

    def batched(self, q):
        """Whether the candidates can be scored together (`errors`): Linear and matmul sites whose quantizer is on.
        Conv sites (the patch embedding) keep the one-candidate-at-a-time `error`."""
        return type(self.module) in (QuantLinear, MatMul) and q.enabled and q.ready

    def errors(self, slot, q, scales, zeros):
        """`error` of every candidate (K, C), in chunks of candidates scored together: the module's other operand is
        quantized once, the candidates of `q` are stacked on a leading axis and the product broadcasts over it. Equal
        to `error` up to float summation order."""
        m, axis = self.module, self.out_axis(slot, q)
        linear = isinstance(m, QuantLinear)
        if linear:  # y = x @ Wᵀ + bias on each call's (N, in) rows
            arg = 1 if slot == "weight_quantizer" else 0
            w = m.weight if arg else m.quant_weight()
            calls = [([args[0].reshape(-1, m.in_features), w], out.reshape(-1, m.out_features))
                     for args, out in self.calls]
            for ops, _ in calls:
                ops[0] = m.quant_input(ops[0]) if arg else ops[0]
        else:  # y = a @ b
            arg, other = (0, m.b_quantizer) if slot == "a_quantizer" else (1, m.a_quantizer)
            calls = [(list(args), out) for args, out in self.calls]
            for ops, _ in calls:
                ops[1 - arg] = ops[1 - arg] if other is None else other(ops[1 - arg])
        chunk = max(1, CHUNK_ELEMS // max(max(ops[arg].numel(), out.numel()) for ops, out in calls))
        parts = []
        for s, z in zip(scales.split(chunk), zeros.split(chunk)):
            total = 0.0
            for ops, out in calls:
                a, b = [_stacked_quant(q, t, s, z) if i == arg else t for i, t in enumerate(ops)]
                y = a @ b.transpose(-1, -2) + (0.0 if m.bias is None else m.bias) if linear else a @ b
                err = y.sub_(out).pow_(2)  # y is this product's own tensor
                total = total + (err.movedim(axis % out.dim() + 1, -1).reshape(len(s), -1, out.shape[axis]).sum(1)
                                 if axis is not None else err.reshape(len(s), -1).sum(1, keepdim=True))
            parts.append(total)
        errs = torch.cat(parts)
        return errs.expand(-1, scales.shape[1]) if axis is None else errs

    def pick(self, slot, q, scales, zeros):
        if self.batched(q):
            return q.pick_errors(scales, zeros, self.errors(slot, q, scales, zeros))
        return q.pick(scales, zeros, lambda s, z: self.error(slot, q, s, z))


def _stacked_quant(q, x, scales, zeros):
    """`q`'s fake quantization of x under each of k candidates (rows of the (k, C) scales, zeros): (k, *x.shape).
    Elementwise the same operations as `q.quantize` with one candidate set."""
    shape = [len(scales)] + [1] * x.dim()
    if scales.shape[1] > 1:
        shape[q.channel_axis % x.dim() + 1] = scales.shape[1]
    return q.fake_quant(x.unsqueeze(0), scales.reshape(shape), zeros.reshape(shape))


def _search_site(site, calls, rounds, gen):
    search = _Search(site, calls)
    slots = [(slot, q) for slot, q in site.quantizers() if isinstance(q, PercentileGridQuantizer)]
    state = {}
    with torch.no_grad():
        for slot, q in slots:
            if slot == "weight_quantizer":
                rows = _rows(site.module.weight, q)
            else:
                arg = 1 if slot == "b_quantizer" else 0
                rows = _subsample(torch.cat([_rows(args[arg], q) for args, _ in calls]), gen)
            if q.mode == "range":
                scales, zeros = q.candidates(rows)
                q.pick(scales, zeros, lambda s, z: (q.fake_quant(rows, s, z) - rows).pow(2).sum(0))
                state[slot] = (scales, zeros)
            else:
                lowers, uppers = q.pair_bounds(rows)
                s, z = q.pair_params(lowers[-1], uppers[-1])
                q._set(scale=s, zero_point=z)
                state[slot] = [lowers, uppers, None]
        for slot, q in slots:  # pair quantizers: the paired candidates, scored on the output
            if q.mode != "range":
                lowers, uppers, _ = state[slot]
                state[slot][2] = search.pick(slot, q, *q.pair_params(lowers, uppers))
        for _ in range(rounds):
            for slot, q in slots:
                if q.mode == "range":
                    search.pick(slot, q, *state[slot])
                    continue
                lowers, uppers, best = state[slot]
                cols = torch.arange(lowers.shape[1], device=lowers.device)
                upper = uppers[best, cols].expand_as(lowers)
                best = search.pick(slot, q, *q.pair_params(lowers, upper))       # lower bound, upper fixed
                lower = lowers[best, cols].expand_as(uppers)
                state[slot][2] = search.pick(slot, q, *q.pair_params(lower, uppers))  # upper bound, lower fixed


def _expand_tokens(site, calls):
    """FIMA-Q's per-token scales, where a quantizer asks for them (`token_axis`): as the official code, for Linear
    inputs of shape (batch, tokens, channels) and attention operands (batch, heads, rows, columns) of one fixed size
    (the classifier's (batch, features) input, Swin's (batch, H, W, C) ones keep their scale)."""
    for slot, q in site.quantizers():
        if not isinstance(q, PercentileGridQuantizer) or q.token_axis is None or slot == "weight_quantizer":
            continue
        arg, dims = (1 if slot == "b_quantizer" else 0), (4 if isinstance(site.module, MatMul) else 3)
        shapes = {args[arg].shape for args, _ in calls}
        if all(len(shape) == dims for shape in shapes) and len({shape[q.token_axis] for shape in shapes}) == 1:
            q.expand_tokens(next(iter(shapes))[q.token_axis])


@register_pass("output_search")
@dataclass
class OutputSearch(PassConfig):
    """Options: rounds (the official `search_round`, 3). See the module docstring."""
    rounds: int = 3

    def __post_init__(self):
        self.require(is_int(self.rounds) and self.rounds >= 0, "rounds", "a non-negative integer")

    def run(self, ctx):
        output_search(ctx, self.rounds)


def output_search(ctx, rounds):
    """Search every site with `percentile_grid` quantizers (module docstring), in the order of `ctx.sites`.

    The units of the run's checkpoints (plugin.quant.resume) are the consecutive sites of one block (or between
    blocks): with a checkpoint directory the model state is written after each, with the state of the random
    generator that subsamples rows (`_subsample`, one generator for the whole pass as before), and a resumed run skips
    the units it holds and continues with that generator, so it gives the same scales as an uninterrupted run."""
    gen = torch.Generator().manual_seed(ctx.seed)
    _, per_forward = ctx.execution_order()
    sites = [s for s in ctx.sites if any(isinstance(q, PercentileGridQuantizer) for _, q in s.quantizers())]
    units = ctx.block_runs(sites)
    steps = UnitSteps(ctx, len(units), "output_search")

    def restore_generator(ckpt):
        gen_state = (ckpt.pass_state or {}).get("generator")
        if gen_state is None:
            raise CheckpointError(f"the checkpoint in {ckpt.dir} has no generator state for output_search")
        gen.set_state(torch.frombuffer(bytearray(base64.b64decode(gen_state)), dtype=torch.uint8))

    progress = Progress(len(sites), "[output_search]", ctx.log,
                        done=sum(len(members) for i, (_, members) in enumerate(units) if steps.finished(i)))
    for i, (key, members) in enumerate(units):
        where = f"block {key}" if key is not None else "between blocks"
        if steps.skip(i, where, restore_generator):  # a resumed run: this unit finished before
            continue
        for site in members:
            calls = _capture(ctx, site, once=per_forward.get(site.name, 0) == 1)
            _search_site(site, calls, rounds, gen)
            _expand_tokens(site, calls)
            progress.step(f"sites ({site.name})")
        steps.save(i, where, lambda: {"generator": base64.b64encode(gen.get_state().numpy().tobytes()).decode()})


__all__ = ["OutputSearch", "output_search"]
