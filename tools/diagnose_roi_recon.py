#!/usr/bin/env python
"""Does reconstructing a detector's RoI heads help, and do their targets matter? A diagnostic run.

    python tools/diagnose_roi_recon.py CONFIG CKPT --targets own|float|none [--method repq --bits 4
        --iters 100 --calib-num 8 --device cpu]

Quantizes the detector with `--method` at W`bits`A`bits`, then runs `block_recon` on the RoI-head units only and
evaluates. `--targets own`: the float unit on the quantized model's inputs (what the library does, see docs/methods.md);
`float`: the float detector's outputs for its own proposals (the library's behaviour before commit 24c1a03); `none`:
no reconstruction. Prints each unit's error before/after and the metrics as JSON.
"""
import argparse
import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plugin.errors import ToolParser, bit_width, positive_int, tool_main  # noqa: E402


@tool_main
def main(argv=None):
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--targets", choices=["own", "float", "none"], required=True)
    p.add_argument("--method", default="repq")
    p.add_argument("--bits", type=bit_width, default=4)
    p.add_argument("--iters", type=positive_int, default=100)
    p.add_argument("--calib-num", type=positive_int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work-dir", default=None)
    args = p.parse_args(argv)

    import torch

    import plugin  # noqa: F401
    from plugin.adapters.mmdet_swin import MMDetSwinAdapter
    from plugin.config import load_config
    from plugin.quant import get_recipe, quantize
    from plugin.quant.recon import engine
    from plugin.tasks.base import get_task

    if args.targets == "float":
        MMDetSwinAdapter.model_dependent_inputs = lambda self, model: []
    all_units = engine.reconstruction_units
    engine.reconstruction_units = lambda ctx, layers=True: [u for u in all_units(ctx, layers)
                                                            if u.name.startswith("roi_head")]
    task = get_task("detection")(load_config(args.config), args.checkpoint, device=args.device,
                                 work_dir=args.work_dir)
    fp = task.build_model()
    recipe = get_recipe(args.method, args.bits, args.bits)
    if args.targets != "none":
        recipe.passes = list(recipe.passes) + [dict(type="block_recon", setting="small", iters=args.iters,
                                                    layers=True)]
    torch.manual_seed(0)
    calib = task.calib_data(fp, args.calib_num, 0)
    model = copy.deepcopy(fp)
    quantize(model, recipe, calib, log=lambda s: print(s, file=sys.stderr) if " mse " in s else None, seed=0)
    print(json.dumps({"targets": args.targets, "metrics": task.evaluate(model, False, desc="eval")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
