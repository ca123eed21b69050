"""Adapter for timm VisionTransformer (ViT, DeiT, DeiT-distilled) and SwinTransformer (v1).

The attention modules get a subclass whose forward computes attention explicitly through `matmul_qk`/`matmul_av`
(the fused scaled_dot_product_attention path hides both operands from quantization).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..quant.modules import MatMul
from ..quant.spec import Role
from .base import Adapter, module_names, register_adapter, swap_class

try:
    import timm
    from timm.layers import Attention as TimmAttention
    from timm.models.swin_transformer import SwinTransformer, WindowAttention
    from timm.models.vision_transformer import VisionTransformer
except ImportError:  # timm is optional for the core library
    timm = None


def _matmuls():
    return dict(matmul_qk=MatMul(), matmul_av=MatMul())


def _apply_mask(attn, mask):
    if mask is None:
        return attn
    if mask.dtype == torch.bool:
        return attn.masked_fill(~mask, float("-inf"))
    return attn + mask


if timm is not None:
    def _vit_qkv(attn, x):
        """(q, k, v, gate) of a timm Attention, each (B, heads, N, head_dim); gate None unless the block has one."""
        B, N, _ = x.shape
        gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
        q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return attn.q_norm(q), attn.k_norm(k), v, gate

    def _vit_out(attn, x, gate):
        """Heads merged, then timm Attention's optional norm and gate, projection."""
        B, _, N, _ = x.shape
        x = getattr(attn, "norm", nn.Identity())(x.transpose(1, 2).reshape(B, N, -1))
        return attn.proj_drop(attn.proj(x if gate is None else x * gate))

    def _window_qkv(attn, x):
        B_, N, _ = x.shape
        return attn.qkv(x).reshape(B_, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    def _window_out(attn, x):
        B_, _, N, _ = x.shape
        return attn.proj_drop(attn.proj(x.transpose(1, 2).reshape(B_, N, -1)))

    class QuantTimmAttention(TimmAttention):
        """timm Attention with explicit matmuls; same parameters, same outputs as the unfused float path."""

        def forward(self, x, attn_mask=None, is_causal=False, **kwargs):
            q, k, v, gate = _vit_qkv(self, x)
            attn = self.matmul_qk(q * self.scale, k.transpose(-2, -1))
            if is_causal:
                N = x.shape[1]
                causal = torch.ones(N, N, dtype=torch.bool, device=x.device).tril()
                attn = _apply_mask(attn, causal)
            attn = _apply_mask(attn, attn_mask)
            attn = self.attn_drop(attn.softmax(dim=-1))
            return _vit_out(self, self.matmul_av(attn, v), gate)

    class SdpaTimmAttention(TimmAttention):
        """Deployment (plugin.quant.deploy): timm Attention through `F.scaled_dot_product_attention` (BF16 flash on a
        GPU); no quantizer inside."""

        def forward(self, x, attn_mask=None, is_causal=False, **kwargs):
            q, k, v, gate = _vit_qkv(self, x)
            return _vit_out(self, F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal),
                            gate)

    class QuantWindowAttention(WindowAttention):
        """timm Swin WindowAttention with explicit matmuls."""

        def forward(self, x, mask=None):
            q, k, v = _window_qkv(self, x)
            N = x.shape[1]
            attn = self.matmul_qk(q * self.scale, k.transpose(-2, -1))
            attn = attn + self._get_rel_pos_bias()
            if mask is not None:
                num_win = mask.shape[0]
                attn = attn.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
                attn = attn.view(-1, self.num_heads, N, N)
            attn = self.attn_drop(self.softmax(attn))
            return _window_out(self, self.matmul_av(attn, v))

    class SdpaWindowAttention(WindowAttention):
        """Deployment: Swin WindowAttention through SDPA, the relative-position bias (+ shift mask) as an additive
        mask."""

        def forward(self, x, mask=None):
            q, k, v = _window_qkv(self, x)
            B_, N, _ = x.shape
            bias = self._get_rel_pos_bias().to(q.dtype)
            if mask is not None:
                num_win = mask.shape[0]
                mask = mask.to(q.dtype).view(1, num_win, 1, N, N).expand(B_ // num_win, -1, self.num_heads, -1, -1)
                bias = bias + mask.reshape(-1, self.num_heads, N, N)
            return _window_out(self, F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale))


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
        return timm is not None and isinstance(model, VisionTransformer)

    def prepare(self, model):
        for m in model.modules():
            if isinstance(m, TimmAttention) and not isinstance(m, QuantTimmAttention):
                swap_class(m, QuantTimmAttention, **_matmuls())

    def deploy_attention(self):
        return {QuantTimmAttention: SdpaTimmAttention}

    def roles(self, model):
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
        return timm is not None and isinstance(model, SwinTransformer)

    def prepare(self, model):
        for m in model.modules():
            if isinstance(m, WindowAttention) and not isinstance(m, QuantWindowAttention):
                swap_class(m, QuantWindowAttention, **_matmuls())

    def deploy_attention(self):
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
