"""GPU deployment: a calibrated W8A8 model turned into a BF16 model whose Linear layers run 8-bit GEMMs.

    from plugin.quant.deploy import deploy, deploy_report
    dep = deploy(calibrated_model, mode="fp8")      # or mode="int8"; a new model, the calibrated one is untouched
    fast = torch.compile(dep)                        # inductor fuses each activation quantize into its producer
    print(deploy_report(dep)["summary"])             # the recipe of every site, dropped quantizers included

`mode="int8"` (exact W8A8 codes): every Linear that `plugin.quant.deploy.freeze` can freeze (calibrated uniform ≤ 8-bit
weights per channel or per tensor, calibrated per-tensor uniform ≤ 8-bit input) becomes a `DeployInt8Linear`: the
input codes come from the calibrated **static** scale and zero point, written in plain torch ops
(clamp(x / s + z).round() → int8), so under `torch.compile` inductor computes them inside the kernel that produces x
(LayerNorm, GELU, the attention output copy) and writes one byte per value instead of two. The GEMM is
`vitq::int8_gemm`, a custom op (opaque to inductor, no graph break) running the Triton kernel of
`plugin.quant.deploy.triton_int8` with the zero-point corrections, per-channel scale and bias in its epilogue; on
CPU, or without triton, it runs `torch._int_mm` and the same epilogue in torch ops (the codes and the int32 sums are
those of `Int8Linear`).

`mode="fp8"`: the same layers become `DeployFP8Linear`: weights are the calibrated fake-quant weights (the int8 grid,
dequantized) stored as FP8 e4m3 with one per-tensor scale; inputs are clipped to the calibrated range [lo, hi] of the
site's int8 quantizer and stored as e4m3 with the static per-tensor scale max(|lo|, |hi|) / 448 (no per-token absmax
pass); `torch._scaled_mm` multiplies them with both scales and the bias in cuBLAS's epilogue, BF16 out. This is not
the int8 grid: the e4m3 rounding (3 mantissa bits) replaces the uniform 8-bit rounding, so its accuracy is measured
separately (tools/deploy_eval.py).

Everything else runs in `dtype` (BF16), and `deploy_report` lists it:
- attention (timm ViT/DeiT `Attention`, Swin `WindowAttention`): `F.scaled_dot_product_attention` in BF16 (flash, or
  the memory-efficient kernel where Swin's relative-position bias / shift mask is an additive mask). The quantizers
  of the attention matmuls (q, k, post-Softmax, v) are **dropped**: they do not run at inference;
- Linear / Conv layers that do not qualify (the patch embedding convolution, channel-wise input quantizers, low-rank
  branches, the classifier of width not divisible by 16 under fp8 is padded instead) keep fake-quant: weights
  quantized once and stored in BF16, the input quantizer applied as pointwise ops in float32 (fused by inductor);
- LayerNorm, GELU, softmax, residual adds: BF16 (float32 inside the fused kernels), not quantized, as in the
  fake-quant model.

Codes and scales keep their dtypes through `model.to(dtype)` (only device moves reach them).
"""
import copy

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..modules import MatMul, QuantConv2d, QuantLinear
from ..quant_state import QuantState, attach_state, state
from .gpu_modules import (FP8_MAX, TILES, DeployFP8Linear, DeployInt8Linear, PatchGemm, _Float32Quantizer,  # noqa: F401
                          int8_gemm_op)
from .lower import gemm_reason

MODES = ("int8", "fp8")


# ---------------------------------------------------------------------------------------------------------- attention

def _sdpa_attention_classes(model):
    """{quantizable attention class: its SDPA deployment class}, from the model's adapter (none without one)."""
    from ..adapter import find_adapter
    try:
        return find_adapter(model).deploy_attention()
    except ConfigError:
        return {}


def _describe(q):
    if q is None:
        return "float"
    spec = q.spec
    text = f"{spec.kind} {spec.bits}-bit {spec.granularity}"
    if spec.kind == "uniform":
        text += " sym" if spec.symmetric else " asym"
    return text + ("" if q.enabled and q.ready else " (not calibrated / disabled)")


def _roles(model):
    from ..adapter import find_adapter
    try:
        adapter = find_adapter(model)
    except ConfigError:
        return {}
    return {name: role.value for name, role in adapter.roles(model).items()}


STEMS = ("gemm", "conv")


def deploy(model: nn.Module, mode: str = "fp8", dtype=torch.bfloat16, tile: str = "heuristic",
           stem: str = "gemm") -> nn.Module:
    """A deployment copy of a calibrated fake-quant model (the model itself is not changed); see the module doc.

    mode: "int8" (exact W8A8 codes, Triton / `torch._int_mm` GEMM) or "fp8" (e4m3 `torch._scaled_mm`); dtype: the
    float dtype of everything else (BF16; float16 works, float32 for CPU checks); tile: the Triton GEMM's tile choice
    in int8 mode; stem: "gemm" runs a patch-embedding convolution whose stride equals its kernel as a reshape +
    matmul (`PatchGemm`), "conv" keeps the convolution. `deploy_report(result)` gives the recipe of every site."""
    if mode not in MODES:
        raise ConfigError(f"unknown deploy mode {mode!r}; expected one of {MODES}")
    if tile not in TILES:
        raise ConfigError(f"unknown tile choice {tile!r}; expected one of {TILES}")
    if stem not in STEMS:
        raise ConfigError(f"unknown stem choice {stem!r}; expected one of {STEMS}")
    if not any(isinstance(m, (QuantLinear, QuantConv2d)) for m in model.modules()):
        raise ConfigError("deploy() needs a quantized model (plugin.quant.quantize first)")
    from ..attach import set_submodule
    roles = _roles(model)
    model = copy.deepcopy(model)
    sites = []

    def site(name, op, recipe, role=None):
        sites.append({"site": name, "role": role or roles.get(name, "other"), "op": op, "recipe": recipe})

    for name, m in list(model.named_modules()):
        if type(m) is QuantLinear:
            reason = gemm_reason(m)
            w_desc, x_desc = _describe(m.weight_quantizer), _describe(m.input_quantizer)
            if reason is None and mode == "fp8" and m.in_features % 16:
                reason = f"in_features {m.in_features} is not a multiple of 16 (FP8 GEMM)"
            if reason is None:
                if mode == "int8":
                    new = DeployInt8Linear.from_quant_linear(m, tile=tile)
                    site(name, "int8 GEMM (vitq::int8_gemm: Triton on CUDA, torch._int_mm elsewhere; zero-point "
                         "corrections, scale, bias in the epilogue)",
                         f"W {w_desc} (int8 codes), A {x_desc} static (codes made in the producer kernel)")
                else:
                    new = DeployFP8Linear.from_quant_linear(m, out_dtype=dtype)
                    site(name, "FP8 e4m3 GEMM (torch._scaled_mm, scales and bias in the epilogue)",
                         f"W e4m3 per-tensor from the {w_desc} grid, A e4m3 per-tensor static scale, clipped to the "
                         f"calibrated {x_desc} range (made in the producer kernel)")
                set_submodule(model, name, new)
                continue
            _keep_fake_quant(m)
            site(name, f"{dtype} Linear, fake-quant kept ({reason})", f"W {w_desc} (stored dequantized), A {x_desc}")
        elif type(m) is QuantConv2d:
            w_desc, x_desc = _describe(m.weight_quantizer), _describe(m.input_quantizer)
            _keep_fake_quant(m)
            if stem == "gemm" and PatchGemm.applies(m):
                set_submodule(model, name, PatchGemm.from_conv(m))
                site(name, f"{dtype} GEMM over non-overlapping patches (the stride = kernel convolution as a "
                     "reshape + matmul), fake-quant kept", f"W {w_desc} (stored dequantized), A {x_desc}")
                continue
            site(name, f"{dtype} Conv2d, fake-quant kept", f"W {w_desc} (stored dequantized), A {x_desc}")
        elif type(m) in (nn.Linear, nn.Conv2d):
            site(name, f"{dtype} {type(m).__name__}", "not quantized (the recipe keeps it float)")
    swaps = _sdpa_attention_classes(model)
    for name, m in list(model.named_modules()):
        new_cls = swaps.get(type(m))
        if new_cls is None:
            continue
        dropped = []
        for mm_name, slots in (("matmul_qk", ("q", "k")), ("matmul_av", ("post_softmax", "v"))):
            mm = getattr(m, mm_name)
            for slot, label in zip(("a_quantizer", "b_quantizer"), slots):
                dropped.append(f"{label}: {_describe(getattr(mm, slot))}")
            delattr(m, mm_name)
        m.__class__ = new_cls
        site(name, f"scaled_dot_product_attention in {dtype}",
             "not quantized at inference; dropped quantizers: " + ", ".join(dropped), role="attention")
    for name, m in list(model.named_modules()):  # attention of other architectures: fake-quant matmuls kept
        if isinstance(m, MatMul):
            for slot in ("a_quantizer", "b_quantizer"):
                if getattr(m, slot) is not None:
                    setattr(m, slot, _Float32Quantizer(getattr(m, slot)))
            site(name, f"explicit matmul in {dtype}, fake-quant kept", role="attention",
                 recipe=f"A {_describe(_inner(m.a_quantizer))}, B {_describe(_inner(m.b_quantizer))}")
    model.to(dtype)
    dtype_name = str(dtype).replace("torch.", "")
    for s in sites:
        s["op"] = s["op"].replace(str(dtype), dtype_name)
    st = state(model)
    if st is None:  # a model quantized by hand (modules only): the deployment record needs a state to live in
        st = QuantState(recipe=None, adapter="")
        attach_state(model, st)
    st.deployed = {"mode": mode, "dtype": dtype_name, "tile": tile, "stem": stem, "sites": sites}
    return model.eval()


def _inner(q):
    return q.quantizer if isinstance(q, _Float32Quantizer) else q


def _keep_fake_quant(m):
    """Quantize the weight once (stored in the module's float dtype) and keep the input quantizer in float32."""
    with torch.no_grad():
        if m.weight_quantizer is not None:
            m.weight = nn.Parameter(m.weight_quantizer(m.weight.detach().float()).to(m.weight.dtype),
                                    requires_grad=False)
            m.weight_quantizer = None
        if m.input_quantizer is not None:
            m.input_quantizer = _Float32Quantizer(m.input_quantizer)


def deploy_report(model: nn.Module) -> dict:
    """{"mode", "dtype", "sites": [{site, role, op, recipe}], "summary": [{role, op, recipe, count, sites}]}: the
    recipe of every site of a `deploy`ed model, identical ones grouped (what is not quantized says so)."""
    st = state(model)
    info = st.deployed if st is not None else None
    if info is None:
        raise ConfigError("not a deployed model (plugin.quant.deploy.deploy)")
    groups = {}
    for s in info["sites"]:
        key = (s["role"], s["op"], s["recipe"])
        groups.setdefault(key, []).append(s["site"])
    summary = [{"role": r, "op": o, "recipe": rec, "count": len(names), "sites": names}
               for (r, o, rec), names in groups.items()]
    summary.append({"role": "-", "op": f"LayerNorm, GELU, softmax, residual adds, pooling in {info['dtype']}",
                    "recipe": "not quantized (as in the fake-quant model)", "count": None, "sites": []})
    return {**{k: v for k, v in info.items() if k != "sites"}, "sites": info["sites"], "summary": summary}


def format_recipe(report: dict) -> str:
    """The grouped recipe as text lines (for logs and reports)."""
    lines = [f"deployment recipe (mode {report['mode']}, {report['dtype']}):"]
    for g in report["summary"]:
        count = f"{g['count']:>3}x" if g["count"] is not None else "   -"
        lines.append(f"  {count} {g['role']:<12} {g['op']}: {g['recipe']}")
    return "\n".join(lines)


__all__ = ["DeployFP8Linear", "DeployInt8Linear", "PatchGemm", "deploy", "deploy_report", "format_recipe", "int8_gemm_op"]
