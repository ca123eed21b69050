"""Recipes of the three seed methods, with every component a keyword switch and the ablations registered by name.

- `dopq`   DopQ-ViT (arXiv 2408.03291) on I&S-ViT's pipeline: TanQ post-Softmax, channel-wise post-LN quantizers and
           the `sos` pass with the MOSF rule at its channel→layer step (stage 2). The paper's W3A3 numbers are out of
           reach without reconstruction, hence our reading that it optimises like I&S-ViT (docs/methods.md).
- `dopq_lite` the reconstruction-free variant: TanQ and RepQ-style reparameterisation at calibration with the MOSF
           scale, where the rule is inert (plugin.quant.mosf).
- `isvit`  I&S-ViT (arXiv 2311.10126): SULQ post-Softmax, channel-wise post-LayerNorm quantizers, and the three-stage
           smooth optimisation pass `sos` (plugin.quant.recon), which reconstructs blocks, reparameterises the
           channel-wise post-LN quantizers to layer-wise with its `rule` (stage 2) and reconstructs again.
- `aiqvit` AIQViT (arXiv 2502.04628): DFQ post-Softmax, RepQ-style reparameterisation, and the `lowrank` pass
           (architecture-informed low-rank compensation trained with an easy-to-hard curriculum).

Ablations are one switch each, e.g. `aiqvit_recipe(4, 4, lowrank=False)`, registered as `aiqvit_no_lowrank`
(`aiqvit_dfq_interval` swaps in the other DFQ reading, `aiqvit_rank20`/`_rank100` fix the low-rank rank). Pass
options are checked when the recipe is built (plugin.quant.passes). The choices behind the defaults
(calibration sizes, iteration counts, baseline quantizers of the ablations) are in docs/methods.md.
"""
from functools import partial

from .passes import PASSES
from .recipe import Recipe, _first_layer_sites, register_recipe
from .spec import QuantSpec


def _pass(kind, setting, **options):
    """A pass config (checked here: a bad `setting` fails when the recipe is built). Iterations and batch size come
    from the pass's `setting` (plugin.quant.recon.SETTINGS: "paper" is I&S-ViT's 1000 iterations at 3/4 bit, 200 at
    6 bit, batch 64) unless given here; options given as None take the pass's defaults."""
    return PASSES[kind].from_dict(dict(setting=setting, **options))


def _base(name, w_bits, a_bits, post_softmax, post_ln, **fields):
    sites = _first_layer_sites(w_bits)
    sites["post_softmax"] = post_softmax
    sites["post_ln"] = post_ln
    return Recipe(name=name, w_bits=w_bits, a_bits=a_bits,
                  weight=QuantSpec(w_bits, granularity="channel", search="mse"),
                  act=QuantSpec(a_bits, search="mse"), sites=sites, **fields)


@register_recipe("dopq")
def dopq_recipe(w_bits, a_bits, *, tanq=True, mosf=True, setting="paper", iters=None, batch_size=None, lr=4e-5,
                name="dopq"):
    """DopQ-ViT: I&S-ViT's SOS with TanQ post-Softmax and the MOSF rule at the channel→layer step.

    Off switches fall back to what DopQ-ViT improves on: log√2 post-Softmax (RepQ-ViT's), the `mean` scale rule."""
    softmax = QuantSpec(a_bits, kind="tanq" if tanq else "log_sqrt2", search="mse")
    rule = "mosf" if mosf else "mean"
    passes = [_pass("sos", setting, iters=iters, batch_size=batch_size, lr=lr, rule=rule)]
    return _base(name, w_bits, a_bits, softmax, QuantSpec(a_bits, granularity="channel", search="mse"),
                 reparam=rule, passes=passes, calib_num=1024)


@register_recipe("dopq_lite")
def dopq_lite_recipe(w_bits, a_bits, *, tanq=True, name="dopq_lite"):
    """DopQ-ViT without reconstruction: TanQ and RepQ-style post-LN folding at calibration with the MOSF scale (inert
    there: the exact fold absorbs any layer-wise scale, plugin.quant.mosf), on the task's default calibration size
    (32 images on classification, like RepQ-ViT)."""
    softmax = QuantSpec(a_bits, kind="tanq" if tanq else "log_sqrt2", search="mse")
    return _base(name, w_bits, a_bits, softmax, QuantSpec(a_bits, search="mse"), reparam="mosf")


@register_recipe("isvit")
def isvit_recipe(w_bits, a_bits, *, sulq=True, sos=True, setting="paper", iters=None, batch_size=None, lr=4e-5,
                 name="isvit"):
    """I&S-ViT. Post-LN quantizers start channel-wise; SOS stage 2 folds them to layer-wise with the `mean` rule.
    Without SULQ the post-Softmax grid is log2 (the quantizer the paper improves on). Without SOS the post-LN
    quantizers are layer-wise from the start (reparameterised at calibration) and no reconstruction runs."""
    softmax = QuantSpec(a_bits, kind="sulq" if sulq else "log2", search="mse")
    post_ln = QuantSpec(a_bits, granularity="channel" if sos else "tensor", search="mse")
    passes = [_pass("sos", setting, iters=iters, batch_size=batch_size, lr=lr, rule="mean")] if sos else []
    return _base(name, w_bits, a_bits, softmax, post_ln, reparam="mean", passes=passes,
                 calib_num=1024 if passes else None)


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
    passes = [_pass("lowrank", setting, rank_candidates=ranks, search=False if fixed_rank else None, iters=iters,
                    batch_size=batch_size, curriculum=curriculum)] if lowrank else []
    return _base(name, w_bits, a_bits, softmax, QuantSpec(a_bits, search="mse"),
                 reparam="mean", passes=passes, calib_num=1024 if passes else None)


ABLATIONS = {
    "dopq_no_tanq": (dopq_recipe, dict(tanq=False)),
    "dopq_no_mosf": (dopq_recipe, dict(mosf=False)),
    "dopq_lite_no_tanq": (dopq_lite_recipe, dict(tanq=False)),
    "isvit_no_sulq": (isvit_recipe, dict(sulq=False)),
    "isvit_no_sos": (isvit_recipe, dict(sos=False)),
    "aiqvit_no_dfq": (aiqvit_recipe, dict(dfq=False)),
    "aiqvit_no_lowrank": (aiqvit_recipe, dict(lowrank=False)),
    "aiqvit_no_curriculum": (aiqvit_recipe, dict(curriculum=False)),
    "aiqvit_dfq_interval": (aiqvit_recipe, dict(dfq_kind="dfq_interval")),
    "aiqvit_rank20": (aiqvit_recipe, dict(fixed_rank=20)),
    "aiqvit_rank100": (aiqvit_recipe, dict(fixed_rank=100)),
}
for _name, (_fn, _switches) in ABLATIONS.items():
    register_recipe(_name)(partial(_fn, name=_name, **_switches))

__all__ = ["dopq_recipe", "dopq_lite_recipe", "isvit_recipe", "aiqvit_recipe", "ABLATIONS"]
