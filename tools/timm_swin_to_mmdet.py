#!/usr/bin/env python
"""Turn a timm Swin Transformer checkpoint (a classifier trained with tools/train_cls.py, or timm's own weights) into
a backbone checkpoint that an mmdet Swin / QuantSwin config loads as its pretrained weights.

    python tools/timm_swin_to_mmdet.py TIMM_CKPT OUT.pth
    # then, in the detector config:
    #   backbone=dict(type='QuantSwin', ..., convert_weights=True, init_cfg=dict(type='Pretrained', checkpoint='OUT.pth'))

TIMM_CKPT is a .safetensors or .pth file (read without pickle), a plain state dict or one under 'state_dict' / 'model'.
OUT.pth holds {'state_dict': ...} in the Swin authors' layout, which mmdet converts to its own when it loads it
(`convert_weights=True`). The classifier head and the final norm are left out. mmdet loads backbone weights
non-strictly, so the architecture of the config (embed_dims, depths, num_heads, window_size) must be the checkpoint's:
this tool prints what it found, and with --check-config DET_CONFIG it loads OUT.pth into that detector config's
backbone the way mmdet will and fails unless every backbone weight is taken (the detector's output norms norm0-3,
which timm has no counterpart of, excepted).
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plugin.errors import ToolParser  # noqa: E402


def describe(state):
    """embed_dims, depths, num_heads and window size of a timm Swin state dict (for the config)."""
    from plugin.errors import UserInputError
    if "patch_embed.proj.weight" not in state:
        raise UserInputError("not a timm Swin Transformer checkpoint: no patch_embed.proj.weight")
    if any(k.startswith("layers.0.downsample.") for k in state):
        raise UserInputError("this checkpoint is in the Swin authors' layout already (a patch merging at the end of "
                             "stage 0): mmdet reads it as it is with convert_weights=True")
    blocks = {}
    for k in state:
        m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table", k)
        if m:
            blocks.setdefault(int(m.group(1)), []).append(state[k].shape)
    stages = sorted(blocks)
    if not stages:  # a ViT, say: a patch embedding but no windowed attention
        raise UserInputError("not a timm Swin Transformer checkpoint: no layers.<i>.blocks.<j>.attn."
                             "relative_position_bias_table")
    depths = [len(blocks[i]) for i in stages]
    heads = [blocks[i][0][1] for i in stages]
    window = round(((blocks[stages[0]][0][0]) ** 0.5 + 1) / 2)
    return dict(embed_dims=int(state["patch_embed.proj.weight"].shape[0]), depths=depths, num_heads=heads,
                window_size=window, patch_size=int(state["patch_embed.proj.weight"].shape[-1]))


def check_detector_config(config, out):
    """Build `config`'s backbone with OUT as its Pretrained checkpoint, run mmdet's own init_weights (convert_weights
    and all), and raise unless it took every backbone parameter but the output norms (norm<i>): mmdet loads
    backbone weights non-strictly, so a mismatch would otherwise start a detector from random weights unnoticed."""
    import copy

    import plugin.detection  # noqa: F401  (QuantSwin)
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope
    from plugin.config import load_config
    from plugin.errors import UserInputError
    cfg = load_config(config)
    backbone_cfg = copy.deepcopy(cfg.model.backbone)
    backbone_cfg.convert_weights = True
    backbone_cfg.init_cfg = dict(type="Pretrained", checkpoint=out)
    with DefaultScope.overwrite_default_scope("mmdet"):
        backbone = MODELS.build(backbone_cfg)
    loaded = {}
    load = backbone.load_state_dict

    def recording_load(state_dict, strict=True):
        loaded["keys"] = set(state_dict)
        loaded["result"] = load(state_dict, strict)
        return loaded["result"]

    backbone.load_state_dict = recording_load
    try:
        backbone.init_weights()
    except RuntimeError as exc:  # shape mismatches: another embed_dims, depths, heads or window size
        raise UserInputError(f"{out} does not fit the backbone of {config}: {' '.join(str(exc).split())[:400]}") \
            from exc
    finally:
        del backbone.load_state_dict
    if "result" not in loaded:
        raise UserInputError(f"the backbone of {config} did not load {out} (its init_cfg is not Pretrained?)")
    params = {n for n, _ in backbone.named_parameters()}
    missing = sorted(k for k in loaded["result"].missing_keys if k in params and not re.match(r"norm\d+\.", k))
    if missing or loaded["result"].unexpected_keys:
        raise UserInputError(f"{out} does not fit the backbone of {config}: {len(missing)} parameter(s) not in the "
                             f"checkpoint {missing[:4]}, unexpected keys {loaded['result'].unexpected_keys[:4]}")
    fresh = sorted(k for k in loaded["result"].missing_keys if k in params)
    print(f"checked: the backbone of {config} takes all {len(params) - len(fresh)} pretrained parameter tensors "
          f"(starting fresh: {', '.join(fresh)})")


def run(args):
    import torch

    from plugin.detection.swin import timm_swin_to_original
    from plugin.utils.checkpoint import load_state_dict_file
    state = load_state_dict_file(args.checkpoint)
    arch = describe(state)
    converted = timm_swin_to_original(state)
    tmp = args.out + ".tmp"
    torch.save({"state_dict": converted, "meta": {"source": os.path.basename(args.checkpoint), "arch": arch}}, tmp)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {len(converted)} tensors; backbone=dict(embed_dims={arch['embed_dims']}, "
          f"depths={arch['depths']}, num_heads={arch['num_heads']}, window_size={arch['window_size']}, "
          f"patch_size={arch['patch_size']}, convert_weights=True, "
          f"init_cfg=dict(type='Pretrained', checkpoint={args.out!r}))")
    if args.check_config:
        check_detector_config(args.check_config, args.out)


def main(argv=None):
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--check-config", metavar="DET_CONFIG",
                   help="load OUT into this detector config's backbone as mmdet will and fail unless every backbone "
                   "weight is taken (needs mmdet)")
    args = p.parse_args(argv)
    from plugin.errors import run_cli
    return run_cli(run, args)


if __name__ == "__main__":
    sys.exit(main())
