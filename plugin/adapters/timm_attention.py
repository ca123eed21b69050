"""timm attention modules with explicit matmuls (quantization) and through SDPA (deployment), for the timm adapters
(plugin.adapters.timm_vit). Imports timm: the adapters import this module only when they prepare a timm model, so
`import plugin` does not import timm (seconds: it pulls torchvision and torch._dynamo)."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from timm.models.swin_transformer import WindowAttention

from ..quant.modules import MatMul


def matmuls():
    return dict(matmul_qk=MatMul(), matmul_av=MatMul())


def _apply_mask(attn, mask):
    if mask is None:
        return attn
    if mask.dtype == torch.bool:
        return attn.masked_fill(~mask, float("-inf"))
    return attn + mask


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


__all__ = ["QuantTimmAttention", "QuantWindowAttention", "SdpaTimmAttention", "SdpaWindowAttention", "TimmAttention",
           "WindowAttention", "matmuls"]
