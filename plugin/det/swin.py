"""QuantSwin: mmdet's Swin Transformer backbone under a name the quantizer's mmdet adapter claims.

Swin Transformer: Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021
(arXiv:2103.14030). The backbone is mmdet's own ``SwinTransformer``, unchanged: same constructor arguments, same
modules, same state-dict keys, so official mmdet Swin checkpoints load into it as they are. What the quantizer needs
beyond that is done by ``plugin.adapters.mmdet_swin``: its ``prepare`` swaps each ``WindowMSA``'s class for
:class:`MatMulWindowMSA`, whose forward runs ``q @ kᵀ`` and ``attn @ v`` through submodules, the places where the
attention activations are quantized.
"""
from collections import OrderedDict

from mmdet.models.backbones.swin import SwinTransformer, WindowMSA, swin_converter
from mmdet.registry import MODELS


@MODELS.register_module()
class QuantSwin(SwinTransformer):
    """mmdet ``SwinTransformer`` (identical parameters and state dict) that configs name to mark a detector for PTQ.

    A float QuantSwin computes exactly what ``SwinTransformer`` computes; quantization happens only when
    ``plugin.quant.quantize`` is applied to the detector.
    """


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


def is_original_swin_layout(state_dict):
    """True for detector checkpoints whose backbone uses the Swin authors' key names (``backbone.layers.*``,
    ``mlp.fc1``), as released by microsoft/Swin-Transformer-Object-Detection (mmdet 2.x), rather than mmdet 3.x's."""
    return any(k.startswith("backbone.layers.") for k in state_dict) and not any(
        k.startswith("backbone.stages.") for k in state_dict)


def convert_original_swin_checkpoint(state_dict):
    """Detector state dict with an original-layout Swin backbone -> mmdet 3.x ``SwinTransformer`` keys (pure).

    The backbone keys go through mmdet's own ``swin_converter`` (which also reorders the patch-merging weights to
    mmdet's unfold order); the ``relative_position_index`` / ``attn_mask`` buffers of the original code are dropped
    (mmdet recomputes them). Neck and head keys are the same in mmdet 2.x and 3.x and pass through.
    """
    prefix = "backbone."
    backbone = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items() if k.startswith(prefix)
                           and not k.endswith(("relative_position_index", "attn_mask")))
    out = OrderedDict((k, v) for k, v in state_dict.items() if not k.startswith(prefix))
    out.update(swin_converter(backbone))
    return out
