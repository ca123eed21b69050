#!/usr/bin/env python
"""Check the network that reconstruction aims at: the float reference of a recipe, scored beside the float model.

    python tools/recon_reference.py CONFIG CHECKPOINT --method aphq --bits 3 [--pre-iters 5] [--calib-num 32]

Block reconstruction trains the quantized model toward the outputs of a float reference (plugin.quant.recon.reference:
quantizers and compensation branches off, parameters as they were before any pass trained them, modules a pass
replaced put back). This tool runs the recipe's passes that change the float network (APHQ-ViT's MLP step; their
iteration count replaced by --pre-iters when given) and its quantizer calibration (post-LayerNorm folds included), then,
where reconstruction would start, evaluates that reference on the test split and compares its outputs with the float
model's on the first calibration batch. The reconstruction passes themselves are not run.

A sound reference is the float model to float rounding. Exit code 0 when the largest output difference is within
--tol of the largest float output, 1 when not (the reference is another network: reconstruction would chase it),
2 on bad input. It found the defect fixed in commit 888091e (aphq W3A3 on the DeiT-S shape, `--pre-iters 5`: the
reference was at 41.25 % top-1 where the float model is at 68.00; docs/fidelity.md).
"""
import argparse
import copy
import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plugin.errors import ToolParser, bit_width, positive_float, positive_int, tool_main  # noqa: E402

PROBE = "_recon_reference_probe"


def _outputs(out):
    return out if hasattr(out, "dtype") else None  # a tensor of scores; structured outputs (detections) are not diffed


def probe_pass(task, fp_model, found):
    """A pass that scores the reconstruction's float reference where reconstruction would start (into `found`)."""
    import torch
    from plugin.quant.passes import PassConfig
    from plugin.quant.recon import float_reference

    @dataclass
    class Probe(PassConfig):
        def run(self, ctx):
            batch = ctx.calib.batches[0]
            with torch.no_grad():
                want = _outputs(ctx.calib.forward(fp_model, batch))
            with float_reference(ctx).active(), torch.no_grad():
                got = _outputs(ctx.calib.forward(ctx.model, batch))
                found["metrics"] = task.evaluate(ctx.model, False)
            if want is not None and got is not None:
                found["max_diff"] = (got.float() - want.float()).abs().max().item()
                found["max_float"] = want.float().abs().max().item()
    return Probe


@tool_main
def main(argv=None):
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--method", required=True, help="a registered recipe (aphq, fimaq, relu_fisher, isvit, ...)")
    p.add_argument("--bits", type=bit_width, default=4, help="weight and activation bits (default 4)")
    p.add_argument("--w-bits", type=bit_width, help="weight bits (replaces --bits for the weights)")
    p.add_argument("--a-bits", type=bit_width, help="activation bits (replaces --bits for the activations)")
    p.add_argument("--calib-num", type=positive_int, default=32, help="calibration samples (default 32)")
    p.add_argument("--pre-iters", type=positive_int, help="iterations of the passes that change the float network")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=positive_float, default=1e-4,
                   help="largest output difference allowed, relative to the largest float output (default 1e-4)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    import plugin  # noqa: F401  (registers the tasks)
    from plugin.config import apply_cfg_options, load_config
    from plugin.quant import get_recipe, quantize
    from plugin.quant.passes import PASSES, register_pass
    from plugin.tasks.base import get_task
    w_bits, a_bits = args.w_bits or args.bits, args.a_bits or args.bits
    recipe = get_recipe(args.method, w_bits, a_bits)  # an unknown name: ConfigError, before any model is loaded
    pre = [q.replace(iters=args.pre_iters) if args.pre_iters and hasattr(q, "iters") else q
           for q in recipe.passes if q.STAGE == "pre"]
    cfg = apply_cfg_options(load_config(args.config), args.cfg_options)
    task = get_task(cfg.get("task"))(cfg, args.checkpoint, device=args.device)
    fp_model = task.build_model()
    float_metrics = task.evaluate(fp_model, False)
    calib = task.calib_data(fp_model, args.calib_num, args.seed)
    found = {}
    register_pass(PROBE)(probe_pass(task, fp_model, found))
    try:  # registered only while this runs: the pass list of the library stays as it was
        recipe.passes = [*pre, PASSES[PROBE]()]
        quantize(copy.deepcopy(fp_model), recipe, calib, seed=args.seed, log=lambda s: None)
    finally:
        PASSES.unregister(PROBE)
    key = task.primary_metric
    print(f"{args.method} W{w_bits}A{a_bits} ({', '.join(q.kind for q in pre) or 'no pass before quantization'}): "
          f"float {key} {float_metrics[key]:.2f}, reconstruction reference {found['metrics'][key]:.2f}")
    if "max_diff" not in found:
        print("outputs are not one tensor: no output difference measured")
        return 0
    rel = found["max_diff"] / max(found["max_float"], 1e-12)
    sound = rel <= args.tol
    print(f"largest output difference {found['max_diff']:.4g} ({rel:.3g} of the largest float output): "
          f"{'the float model' if sound else 'NOT the float model'}")
    return 0 if sound else 1


if __name__ == "__main__":
    sys.exit(main())
