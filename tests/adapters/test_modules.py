"""Module swap on timm ViT / DeiT (distilled) / Swin: every Linear, Conv2d and attention matmul gets quantizers, the
float path is unchanged with quantizers off, and deep copies are independent (no per-instance forward survives)."""
import copy

import pytest
import torch
import torch.nn as nn
from timm.layers import Attention as TimmAttention
from timm.models.swin_transformer import WindowAttention
from timm_toys import build, calib_data, images, quantized

from plugin.adapters import find_adapter
from plugin.quant import (MatMul, QuantConv2d, QuantLinear, QuantSpec, Quantizer, Role, get_recipe, iter_quantizers,
                          quantize, set_quant_enabled)

ARCHS = ["vit", "vit_avg", "deit_distilled", "swin"]
ATTENTION = (TimmAttention, WindowAttention)


def expected_role(name, arch):
    """What the module at `name` is, from timm's own layout (tests may know timm's names; the library may not)."""
    last = name.rsplit(".", 1)[-1]
    if name == "patch_embed.proj":
        return Role.PATCH_EMBED
    if name in ("head", "head_dist", "head.fc"):
        return Role.HEAD
    if last == "reduction":
        return Role.OTHER
    return {"qkv": Role.QKV, "proj": Role.PROJ, "fc1": Role.FC1, "fc2": Role.FC2,
            "matmul_qk": Role.MATMUL_QK, "matmul_av": Role.MATMUL_AV}[last]


@pytest.fixture(scope="module", params=ARCHS)
def arch_models(request):
    """(arch, float model, quantized model) with minmax W4A4; the float model is a separate build, same seed."""
    return request.param, build(request.param), quantized(request.param)


def test_distilled_deit_has_two_heads():
    m = build("deit_distilled")
    assert isinstance(m.head, nn.Linear) and isinstance(m.head_dist, nn.Linear)


def test_roles_cover_every_linear_conv_and_attention_matmul(arch_models):
    arch, fp, qm = arch_models
    float_layers = {n for n, m in fp.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    attn = [n for n, m in fp.named_modules() if isinstance(m, ATTENTION)]
    assert float_layers and attn
    roles = find_adapter(qm).roles(qm)
    matmuls = {f"{a}.{mm}" for a in attn for mm in ("matmul_qk", "matmul_av")}
    assert set(roles) == float_layers | matmuls, (sorted(float_layers | matmuls - set(roles)),
                                                   sorted(set(roles) - float_layers - matmuls))
    for name, role in roles.items():
        assert Role(role) == expected_role(name, arch), name
    if arch == "deit_distilled":
        assert Role(roles["head_dist"]) == Role.HEAD


def test_every_site_is_swapped_and_calibrated(arch_models):
    arch, fp, qm = arch_models
    for name, m in fp.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            qmod = qm.get_submodule(name)
            assert isinstance(qmod, QuantConv2d if isinstance(m, nn.Conv2d) else QuantLinear), name
            for slot in ("input_quantizer", "weight_quantizer"):
                q = getattr(qmod, slot)
                assert isinstance(q, Quantizer) and q.ready and bool(q.initialized), f"{name}.{slot}"
        if isinstance(m, ATTENTION):
            for mm in ("matmul_qk", "matmul_av"):
                qmod = qm.get_submodule(f"{name}.{mm}")
                assert isinstance(qmod, MatMul)
                for slot in ("a_quantizer", "b_quantizer"):
                    q = getattr(qmod, slot)
                    assert isinstance(q, Quantizer) and q.ready, f"{name}.{mm}.{slot}"


def test_every_quantized_module_runs_in_forward(arch_models):
    """The explicit matmuls (and every swapped layer) are on the forward path, not bypassed by a fused kernel."""
    arch, fp, qm = arch_models
    sites = {n: m for n, m in qm.named_modules() if isinstance(m, (QuantLinear, QuantConv2d, MatMul))}
    calls = {}
    handles = [m.register_forward_hook(lambda mod, a, o, n=n: calls.__setitem__(n, calls.get(n, 0) + 1))
               for n, m in sites.items()]
    try:
        with torch.no_grad():
            qm(images())
    finally:
        for h in handles:
            h.remove()
    assert set(calls) == set(sites), sorted(set(sites) - set(calls))
    n_attn = sum(isinstance(m, ATTENTION) for m in qm.modules())
    assert sum(isinstance(m, MatMul) for m in sites.values()) == 2 * n_attn


def test_quantizers_change_the_output(arch_models):
    arch, fp, qm = arch_models
    x = images()
    with torch.no_grad():
        assert (qm(x) - fp(x)).abs().max() > 1e-4


@pytest.mark.parametrize("recipe", ["minmax", "ptq4vit"])
@pytest.mark.parametrize("arch", ARCHS)
def test_quantizers_disabled_gives_float_output(arch, recipe):
    fp = build(arch)
    qm = quantize(build(arch), get_recipe(recipe, 4, 4), calib_data(), log=lambda *a: None)
    x = images(3, seed=5)
    set_quant_enabled(qm, False)
    assert all(not q.enabled for _, q in iter_quantizers(qm))
    with torch.no_grad():
        ref, out = fp(x), qm(x)
    assert (out - ref).abs().max() <= 1e-5
    set_quant_enabled(qm, True)
    with torch.no_grad():
        assert (qm(x) - ref).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_no_per_instance_forward(arch):
    """Attention is swapped by class, not by patching `forward` on instances (that would survive deepcopy)."""
    qm = quantized(arch)
    for name, m in qm.named_modules():
        assert "forward" not in vars(m), name
    for m in qm.modules():
        if isinstance(m, ATTENTION):
            assert type(m) not in ATTENTION and isinstance(getattr(m, "matmul_qk"), MatMul)


@pytest.mark.parametrize("arch", ARCHS)
def test_float_teacher_copy_stays_float(arch):
    """The DESIGN.md anti-pattern: a deep-copied float teacher must not run the student's quantized modules."""
    student = build(arch)
    x = images(2, seed=7)
    with torch.no_grad():
        ref = student(x)
    teacher = copy.deepcopy(student)
    quantize(student, get_recipe("minmax", 4, 4), calib_data(), log=lambda *a: None)
    assert not any(isinstance(m, (Quantizer, QuantLinear, QuantConv2d, MatMul)) for m in teacher.modules())
    with torch.no_grad():
        assert torch.equal(teacher(x), ref)
        assert (student(x) - ref).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_deepcopy_of_quantized_model_is_independent(arch):
    original = quantized(arch)
    x = images(2, seed=9)
    with torch.no_grad():
        before = original(x)
    dup = copy.deepcopy(original)
    with torch.no_grad():
        assert torch.equal(dup(x), before)
    # no tensor storage is shared
    orig_ptrs = {t.data_ptr() for t in original.state_dict().values() if t.numel()}
    assert not orig_ptrs & {t.data_ptr() for t in dup.state_dict().values() if t.numel()}
    # re-quantize the copy with another recipe, disable its quantizers, edit its weights and quantizer buffers
    quantize(dup, get_recipe("repq", 2, 2), calib_data(seed=11), log=lambda *a: None)
    with torch.no_grad():
        changed = dup(x)
        for _, q in iter_quantizers(dup):
            for buf in q.buffers():
                if buf.dtype.is_floating_point:
                    buf.mul_(3.0)
        for p in dup.parameters():
            p.add_(0.5)
    set_quant_enabled(dup, False)
    with torch.no_grad():
        assert not torch.equal(changed, before)
        assert torch.equal(original(x), before)
    assert all(q.enabled for _, q in iter_quantizers(original))
    # and the other way round: changing the original leaves a fresh copy alone
    dup2 = copy.deepcopy(original)
    set_quant_enabled(original, False)
    with torch.no_grad():
        assert torch.equal(dup2(x), before)


@pytest.mark.parametrize("arch", ["vit", "swin"])
def test_head_granularity_keeps_its_channel_axis(arch):
    """A per-head spec quantizes along the head axis (dim 1 of q, k, attention) through attach_quantizers."""
    recipe = get_recipe("minmax", 4, 4)
    recipe.sites["q"] = QuantSpec(4, granularity="head")
    model = quantize(build(arch), recipe, calib_data(), log=lambda *a: None)
    attn = model.blocks[0].attn if arch == "vit" else model.layers[0].blocks[0].attn
    q = attn.matmul_qk.a_quantizer
    assert q.channel_axis == 1 and q.scale.numel() == attn.num_heads
    assert attn.matmul_qk.b_quantizer.scale.numel() == 1  # the k operand kept the per-tensor default
