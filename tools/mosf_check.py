"""Where DopQ-ViT's MOSF acts in SOS stage 2: top-1 of `dopq` with three channel→layer steps, seed by seed.

    mean        I&S-ViT's stage 2: exact fold, layer scale = mean of the channel scales (`dopq_no_mosf`)
    mosf        MOSF's fold: MAD outliers folded exactly, inliers on the layer grid (`dopq`)
    mosf_exact  exact fold with MOSF's scale (the scale alone; acts only through stage 3's learning rate)

By default without reconstruction (SOS stages 2 and 3 with 0 iterations: the fold, then the weight quantizers
recalibrated), which shows what the fold itself does; `--recon` runs the whole pass in the given setting (slow: the
`mean` and `mosf` rows then equal `tools/ptq_test.py --method dopq_no_mosf dopq`). Calibration data and seeds as in
tools/ptq_test.py. docs/methods.md (DopQ-ViT) has the numbers and commands.

    python tools/mosf_check.py configs/classification/fmnist_vit_tiny.py \
        plugin/assets/fmnist_vit_tiny.safetensors --bits 3 --calib-num 256 --seeds 0 1 2
"""
import copy
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plugin.errors import ToolParser, bit_width, nonnegative_int, positive_int, tool_main  # noqa: E402

import torch  # noqa: E402

RULES = ("mean", "mosf", "mosf_exact")


def exact_mosf(scales, obs=None):
    """MOSF's scale without its fold: a rule with no registered channel fold is folded exactly."""
    from plugin.quant.methods.dopq.mosf import mosf_scale
    return mosf_scale(scales)


@tool_main
def main(argv=None):
    p = ToolParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--bits", type=bit_width, default=3)
    p.add_argument("--calib-num", type=positive_int, default=256)
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recon", choices=["small", "paper"], help="run SOS's reconstructions in this setting")
    args = p.parse_args(argv)

    from plugin.config import load_config
    from plugin.quant import get_recipe, quantize
    from plugin.quant.reparam import REPARAM_RULES, register_reparam_rule
    from plugin.tasks.base import get_task

    if "mosf_exact" not in REPARAM_RULES:  # once per process (a second main() in the same process reuses it)
        register_reparam_rule("mosf_exact")(exact_mosf)
    cfg = load_config(args.config)
    task = get_task(cfg.get("task"))(cfg, args.checkpoint, device="cpu")
    torch.manual_seed(0)
    fp_model = task.build_model()
    sos = dict(type="sos", setting=args.recon) if args.recon else dict(type="sos", stages=[2, 3], iters=0)
    top1 = {rule: [] for rule in RULES}
    for seed in args.seeds:
        for rule in RULES:
            torch.manual_seed(seed)
            calib = task.calib_data(fp_model, args.calib_num, seed)
            recipe = get_recipe("dopq", args.bits, args.bits, passes=[dict(sos, rule=rule)])
            model = quantize(copy.deepcopy(fp_model), recipe, calib, log=lambda s: None, seed=seed)
            top1[rule].append(task.evaluate(model, False)[task.primary_metric])
            print(json.dumps({"seed": seed, "rule": rule, task.primary_metric: top1[rule][-1]}), flush=True)
    for rule, values in top1.items():
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        print(f"{rule}: {statistics.mean(values):.2f} ± {spread:.2f} ({', '.join(f'{v:.1f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
