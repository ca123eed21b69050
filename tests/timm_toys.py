"""Tiny timm ViT / DeiT (distilled) / Swin models with random weights, and random images, for the tests."""
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

import plugin.adapters  # noqa: F401  (registers the timm adapters)
from plugin.quant import CalibData, get_recipe, quantize

VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)
# 16x16 tokens, window 4: shifted windows with attention masks, one patch merging
SWIN = dict(img_size=32, patch_size=2, window_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4), num_classes=10)


def build(arch, seed=0, **kw):
    """`arch`: vit, vit_avg (no class token, average pooling, fc_norm), deit_distilled or swin; `kw` overrides."""
    torch.manual_seed(seed)
    if arch == "vit":
        m = VisionTransformer(**{**VIT, **kw})
    elif arch == "vit_avg":
        m = VisionTransformer(**{**VIT, "class_token": False, "global_pool": "avg", **kw})
    elif arch == "deit_distilled":
        m = VisionTransformerDistilled(**{**VIT, **kw})
    elif arch == "swin":
        m = SwinTransformer(**{**SWIN, **kw})
    else:
        raise ValueError(arch)
    return m.eval()


def images(n=2, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def calib_data(seed=2):
    return CalibData(batches=[images(2, seed)], forward=lambda model, batch: model(batch))


def quantized(arch, recipe="minmax", w_bits=4, a_bits=4):
    return quantize(build(arch), get_recipe(recipe, w_bits, a_bits), calib_data(), log=lambda *a: None)
