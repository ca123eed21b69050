"""Adapter for MMDetection detectors with a Swin Transformer backbone (``QuantSwin`` or mmdet's ``SwinTransformer``).

Found by module structure, never by names: mmdet's Swin is ``stages[i].blocks[j]`` (``SwinBlock``: ``norm1`` →
``attn.w_msa`` (``WindowMSA``: ``qkv``, ``proj``) → ``norm2`` → ``ffn.layers`` (mmcv ``FFN``: Linear, act, …, Linear))
and ``stages[i].downsample`` (``PatchMerging``: ``norm`` → ``reduction``). Every Conv2d/Linear outside the backbone
(neck, RPN head, RoI heads) is quantized with the default specs (role OTHER), as the papers do; a recipe override
keeps them float (the detection task's ``keep_heads_float`` option adds one).

mmdet is not imported here: a model can only be an mmdet detector once ``mmdet.models`` is imported, so ``matches``
looks the classes up in ``sys.modules`` and the CLI pays no mmdet import for other architectures.

Note on the post-LN reparameterisation of ``norm1 → qkv``: mmdet pads the LayerNorm output with zeros to a multiple
of the window size before ``qkv``. A padded token enters ``qkv`` as 0 in the reparameterised basis, which is not the
image of 0 in the original one, so its q/k/v move by ``W'·shift`` and the attention of the image tokens sharing its
window changes slightly; windows without padding are reparameterised exactly. The authors' detection code behaves the
same way; feature maps whose sides are multiples of the window size are unaffected.
"""
import sys

import torch.nn as nn

from ..quant.modules import MatMul
from ..quant.spec import Role
from .base import Adapter, module_names, register_adapter, swap_class

def _swin_module():
    """mmdet's swin module if mmdet's models are imported, else None."""
    return sys.modules.get("mmdet.models.backbones.swin")


def _backbone(model):
    swin = _swin_module()
    if swin is None:
        return None
    if isinstance(model, swin.SwinTransformer):
        return model
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, swin.SwinTransformer) else None


def _ffn_linears(ffn):
    """The Linear layers of an mmcv FFN in execution order (first = FC1, last = FC2)."""
    return [m for m in ffn.layers.modules() if isinstance(m, nn.Linear)]


def _swin_blocks(backbone):
    return [blk for stage in backbone.stages for blk in stage.blocks]


@register_adapter
class MMDetSwinAdapter(Adapter):
    name = "mmdet_swin"

    def matches(self, model):
        return _backbone(model) is not None

    def prepare(self, model):
        from .mmdet_window_msa import MatMulWindowMSA
        swin = _swin_module()
        for m in _backbone(model).modules():
            if isinstance(m, swin.WindowMSA) and not isinstance(m, MatMulWindowMSA):
                if type(m) is not swin.WindowMSA:
                    raise TypeError(f"{type(m).__name__} subclasses mmdet's WindowMSA with its own forward; "
                                    "the mmdet_swin adapter only knows WindowMSA itself")
                swap_class(m, MatMulWindowMSA, matmul_qk=MatMul(), matmul_av=MatMul())

    def roles(self, model):
        names, roles = module_names(model), {}
        backbone = _backbone(model)
        for blk in _swin_blocks(backbone):
            attn = blk.attn.w_msa
            roles[names[id(attn.qkv)]] = Role.QKV
            roles[names[id(attn.proj)]] = Role.PROJ
            for attr, role in (("matmul_qk", Role.MATMUL_QK), ("matmul_av", Role.MATMUL_AV)):
                if isinstance(getattr(attn, attr, None), MatMul):
                    roles[names[id(getattr(attn, attr))]] = role
            linears = _ffn_linears(blk.ffn)
            for lin in linears[1:-1]:
                roles[names[id(lin)]] = Role.OTHER
            roles[names[id(linears[0])]] = Role.FC1
            roles[names[id(linears[-1])]] = Role.FC2
        roles[names[id(backbone.patch_embed.projection)]] = Role.PATCH_EMBED
        # Whatever else computes in the backbone (patch-merging reductions, extra layers of subclasses): defaults.
        for m in backbone.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)) and names[id(m)] not in roles:
                roles[names[id(m)]] = Role.OTHER
        if model is not backbone:
            inside = {id(m) for m in backbone.modules()}
            for name, m in model.named_modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)) and id(m) not in inside:
                    roles[name] = Role.OTHER
        return roles

    def norm_consumers(self, model):
        names, pairs = module_names(model), []
        backbone = _backbone(model)
        for stage in backbone.stages:
            for blk in stage.blocks:
                pairs.append((names[id(blk.norm1)], [names[id(blk.attn.w_msa.qkv)]]))
                pairs.append((names[id(blk.norm2)], [names[id(_ffn_linears(blk.ffn)[0])]]))
            ds = stage.downsample
            if ds is not None and isinstance(getattr(ds, "norm", None), nn.LayerNorm):
                pairs.append((names[id(ds.norm)], [names[id(ds.reduction)]]))
        return pairs

    def blocks(self, model):
        names = module_names(model)
        return [names[id(b)] for b in _swin_blocks(_backbone(model))]

    def model_dependent_inputs(self, model):
        # Two-stage detectors (Mask R-CNN, Cascade): everything in the RoI head works on the RPN's proposals (and the
        # mask head on the final boxes), which differ between the quantized and the float detector.
        roi_head = getattr(model, "roi_head", None)
        return [] if roi_head is None else [module_names(model)[id(roi_head)]]


__all__ = ["MMDetSwinAdapter"]
