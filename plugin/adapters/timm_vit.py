"""Adapter for timm VisionTransformer (ViT, DeiT, DeiT-distilled) and SwinTransformer (v1).

The attention modules get a subclass whose forward computes attention explicitly through `matmul_qk`/`matmul_av`
(the fused scaled_dot_product_attention path hides both operands from quantization); the subclasses are in
`timm_attention`. timm is not imported here: a model can only be a timm model once timm's model module is imported,
so `matches` looks the class up in `sys.modules` and `import plugin` pays no timm import.
"""
import sys

import torch.nn as nn

from ..quant.spec import Role
from .base import Adapter, module_names, register_adapter, swap_class


def _timm_class(module, name):
    """The timm class `module.name` if that timm module is imported, else None."""
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def _mlp_roles(mlp, names, roles):
    if isinstance(getattr(mlp, "fc1", None), nn.Linear) and isinstance(getattr(mlp, "fc2", None), nn.Linear):
        roles[names[id(mlp.fc1)]] = Role.FC1
        roles[names[id(mlp.fc2)]] = Role.FC2


def _attn_roles(attn, names, roles):
    roles[names[id(attn.qkv)]] = Role.QKV
    roles[names[id(attn.proj)]] = Role.PROJ
    roles[names[id(attn.matmul_qk)]] = Role.MATMUL_QK
    roles[names[id(attn.matmul_av)]] = Role.MATMUL_AV


def _head_linears(model):
    """The classifier Linear(s) of a timm model, whichever head layout it has."""
    heads = []
    for attr in ("head", "head_dist"):
        h = getattr(model, attr, None)
        if isinstance(h, nn.Linear):
            heads.append(h)
        elif h is not None and isinstance(getattr(h, "fc", None), nn.Linear):
            heads.append(h.fc)
    return heads


def _is_pre_norm_block(blk):
    return all(isinstance(getattr(blk, a, None), nn.LayerNorm) for a in ("norm1", "norm2"))


@register_adapter
class TimmViTAdapter(Adapter):
    name = "timm_vit"

    def matches(self, model):
        cls = _timm_class("timm.models.vision_transformer", "VisionTransformer")
        return cls is not None and isinstance(model, cls)

    def prepare(self, model):
        from .timm_attention import QuantTimmAttention, TimmAttention, matmuls
        for m in model.modules():
            if isinstance(m, TimmAttention) and not isinstance(m, QuantTimmAttention):
                swap_class(m, QuantTimmAttention, **matmuls())

    def deploy_attention(self):
        from .timm_attention import QuantTimmAttention, SdpaTimmAttention
        return {QuantTimmAttention: SdpaTimmAttention}

    def roles(self, model):
        from .timm_attention import QuantTimmAttention
        names, roles = module_names(model), {}
        proj = getattr(model.patch_embed, "proj", None)
        if isinstance(proj, (nn.Conv2d, nn.Linear)):
            roles[names[id(proj)]] = Role.PATCH_EMBED
        for blk in model.blocks:
            if isinstance(getattr(blk, "attn", None), QuantTimmAttention):
                _attn_roles(blk.attn, names, roles)
            _mlp_roles(getattr(blk, "mlp", None), names, roles)
        for head in _head_linears(model):
            roles[names[id(head)]] = Role.HEAD
        return roles

    def norm_consumers(self, model):
        names, pairs = module_names(model), []
        for blk in model.blocks:
            if not _is_pre_norm_block(blk):
                continue
            pairs.append((names[id(blk.norm1)], [names[id(blk.attn.qkv)]]))
            if isinstance(getattr(blk.mlp, "fc1", None), nn.Linear):
                pairs.append((names[id(blk.norm2)], [names[id(blk.mlp.fc1)]]))
        # The last LayerNorm feeds the classifier through token selection or average pooling only (per-channel safe).
        final = model.fc_norm if isinstance(getattr(model, "fc_norm", None), nn.LayerNorm) else model.norm
        heads = _head_linears(model)
        if isinstance(final, nn.LayerNorm) and heads and getattr(model, "attn_pool", None) is None \
                and isinstance(getattr(model, "head_drop", nn.Dropout()), nn.Dropout):
            pairs.append((names[id(final)], [names[id(h)] for h in heads]))
        return pairs

    def blocks(self, model):
        names = module_names(model)
        return [names[id(b)] for b in model.blocks]


@register_adapter
class TimmSwinAdapter(Adapter):
    name = "timm_swin"

    def matches(self, model):
        cls = _timm_class("timm.models.swin_transformer", "SwinTransformer")
        return cls is not None and isinstance(model, cls)

    def prepare(self, model):
        from .timm_attention import QuantWindowAttention, WindowAttention, matmuls
        for m in model.modules():
            if isinstance(m, WindowAttention) and not isinstance(m, QuantWindowAttention):
                swap_class(m, QuantWindowAttention, **matmuls())

    def deploy_attention(self):
        from .timm_attention import QuantWindowAttention, SdpaWindowAttention
        return {QuantWindowAttention: SdpaWindowAttention}

    def _blocks(self, model):
        return [blk for stage in model.layers for blk in stage.blocks]

    def roles(self, model):
        names, roles = module_names(model), {}
        proj = getattr(model.patch_embed, "proj", None)
        if isinstance(proj, nn.Conv2d):
            roles[names[id(proj)]] = Role.PATCH_EMBED
        for stage in model.layers:
            red = getattr(stage.downsample, "reduction", None)
            if isinstance(red, nn.Linear):
                roles[names[id(red)]] = Role.OTHER
        for blk in self._blocks(model):
            _attn_roles(blk.attn, names, roles)
            _mlp_roles(blk.mlp, names, roles)
        for head in _head_linears(model):
            roles[names[id(head)]] = Role.HEAD
        return roles

    def norm_consumers(self, model):
        names, pairs = module_names(model), []
        for stage in model.layers:
            ds = stage.downsample
            if isinstance(getattr(ds, "norm", None), nn.LayerNorm) and isinstance(getattr(ds, "reduction", None), nn.Linear):
                pairs.append((names[id(ds.norm)], [names[id(ds.reduction)]]))
        for blk in self._blocks(model):
            pairs.append((names[id(blk.norm1)], [names[id(blk.attn.qkv)]]))
            pairs.append((names[id(blk.norm2)], [names[id(blk.mlp.fc1)]]))
        heads = _head_linears(model)
        if isinstance(model.norm, nn.LayerNorm) and heads:
            pairs.append((names[id(model.norm)], [names[id(h)] for h in heads]))
        return pairs

    def blocks(self, model):
        names = module_names(model)
        return [names[id(b)] for b in self._blocks(model)]


__all__ = ["TimmViTAdapter", "TimmSwinAdapter"]
