#!/usr/bin/env python
"""Quantize a model with one or several PTQ methods and report the task metric, full precision beside quantized.

    python tools/ptq_test.py CONFIG CHECKPOINT --bits 4 [--method repq ptq4vit ...] [--out DIR]

The run is resolved and checked first (plugin.pipeline.job: methods, bit widths, calibration sizes, reconstruction
iterations, the output folder), then run by the library's pipeline (plugin.pipeline.run); --dry-run prints the
resolved job and what each recipe quantizes, without calibrating. DIR/report.json, DIR/report.md and DIR/models/
are written into a staging folder next to DIR and moved into place at the end: an interrupted run leaves no report
behind, and a DIR that holds files is refused unless --overwrite (or --resume) is given.
Bad input gives one error line and exit code 2.
"""
import argparse
import logging
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def methods_epilog():
    """The registered methods, for --help (imports the quantization library, so only when help is asked for)."""
    from plugin.quant import RECIPES
    return "methods (--method; default repq): " + ", ".join(sorted(RECIPES))


def parse_args(argv=None):
    from plugin.errors import ToolParser, bit_width, positive_int
    asked_help = any(a in ("-h", "--help") for a in (sys.argv[1:] if argv is None else argv))
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=methods_epilog() if asked_help else None)
    p.add_argument("config", help="task config (.py)")
    p.add_argument("checkpoint", help="float checkpoint (.safetensors, or .pth/.pt loaded with weights_only)")
    p.add_argument("--bits", type=bit_width, nargs="+", default=None,
                   help="weight and activation bits; several values run each method at each width (default 4)")
    p.add_argument("--w-bits", type=bit_width, help="weight bits (replaces --bits for the weights); alone (no --bits, "
                   "no --a-bits): weight-only, the activations stay float (reported as A16)")
    p.add_argument("--a-bits", type=bit_width, help="activation bits (replaces --bits for the activations)")
    p.add_argument("--method", nargs="+", default=["repq"], help="one or several registered methods")
    p.add_argument("--calib-num", type=positive_int, help="calibration samples (default: the method's/task's)")
    p.add_argument("--recon-setting", choices=["paper", "small"],
                   help="iterations/batch of the training passes (reconstruction of isvit, dopq, aiqvit, aphq, "
                        "fimaq, relu_fisher; APHQ-ViT's MLP step; searches are left alone): the paper's, or the "
                        "documented small setting")
    p.add_argument("--recon-iters", type=positive_int, metavar="N",
                   help="iterations of every training pass (per unit: block, MLP), replacing the setting's count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder for report.json / report.md (default work_dirs/ptq/<config>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the report, models (and, without --resume, checkpoints) of a previous run in --out")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved job and what each recipe quantizes on the model; calibrate nothing")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when available)")
    p.add_argument("--save-model", action="store_true", help="also save each quantized model (safetensors + JSON)")
    p.add_argument("--checkpoint-dir", help="where reconstruction and search passes write a checkpoint after each "
                   "finished unit, one subfolder per method and bit widths (default OUT/ckpt)")
    p.add_argument("--resume", action="store_true",
                   help="continue each calibration after the last finished unit in --checkpoint-dir")
    p.add_argument("--fp-only", action="store_true",
                   help="evaluate the full-precision model only (no quantization; --bits/--method are not used)")
    p.add_argument("--no-fp", action="store_true",
                   help="skip the full-precision evaluation (and with it the agreement with the float model)")
    p.add_argument("--freeze", action="store_true",
                   help="also evaluate through the integer path (plugin.quant.deploy.freeze: int8 weights and activations, "
                        "torch._int_mm) after the fake-quant evaluation; layers that do not qualify stay fake-quant")
    p.add_argument("--int8-backend", choices=["int_mm", "triton", "triton_fused"], default="int_mm",
                   help="matmul of the --freeze path: torch._int_mm, or the Triton kernels (CUDA and triton only; "
                        "triton: quantize pass + GEMM, triton_fused: quantizing inside the GEMM)")
    p.add_argument("--export-onnx", action="store_true",
                   help="also write OUT/models/<method>_w<b>a<b>.onnx (a QDQ graph, plugin.quant.deploy.onnx_export) and "
                        "OUT/models/fp32.onnx, and evaluate the QDQ file with ONNX Runtime on the CPU "
                        "(classification only; needs pip install -e '.[onnx]')")
    p.add_argument("--onnx-nonuniform", choices=["emulate", "float"], default="emulate",
                   help="activation sites ONNX Q/DQ cannot express (log / twin / seed post-Softmax grids): export "
                        "the fake quantizer's float arithmetic (emulate, the same function as fake-quant) or drop "
                        "the quantizer (float)")
    p.add_argument("--unsafe-load", action="store_true",
                   help="allow checkpoints that need pickle (can execute code from the file; only for trusted files)")
    p.add_argument("--data-root", help="move the config's data here: every dependent path (mmdet: the train, val and "
                   "test datasets' data_root and the evaluator's ann_file; image folders: data.root; npz and packed "
                   "CIFAR-10: data.path; point clouds: data.root)")
    p.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE",
                   help="override config entries (mmengine syntax), as in mmdet's tools/test.py")
    p.add_argument("--work-dir", help="work dir for mmengine-based tasks")
    p.add_argument("--launcher", choices=["none", "pytorch"], default="none")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--verbose", action="store_true", help="also the libraries' own log (detection: mmengine's runner "
                   "and pycocotools, otherwise quiet)")
    return p.parse_args(argv)


def run(args):
    """Resolve the job (every check that needs no model), then run it, or with --dry-run describe it."""
    from plugin.pipeline import dry_run, markdown_report, resolve_job, run_job
    options = {k: v for k, v in vars(args).items() if k not in ("local_rank", "verbose")}
    job = resolve_job(**options)
    if job.dry_run:
        print("\n".join(dry_run(job)))
        return None
    report = run_job(job)
    print(markdown_report(report))
    print(f"reports written to {os.path.join(job.out_dir, 'report.json')} and report.md")
    return report


def main(argv=None):
    args = parse_args(argv)
    args.command = "python " + shlex.join(["tools/ptq_test.py"] + [str(a) for a in (sys.argv[1:] if argv is None else argv)])
    from plugin.errors import run_cli
    if args.verbose:  # the libraries' INFO output (plugin/detection/runner_quiet.py) follows the plugin logger
        logging.getLogger("plugin").setLevel(logging.INFO)
    try:
        return run_cli(run, args)
    except KeyboardInterrupt:
        print("interrupted: no report written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
