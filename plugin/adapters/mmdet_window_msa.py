"""``MatMulWindowMSA``: mmdet's ``WindowMSA`` with its two attention products as submodules.

This module imports mmdet; ``plugin.adapters.mmdet_swin`` imports it only when it prepares an mmdet Swin model.
"""
from mmdet.models.backbones.swin import WindowMSA


class MatMulWindowMSA(WindowMSA):
    """``WindowMSA`` whose two attention products run through the submodules ``matmul_qk`` and ``matmul_av``.

    Instances are made by a class swap on a built ``WindowMSA`` (``prepare`` also attaches the two matmul modules,
    ``plugin.quant.modules.MatMul``, where ``MatMul()(a, b) == a @ b``), so parameters, buffers and state-dict keys are
    those of ``WindowMSA``. With float matmuls the output equals ``WindowMSA``'s bit for bit.
    """

    def relative_position_bias(self):
        """(heads, Wh*Ww, Wh*Ww) bias gathered from the learned table."""
        n = self.window_size[0] * self.window_size[1]
        table = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return table.view(n, n, -1).permute(2, 0, 1).contiguous()

    def forward(self, x, mask=None):
        """x: (windows*B, N, C) tokens of each window; mask: (windows, N, N) of 0 / -100 for shifted windows."""
        b, n, c = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = self.matmul_qk(q * self.scale, k.transpose(-2, -1))
        attn = attn + self.relative_position_bias().unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.view(b // windows, windows, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, heads, n, n)
        attn = self.attn_drop(self.softmax(attn))
        out = self.matmul_av(attn, v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))
