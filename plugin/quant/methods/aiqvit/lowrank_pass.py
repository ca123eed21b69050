"""AIQViT's low-rank compensation as a reconstruction pass (Jiang et al., AAAI 2025, arXiv 2502.04628, Sec. 3.2): the
`lowrank` pass. The branches themselves (ΔW = A·B inside a LowRankQuantLinear, merging, reloading) are in
`lowrank` (this package); here the engine trains them with an easy-to-hard curriculum (on by default) and a DARTS rank
search (`LowRank`, a BlockRecon that also learns the branches).

Rank search: the engine runs two phases. In the first (`search_frac` of the iterations) the architecture logits α of
each branch take first-order DARTS steps on a held-out fifth of the cached unit inputs, the factors train on the rest;
after it each layer keeps the rank of argmax α (`LowRankBranch.discretize`) and training continues at that rank.
`rank_penalty` adds λ·(start error)·E_p[r·(in + out)/(in·out)] (expected relative parameter overhead) to the
architecture loss; 0 by default, since merged branches cost nothing at inference.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ...errors import ConfigError
from ...modules import QuantLinear
from ...passes import is_int, is_number, register_pass
from ...recon.block_recon import BlockRecon, ReconConfig
from ...recon.engine import reconstruct
from ...spec import Role
from .lowrank import LowRankQuantLinear, attach_branch, branches, detach_branch, merge_branches, overhead
from .quantizers import interval_report


class LowRank(BlockRecon):
    """BlockRecon plus a low-rank branch on each quantized Linear of the unit (of `roles`, if given), with the rank
    search in a first phase. `chosen` maps every Linear that kept a branch to its rank."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.ranks = tuple(cfg.rank_candidates) if cfg.search else (max(cfg.rank_candidates),)
        self.arch_lr = cfg.arch_lr
        self.roles = None if cfg.roles is None else set(cfg.roles)
        self.current = []      # (site name, QuantLinear, branch) of the unit being reconstructed
        self.chosen = {}       # site name -> rank

    def attach(self, unit, generator):
        learnable = super().attach(unit, generator)
        self.current = []
        for site in unit.sites:
            m = site.module
            if not isinstance(m, QuantLinear) or m.weight_quantizer is None or isinstance(m, LowRankQuantLinear):
                continue
            if self.roles is not None and site.role not in self.roles:
                continue
            branch = attach_branch(m, self.ranks, self.cfg.placement == "post", generator, self.cfg.init_std)
            self.current.append((site.name, m, branch))
        return learnable or bool(self.current)

    def phases(self, iters):
        if not any(b.searching for _, _, b in self.current):
            return [(iters, False)]
        search = max(1, min(iters, round(iters * self.cfg.search_frac)))
        return [(search, True), (iters - search, False)]

    def param_groups(self):
        branch = [{"params": [t for _, _, b in self.current for t in (b.A, b.B)], "lr": self.cfg.branch_lr}]
        return super().param_groups() + (branch if self.current else [])

    def arch_params(self):
        return [b.arch_logits for _, _, b in self.current if b.searching]

    def arch_penalty(self, start_error):
        if not self.cfg.rank_penalty:
            return 0.0
        return self.cfg.rank_penalty * start_error * sum(b.expected_overhead() for _, _, b in self.current
                                                         if b.searching)

    def end_phase(self, unit, searching, log):
        """After the search phase: every branch keeps the rank of its largest architecture weight."""
        if not searching:
            return
        picks = []
        for name, _, b in self.current:
            probs = torch.softmax(b.arch_logits.detach(), 0).tolist() if b.searching else None
            r = b.discretize()
            picks.append(f"{name[len(unit.name) + 1:] or name}={r}" + (f" (p={max(probs):.2f})" if probs else ""))
        log(f"[lowrank] {unit.name}: ranks from {list(self.ranks)}: {', '.join(picks)}")

    def keep(self, unit):
        super().keep(unit)
        for name, _, b in self.current:
            self.chosen[name] = b.rank
        self.current = []

    def detach(self, unit):
        super().detach(unit)
        for _, module, _ in self.current:
            detach_branch(module)
        self.current = []

    def resumed(self, model):
        """A resumed run restored the branches of the units it skipped: record their ranks."""
        for name, m in branches(model):
            self.chosen[name] = m.lowrank.rank


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
        method = LowRank(self.resolved(ctx.recipe))
        _log_intervals(ctx, "calibrated")
        reconstruct(ctx, method)
        _log_intervals(ctx, "learned")
        ctx.state.ranks = dict(method.chosen)
        extra, macs, base = overhead(ctx.model)
        if self.merge:
            n = merge_branches(ctx.model)
            ctx.log(f"[lowrank] merged {n} branches into their weights (Q(W + A·B)): no inference overhead")
        elif extra:
            ctx.log(f"[lowrank] kept {len(branches(ctx.model))} {self.placement}-quantization branches: +{extra} "
                    f"parameters (+{100.0 * extra / base:.2f}% of those Linears), +{macs} MACs per token "
                    f"(+{100.0 * macs / base:.2f}%)")
        return method.chosen


__all__ = ["LowRank", "LowRankConfig"]
