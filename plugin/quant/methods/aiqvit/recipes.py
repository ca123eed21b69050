"""AIQViT (arXiv 2502.04628) recipe: DFQ post-Softmax, RepQ-style reparameterisation, and the `lowrank` pass
(architecture-informed low-rank compensation trained with an easy-to-hard curriculum, `lowrank_pass`).

Ablations are one switch each, e.g. `aiqvit_recipe(4, 4, lowrank=False)`, registered as `aiqvit_no_lowrank`
(`aiqvit_dfq_interval` swaps in the other DFQ reading, `aiqvit_rank20`/`_rank100` fix the low-rank rank). The
choices behind the defaults (calibration sizes, iteration counts, baseline quantizers of the ablations) are in
docs/methods.md.
"""
from ...recipe import mse_recipe, register_ablations, register_recipe, setting_pass
from ...spec import QuantSpec


@register_recipe("aiqvit")
def aiqvit_recipe(w_bits, a_bits, *, dfq=True, dfq_kind="dfq", lowrank=True, curriculum=True,
                  rank_candidates=(4, 8, 16, 32), fixed_rank=None, setting="paper", iters=None, batch_size=None,
                  name="aiqvit"):
    """AIQViT. Without DFQ the post-Softmax grid is log√2 (RepQ-ViT's, the base AIQViT builds on); `dfq_kind` picks
    the reading of DFQ ("dfq": three-segment grid, "dfq_interval": a clamped interval [b1, b2]). Without low-rank
    compensation no training pass runs; without curriculum the low-rank pass draws its mini-batches uniformly;
    `fixed_rank` r replaces the rank search with rank min(r, in, out) on every layer (the paper's rank ablation)."""
    softmax = QuantSpec(a_bits, kind=dfq_kind if dfq else "log_sqrt2", search="mse")
    ranks = [fixed_rank] if fixed_rank else list(rank_candidates)  # a list, so the recipe survives JSON unchanged
    passes = [setting_pass("lowrank", setting, rank_candidates=ranks, search=False if fixed_rank else None, iters=iters,
                    batch_size=batch_size, curriculum=curriculum)] if lowrank else []
    return mse_recipe(name, w_bits, a_bits, softmax, QuantSpec(a_bits, search="mse"),
                      reparam="mean", passes=passes,
                      calib_num=1024 if passes else None)


ABLATIONS = {  # name -> (recipe function, switches): one switch off each, registered by name
    "aiqvit_no_dfq": (aiqvit_recipe, dict(dfq=False)),
    "aiqvit_no_lowrank": (aiqvit_recipe, dict(lowrank=False)),
    "aiqvit_no_curriculum": (aiqvit_recipe, dict(curriculum=False)),
    "aiqvit_dfq_interval": (aiqvit_recipe, dict(dfq_kind="dfq_interval")),
    "aiqvit_rank20": (aiqvit_recipe, dict(fixed_rank=20)),
    "aiqvit_rank100": (aiqvit_recipe, dict(fixed_rank=100)),
}
register_ablations(ABLATIONS)

__all__ = ["ABLATIONS", "aiqvit_recipe"]
