"""APHQ-ViT's MLP reconstruction (Wu et al., CVPR 2025, Sec. 3.3; official code GoatWu/APHQ-ViT,
utils/mlp_recon.py) as a pass that runs before quantization: `mlp_relu`.

Post-GELU activations are hard to quantize (a long positive tail, a small negative lobe). APHQ-ViT replaces the GELU
of every MLP by ReLU and re-fits the MLP so that the float network changes as little as possible: for each MLP in
turn, fc1 and fc2 (weights and biases) are trained with Adam (lr 4e-5, cosine decay to 0, batch 32, 20000 steps) to
reproduce the original MLP's output on the original model's MLP inputs (every MLP's data comes from the unchanged GELU
network), with the loss
    L = Σ_tokens w ⊙ (MLP_relu(x) − y)² / 10  +  2 · Σ_tokens w ⊙ (MLP_relu,clamped(x) − y)² / 10   (mean over the rest)
where MLP_relu,clamped clamps the fc2 input to [0, u], u the `clamp_pct` percentile of the positive GELU outputs of the
original MLP (0.99 in the official 3-bit config, 0.98 in the 4-bit one): the second term prepares the post-ReLU input
of fc2 for a clipped quantization grid. `loss="aph"` (the official `recon_metric="hessian_perturb"`): w is the
average-perturbation Hessian weight, |g₊ − g₋| averaged over images, where g± is the gradient of
KL(softmax(z/T) ‖ softmax(z_fp/T)) (T = 20) with respect to the MLP output shifted by ±1e-6, rescaled to unit root
mean square; `loss="mse"`: w = 1.

Our choices where the official code is silent or tied to its setting: u is taken over a random sample of the
positive values (the official code sorts the first chunk that fits in GPU memory); models whose output is not one
tensor of class scores (detectors) use `loss="mse"`, and a perturbation that leaves no gradient (w ≡ 0) falls back to
w = 1 (both logged); calibration batches whose token counts differ (a detector's images of different sizes) keep
their samples in one group per shape, each step draws its batch from one group chosen in proportion to its size, and
w = 1 there too (w is one value per token position); the MLP is the smallest module holding both fc1 and fc2 (by the
adapter's roles) and every nn.GELU inside it becomes nn.ReLU. The official optimiser also lists the block's norm2,
which gets no gradient there (the MLP is run on norm2's output), so only fc1 and fc2 learn here.

The fitted float network is the one the quantizers then start from. `relu_float_model(fp_model, quantized)` rebuilds it
(for reporting its float accuracy). The original MLPs (the copies taken before the change) are `ctx.float_originals`
for the passes that follow: the float reference of reconstruction runs them, with every parameter as it was before
the quantizers and post-LayerNorm folds existed (a fold rescales norm2 for the new fc1, not for the original one), so
block reconstruction targets the original GELU network as the official code's `full_model` does (dropped when
quantize returns).
"""
import copy
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attach import set_submodule
from ..errors import CalibrationError, CheckpointError, ConfigError
from ..passes import PassConfig, is_int, is_number, register_pass
from ..progress import Progress
from ..quant_state import require_state
from ..spec import Role

SETTINGS = {"paper": 20000, "small": 500}  # steps per MLP ("small": CIFAR-sized models and a few hundred images)
PERTURB = 1e-6
MAX_POSITIVES = 2 ** 24


def clamp_pct(a_bits):
    """The official MLP clamp percentile: 0.99 in the 3-bit config, 0.98 in the 2- and 4-bit ones."""
    return 0.99 if a_bits == 3 else 0.98


def mlp_names(model, adapter):
    """[(mlp, fc1, fc2)] names: each FC1 with the FC2 of the same MLP, the MLP being their longest common parent."""
    roles = {n: Role(r) for n, r in adapter.roles(model).items()}
    fc1s = [n for n, r in roles.items() if r == Role.FC1]
    fc2s = [n for n, r in roles.items() if r == Role.FC2]
    out = []
    for fc1 in fc1s:
        def shared(n):
            a, b = fc1.split("."), n.split(".")
            k = 0
            while k < min(len(a), len(b)) - 1 and a[k] == b[k]:
                k += 1
            return k
        fc2 = max(fc2s, key=shared, default=None)
        if fc2 is None:
            raise ConfigError(f"mlp_relu: {fc1} (FC1) has no FC2")
        out.append((".".join(fc1.split(".")[:shared(fc2)]), fc1, fc2))
    if not out:
        raise ConfigError("mlp_relu: the adapter names no FC1/FC2 layers")
    return out


def replace_gelu(model, mlp):
    """Every nn.GELU inside the module `mlp` becomes nn.ReLU (in place); ConfigError when there is none."""
    module = model.get_submodule(mlp)
    names = [n for n, m in module.named_modules() if isinstance(m, nn.GELU)]
    if not names:
        raise ConfigError(f"mlp_relu: {mlp or 'the model'} has no nn.GELU module to replace by ReLU")
    for n in names:
        set_submodule(module, n, nn.ReLU())


def _logits(out):
    return out if torch.is_tensor(out) and out.dim() == 2 and out.shape[-1] > 1 else None


class _MlpData:
    """The original MLP's inputs, outputs and fc2-input clamp bound, and the APH weight, over every image."""

    def __init__(self, ctx, teacher, mlp, fc2, clamp_pct, gen):
        mod, fc2_mod = teacher.get_submodule(mlp), teacher.get_submodule(fc2)
        ins, outs, pos = [], [], []
        per_batch = MAX_POSITIVES // max(1, len(ctx.calib.batches))

        def keep_positive(m, args):
            p = args[0].detach().flatten()
            p = p[p > 0]
            pos.append(p[torch.randperm(p.numel(), generator=gen)[:per_batch].to(p.device)] if p.numel() > per_batch
                       else p)

        def keep_io(m, args, out):
            if len(args) != 1 or not torch.is_tensor(out):
                raise ConfigError(f"mlp_relu: {mlp} must take one tensor and return one")
            ins.append(args[0].detach())
            outs.append(out.detach())
        handles = [fc2_mod.register_forward_pre_hook(keep_positive), mod.register_forward_hook(keep_io)]
        try:
            with torch.no_grad():
                for batch in ctx.calib.batches:
                    ctx.calib.forward(teacher, batch)
        finally:
            for h in handles:
                h.remove()
        # batches whose token counts differ (a detector's images of different sizes) cannot be stacked: one group of
        # samples per shape, in the order first seen (one group, the usual case, is the plain concatenation)
        groups = {}
        for x, y in zip(ins, outs):
            xs, ys = groups.setdefault(tuple(x.shape[1:]), ([], []))
            xs.append(x)
            ys.append(y)
        self.groups = [(torch.cat(xs), torch.cat(ys)) for xs, ys in groups.values()]
        self.count = sum(x.shape[0] for x, _ in self.groups)
        positives = torch.cat(pos).float()
        if positives.numel() == 0:
            raise CalibrationError(f"mlp_relu: the input of {fc2} is never positive")
        self.bound = torch.quantile(positives[:2 ** 24], clamp_pct).item()

    def aph_weight(self, ctx, teacher, mlp, temperature, log):
        """|g₊ − g₋| averaged over images and scaled to unit RMS; None when the output is not class scores."""
        with torch.no_grad():
            refs = [_logits(ctx.calib.forward(teacher, batch)) for batch in ctx.calib.batches]
        if any(r is None for r in refs):
            log(f"[mlp_relu] the model output is not one tensor of class scores: unweighted loss")
            return None
        if len(self.groups) > 1:  # the weight is one value per token position and channel
            log(f"[mlp_relu] {mlp}: the token count differs between calibration batches: unweighted loss")
            return None
        mod, grads = teacher.get_submodule(mlp), {}
        for sign in (1.0, -1.0):
            acc, live = [], []

            def shift(m, args, out):
                live.append(out.detach().requires_grad_())  # the gradient is taken at the MLP output only
                return live[-1] + sign * PERTURB
            handle = mod.register_forward_hook(shift)
            try:
                for batch, ref in zip(ctx.calib.batches, refs):
                    live.clear()
                    with torch.enable_grad():
                        z = ctx.calib.forward(teacher, batch) / temperature
                        loss = F.kl_div(F.log_softmax(z, -1), F.softmax(ref / temperature, -1), reduction="batchmean")
                        acc.append(torch.autograd.grad(loss, live[0])[0])
            finally:
                handle.remove()
            grads[sign] = torch.cat(acc)
        # float64: the difference is float-rounding sized, and its squares underflow (then 0/0 or x/0) in float32
        w = (grads[1.0].double() - grads[-1.0].double()).abs().mean(0, keepdim=True)
        w = (w * torch.sqrt(w.numel() / w.pow(2).sum())).float()
        if not bool(torch.isfinite(w).all()):
            log(f"[mlp_relu] {mlp}: the ±{PERTURB} perturbation left no usable gradient; unweighted loss")
            return None
        return w


def _fit(fc1, fc2, mlp_mod, data, weight, iters, batch_size, lr, quant_weight, gen):
    """Adam on fc1 and fc2 (weights, biases) with a cosine decay to 0: the official MLP loss (module docstring)."""
    opt = torch.optim.Adam([p for m in (fc1, fc2) for p in m.parameters()], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, iters), eta_min=0.0)
    clamping = [False]

    def loss_of(out, tgt):
        err = (out - tgt).pow(2)
        if weight is not None:
            err = err * weight
        return err.sum(1).mean() / 10  # the official reduction: sum over dim 1 (tokens), mean over the rest

    clamp = fc2.register_forward_pre_hook(lambda m, args: (args[0].clamp(0, data.bound),) if clamping[0] else None)
    sizes = torch.tensor([float(x.shape[0]) for x, _ in data.groups])
    try:
        with torch.enable_grad():
            for _ in range(iters):
                # one group per step, drawn in proportion to its sample count (no draw when there is one)
                xs, ys = data.groups[int(torch.multinomial(sizes, 1, generator=gen)) if len(sizes) > 1 else 0]
                idx = torch.randperm(xs.shape[0], generator=gen)[:batch_size].to(xs.device)
                x, y = xs[idx], ys[idx]
                opt.zero_grad(set_to_none=True)
                clamping[0] = False
                rec = loss_of(mlp_mod(x), y)
                clamping[0] = True
                quant = loss_of(mlp_mod(x), y)
                (rec + quant_weight * quant).backward()
                opt.step()
                sched.step()
    finally:
        clamp.remove()


class _FitCheckpoint:
    """The fitted parameters so far, written after each MLP to `DIR/pre-<pass index>-mlp_relu.safetensors` when
    quantize() has a checkpoint directory, so a resumed run (`resume=True`) loads the MLPs already fitted instead of
    fitting them again. The file carries the run's identity (recipe, model, data, seed: plugin.quant.resume)."""

    def __init__(self, ctx):
        ck = ctx.checkpoint
        self.path = self.identity = None
        self.saved, self.done = {}, 0
        if ck is None:
            return
        self.path = os.path.join(ck.dir, f"pre-{ctx.pass_index}-mlp_relu.safetensors")
        self.identity = hashlib.sha256(json.dumps(ck.identity, sort_keys=True, default=str).encode()).hexdigest()
        if ck.resuming and os.path.isfile(self.path):
            from safetensors import safe_open
            from safetensors.torch import load_file
            with safe_open(self.path, "pt") as f:
                meta = f.metadata() or {}
            if meta.get("identity") != self.identity:
                raise CheckpointError(f"cannot resume from {self.path}: it was written for another run")
            self.saved, self.done = load_file(self.path), int(meta["done"])
            ctx.log(f"[mlp_relu] resuming: {self.done} MLPs already fitted ({self.path})")

    def save(self, params, done):
        if self.path is None:
            return
        from safetensors.torch import save_file
        from ..io import _atomic_write
        tensors = {k: v.contiguous() for k, v in params.items()}
        _atomic_write(self.path, lambda p: save_file(tensors, p, metadata={"identity": self.identity,
                                                                             "done": str(done)}))


@register_pass("mlp_relu")
@dataclass
class MlpRelu(PassConfig):
    """APHQ-ViT's MLP reconstruction (module docstring). setting: "paper" (20000 steps per MLP) or "small" (500);
    iters overrides it. clamp_pct: percentile of the positive GELU outputs that bounds the clamped fc2 input."""
    STAGE = "pre"
    setting: str = "paper"
    iters: Optional[int] = None
    batch_size: int = 32
    lr: float = 4e-5
    clamp_pct: float = 0.98
    quant_weight: float = 2.0
    loss: str = "aph"
    temperature: float = 20.0

    def __post_init__(self):
        self.require(self.setting in SETTINGS, "setting", f"one of {sorted(SETTINGS)}")
        self.require(self.iters is None or (is_int(self.iters) and self.iters >= 0), "iters",
                     "a non-negative integer or None")
        self.require(is_int(self.batch_size) and self.batch_size > 0, "batch_size", "a positive integer")
        self.require(is_number(self.lr) and self.lr > 0, "lr", "a positive number")
        self.require(is_number(self.clamp_pct) and 0 < self.clamp_pct <= 1, "clamp_pct", "in (0, 1]")
        self.require(is_number(self.quant_weight) and self.quant_weight >= 0, "quant_weight", "a number >= 0")
        self.require(self.loss in ("aph", "mse"), "loss", "'aph' or 'mse'")
        self.require(is_number(self.temperature) and self.temperature > 0, "temperature", "a positive number")

    def restore(self, model, adapter):
        """The structural change alone (GELU → ReLU), for a float model a saved quantized one is loaded into."""
        for mlp, _, _ in mlp_names(model, adapter):
            replace_gelu(model, mlp)

    def run(self, ctx):
        model, log = ctx.model, ctx.log
        iters = self.iters if self.iters is not None else SETTINGS[self.setting]
        gen = torch.Generator().manual_seed(ctx.seed)
        teacher = copy.deepcopy(model).requires_grad_(False)
        fitted = _FitCheckpoint(ctx)
        mlps = mlp_names(model, ctx.adapter)
        progress = Progress(len(mlps), "[mlp_relu]", log, done=min(fitted.done, len(mlps)))
        for i, (mlp, fc1, fc2) in enumerate(mlps):
            replace_gelu(model, mlp)
            ctx.float_originals[mlp] = teacher.get_submodule(mlp)
            names = [f"{n}.{k}" for n in (fc1, fc2) for k, _ in model.get_submodule(n).named_parameters()]
            if i < fitted.done:  # fitted by the run this one resumes
                with torch.no_grad():
                    for name in names:
                        model.get_parameter(name).copy_(fitted.saved[name])
            else:
                data = _MlpData(ctx, teacher, mlp, fc2, self.clamp_pct, gen)
                weight = data.aph_weight(ctx, teacher, mlp, self.temperature, log) if self.loss == "aph" else None
                _fit(model.get_submodule(fc1), model.get_submodule(fc2), model.get_submodule(mlp), data, weight,
                     iters, min(self.batch_size, data.count), self.lr, self.quant_weight, gen)
                log(f"[mlp_relu] {mlp}: fc2 input clamp {data.bound:.4g}, {iters} steps")
            for name in names:
                ctx.state.float_params[name] = model.get_parameter(name).detach().cpu().clone()
            fitted.save(ctx.state.float_params, i + 1)
            if i >= fitted.done:
                progress.step("MLPs")
        ctx.state.float_edits.append(self.to_dict())


def relu_float_model(fp_model, quantized):
    """The float network a `mlp_relu` pass left, before any quantizer (APHQ-ViT reports its accuracy): a copy of the
    original float `fp_model` with the same MLPs on ReLU and the fitted fc1/fc2 parameters of `quantized` (a model
    returned by `quantize` in this process). None when the recipe changed no float layer."""
    st = require_state(quantized, "relu_float_model")
    if not st.float_params:
        return None
    model = copy.deepcopy(fp_model).eval()
    from ..adapter import find_adapter
    adapter = find_adapter(model, st.adapter)
    adapter.prepare(model)
    for entry in st.float_edits:
        MlpRelu.from_dict(entry).restore(model, adapter)
    with torch.no_grad():
        for name, value in st.float_params.items():
            model.get_parameter(name).copy_(value)
    return model


__all__ = ["MlpRelu", "mlp_names", "relu_float_model", "replace_gelu"]
