"""RepQ-ViT post-LayerNorm reparameterisation: the float network is unchanged, and the layer-wise quantizer on the
reparameterised activations gives exactly the codes of the channel-wise quantizer on the original ones."""
import copy

import pytest
import torch
import torch.nn as nn
from timm.models.deit import VisionTransformerDistilled
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

import plugin.adapters  # noqa: F401  (registers the timm adapters)
from plugin.adapters import Adapter, find_adapter
from plugin.quant import CalibData, Observation, QuantSpec, Role, build_quantizer, get_recipe, quantize, \
    set_quant_enabled
from plugin.quant.reparam import fold_scales, mean_scale


def build(arch, seed=0):
    torch.manual_seed(seed)
    if arch == "vit":
        m = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)
    elif arch == "vit_avg":
        m = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10,
                              class_token=False, global_pool="avg")
    elif arch == "deit_distilled":
        m = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)
    else:
        m = SwinTransformer(img_size=32, patch_size=2, window_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4),
                            num_classes=10)
    # Post-LN outlier channels, as in trained ViTs: the case the reparameterisation exists for.
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.mul_(torch.exp(torch.randn(mod.weight.shape, generator=g)))
                mod.weight[:2].mul_(15.0)
                mod.bias.add_(torch.randn(mod.bias.shape, generator=g) * 2)
    return m.eval()


def images(n=2, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def calib_data(seed=2):
    return CalibData(batches=[images(2, seed), images(2, seed + 1)], forward=lambda model, batch: model(batch))


@pytest.mark.parametrize("arch", ["vit", "vit_avg", "deit_distilled", "swin"])
def test_reparam_leaves_float_output_unchanged(arch):
    fp = build(arch)
    model = copy.deepcopy(fp)
    quantize(model, get_recipe("repq", 4, 4), calib_data(), log=lambda *a: None)
    # the reparameterisation really happened: every LayerNorm that feeds a Linear changed its affine parameters,
    # except the one before the classifier, which RepQ-ViT leaves alone (its input is quantized per tensor)
    adapter = find_adapter(model)
    pairs, roles = adapter.norm_consumers(model), adapter.roles(model)
    assert pairs
    for norm_name, consumers in pairs:
        folded = not torch.equal(model.get_submodule(norm_name).weight, fp.get_submodule(norm_name).weight)
        assert folded != any(roles[c] == Role.HEAD for c in consumers), norm_name
        for c in consumers:
            q = model.get_submodule(c).input_quantizer
            assert q.spec.granularity == "tensor" and q.scale.numel() == 1, c
    set_quant_enabled(model, False)
    x = images(3, seed=5)
    with torch.no_grad():
        ref, out = fp(x), model(x)
    assert (out - ref).abs().max() <= 1e-5, (out - ref).abs().max()
    assert ref.abs().max() > 1e-2  # not a trivially small output


# --------------------------------------------------------------------------------------------------- LN + Linear
class NormLinear(nn.Module):
    """LayerNorm feeding a Linear: the smallest case of post-LN reparameterisation."""

    def __init__(self, c=8, out=5, affine=True, bias=True, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.norm = nn.LayerNorm(c, elementwise_affine=affine)
        self.fc = nn.Linear(c, out, bias=bias)
        if affine:
            with torch.no_grad():
                self.norm.weight.copy_(torch.tensor([0.3, 1.0, 12.0, 0.05, 2.5, 0.7, 40.0, 1.3])[:c])
                self.norm.bias.copy_(torch.tensor([-1.0, 0.5, 3.0, 0.0, -6.0, 0.2, 10.0, 0.1])[:c])

    def forward(self, x):
        return self.fc(self.norm(x))


class NormLinearAdapter(Adapter):
    name = "test_norm_linear"

    def matches(self, model):
        return isinstance(model, NormLinear)

    def roles(self, model):
        return {"fc": Role.FC1}

    def norm_consumers(self, model):
        return [("norm", ["fc"])]

    def blocks(self, model):
        return []


def codes(q, x):
    """Integer codes of a calibrated uniform quantizer (channel axis last)."""
    s, z = q.scale, q.zero_point
    if s.numel() > 1:
        s, z = s.reshape(1, -1), z.reshape(1, -1)
    return torch.clamp(torch.round(x / s) + z, q.qmin, q.qmax)


def rows(n=200, c=8, seed=3):
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed)) * 3 + 1


@pytest.mark.parametrize("bits", [3, 4, 6, 8])
def test_fold_scales_layerwise_codes_equal_channelwise_codes(bits):
    """The math of fold_scales by hand: pick s̃ = mean s_c, z̃ = round(mean z_c), fold, compare codes."""
    fp = NormLinear()
    model = copy.deepcopy(fp)
    inp = rows()
    with torch.no_grad():
        x = fp.norm(inp)
    channelwise = build_quantizer(QuantSpec(bits, granularity="channel"), channel_axis=-1).calibrate_tensor(x)
    s_c, z_c = channelwise.scale, channelwise.zero_point
    assert s_c.max() / s_c.min() > 10  # the channels really differ
    s_layer, z_layer = mean_scale(s_c).reshape(()), z_c.mean().round()
    r1, shift = s_c / s_layer, s_layer * (z_c - z_layer)
    fold_scales(model.norm, [model.fc], r1, shift)
    layerwise = build_quantizer(QuantSpec(bits), channel_axis=-1)
    layerwise.load_state_dict({"initialized": torch.tensor(True), "scale": s_layer.reshape(1),
                               "zero_point": z_layer.reshape(1)})
    with torch.no_grad():
        x_new = model.norm(inp)
        assert torch.allclose(x_new, x / r1 + shift, atol=1e-5, rtol=1e-5)
        assert torch.allclose(model(inp), fp(inp), atol=1e-5, rtol=1e-5)
        assert torch.equal(codes(layerwise, x_new), codes(channelwise, x))
        # so the dequantized values differ only by the per-channel factor that the next Linear absorbs
        assert torch.allclose(model.fc(layerwise(x_new)), fp.fc(channelwise(x)), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("affine,bias", [(True, True), (False, False)])
def test_fold_scales_keeps_float_function(affine, bias):
    """fold_scales adds the LayerNorm affine and the Linear bias where missing and changes no float output."""
    fp = NormLinear(affine=affine, bias=bias)
    model = copy.deepcopy(fp)
    g = torch.Generator().manual_seed(4)
    r1 = torch.exp(torch.randn(8, generator=g) * 2)
    shift = torch.randn(8, generator=g)
    fold_scales(model.norm, [model.fc], r1, shift)
    inp = rows()
    with torch.no_grad():
        assert torch.allclose(model.norm(inp), fp.norm(inp) / r1 + shift, atol=1e-5, rtol=1e-5)
        assert torch.allclose(model(inp), fp(inp), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bits", [4, 6])
def test_repq_layerwise_quantizer_reproduces_channelwise_codes(bits):
    """End to end through quantize(): the consumer's per-tensor input quantizer on the reparameterised LayerNorm
    output gives the codes of the channel-wise quantizer (same spec, per channel) on the original output."""
    fp = NormLinear()
    model = copy.deepcopy(fp)
    batches = [rows(64, seed=10), rows(64, seed=11)]
    recipe = get_recipe("repq", bits, bits)
    quantize(model, recipe, CalibData(batches, lambda m, b: m(b)), adapter=NormLinearAdapter(), log=lambda *a: None)
    layerwise = model.fc.input_quantizer
    assert layerwise.scale.numel() == 1 and layerwise.zero_point.numel() == 1
    with torch.no_grad():
        x_calib = torch.cat([fp.norm(b) for b in batches])
    spec = recipe.spec_for(["fc1.input", "post_ln", "act"])
    channelwise = build_quantizer(spec.replace(granularity="channel"), channel_axis=-1)
    channelwise.calibrate(Observation.from_tensor(x_calib, -1))
    inp = torch.cat([rows(100, seed=20), rows(20, seed=21) * 4])  # beyond the calibration range too
    with torch.no_grad():
        x, x_new = fp.norm(inp), model.norm(inp)
        assert torch.equal(codes(layerwise, x_new), codes(channelwise, x))
        set_quant_enabled(model, False)
        assert torch.allclose(model(inp), fp(inp), atol=1e-5, rtol=1e-5)
        set_quant_enabled(model, True)
        model.fc.weight_quantizer.enabled = False
        assert torch.allclose(model(inp), fp.fc(channelwise(x)), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("method", ["repq", "minmax"])
def test_consumer_weights_are_quantized_as_folded(method):
    """The weight quantizer of a post-LN consumer is calibrated on the folded weights W·diag(r1), not the originals."""
    fp = build("vit")
    model = quantize(copy.deepcopy(fp), get_recipe(method, 4, 4), calib_data(), log=lambda *a: None)
    qkv = model.blocks[0].attn.qkv
    if method == "repq":  # folded: the weights changed
        assert not torch.allclose(qkv.weight, fp.blocks[0].attn.qkv.weight)
    fresh = build_quantizer(qkv.weight_quantizer.spec, qkv.weight_quantizer.channel_axis).calibrate_tensor(qkv.weight)
    assert torch.allclose(fresh.scale, qkv.weight_quantizer.scale)
    assert torch.equal(fresh.zero_point, qkv.weight_quantizer.zero_point)
