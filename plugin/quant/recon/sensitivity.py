"""What the `aph` and `fisher_dplr` losses pre-compute over the calibration set: gradients of the task loss at the
model output with respect to a unit's output, averaged over the calibration items the unit's cache holds.

The task loss, as both official codes define it for classifiers: KL(softmax(z_fp / T) ‖ softmax(z / T)) with the
batch mean, z the model's logits, z_fp the float model's (computed once per pass, `reference_outputs`), T = 20. A
model whose output is not one tensor of class scores (detection, segmentation) uses ½‖z − z_fp‖² per item instead
(our choice: the output-matching loss whose Gauss–Newton Hessian plays the KL's role).

- `perturbation_hessian` (APHQ-ViT, official `init_block_perturb_hessian`): on the float model, the gradient with the
  unit's output shifted by +δ and by −δ (δ = 1e-6 on every element), w = mean over items |g₊ − g₋|. Read here: the
  next LayerNorm removes a uniform shift, and the float model sits at the KL's minimum, so g₊ − g₋ is float rounding
  noise (a random probe of the Jacobian at best). `sampled_fisher_diag` is our alternative: the diagonal of the
  Gauss–Newton Hessian (the Fisher at the float model) estimated without a step size, w = mean over items g_y²,
  g_y the gradient of −log softmax(z / T)_y for a label y drawn from the float model's softmax(z_fp / T) (for
  non-classifier outputs: g of r·z with r ~ N(0, I), whose E[g²] = diag(JᵀJ)).
- `fisher_row` (FIMA-Q, official `new_fisher_ro`): the model runs as the float network except the unit, which runs
  quantized as it trains (soft rounding, QDrop); one row of G = mean over items |g| and one of D = mean over items
  |ŷ − y| (ŷ the unit's output there, y its float target). FIMA-Q captures `k` such rows during a unit's optimisation.
  Upstream of a detector's non-maximum suppression the quantized unit can change how many boxes come out: output
  tensors whose shape differs from the float model's then give no loss term (logged), so G comes from the rest.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import CalibrationError
from ..quantizers import Quantizer
from .cache import float_tensors


class RepeatedUnit(CalibrationError):
    """The unit runs more than once in one model forward (e.g. a detector's RPN conv, applied to every pyramid level):
    its output gradients do not line up with its cached outputs, so no per-output weight can be taken."""


def _is_logits(out):
    return torch.is_tensor(out) and out.is_floating_point() and out.dim() >= 2 and out.shape[-1] > 1


@torch.no_grad()
def reference_outputs(ctx, reference, batches):
    """{batch index: the float model's output tensors} for the calibration batches `batches`."""
    refs = {}
    with reference.active():
        for i in batches:
            ctx.batch_index = i
            refs[i] = float_tensors(ctx.calib.forward(ctx.model, ctx.calib.batches[i]))
    return refs


def task_loss(out, ref, temperature, unmatched=None):
    """The official KL at temperature T for one logits tensor; ½‖z − z_fp‖² per item otherwise. A tensor whose
    shape differs from the float model's (a detector's final detections, whose count follows the quantized unit) has
    no term; how many had none is appended to the list `unmatched` when given. With no term left the loss is 0 (zero
    gradients)."""
    if _is_logits(out) and len(ref) == 1:
        z, z_fp = out.flatten(0, -2).float(), ref[0].flatten(0, -2).float()
        return F.kl_div(F.log_softmax(z / temperature, dim=-1), F.softmax(z_fp / temperature, dim=-1),
                        reduction="batchmean")
    outs = float_tensors(out, detach=False)
    if len(outs) != len(ref):
        raise CalibrationError(f"the model's output holds {len(outs)} floating-point tensors, the float model's "
                               f"{len(ref)}: no output-matching loss can pair them")
    pairs = [(o, r) for o, r in zip(outs, ref) if o.shape == r.shape]
    if unmatched is not None and len(pairs) < len(outs):
        unmatched.append(len(outs) - len(pairs))
    if not pairs:
        return sum(o.sum() * 0.0 for o in outs)  # still a function of the outputs: zero gradients
    return sum(0.5 * (o.float() - r.float()).pow(2).sum() / max(o.shape[0], 1) for o, r in pairs)


def _map_float(fn, obj):
    if torch.is_tensor(obj):
        return fn(obj) if obj.is_floating_point() else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_float(fn, o) for o in obj)
    if isinstance(obj, dict):
        return {k: _map_float(fn, v) for k, v in obj.items()}
    return obj


def unit_output_grads(ctx, unit, batch_index, loss_fn, shift=0.0):
    """(the unit's output tensors, d loss_fn(model output) / d them) on one calibration batch. The graph starts at the
    unit's output (nothing before it is differentiated); `shift` is added to every element of that output. Raises
    RepeatedUnit when the unit runs more than once in the forward."""
    live, calls = [], []

    def hook(module, args, output):
        calls.append(1)
        def start(t):
            t = t.detach().requires_grad_()
            live.append(t)
            return t + shift if shift else t.clone()  # not the leaf itself: the model may ReLU it in place
        return _map_float(start, output)

    handle = unit.module.register_forward_hook(hook)
    try:
        ctx.batch_index = batch_index
        with torch.enable_grad():
            out = ctx.calib.forward(ctx.model, ctx.calib.batches[batch_index])
            loss = loss_fn(out)
            if len(calls) != 1:
                raise RepeatedUnit(f"the unit ran {len(calls)} times in one forward")
            grads = torch.autograd.grad(loss, live, allow_unused=True)
    finally:
        handle.remove()
    return [t.detach() for t in live], [torch.zeros_like(t) if g is None else g for t, g in zip(live, grads)]


def perturbation_hessian(ctx, unit, reference, batches, refs, temperature=20.0, delta=1e-6):
    """APHQ-ViT's weights: per output tensor, mean over items of |g(y + δ) − g(y − δ)|, shape (1, *item shape)."""
    sums, count = None, 0
    with reference.active():
        for i in batches:
            def loss_fn(out, i=i):
                return task_loss(out, refs[i], temperature)
            _, g_up = unit_output_grads(ctx, unit, i, loss_fn, shift=delta)
            _, g_down = unit_output_grads(ctx, unit, i, loss_fn, shift=-delta)
            parts = [(a - b).abs().sum(0, keepdim=True) for a, b in zip(g_up, g_down)]
            sums = parts if sums is None else [s + p for s, p in zip(sums, parts)]
            count += g_up[0].shape[0]
    return [s / count for s in sums]


def sampled_fisher_diag(ctx, unit, reference, batches, refs, temperature=20.0, generator=None):
    """Our alternative weights: per output tensor, mean over items of g_y² (see the module docstring)."""
    sums, count = None, 0
    with reference.active():
        for i in batches:
            def loss_fn(out, i=i):
                if _is_logits(out) and len(refs[i]) == 1:
                    z = out.flatten(0, -2).float()
                    probs = F.softmax(refs[i][0].flatten(0, -2).float() / temperature, dim=-1)
                    y = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(z.device)
                    return F.cross_entropy(z / temperature, y, reduction="sum")
                return sum((o.float() * torch.randn(o.shape, generator=generator).to(o.device)).sum()
                           for o in float_tensors(out, detach=False))
            _, grads = unit_output_grads(ctx, unit, i, loss_fn)
            parts = [g.pow(2).sum(0, keepdim=True) for g in grads]
            sums = parts if sums is None else [s + p for s, p in zip(sums, parts)]
            count += grads[0].shape[0]
    return [s / count for s in sums]


@contextmanager
def float_except(reference, unit):
    """The float network (reference) except `unit`, which keeps its quantizers' switches and its live parameters."""
    switches = [(m, m.enabled) for m in unit.module.modules()
                if isinstance(m, Quantizer) or getattr(m, "is_compensation", False)]
    params = [(p, p.data) for p in unit.module.parameters()]
    with reference.active():
        for m, flag in switches:
            m.enabled = flag
        for p, data in params:
            p.data = data
        yield


@dataclass
class FisherDPLR:
    """FIMA-Q's Fisher rows: G (k × N) mean |gradient|, D (k × N) mean |output error|, inverse_b = (D Dᵀ)⁻¹ (None:
    diagonal only), and the two terms' coefficients."""
    grads: torch.Tensor
    deltas: torch.Tensor
    inverse_b: Optional[torch.Tensor]
    p_lowrank: float = 1.0
    p_diag: float = 1.0

    def add(self, grads_row, deltas_row, lowrank=True):
        """A new FisherDPLR with one more row (FIMA-Q grows the rank by one per capture)."""
        g = torch.cat([self.grads, grads_row]) if self.grads is not None else grads_row
        d = torch.cat([self.deltas, deltas_row]) if self.deltas is not None else deltas_row
        inv = None
        if lowrank:
            b = d @ d.t()
            try:
                inv = torch.linalg.inv(b)
            except RuntimeError:  # rows linearly dependent (e.g. identical captures): the pseudo-inverse
                inv = torch.linalg.pinv(b)
        return FisherDPLR(g, d, inv, self.p_lowrank, self.p_diag)


def fisher_row(ctx, unit, reference, batches, refs, targets, temperature=20.0):
    """One FIMA-Q capture: (G row, D row), each (1, N) with N the unit's output elements per item. `targets(start,
    n)`: the unit's float targets of the cached items start … start + n − 1 (the items of `batches`, in order)."""
    g_sum = d_sum = None
    count, unmatched = 0, []
    with float_except(reference, unit):
        for i in batches:
            outs, grads = unit_output_grads(ctx, unit, i,
                                            lambda out, i=i: task_loss(out, refs[i], temperature, unmatched))
            n = outs[0].shape[0]
            g = torch.cat([x.abs().flatten(1) for x in grads], dim=1).sum(0, keepdim=True)
            d = torch.cat([(o.float() - t.float()).abs().flatten(1) for o, t in zip(outs, targets(count, n))],
                          dim=1).sum(0, keepdim=True)
            g_sum = g if g_sum is None else g_sum + g
            d_sum = d if d_sum is None else d_sum + d
            count += n
    if unmatched:
        ctx.log(f"[fisher] {unit.name}: in {len(unmatched)} of {len(batches)} batches, {sum(unmatched)} output "
                f"tensors differ in shape from the float model's (e.g. a detector's detection count) and give no loss")
    return g_sum / count, d_sum / count


__all__ = ["FisherDPLR", "RepeatedUnit", "fisher_row", "float_except", "perturbation_hessian", "reference_outputs",
           "sampled_fisher_diag", "task_loss", "unit_output_grads"]
