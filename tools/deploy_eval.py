#!/usr/bin/env python
"""Accuracy of the GPU deployment models (plugin.quant.deploy) beside their fake-quant model, on the same images.

    python tools/deploy_eval.py configs/classification/cifar10_vit.py .devdata/ref/cifar10_vit.safetensors \\
        --cfg-options data.path=.devdata/ref/calib2048.npz --method minmax --mode int8 fp8 --device cuda --compile \\
        --out /tmp/deploy_eval.json

For each method: calibrate at W8A8 (the method's own calibration size), evaluate the fake-quant model (float32, as
tools/ptq_test.py does), then `deploy(model, mode)` for each mode, in BF16, optionally `torch.compile`d, and
evaluate it on the same test images. Prints top-1 of each, the change deployed − fake-quant, their top-1 agreement,
and the deployment recipe of every site (what is not quantized at inference is listed). `--num-test N` takes the
first N test images.
"""
import copy
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plugin.errors import ToolParser, bit_width, nonnegative_int, positive_int, tool_main  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402


class CastInput(nn.Module):
    """Runs `model` on inputs cast to `dtype`; float32 logits out."""

    def __init__(self, model, dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x):
        return self.model(x.to(self.dtype)).float()


def parse_args(argv=None):
    p = ToolParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--method", nargs="+", default=["minmax"])
    p.add_argument("--w-bits", type=bit_width, default=8)
    p.add_argument("--a-bits", type=bit_width, default=8)
    p.add_argument("--mode", nargs="+", default=["int8", "fp8"], choices=["int8", "fp8"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--stem", default="gemm", choices=["gemm", "conv"], help="patch embedding as a GEMM over patches "
                   "(default) or the convolution (plugin.quant.deploy.deploy's stem)")
    p.add_argument("--compile", action="store_true", help="torch.compile the deployed models (as benchmarked)")
    p.add_argument("--num-test", type=positive_int, default=None, help="first N test images (default: all)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE")
    p.add_argument("--out", default=None, help="write the JSON here")
    return p.parse_args(argv)


@tool_main
def main(argv=None):
    args = parse_args(argv)
    import plugin  # noqa: F401
    from plugin.config import apply_cfg_options, load_config
    from plugin.quant import get_recipe, quantize
    from plugin.quant.deploy import deploy, deploy_report, format_recipe
    from plugin.tasks.base import get_task

    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    cfg = apply_cfg_options(load_config(args.config), args.cfg_options)
    task = get_task(cfg.get("task"))(cfg, args.checkpoint, device=args.device)
    fp_model = task.build_model()
    calib_set, eval_set = task.datasets(fp_model)
    if args.num_test:
        eval_set = torch.utils.data.Subset(eval_set, range(min(args.num_test, len(eval_set))))
        task._datasets = (calib_set, eval_set)
    dtype = getattr(torch, args.dtype)
    report = {"command": "python " + " ".join(sys.argv), "device": args.device,
              "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "num_test_images": len(eval_set), "compile": args.compile, "stem": args.stem,
              "dtype": args.dtype, "results": []}
    fp = task.evaluate(fp_model, False)
    report["fp"] = fp
    log(f"full precision: top1 {fp['top1']:.2f} on {fp['num_images']} images")
    for method in args.method:
        recipe = get_recipe(method, args.w_bits, args.a_bits)
        torch.manual_seed(args.seed)
        calib = task.calib_data(fp_model, recipe.calib_num or task.default_calib_num, args.seed)
        model = quantize(copy.deepcopy(fp_model), recipe, calib, log=lambda *a: None)
        fake = task.evaluate(model, False)
        fake_logits = task.last_outputs["logits"].float()
        entry = {"method": method, "w_bits": args.w_bits, "a_bits": args.a_bits, "fake_quant": fake, "deployed": {}}
        log(f"{method} W{args.w_bits}A{args.a_bits} fake-quant: top1 {fake['top1']:.2f}")
        for mode in args.mode:
            dep = deploy(model, mode, dtype=dtype, stem=args.stem)
            rep = deploy_report(dep)
            runner = CastInput(dep, dtype)
            if args.compile:
                runner = torch.compile(runner)
            t0 = time.perf_counter()
            res = task.evaluate(runner, False)
            logits = task.last_outputs["logits"].float()
            res.update(eval_s=time.perf_counter() - t0,
                       top1_minus_fake=res["top1"] - fake["top1"],
                       top1_agreement_with_fake=(logits.argmax(1) == fake_logits.argmax(1)).float().mean().item(),
                       recipe=rep["summary"])
            entry["deployed"][mode] = res
            log(f"{method} deployed {mode} ({args.dtype}{', compiled' if args.compile else ''}): top1 "
                f"{res['top1']:.2f} ({res['top1_minus_fake']:+.2f} vs fake-quant), agreement "
                f"{res['top1_agreement_with_fake']:.4f}")
            log(format_recipe(rep))
            del dep, runner
        report["results"].append(entry)
    print("\n| method | fake-quant top1 | " + " | ".join(f"{m} top1 (Δ, agreement)" for m in args.mode) + " |")
    print("|---|---|" + "---|" * len(args.mode))
    for e in report["results"]:
        cells = [f"{e['deployed'][m]['top1']:.2f} ({e['deployed'][m]['top1_minus_fake']:+.2f}, "
                 f"{e['deployed'][m]['top1_agreement_with_fake']:.4f})" for m in args.mode]
        print(f"| {e['method']} | {e['fake_quant']['top1']:.2f} | " + " | ".join(cells) + " |")
    print(f"({report['num_test_images']} test images, {report['device_name']}, float top1 {fp['top1']:.2f})")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
