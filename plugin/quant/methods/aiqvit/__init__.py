"""AIQViT (Jiang et al., AAAI 2025, arXiv 2502.04628): DFQ post-Softmax quantizers, low-rank branches (`lowrank`) and
the low-rank compensation pass with its rank search (`lowrank_pass`)."""
from .quantizers import DynamicFocusingQuantizer, FocusedIntervalQuantizer, interval_report  # noqa: F401
from .lowrank import LowRankBranch, LowRankQuantLinear, attach_branch, restore_branches  # noqa: F401
from .lowrank_pass import LowRank, LowRankConfig  # noqa: F401
from .recipes import aiqvit_recipe  # noqa: F401
