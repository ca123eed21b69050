"""QuantSwin: mmdet's Swin Transformer backbone under a name the quantizer's mmdet adapter claims.

Swin Transformer: Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021
(arXiv:2103.14030). The backbone is mmdet's own ``SwinTransformer``, unchanged: same constructor arguments, same
modules, same state-dict keys, so official mmdet Swin checkpoints load into it as they are. What the quantizer needs
beyond that is done by the adapter ``plugin.adapters.mmdet_swin`` (which also serves mmdet's own ``SwinTransformer``).
"""
import re
from collections import OrderedDict

from mmdet.models.backbones.swin import SwinTransformer, swin_converter
from mmdet.registry import MODELS


@MODELS.register_module()
class QuantSwin(SwinTransformer):
    """mmdet ``SwinTransformer`` (identical parameters and state dict) that configs name to mark a detector for PTQ.

    A float QuantSwin computes exactly what ``SwinTransformer`` computes; quantization happens only when
    ``plugin.quant.quantize`` is applied to the detector.
    """


def is_original_swin_layout(state_dict):
    """True for detector checkpoints whose backbone uses the Swin authors' key names (``backbone.layers.*``,
    ``mlp.fc1``), as released by microsoft/Swin-Transformer-Object-Detection (mmdet 2.x), rather than mmdet 3.x's."""
    return any(k.startswith("backbone.layers.") for k in state_dict) and not any(
        k.startswith("backbone.stages.") for k in state_dict)


def timm_swin_to_original(state_dict):
    """A timm (>= 0.9) ``SwinTransformer`` state dict -> the Swin authors' layout, which mmdet's Swin reads with
    ``convert_weights=True`` (pure; the classifier head and the final norm are dropped).

    Two differences only: timm puts each patch merging at the start of the next stage (``layers.{i+1}.downsample``)
    where the original puts it at the end of its stage (``layers.{i}.downsample``), and it names the classifier
    ``head.fc``. timm's merging concatenates the 2×2 neighbours in the original order, so no weight is permuted here
    (mmdet's converter then reorders them for its unfold). Buffers (``relative_position_index``, ``attn_mask``) are
    dropped: mmdet recomputes them.
    """
    out = OrderedDict()
    for k, v in state_dict.items():
        if k.endswith(("relative_position_index", "attn_mask")) or k.startswith(("head", "norm.")):
            continue
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
        out[f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}" if m else k] = v
    return out


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
