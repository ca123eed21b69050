"""The recipe skeleton shared by the AdaLog family's codes (AdaLog, ECCV 2024; APHQ-ViT and FIMA-Q, CVPR 2025), as
their `wrap_modules_in_net` and calibrator set it up (read from GoatWu/APHQ-ViT and ShiheWang/FIMA-Q):

- every Linear: weights per output row, inputs per tensor, both asymmetric `percentile_grid` ("range" candidates);
  the classifier too (`qhead_a_bit` = the activation width in every config);
- attention operands q, k, post-Softmax and v: asymmetric `percentile_grid` per head ("pair_value" candidates);
- the patch embedding: weights per output channel ("pair_pct"), input symmetric 8-bit at max|x|/(2^7 − 0.5)
  (`qconv_a_bit = 8`; never searched, as the official conv search stops at 8 bits);
- post-LayerNorm inputs of qkv, fc1 (and Swin's patch-merging reduction) start channel-wise, are folded into the
  LayerNorm with RepQ-ViT's mean rule (scale = mean of the channel scales, zero point = round(mean)), then searched
  per tensor; only when the activation and weight widths are equal (`cur_a_bit == w_bit` in the official code);
- every quantizer is calibrated on the float model (the official calibrator keeps every module unquantized until all
  are searched), then `output_search` scores candidates on each module's float output (3 rounds);
- 128 images set the quantizers, 1024 train (calib_num 1024, stat_fraction 1/8), batch 32;
- FIMA-Q only (`token_channel_wise = True`): after the search, Linear inputs of three dimensions and the attention
  operands get one scale per token (left operand: per row; right operand: per column), trained apart by reconstruction.
"""
from .adalog import GELU_SHIFT
from .errors import ConfigError
from .passes import PASSES
from .recipe import Recipe
from .spec import QuantSpec, Role

CALIB_NUM = {"paper": 1024, "small": 256}
STAT_IMAGES = 128  # the official calib_size


def grid(bits, granularity="tensor", **options):
    return QuantSpec(bits, kind="percentile_grid", granularity=granularity, options=options)


SOFTMAX = ("grid", "adalog")
GELU = SOFTMAX


def softmax_spec(softmax, a_bits, eq_n, name):
    """The post-Softmax spec a recipe asks for: None (the family's uniform grid) or AdaLog's log grid per head."""
    if softmax not in SOFTMAX:
        raise ConfigError(f"{name}: softmax must be one of {SOFTMAX}, got {softmax!r}")
    if softmax == "grid":
        return None
    return QuantSpec(a_bits, kind="adalog", granularity="head", options=dict(eq_n=eq_n))


def gelu_spec(gelu, a_bits, eq_n, name):
    """The post-GELU (FC2 input) spec a recipe asks for: None (the family's uniform grid) or AdaLog's log grid per
    tensor on x + GELU_SHIFT with a searched scale, as AdaLog's own configs set it (plugin.quant.adalog)."""
    if gelu not in GELU:
        raise ConfigError(f"{name}: gelu must be one of {GELU}, got {gelu!r}")
    if gelu == "grid":
        return None
    return QuantSpec(a_bits, kind="adalog", options=dict(eq_n=eq_n, scale=None, shift=GELU_SHIFT))


def adalog_family_recipe(name, w_bits, a_bits, *, setting="paper", pre=(), post=(), post_gelu=None, eq_n=128,
                         token_wise=False, post_softmax=None, reparam_always=False):
    """The shared skeleton (module docstring): the method's `pre` passes, `output_search`, its `post` passes;
    `post_gelu` / `post_softmax` replace the FC2-input / post-Softmax spec; `token_wise`: FIMA-Q's per-token input and
    operand scales; `reparam_always`: fold the post-LayerNorm scales at every width, not only when the activation and
    weight widths are equal (the official rule)."""
    if setting not in CALIB_NUM:
        raise ConfigError(f"{name}: unknown setting {setting!r}; known: {', '.join(CALIB_NUM)}")
    rows, cols = (dict(token_axis=-2), dict(token_axis=-1)) if token_wise else ({}, {})
    act = grid(a_bits, eq_n=eq_n, **rows)
    left, right = (grid(a_bits, "head", mode="pair_value", eq_n=eq_n, **t) for t in (rows, cols))
    sites = {
        "patch_embed.input": QuantSpec(8, symmetric=True),
        "patch_embed.weight": grid(w_bits, "channel", mode="pair_pct", eq_n=eq_n),
        "q": left, "k": right, "post_softmax": left, "v": right,  # k enters q@kᵀ transposed
        "post_ln": act,
    }
    if post_gelu is not None:
        sites["post_gelu"] = post_gelu
    if post_softmax is not None:
        sites["post_softmax"] = post_softmax
    return Recipe(
        name=name, w_bits=w_bits, a_bits=a_bits, weight=grid(w_bits, "channel", eq_n=eq_n), act=act, sites=sites,
        reparam="mean" if reparam_always or a_bits == w_bits else None, reparam_skip_roles=(Role.HEAD,),
        sequential="none",
        observe_elems=2 ** 22, passes=[*pre, PASSES["output_search"].from_dict(dict(rounds=3)), *post],
        calib_num=CALIB_NUM[setting], stat_fraction=min(1.0, STAT_IMAGES / CALIB_NUM[setting]),
    )


__all__ = ["adalog_family_recipe", "gelu_spec", "grid", "softmax_spec", "CALIB_NUM", "GELU", "SOFTMAX", "STAT_IMAGES"]
