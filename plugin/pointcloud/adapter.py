"""Adapter for the Point-MAE style point-cloud transformers of plugin/pointcloud (classifier and part segmenter).

Their attention modules own `matmul_qk`/`matmul_av` from construction, so `prepare` has nothing to swap. The
linears that see raw coordinates (first patch-encoder layer, first positional-embedding layer) get PATCH_EMBED,
the rest of the patch encoder and positional embedding OTHER, classification and segmentation heads HEAD.
The final LayerNorm feeds the heads through concatenation of pooled copies, so it is not reported as a
norm → consumer pair (a per-channel rescaling could not be folded into one set of head columns).
"""
import torch.nn as nn

from .models import PointMAECls, PointMAEPartSeg, PointTransformerBase
from ..quant.spec import Role
from ..quant.adapter import Adapter, module_names, register_adapter


def _linears(module):
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


@register_adapter
class PointMAEAdapter(Adapter):
    name = "pointcloud_pointmae"

    def matches(self, model):
        return isinstance(model, PointTransformerBase)

    def roles(self, model):
        names, roles = module_names(model), {}
        raw_xyz = {id(model.encoder.first_conv[0]), id(model.pos_embed[0])}
        embed = _linears(model.encoder) + _linears(model.pos_embed)
        if hasattr(model, "reduce_dim"):
            embed.append(model.reduce_dim)
        for m in embed:
            roles[names[id(m)]] = Role.PATCH_EMBED if id(m) in raw_xyz else Role.OTHER
        for blk in model.blocks.blocks:
            roles[names[id(blk.attn.qkv)]] = Role.QKV
            roles[names[id(blk.attn.proj)]] = Role.PROJ
            roles[names[id(blk.attn.matmul_qk)]] = Role.MATMUL_QK
            roles[names[id(blk.attn.matmul_av)]] = Role.MATMUL_AV
            roles[names[id(blk.mlp.fc1)]] = Role.FC1
            roles[names[id(blk.mlp.fc2)]] = Role.FC2
        if isinstance(model, PointMAECls):
            heads = _linears(model.cls_head_finetune)
        elif isinstance(model, PointMAEPartSeg):
            heads = (_linears(model.label_conv) + _linears(model.propagation_0)
                     + [model.convs1, model.convs2, model.convs3])
        else:
            heads = []
        for m in heads:
            roles[names[id(m)]] = Role.HEAD
        return roles

    def norm_consumers(self, model):
        names = module_names(model)
        pairs = []
        for blk in model.blocks.blocks:
            pairs.append((names[id(blk.norm1)], [names[id(blk.attn.qkv)]]))
            pairs.append((names[id(blk.norm2)], [names[id(blk.mlp.fc1)]]))
        return pairs

    def blocks(self, model):
        names = module_names(model)
        return [names[id(b)] for b in model.blocks.blocks]


__all__ = ["PointMAEAdapter"]
