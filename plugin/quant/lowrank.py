"""Architecture-informed low-rank compensation of AIQViT (Jiang et al., AAAI 2025, arXiv 2502.04628, Sec. 3.2).

Every quantized Linear of a reconstruction unit gets a learnable low-rank branch ΔW = A·B (A: out×r, zero at start,
B: r×in, random), trained by block reconstruction (plugin.quant.recon) to absorb the weight-quantization error.

Where the branch sits (`placement`):
- "pre" (default): Ŵ = Q(W + A·B). The branch moves weights across rounding boundaries (like learned rounding), and
  after calibration it merges exactly into the stored weight (W ← W + A·B, same quantizer): the deployed layer is a
  plain low-bit Linear with no extra parameters or FLOPs. This is the placement chosen here, because the point of
  PTQ is an integer weight matrix; a float side path would need its own kernel at inference.
- "post": Ŵ = Q(W) + A·B. The branch is a float correction next to the integer weight; it cannot be merged without
  re-quantizing (which would undo it), so it is kept: r·(in + out) extra parameters and multiply-accumulates per
  token for each layer, reported in a log line.

The rank of each layer is chosen by a DARTS-style differentiable search (Liu et al., ICLR 2019) over candidate ranks
r_1 < … < r_K: the branches share their factors (the rank-r_k branch is the first r_k columns of A and rows of B) and
are mixed with p = softmax(α) as ΔW = A·diag(m)·B, m_j = Σ_{k: r_k > j} p_k. The architecture logits α are updated
(first-order DARTS) on a held-out fifth of the cached unit inputs, the factors on the rest; after `search_frac` of the
iterations each layer keeps the rank of argmax α — with A's columns scaled by m so the kept branch equals the mixture
without its dropped components — and training continues at that rank. `rank_penalty` adds
λ·(start error)·E_p[r·(in + out)/(in·out)] (expected relative parameter overhead) to the architecture loss; 0 by
default, since merged branches cost nothing at inference.

Kept branches are submodules (`<linear>.lowrank.A`, `.B`, `.post`) of a LowRankQuantLinear, a QuantLinear subclass
swapped in by class (no per-instance forward); `restore_branches(model, state)` rebuilds them from a saved state dict
before loading.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn

from .errors import ConfigError
from .modules import QuantLinear
from .passes import is_int, is_number, register_pass
from .recon import ReconConfig, reconstruct
from .seed_quantizers import interval_report
from .spec import Role

try:  # load_quantized rebuilds kept branches through this hook where io.py offers one
    from .io import register_load_hook
except ImportError:
    register_load_hook = None


class LowRankBranch(nn.Module):
    """ΔW = A·B with an optional rank search over `ranks` (shared, nested factors)."""
    is_compensation = True  # switched off (with every quantizer) when the float reference runs

    def __init__(self, out_features, in_features, ranks, post=False, generator=None, init_std=None):
        super().__init__()
        ranks = sorted(set(int(r) for r in ranks))
        top = ranks[-1]
        self.A = nn.Parameter(torch.zeros(out_features, top))
        std = init_std if init_std is not None else in_features ** -0.5
        self.B = nn.Parameter(torch.randn(top, in_features, generator=generator) * std)
        self.register_buffer("post", torch.tensor(bool(post)))  # saved, so a reload knows the placement
        self.is_post = bool(post)  # what forward reads (reading the buffer would sync the GPU every call)
        if len(ranks) > 1:
            self.register_buffer("ranks", torch.tensor(ranks))
            self.arch_logits = nn.Parameter(torch.zeros(len(ranks)))
        else:
            self.register_buffer("ranks", None)
            self.register_parameter("arch_logits", None)
        self.enabled = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.is_post = bool(self.post)

    @property
    def rank(self):
        return self.A.shape[1]

    @property
    def searching(self):
        return self.arch_logits is not None

    def component_weights(self):
        """m_j = Σ_{k: r_k > j} softmax(α)_k, the weight of factor column j in the mixture."""
        p = torch.softmax(self.arch_logits, 0)
        j = torch.arange(self.rank, device=p.device)
        return ((j[None, :] < self.ranks[:, None]).to(p.dtype) * p[:, None]).sum(0)

    def delta(self):
        if self.searching:
            return (self.A * self.component_weights()) @ self.B
        return self.A @ self.B

    def expected_overhead(self):
        out_f, in_f = self.A.shape[0], self.B.shape[1]
        if not self.searching:
            return torch.tensor(self.rank * (in_f + out_f) / (in_f * out_f), device=self.A.device)
        p = torch.softmax(self.arch_logits, 0)
        return (p * self.ranks.to(p.dtype)).sum() * (in_f + out_f) / (in_f * out_f)

    @torch.no_grad()
    def discretize(self):
        """Keep the rank of argmax α; the kept factors carry the mixture weights of their columns."""
        if not self.searching:
            return self.rank
        r = int(self.ranks[int(self.arch_logits.argmax())])
        a = (self.A * self.component_weights())[:, :r].clone()
        b = self.B[:r].clone()
        self.A = nn.Parameter(a)
        self.B = nn.Parameter(b)
        self.arch_logits = None
        self.ranks = None
        return r

    def extra_repr(self):
        return f"rank={self.rank}, {'post' if self.is_post else 'pre'}-quantization" + \
            (", searching" if self.searching else "")


class LowRankQuantLinear(QuantLinear):
    """A QuantLinear with a low-rank branch: Q(W + A·B) ("pre") or Q(W) + A·B ("post")."""

    def quant_weight(self):
        branch = self.lowrank
        if not branch.enabled:
            return super().quant_weight()
        if branch.is_post:
            return super().quant_weight() + branch.delta()
        w = self.weight + branch.delta()
        return self.weight_quantizer(w) if self.weight_quantizer is not None else w


def attach_branch(linear, ranks, post=False, generator=None, init_std=None):
    """Give a QuantLinear a low-rank branch (in place, class swap). Ranks above min(in, out) are dropped."""
    if not isinstance(linear, QuantLinear):
        raise ConfigError(f"low-rank branches need a QuantLinear, got {type(linear).__name__}")
    limit = min(linear.in_features, linear.out_features)
    ranks = [r for r in ranks if 0 < r <= limit] or [limit]
    branch = LowRankBranch(linear.out_features, linear.in_features, ranks, post, generator, init_std)
    branch.to(device=linear.weight.device)
    linear.__class__ = LowRankQuantLinear
    linear.add_module("lowrank", branch)
    return branch


def detach_branch(linear):
    """Remove a branch without applying it."""
    if isinstance(linear, LowRankQuantLinear):
        del linear._modules["lowrank"]
        linear.__class__ = QuantLinear


@torch.no_grad()
def merge_branch(linear):
    """Fold a pre-quantization branch into the weight: W ← W + A·B. Outputs are unchanged, Q(W + A·B) exactly."""
    branch = linear.lowrank
    if branch.is_post:
        raise ConfigError("a post-quantization branch Q(W) + A·B cannot be merged into the weight without "
                          "re-quantizing it; keep it (merge=False) or use placement='pre'")
    linear.weight.data = linear.weight.data + branch.delta()
    detach_branch(linear)


def branches(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LowRankQuantLinear)]


def merge_branches(model):
    """Merge every pre-quantization branch of the model into its weight. Returns how many were merged."""
    found = branches(model)
    for _, m in found:
        merge_branch(m)
    return len(found)


def restore_branches(model, state):
    """Re-create the low-rank branches recorded in a state dict (`<linear>.lowrank.A` keys), before loading it."""
    for key in state:
        if not key.endswith(".lowrank.A"):
            continue
        name = key[: -len(".lowrank.A")]
        linear = model.get_submodule(name)
        if isinstance(linear, LowRankQuantLinear):
            continue
        rank = state[key].shape[1]
        post = bool(state.get(name + ".lowrank.post", torch.tensor(False)))
        attach_branch(linear, [rank], post=post)


if register_load_hook is not None:
    register_load_hook(restore_branches)


def overhead(model):
    """(extra parameters, extra MACs per token, parameters of the quantized Linears with branches)."""
    extra = base = 0
    for _, m in branches(model):
        extra += m.lowrank.rank * (m.in_features + m.out_features)
        base += m.in_features * m.out_features
    return extra, extra, base


class LowRankSearch:
    """The reconstruction extension: attaches branches to a unit's quantized Linears, runs the rank search, trains."""

    def __init__(self, ranks, search, search_frac, arch_lr, rank_penalty, post, lr, roles, init_std):
        self.ranks = tuple(ranks) if search else (max(ranks),)
        self.search_frac, self.arch_lr, self.rank_penalty = search_frac, arch_lr, rank_penalty
        self.post, self.lr, self.roles, self.init_std = post, lr, roles, init_std
        self.current = []      # (site name, QuantLinear, branch) of the unit being reconstructed
        self.chosen = {}       # site name -> rank

    def attach(self, unit, generator):
        self.current = []
        for site in unit.sites:
            m = site.module
            if not isinstance(m, QuantLinear) or m.weight_quantizer is None or isinstance(m, LowRankQuantLinear):
                continue
            if self.roles is not None and site.role not in self.roles:
                continue
            self.current.append((site.name, m, attach_branch(m, self.ranks, self.post, generator, self.init_std)))
        return bool(self.current)

    def phases(self, iters):
        if not any(b.searching for _, _, b in self.current):
            return [(iters, False)]
        search = max(1, min(iters, round(iters * self.search_frac)))
        return [(search, True), (iters - search, False)]

    def param_groups(self):
        return [{"params": [t for _, _, b in self.current for t in (b.A, b.B)], "lr": self.lr}]

    def arch_params(self):
        return [b.arch_logits for _, _, b in self.current if b.searching]

    def penalty(self, start_error):
        if not self.rank_penalty:
            return 0.0
        return self.rank_penalty * start_error * sum(b.expected_overhead() for _, _, b in self.current if b.searching)

    def discretize(self, unit, log):
        picks = []
        for name, _, b in self.current:
            probs = torch.softmax(b.arch_logits.detach(), 0).tolist() if b.searching else None
            r = b.discretize()
            picks.append(f"{name[len(unit.name) + 1:] or name}={r}" + (f" (p={max(probs):.2f})" if probs else ""))
        log(f"[lowrank] {unit.name}: ranks from {list(self.ranks)}: {', '.join(picks)}")

    def resumed(self, model):
        """A resumed run restored the branches of the units it skipped: record their ranks."""
        for name, m in branches(model):
            self.chosen[name] = m.lowrank.rank

    def finish(self, unit):
        for name, _, b in self.current:
            self.chosen[name] = b.rank
        self.current = []

    def detach(self, unit):
        for _, module, _ in self.current:
            detach_branch(module)
        self.current = []


def _log_intervals(ctx, when):
    """Log each focused interval [b1, b2] (dfq_interval) by layer: AIQViT reports them wider in shallow layers."""
    for name, (b1, b2) in interval_report(ctx.model).items():
        if isinstance(b1, float):
            ctx.log(f"[dfq_interval] {when} {name}: [{b1:.4g}, {b2:.4g}] width {b2 - b1:.4g}")
        else:
            ctx.log(f"[dfq_interval] {when} {name}: mean width {sum(b2) / len(b2) - sum(b1) / len(b1):.4g}")


@register_pass("lowrank")
@dataclass
class LowRankConfig(ReconConfig):
    """AIQViT low-rank compensation, trained by block reconstruction (options of ReconConfig apply; `learn` defaults
    to the activation and weight scales, the branches are always learned).

    rank_candidates: ranks the search chooses from (search=False: the largest, min(r, in, out) per layer).
    search_frac, arch_lr, rank_penalty: share of the iterations spent searching, step size of the architecture
        logits, weight of the parameter-overhead term (see the module docstring).
    placement: "pre" (Q(W + A·B)) or "post" (Q(W) + A·B); merge: fold "pre" branches into the weights afterwards.
    branch_lr, init_std: step size of the branch factors, standard deviation of B at start (default in^-1/2).
    roles: only Linears of these roles get branches (default all).
    """
    curriculum: bool = True
    rank_candidates: Tuple[int, ...] = (4, 8, 16, 32)
    search: bool = True
    search_frac: float = 0.3
    arch_lr: float = 1e-2
    rank_penalty: float = 0.0
    placement: str = "pre"
    merge: bool = True
    branch_lr: float = 1e-3
    roles: Optional[Tuple[Role, ...]] = None
    init_std: Optional[float] = None

    def __post_init__(self):
        super().__post_init__()
        if self.placement not in ("pre", "post"):
            raise ConfigError(f"lowrank: placement must be 'pre' (Q(W + AB)) or 'post' (Q(W) + AB), "
                              f"got {self.placement!r}")
        for name in ("merge", "search"):
            self.require(isinstance(getattr(self, name), bool), name, "True or False")
        if self.merge and self.placement == "post":
            raise ConfigError("lowrank: merge=True needs placement='pre'; a Q(W) + AB branch must be kept")
        ranks = self.rank_candidates
        self.require(isinstance(ranks, (list, tuple)) and ranks and all(is_int(r) and r >= 1 for r in ranks),
                     "rank_candidates", "positive integers")
        self.rank_candidates = tuple(ranks)
        self.require(is_number(self.search_frac) and 0 <= self.search_frac <= 1, "search_frac", "in [0, 1]")
        for name in ("arch_lr", "rank_penalty", "branch_lr"):
            self.require(is_number(getattr(self, name)) and getattr(self, name) >= 0, name, "a non-negative number")
        self.require(self.init_std is None or is_number(self.init_std) and self.init_std > 0, "init_std",
                     "a positive number or None")
        if self.roles is not None:
            try:
                self.roles = tuple(Role(r) for r in self.roles)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"lowrank: roles must be role names ({', '.join(r.value for r in Role)}), "
                                  f"got {self.roles!r}") from exc

    def run(self, ctx):
        ext = LowRankSearch(self.rank_candidates, self.search, self.search_frac, self.arch_lr, self.rank_penalty,
                            self.placement == "post", self.branch_lr,
                            None if self.roles is None else set(self.roles), self.init_std)
        _log_intervals(ctx, "calibrated")
        reconstruct(ctx, self.resolved(ctx.recipe), extension=ext)
        _log_intervals(ctx, "learned")
        ctx.model._vitq_lowrank_ranks = dict(ext.chosen)
        extra, macs, base = overhead(ctx.model)
        if self.merge:
            n = merge_branches(ctx.model)
            ctx.log(f"[lowrank] merged {n} branches into their weights (Q(W + A·B)): no inference overhead")
        elif extra:
            ctx.log(f"[lowrank] kept {len(branches(ctx.model))} {self.placement}-quantization branches: +{extra} "
                    f"parameters (+{100.0 * extra / base:.2f}% of those Linears), +{macs} MACs per token "
                    f"(+{100.0 * macs / base:.2f}%)")
        return ext.chosen


__all__ = ["LowRankBranch", "LowRankConfig", "LowRankQuantLinear", "LowRankSearch", "attach_branch", "branches",
           "detach_branch", "merge_branch", "merge_branches", "overhead", "restore_branches"]
