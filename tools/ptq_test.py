#!/usr/bin/env python
"""Quantize a model with one or several PTQ methods and report the task metric, full precision beside quantized.

    python tools/ptq_test.py CONFIG CHECKPOINT --bits 4 [--method repq ptq4vit ...] [--out DIR]

Writes DIR/report.json and DIR/report.md at the end (atomically: an interrupted run leaves no report behind).
Bad input gives one error line and exit code 2.
"""
import argparse
import copy
import json
import os
import shlex
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bit_width(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bit width must be an integer, got {text!r}")
    if not 2 <= value <= 8:
        raise argparse.ArgumentTypeError(f"bit width must be from 2 to 8, got {value}")
    return value


def methods_epilog():
    """The registered methods, for --help (imports the quantization library, so only when help is asked for)."""
    from plugin.quant import RECIPES
    return "methods (--method; default repq): " + ", ".join(sorted(RECIPES))


def parse_args(argv=None):
    from plugin.errors import positive_int
    asked_help = any(a in ("-h", "--help") for a in (sys.argv[1:] if argv is None else argv))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=methods_epilog() if asked_help else None)
    p.add_argument("config", help="task config (.py)")
    p.add_argument("checkpoint", help="float checkpoint (.safetensors, or .pth/.pt loaded with weights_only)")
    p.add_argument("--bits", type=bit_width, nargs="+", default=None,
                   help="weight and activation bits; several values run each method at each width (default 4)")
    p.add_argument("--w-bits", type=bit_width, help="weight bits (overrides --bits)")
    p.add_argument("--a-bits", type=bit_width, help="activation bits (overrides --bits)")
    p.add_argument("--method", nargs="+", default=["repq"], help="one or several registered methods")
    p.add_argument("--calib-num", type=positive_int, help="calibration samples (default: the method's/task's)")
    p.add_argument("--recon-setting", choices=["paper", "small"],
                   help="iterations/batch of reconstruction passes: the paper's, or the documented small setting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder for report.json / report.md (default work_dirs/ptq/<config>)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when available)")
    p.add_argument("--save-model", action="store_true", help="also save each quantized model (safetensors + JSON)")
    p.add_argument("--checkpoint-dir", help="where reconstruction passes write a checkpoint after each finished unit, "
                   "one subfolder per method and bit widths (default OUT/ckpt)")
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
    args = p.parse_args(argv)
    if args.bits and len(args.bits) > 1 and (args.w_bits or args.a_bits):
        p.error("--w-bits/--a-bits cannot be combined with several --bits values")
    if args.fp_only and args.no_fp:
        p.error("--fp-only and --no-fp exclude each other")
    return args


def bit_pairs(args):
    if args.fp_only:
        return []
    bits = args.bits or [4]
    if args.w_bits or args.a_bits:
        return [(args.w_bits or bits[0], args.a_bits or bits[0])]
    return [(b, b) for b in bits]


def apply_cfg_options(cfg, options):
    if not options:
        return cfg
    from plugin.errors import UserInputError
    updates = {}
    for item in options:
        if "=" not in item:
            raise UserInputError(f"--cfg-options entries must be KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            import ast
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
        updates[key] = value
    if hasattr(cfg, "merge_from_dict"):
        cfg.merge_from_dict(updates)
    else:
        for key, value in updates.items():
            node = cfg
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return cfg


def method_recipe(args, method, w_bits, a_bits):
    """The registered recipe, with --recon-setting applied to its passes and the config's per-module overrides
    (`quant.overrides`, and the task's own, e.g. detection's keep_heads_float) put before the recipe's."""
    from plugin.quant import get_recipe
    recipe = get_recipe(method, w_bits, a_bits)
    if args.recon_setting:
        recipe.passes = [dict(p, setting=args.recon_setting) for p in recipe.passes]
    if getattr(args, "overrides", None):
        recipe.overrides = list(args.overrides) + list(recipe.overrides)
        recipe.__post_init__()
    return recipe


def config_overrides(cfg, task_cls):
    """Per-module overrides of the config's `quant = dict(overrides=[(pattern, rule), ...])` section, then the
    task's (plugin.quant.overrides says what patterns and rules are)."""
    from plugin.errors import UserInputError
    quant = cfg.get("quant", None) or {}
    if not hasattr(quant, "get"):
        raise UserInputError("config: `quant` must be a dict, e.g. quant = dict(overrides=[('head', None)])")
    unknown = sorted(set(quant) - {"overrides"})
    if unknown:
        raise UserInputError(f"config: unknown key(s) in `quant`: {', '.join(unknown)}; known: overrides")
    from plugin.quant.overrides import normalize_overrides
    return (normalize_overrides(quant.get("overrides", None), where="config quant.overrides")
            + list(task_cls.recipe_overrides(cfg)))


def calib_num(args, cfg, recipe, task):
    """(number of calibration samples, where it comes from): --calib-num, else the config's `calib.num`, else the
    method's own default (reconstruction methods: their paper's), else the task's."""
    if args.calib_num:
        return args.calib_num, "--calib-num"
    section = cfg.get("calib", None) if hasattr(cfg, "get") else None
    num = section.get("num", None) if hasattr(section, "get") else None
    if num is not None:
        from plugin.errors import UserInputError
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise UserInputError(f"config: `calib.num` must be a positive integer, got {num!r}")
        return num, "the config's calib.num"
    if recipe.passes:
        return recipe.calib_num, f"the default of {recipe.name}"
    return task.default_calib_num, f"the {task.name} task's default"


def prepare_out_dir(out_dir):
    """Create the output folder and prove it writable before any work (a run must not fail at its very end).
    Returns whether the folder was created here (then a failed run removes it again, if it stayed empty)."""
    from plugin.errors import UserInputError
    created = not os.path.isdir(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write_test_{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as exc:
        raise UserInputError(f"cannot write to the output folder {out_dir}: {exc.strerror or exc}") from exc
    return created


def agreement_cells(agreement):
    """(agreement measures, changes with their intervals) of one result's `agreement` as Markdown cell text; a
    change whose 95 % interval holds 0 is marked (tie); an undefined measure (None) reads n/a."""
    scalars = ", ".join(f"{k} {'n/a' if v is None else format(v, '.4g')}" for k, v in agreement.items()
                        if not isinstance(v, dict))
    changes = []
    for k, c in agreement.items():
        if isinstance(c, dict):
            ci = "[n/a]" if c.get("ci95") is None else f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"
            changes.append(f"{k} {c['diff']:+.2f} {ci}{' (tie)' if c.get('tie') else ''}")
    return scalars, ", ".join(changes)


def markdown_report(report):
    metrics = report["fp"] if report.get("fp") else report["results"][0]["metrics"]
    metric_names = [k for k in metrics if not k.startswith("num_")]  # counts (num_images, num_shapes) are no metric
    head = "| method | W/A | " + " | ".join(metric_names) + " | calib time (s) |"
    lines = [f"# PTQ report: {os.path.basename(report['config'])}", "",
             f"checkpoint `{report['checkpoint']}`, task {report['task']}, device {report['device']}, "
             f"seed {report['seed']}", "", head, "|" + "---|" * (len(metric_names) + 3)]
    if report.get("fp"):
        lines.append("| full precision | 32/32 | " + " | ".join(f"{report['fp'][k]:.2f}" for k in metric_names)
                     + " | - |")
    for r in report["results"]:
        lines.append(f"| {r['method']} | {r['w_bits']}/{r['a_bits']} | "
                     + " | ".join(f"{r['metrics'][k]:.2f}" for k in metric_names)
                     + f" | {r['calib_time_s']:.1f} |")
        if r.get("onnx"):
            o = r["onnx"]
            lines.append(f"| {r['method']} (ONNX Runtime, QDQ, {o['bytes'] / 2 ** 20:.2f} MiB = "
                         f"{o['size_ratio']:.2f}x FP32 export) | {r['w_bits']}/{r['a_bits']} | "
                         + " | ".join(f"{o['metrics'][k]:.2f}" for k in metric_names) + " | - |")
        if r.get("int8"):
            lines.append(f"| {r['method']} (integer path, {r['int8']['frozen_layers']} layers) | "
                         f"{r['w_bits']}/{r['a_bits']} | "
                         + " | ".join(f"{r['int8']['metrics'][k]:.2f}" for k in metric_names) + " | - |")
    agreements = [r for r in report["results"] if r.get("agreement")]
    if agreements:
        lines += ["", "Agreement with the full-precision model (changes: paired bootstrap over the evaluation samples, "
                  "95 % interval; a tie when it holds 0):", "",
                  "| method | W/A | agreement | change vs full precision (points) |", "|---|---|---|---|"]
        for r in agreements:
            scalars, changes = agreement_cells(r["agreement"])
            lines.append(f"| {r['method']} | {r['w_bits']}/{r['a_bits']} | {scalars} | {changes} |")
    elif report.get("agreement_unavailable"):
        lines += ["", f"Agreement with the full-precision model: unavailable ({report['agreement_unavailable']})."]
    onnx_rows = [r for r in report["results"] if r.get("onnx")]
    for r in onnx_rows:
        sites = r["onnx"]["float_sites"]
        lines += ["", f"ONNX {r['method']} W{r['w_bits']}A{r['a_bits']}: `{r['onnx']['path']}`, "
                  f"{r['onnx']['qdq_activations']} activation Q/DQ pairs, {r['onnx']['int8_weights']} int8 weights, "
                  f"{len(sites)} sites without Q/DQ" + (":" if sites else "")]
        lines += [f"- `{name}`: {why}" for name, why in sites.items()]
    if report["results"]:
        lines += ["", f"calibration samples: {', '.join(sorted({str(r['calib_num']) for r in report['results']}))}"]
    return "\n".join(lines) + "\n"


def write_reports(report, out_dir):
    from plugin.quant.io import write_json, write_text
    write_json(os.path.join(out_dir, "report.json"), report)
    write_text(os.path.join(out_dir, "report.md"), markdown_report(report))


def onnx_entry(args, task, model, name, staging, out_dir, fp32_bytes, log):
    """Export `model` to staging/<name>.onnx, score it with ONNX Runtime on the CPU: the report's `onnx` entry."""
    from plugin.quant.deploy.onnx_export import export_onnx
    from plugin.quant.deploy.onnx_runtime import OrtModule
    path = os.path.join(staging, name + ".onnx")
    summary = export_onnx(model, task.example_input(model), path, nonuniform=args.onnx_nonuniform)
    metrics = task.evaluate(OrtModule(path), not args.quiet, desc=f"eval {name} ONNX Runtime")
    log(f"{name} ONNX Runtime (CPU): {json.dumps(metrics)}; {summary['bytes']} bytes, FP32 export {fp32_bytes}; "
        f"{len(summary['float_sites'])} sites without Q/DQ")
    return {"path": os.path.join(out_dir, "models", name + ".onnx"), "bytes": summary["bytes"],
            "fp32_path": os.path.join(out_dir, "models", "fp32.onnx"), "fp32_bytes": fp32_bytes,
            "size_ratio": summary["bytes"] / fp32_bytes, "metrics": metrics, "runtime": "onnxruntime CPU",
            "qdq_activations": summary["qdq_activations"], "int8_weights": summary["int8_weights"],
            "float_sites": summary["float_sites"], "nonuniform": summary["nonuniform"], "opset": summary["opset"]}


def run(args):
    import torch

    import plugin  # noqa: F401  (registers tasks, adapters, methods)
    from plugin.config import load_config
    from plugin.errors import UserInputError
    from plugin.quant import freeze, frozen_summary, quantize, save_quantized, state
    from plugin.quant.calibrate import check_passes
    from plugin.quant.deploy.freeze import set_int8_backend
    from plugin.quant.io import package_versions
    from plugin.quant.deploy.onnx_export import export_float_onnx
    from plugin.tasks.base import get_task

    cfg = apply_cfg_options(load_config(args.config), args.cfg_options)
    task_name = cfg.get("task", None) if hasattr(cfg, "get") else None
    if task_name is None:
        raise UserInputError(f"config {args.config} has no `task` entry (classification, detection, "
                             "pointcloud_cls, pointcloud_partseg)")
    task_cls = get_task(task_name)
    if args.data_root:
        task_cls.set_data_root(cfg, args.data_root)
    args.overrides = config_overrides(cfg, task_cls)
    for method in args.method:  # unknown methods, bad pass options and overrides: before any work
        check_passes(method_recipe(args, method, 4, 4))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"--device {device} asked for, but no CUDA device is available")
    if args.int8_backend != "int_mm":
        flag = f"--int8-backend {args.int8_backend}"
        if not args.freeze:
            raise UserInputError(f"{flag} applies to the integer path: add --freeze")
        if not device.startswith("cuda"):
            raise UserInputError(f"{flag} needs --device cuda, not {device}")
        try:
            import plugin.quant.deploy.triton_int8  # noqa: F401
        except ImportError as exc:
            raise UserInputError(f"{flag} needs the triton package ({exc})") from exc
    set_int8_backend(args.int8_backend)
    if args.onnx_nonuniform != "emulate" and not args.export_onnx:
        raise UserInputError(f"--onnx-nonuniform {args.onnx_nonuniform} applies to the ONNX export: add --export-onnx")
    if args.export_onnx:
        if task_cls.example_input is None:
            raise UserInputError(f"--export-onnx supports the classification task (timm ViT/DeiT/Swin) only, "
                                 f"not {task_name}")
        from plugin.quant.deploy.onnx_export import check_onnx_available
        check_onnx_available()
    kwargs = dict(device=device, work_dir=args.work_dir, launcher=args.launcher)
    if args.unsafe_load:
        kwargs["unsafe_load"] = True
    task = task_cls(cfg, args.checkpoint, **kwargs)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    out_dir = args.out or os.path.join("work_dirs", "ptq", os.path.splitext(os.path.basename(args.config))[0])

    created = prepare_out_dir(out_dir)
    staging = None
    if args.save_model or args.export_onnx:
        staging = tempfile.mkdtemp(prefix=".models_staging_", dir=out_dir)
    try:
        torch.manual_seed(args.seed)
        fp_model = task.build_model()
        # every method's calibration size is checked before any evaluation
        available = None if args.fp_only else task.calib_available(fp_model)
        for method in ([] if args.fp_only else args.method):
            num, source = calib_num(args, cfg, method_recipe(args, method, 4, 4), task)
            if available is not None and num > available:
                raise UserInputError(f"{method} needs {num} calibration samples ({source}) but the calibration split "
                                     f"holds {available}: pass --calib-num N with N <= {available}")
        report = {"command": args.command, "config": args.config, "checkpoint": args.checkpoint, "task": task_name,
                  "device": device,
                  "seed": args.seed, "primary_metric": task.primary_metric, "versions": package_versions(),
                  "model": task.model_meta(), "fp": None, "results": []}
        if not args.no_fp:
            report["fp"] = task.evaluate(fp_model, not args.quiet, desc="eval full precision")
            log(f"full precision: {json.dumps(report['fp'])}")
        fp_outputs = getattr(task, "last_outputs", None) if report["fp"] else None
        if args.no_fp and task.agreement is not None:
            report["agreement_unavailable"] = "--no-fp: agreement compares with the full-precision evaluation's outputs"
            log(f"agreement with the float model: unavailable ({report['agreement_unavailable']})")
        fp32_onnx_bytes = None
        if args.export_onnx:
            fp32_onnx_bytes = export_float_onnx(fp_model, task.example_input(fp_model),
                                                os.path.join(staging, "fp32.onnx"))
        for w_bits, a_bits in bit_pairs(args):
            for method in args.method:
                recipe = method_recipe(args, method, w_bits, a_bits)
                num, _ = calib_num(args, cfg, recipe, task)
                torch.manual_seed(args.seed)
                calib = task.calib_data(fp_model, num, args.seed)
                model = copy.deepcopy(fp_model)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.time()
                ckpt_dir = None
                if recipe.passes:  # only the reconstruction passes run long enough to need checkpoints
                    ckpt_dir = os.path.join(args.checkpoint_dir or os.path.join(out_dir, "ckpt"),
                                            f"{method}_w{w_bits}a{a_bits}")
                quantize(model, recipe, calib, log=log, seed=args.seed, checkpoint_dir=ckpt_dir,
                         resume=bool(args.resume and ckpt_dir))
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                calib_time = time.time() - t0
                metrics = task.evaluate(model, not args.quiet, desc=f"eval {method} W{w_bits}A{a_bits}")
                log(f"{method} W{w_bits}A{a_bits}: {json.dumps(metrics)} (calibration {calib_time:.1f}s)")
                entry = {"method": method, "w_bits": w_bits, "a_bits": a_bits, "metrics": metrics,
                         "calib_time_s": calib_time, "calib_num": num, "recipe": recipe.to_dict(),
                         "rolled_back": list(state(model).rollbacks)}
                if task.agreement is not None and fp_outputs is not None:  # before --freeze evaluates again
                    entry["agreement"] = task.agreement(fp_outputs, task.last_outputs)
                if ckpt_dir:
                    entry["checkpoint_dir"] = ckpt_dir
                if args.save_model:  # before freezing: the saved model is the calibrated fake-quant one
                    name = f"{method}_w{w_bits}a{a_bits}"
                    save_quantized(model, os.path.join(staging, name),
                                   extra_meta={"model": task.model_meta(), "metrics": metrics})
                    entry["saved_model"] = os.path.join(out_dir, "models", name)
                if args.export_onnx:  # before freezing: the export reads the quantizers
                    entry["onnx"] = onnx_entry(args, task, model, f"{method}_w{w_bits}a{a_bits}", staging, out_dir,
                                               fp32_onnx_bytes, log)
                if args.freeze:
                    freeze(model)
                    summary = frozen_summary(model)
                    int8 = task.evaluate(model, not args.quiet, desc=f"eval {method} W{w_bits}A{a_bits} int8")
                    log(f"{method} W{w_bits}A{a_bits} integer path ({summary['frozen']} Linear layers frozen): "
                        f"{json.dumps(int8)}")
                    entry["int8"] = {"metrics": int8, "frozen_layers": summary["frozen"],
                                     "not_frozen": summary["not_frozen"], "backend": args.int8_backend}
                report["results"].append(entry)
                del model
        if staging is not None:  # the models join the reports only when the whole run succeeded
            os.makedirs(os.path.join(out_dir, "models"), exist_ok=True)
            for name in sorted(os.listdir(staging)):
                os.replace(os.path.join(staging, name), os.path.join(out_dir, "models", name))
        write_reports(report, out_dir)
        print(markdown_report(report))
        print(f"reports written to {os.path.join(out_dir, 'report.json')} and report.md")
        return report
    finally:  # a failed run leaves no model files (a finished one has moved them out) and no folder of its own
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if created and os.path.isdir(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)


def main(argv=None):
    args = parse_args(argv)
    args.command = "python " + shlex.join(["tools/ptq_test.py"] + [str(a) for a in (sys.argv[1:] if argv is None else argv)])
    from plugin.errors import run_cli
    try:
        return run_cli(run, args)
    except KeyboardInterrupt:
        print("interrupted: no report written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
