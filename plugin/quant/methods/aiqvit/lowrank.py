"""Architecture-informed low-rank compensation of AIQViT (Jiang et al., AAAI 2025, arXiv 2502.04628, Sec. 3.2).

Every quantized Linear of a reconstruction unit gets a learnable low-rank branch ΔW = A·B (A: out×r, zero at start,
B: r×in, random), trained by block reconstruction to absorb the weight-quantization error (the `lowrank` pass,
`lowrank_pass`). This file holds the branches: the layer, attaching, merging and reloading them.

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
are mixed with p = softmax(α) as ΔW = A·diag(m)·B, m_j = Σ_{k: r_k > j} p_k. After the search each layer keeps the
rank of argmax α (`LowRankBranch.discretize`), with A's columns scaled by m so the kept branch equals the mixture
without its dropped components.

Kept branches are submodules (`<linear>.lowrank.A`, `.B`, `.post`) of a LowRankQuantLinear, a QuantLinear subclass
swapped in by class (no per-instance forward); `restore_branches(model, state)` rebuilds them from a saved state dict
before loading.
"""
import torch
import torch.nn as nn

from ...errors import ConfigError
from ...io import register_load_hook
from ...modules import QuantLinear


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


@register_load_hook  # load_quantized and resumed calibrations rebuild kept branches before loading
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


def overhead(model):
    """(extra parameters, extra MACs per token, parameters of the quantized Linears with branches)."""
    extra = base = 0
    for _, m in branches(model):
        extra += m.lowrank.rank * (m.in_features + m.out_features)
        base += m.in_features * m.out_features
    return extra, extra, base


__all__ = ["LowRankBranch", "LowRankQuantLinear", "attach_branch", "branches", "detach_branch", "merge_branch",
           "merge_branches", "overhead", "restore_branches"]
