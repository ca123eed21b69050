"""PTQ4ViT's Hessian-guided scale search (Yuan et al., ECCV 2022, Sec. 3.3) as a pass: `hessian_search`.

After basic calibration has set every quantizer from min-max statistics, each quantized module's scales are searched
again on that module's **output**: a candidate is scored by `Σ (g ⊙ (y − ŷ))²`, where `y` is the float output of the
module, `ŷ` its output with the candidate (and the module's other quantizers at their current values) and `g` the
gradient of the task loss with respect to `y` (`metric="hessian"`, the diagonal approximation of the Hessian by
squared gradients); `metric="mse"` drops `g`. Everything is measured on the float model: inputs, outputs and
gradients of every module come from one forward and backward pass with all quantizers off (PTQ4ViT's "parallel"
calibration: no layer sees another layer's quantization error). A module the output does not depend on
differentiably (a detector's mask head: its masks are thresholded), or whose gradient is zero on every calibration
batch, is searched with `metric="mse"`.

Per module, `rounds` alternating rounds search the weight scale, then the input scale (for attention matmuls: the left
operand, then the right one), each over fixed candidates relative to the min-max value it started from:
- uniform quantizers: `scale · (α + i·(β − α)/n)` for `i = 0 … n` (`eq_alpha`, `eq_beta`, `eq_n`; the zero point is
  kept). Per-channel or per-head scales pick their candidate per channel/head/slice when the module's output splits
  that way (a weight row only touches its own output channel, a head of q only its own head of q·kᵀ); otherwise all
  channels share the picked factor;
- `twin_uniform` in sign mode (post-GELU): the negative step stays at (observed minimum)/2^(b−1), the positive step is
  searched like a uniform scale from `max/(2^(b−1) − 0.5)`;
- `twin_uniform` in magnitude mode (post-Softmax): the large-value range is fixed to `[0, 1]` (probabilities), and the
  split between the two ranges is searched among `2^−i`, `i = 0 … split_candidates − 1`.
Other quantizer kinds are left as basic calibration set them.

The gradient (`grad`): "label" back-propagates the cross-entropy of the model's output against the float model's own
top-1 predictions when the output is one tensor of class scores (…, classes); "random" back-propagates a random
projection of every output tensor (`E[(Jᵀr)²] = diag(JᵀJ)`, the Gauss–Newton diagonal of an output-matching loss),
which works for any output (detection, segmentation); "label" falls back to it when the output is not one tensor.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import CalibrationError
from ...modules import MatMul, QuantConv2d, QuantLinear
from ...passes import PassConfig, is_int, is_number, register_pass
from ...progress import Progress
from ...quantizers import UniformQuantizer
from ...resume import UnitSteps
from .quantizers import TwinUniformQuantizer

METRICS = ("hessian", "mse")
GRADS = ("label", "random")


def _float_tensors(out):
    if torch.is_tensor(out):
        if out.is_floating_point():
            yield out
    elif isinstance(out, dict):
        for v in out.values():
            yield from _float_tensors(v)
    elif isinstance(out, (list, tuple)):
        for v in out:
            yield from _float_tensors(v)


def _loss(out, grad, gen):
    tensors = [t for t in _float_tensors(out) if t.requires_grad]
    if not tensors:
        raise CalibrationError("hessian_search: the model output does not depend on any quantized module")
    if grad == "label" and len(tensors) == 1 and tensors[0].dim() >= 2 and tensors[0].shape[-1] > 1:
        logits = tensors[0].flatten(0, -2)
        return F.cross_entropy(logits, logits.detach().argmax(-1), reduction="sum")
    return sum((t * torch.randn(t.shape, generator=gen).to(t)).sum() for t in tensors)


class _Capture:
    """Float inputs, outputs and output gradients of a set of sites over every calibration batch."""

    def __init__(self, members):
        self.members = members
        self.inputs = {s.name: [] for s in members}
        self.outputs = {s.name: [] for s in members}
        self.grads = {s.name: [] for s in members}
        self._live = []

    def _hook(self, site):
        def hook(mod, args, out):
            self.inputs[site.name].append(tuple(a.detach() for a in args))
            if not out.requires_grad:  # nothing upstream needs a gradient: start the graph here
                out = out.detach().requires_grad_()
            self.outputs[site.name].append(out.detach())
            self._live.append((site.name, out))
            return out
        return hook

    def run(self, ctx, grad, need_grad, gen):
        handles = [s.module.register_forward_hook(self._hook(s)) for s in self.members]
        try:
            for batch in ctx.calib.batches:
                self._live = []
                with torch.enable_grad():
                    out = ctx.calib.forward(ctx.model, batch)
                    if need_grad:
                        names = [n for n, _ in self._live]
                        grads = torch.autograd.grad(_loss(out, grad, gen), [t for _, t in self._live],
                                                    allow_unused=True)
                        for name, t, g in zip(names, self._live, grads):
                            self.grads[name].append(None if g is None else g.detach())
                self._live = []
        finally:
            for h in handles:
                h.remove()

    def get(self, name):
        """The site's calls as [(inputs, output, gradient or None)], calls of equal shapes concatenated along the
        batch: a module applied at several sizes in one forward (a detector's RPN head on each FPN level) keeps one
        entry per size."""
        ins, outs, grads = self.inputs[name], self.outputs[name], self.grads[name]
        if not ins:
            raise CalibrationError(f"hessian_search: {name} was never reached by the calibration data")
        # A site the output does not reach differentiably (e.g. a mask head whose masks are thresholded), or whose
        # gradient is zero throughout (no detections on the calibration images), has no Hessian signal: it is searched
        # on its output MSE instead of a zero weight that would make every candidate tie.
        if not grads or any(g is None for g in grads) or not any(bool(g.any()) for g in grads):
            grads = [None] * len(ins)
        by_shape = {}
        for x, y, g in zip(ins, outs, grads):
            by_shape.setdefault(tuple(t.shape[1:] for t in (*x, y)), []).append((x, y, g))
        return [(tuple(torch.cat(parts) for parts in zip(*(c[0] for c in calls))), torch.cat([c[1] for c in calls]),
                 None if calls[0][2] is None else torch.cat([c[2] for c in calls])) for calls in by_shape.values()]


class _Slot:
    """The search of one quantizer: candidate parameter sets, and how the module's output error splits into its
    groups (one error per group of channels that owns its own scale)."""

    def __init__(self, q, candidates, out_axis):
        self.q, self.candidates, self.out_axis = q, candidates, out_axis
        n = next(iter(candidates[0].values())).numel()
        self.n = n
        self.groups = getattr(q, "groups", None) or n

    def group_error(self, err):
        """Per-group error (groups,) of an elementwise error tensor, or (1,) when the output does not split."""
        if self.groups > 1 and self.out_axis is not None:
            axis = self.out_axis % err.dim()
            if err.shape[axis] % self.groups == 0:
                per = err.movedim(axis, 0).reshape(err.shape[axis], -1).sum(1)
                return per.view(self.groups, -1).sum(1)
        return err.sum().reshape(1)

    def set(self, i):
        self.q.set_params(**self.candidates[i])

    def set_best(self, best):
        """best: (groups,) or (1,) candidate indices; each parameter takes its group's candidate."""
        params = {}
        for name in self.candidates[0]:
            stack = torch.stack([c[name].reshape(-1) for c in self.candidates])  # (k, n)
            idx = best if best.numel() == stack.shape[1] else best.repeat_interleave(stack.shape[1] // best.numel())
            if idx.numel() != stack.shape[1]:
                idx = best[:1].expand(stack.shape[1])
            params[name] = stack.gather(0, idx.view(1, -1)).view_as(self.candidates[0][name])
        self.q.set_params(**params)


def _fracs(cfg):
    return [cfg.eq_alpha + i * (cfg.eq_beta - cfg.eq_alpha) / cfg.eq_n for i in range(cfg.eq_n + 1)]


def _slot(q, data, out_axis, cfg, softmax):
    """The candidates of quantizer `q` whose input is `data`, or None for kinds the search leaves alone."""
    if q is None or not q.enabled:
        return None
    if isinstance(q, UniformQuantizer):
        s0, z = q.scale.clone(), q.zero_point.clone()
        return _Slot(q, [dict(scale=s0 * f, zero_point=z) for f in _fracs(cfg)], out_axis)
    if isinstance(q, TwinUniformQuantizer) and q.delta1.numel() == 1:
        top = q.half - 1
        if q.mode == "sign":
            d1 = (-data.min()).clamp_min(1e-8).reshape(1) / q.half
            s0 = data.max().clamp_min(1e-8).reshape(1) / (q.half - 0.5)
            return _Slot(q, [dict(delta1=d1, delta2=s0 * f) for f in _fracs(cfg)], None)
        hi = torch.ones(1) if softmax else data.max().clamp_min(1e-8).reshape(1).cpu()
        d2 = (hi / max(top, 1)).to(data.device)
        return _Slot(q, [dict(delta1=d2 * 2.0 ** -i, delta2=d2) for i in range(cfg.split_candidates)], None)
    return None


def _search_site(site, calls, cfg):
    """calls: [(inputs, float output, output gradient or None)] (_Capture.get); errors add up over the calls. While one
    operand's candidates are tried, the other operand is quantized once, not once per candidate."""
    m = site.module
    # each operand over all calls, for the data statistics of _slot (no copy when there is one call)
    first = list(calls[0][0]) if len(calls) == 1 else [torch.cat([c[0][i].reshape(-1) for c in calls])
                                                          for i in range(len(calls[0][0]))]
    if isinstance(m, MatMul):  # operands: 0 = a, 1 = b; a is searched first
        softmax = site.role.value == "matmul_av"
        quantizers = (m.a_quantizer, m.b_quantizer)
        axes = [1 if q is not None and q.per_channel else None for q in quantizers]
        order = [(0, _slot(m.a_quantizer, first[0], axes[0], cfg, softmax)),
                 (1, _slot(m.b_quantizer, first[1], axes[1], cfg, False))]

        def raw(k, inputs):
            return inputs[k]

        def combine(a, b):
            return a @ b
    elif isinstance(m, (QuantLinear, QuantConv2d)):  # operands: 0 = input, 1 = weight; the weight is searched first
        conv = isinstance(m, QuantConv2d)
        quantizers = (m.input_quantizer, m.weight_quantizer)
        order = [(1, _slot(m.weight_quantizer, m.weight, 1 if conv else -1, cfg, False)),
                 (0, _slot(m.input_quantizer, first[0], None, cfg, False))]

        def raw(k, inputs):
            return inputs[0] if k == 0 else m.weight

        def combine(x, w):
            return m._conv_forward(x, w, m.bias) if conv else F.linear(x, w, m.bias)
    else:
        return

    def operand(k, inputs):
        v = raw(k, inputs)
        return quantizers[k](v) if quantizers[k] is not None else v

    order = [(k, slot) for k, slot in order if slot is not None]
    if not order:
        return
    weights = [g.pow(2) if (cfg.metric == "hessian" and g is not None) else None for _, _, g in calls]
    with torch.no_grad():
        for _ in range(cfg.rounds if len(order) > 1 else 1):
            for k, slot in order:
                fixed = [operand(1 - k, inputs) for inputs, _, _ in calls]
                errs = []
                for i in range(len(slot.candidates)):
                    slot.set(i)
                    err = 0
                    for (inputs, y, _), weight, other in zip(calls, weights, fixed):
                        out = combine(operand(k, inputs), other) if k == 0 else combine(other, operand(k, inputs))
                        d = (out - y).pow(2)
                        err = err + slot.group_error(d * weight if weight is not None else d)
                    errs.append(err)
                slot.set_best(torch.stack(errs).argmin(0))  # first of equal errors, like an argmax of −error


@register_pass("hessian_search")
@dataclass
class HessianSearchConfig(PassConfig):
    """PTQ4ViT's output-metric scale search (module docstring). Defaults are the official PTQ4ViT config's."""
    metric: str = "hessian"
    grad: str = "label"
    eq_alpha: float = 0.01
    eq_beta: float = 1.2
    eq_n: int = 100
    rounds: int = 3
    split_candidates: int = 20

    def __post_init__(self):
        self.require(self.metric in METRICS, "metric", f"one of {METRICS}")
        self.require(self.grad in GRADS, "grad", f"one of {GRADS}")
        self.require(is_number(self.eq_alpha) and self.eq_alpha > 0, "eq_alpha", "a positive number")
        self.require(is_number(self.eq_beta) and self.eq_beta > self.eq_alpha, "eq_beta", "a number above eq_alpha")
        self.require(is_int(self.eq_n) and self.eq_n >= 1, "eq_n", "a positive integer")
        self.require(is_int(self.rounds) and self.rounds >= 1, "rounds", "a positive integer")
        self.require(is_int(self.split_candidates) and 1 <= self.split_candidates <= 30, "split_candidates",
                     "an integer from 1 to 30")

    def run(self, ctx):
        hessian_search(ctx, self)


def hessian_search(ctx, cfg):
    """Search every site's scales on its float output error (see the module docstring), one block at a time.

    Each block (or group of sites between blocks) is a unit of the run's checkpoints (plugin.quant.resume): with a
    checkpoint directory the model state is written after each, and a resumed run skips the units it holds. Our
    choice: every unit draws its random gradient projections (`grad="random"`) from its own generator, seeded from
    the run's seed and the unit's index, so a resumed run gives the same scales as an uninterrupted one."""
    from ...calibrate import iter_quantizers
    quantizers = [q for _, q in iter_quantizers(ctx.model)]
    enabled = [q.enabled for q in quantizers]
    groups = ctx.groups()
    steps = UnitSteps(ctx, len(groups), "hessian_search")
    progress = Progress(len(groups), "[hessian_search]", ctx.log, done=sum(map(steps.finished, range(len(groups)))))
    for i, (key, members, _) in enumerate(groups):
        where = f"block {key}" if key is not None else "between blocks"
        if steps.skip(i, where):  # a resumed run: this unit finished before
            continue
        gen = torch.Generator().manual_seed(int(ctx.seed) * 1000003 + i)
        for q in quantizers:
            q.enabled = False
        cap = _Capture(members)
        try:
            cap.run(ctx, cfg.grad, cfg.metric == "hessian", gen)
        finally:
            for q, e in zip(quantizers, enabled):
                q.enabled = e
        for site in members:
            _search_site(site, cap.get(site.name), cfg)
        del cap
        steps.save(i, where)
        progress.step(f"({where})")


__all__ = ["HessianSearchConfig", "hessian_search"]
