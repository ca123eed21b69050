"""The PTQ pipeline of a resolved job (plugin.pipeline.job): build the task and the float model, check that every
method can run on it, evaluate the float model, then per method and bit widths quantize a copy, evaluate it, compare
it with the float model, and save what was asked for. tools/ptq_test.py is the command line over `run_job`.

Every check that needs the model (an adapter for its architecture, the calibration split's size, the data's input
size) runs before the float evaluation, so an unsupported model or a too small split fails in seconds.
"""
import copy
import json
import os
import sys
import time
from collections import Counter

from ..quant import find_adapter, freeze, frozen_summary, quantize, read_meta, save_quantized, state
from ..quant.plan import resolve_plan
from ..errors import UserInputError
from ..quant.recon import relu_float_model
from .outdir import OutputFolder
from .report import write_reports


def stderr_log(quiet):
    return (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr, flush=True))


def build_task(job):
    from ..tasks.base import get_task
    kwargs = dict(device=job.device, work_dir=job.work_dir, launcher=job.launcher)
    if job.unsafe_load:
        kwargs["unsafe_load"] = True
    return get_task(job.task)(job.cfg, job.checkpoint, **kwargs)


def check_model(job, task, fp_model):
    """The checks that need the float model, before any evaluation: an adapter knows its architecture (when a
    method will run) and the calibration split holds every method's calibration size (building the task's data,
    which also checks the data's input size against the model's)."""
    if job.plans:
        find_adapter(fp_model)
    available = task.calib_available(fp_model) if job.plans else None
    for plan in job.plans:
        if available is not None and plan.calib_num > available:
            raise UserInputError(f"{plan.method} needs {plan.calib_num} calibration samples ({plan.calib_source}) "
                                 f"but the calibration split holds {available}: pass --calib-num N with "
                                 f"N <= {available}")


def site_summary(fp_model, plan):
    """('<n> quantized modules (<role> <count>, ...), <w> weight and <a> activation quantizers', the resolved
    plugin.quant.plan.Plan) of `plan` on a copy of the float model (no calibration)."""
    model = copy.deepcopy(fp_model)
    adapter = find_adapter(model)
    adapter.prepare(model)
    resolved = resolve_plan(model, plan.recipe, adapter)
    sites = resolved.quantized()
    roles = Counter(s.role.value for _, s in sites)
    weights = sum(1 for _, s in sites if s.specs.get("weight") is not None)
    acts = sum(1 for _, s in sites for slot, spec in s.specs.items() if slot != "weight" and spec is not None)
    return (f"{len(sites)} quantized modules ({', '.join(f'{r} {n}' for r, n in sorted(roles.items()))}), "
            f"{weights} weight and {acts} activation quantizers"), resolved


def dry_run(job):
    """The resolved job and, per method, its resolved plan on this model, as lines; nothing is calibrated,
    evaluated or written."""
    task = build_task(job)
    fp_model = task.build_model()
    check_model(job, task, fp_model)
    lines = job.describe()
    for p in job.plans:
        summary, resolved = site_summary(fp_model, p)
        lines += [f"  {p.name}: {summary}"] + [f"    {line}" for line in resolved.lines()]
    return lines


def run_job(job, log=None):
    """Run `job` (not a dry run) and write its reports; returns the report dict."""
    import torch
    from ..quant.deploy.freeze import set_int8_backend
    from ..quant.io import package_versions
    log = log or stderr_log(job.quiet)
    set_int8_backend(job.int8_backend)
    task = build_task(job)
    out = OutputFolder(job.out_dir, clear_ckpt=job.overwrite and not job.resume and job.checkpoint_dir is None)
    try:
        torch.manual_seed(job.seed)
        fp_model = task.build_model()
        check_model(job, task, fp_model)
        report = {"command": job.command, "config": job.config, "checkpoint": job.checkpoint, "task": job.task,
                  "device": job.device, "seed": job.seed, "job": job.to_dict(), "primary_metric": task.primary_metric,
                  "versions": package_versions(), "model": task.model_meta(), "fp": None, "results": []}
        if job.evaluate_fp:
            report["fp"] = task.evaluate(fp_model, not job.quiet, desc="eval full precision")
            log(f"full precision: {json.dumps(report['fp'])}")
        fp_outputs = getattr(task, "last_outputs", None) if report["fp"] else None
        if not job.evaluate_fp and task.agreement is not None:
            report["agreement_unavailable"] = "--no-fp: agreement compares with the full-precision evaluation's outputs"
            log(f"agreement with the float model: unavailable ({report['agreement_unavailable']})")
        fp32_bytes = None
        if job.export_onnx:
            from ..quant.deploy.onnx_export import export_float_onnx
            os.makedirs(os.path.join(out.staging, "models"), exist_ok=True)
            fp32_bytes = export_float_onnx(fp_model, task.example_input(fp_model),
                                           os.path.join(out.staging, "models", "fp32.onnx"))
        for plan in job.plans:
            report["results"].append(run_plan(job, task, fp_model, plan, fp_outputs, out.staging, fp32_bytes, log))
        write_reports(report, out.staging)
        out.commit()
        return report
    except BaseException:  # Ctrl-C included: no half-written output
        out.discard()
        raise


def run_plan(job, task, fp_model, plan, fp_outputs, staging, fp32_bytes, log):
    """Quantize a copy of the float model with one plan, evaluate it: its report entry."""
    import torch
    torch.manual_seed(job.seed)
    calib = task.calib_data(fp_model, plan.calib_num, job.seed)
    model = copy.deepcopy(fp_model)
    cuda = job.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    ckpt_dir = job.ckpt_dir(plan)
    quantize(model, plan.recipe, calib, log=log, seed=job.seed, checkpoint_dir=ckpt_dir,
                   resume=bool(job.resume and ckpt_dir))
    if cuda:
        torch.cuda.synchronize()
    calib_time = time.time() - t0
    peak_gib = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None
    label = f"{plan.method} W{plan.w_bits}A{plan.a_bits}"
    metrics = task.evaluate(model, not job.quiet, desc=f"eval {label}")
    log(f"{label}: {json.dumps(metrics)} (calibration {calib_time:.1f}s)")
    entry = {**plan.to_dict(), "metrics": metrics, "calib_time_s": calib_time, "calib_peak_gib": peak_gib,
             "recipe": plan.recipe.to_dict(),
             "rolled_back": list(state(model).rollbacks), "plan": state(model).plan.compact()}
    if task.agreement is not None and fp_outputs is not None:  # before --freeze evaluates again
        entry["agreement"] = task.agreement(fp_outputs, task.last_outputs)
    relu_fp = relu_float_model(fp_model, model)  # APHQ-ViT's MLP step changed the float network: report it too
    if relu_fp is not None:
        entry["float_relu"] = task.evaluate(relu_fp, not job.quiet, desc=f"eval {label} float (ReLU MLPs)")
        log(f"{label}: float model with ReLU MLPs {json.dumps(entry['float_relu'])}")
    if ckpt_dir:
        entry["checkpoint_dir"] = ckpt_dir
    models = os.path.join(staging, "models")
    if job.save_model:  # before freezing: the saved model is the calibrated fake-quant one
        os.makedirs(models, exist_ok=True)
        _, meta_path = save_quantized(model, os.path.join(models, plan.name),
                                      extra_meta={"model": task.model_meta(), "metrics": metrics})
        entry["saved_model"] = os.path.join(job.out_dir, "models", plan.name)
        saved = read_meta(meta_path)
        entry["saved_model_bytes"] = saved["size"]["file_bytes"]
        entry["saved_model_float_bytes"] = saved["size"]["float_bytes"]
        entry["saved_packed_weights"] = len(saved["packed"]["weights"])
        entry["saved_float_weights"] = saved["packed"]["float"]
    if job.export_onnx:  # before freezing: the export reads the quantizers
        entry["onnx"] = onnx_entry(job, task, model, plan.name, models, fp32_bytes, log)
    if job.freeze:
        freeze(model)
        summary = frozen_summary(model)
        int8 = task.evaluate(model, not job.quiet, desc=f"eval {label} int8")
        log(f"{label} integer path ({summary['frozen']} Linear layers frozen): {json.dumps(int8)}")
        entry["int8"] = {"metrics": int8, "frozen_layers": summary["frozen"], "not_frozen": summary["not_frozen"],
                         "backend": job.int8_backend}
    return entry


def onnx_entry(job, task, model, name, models, fp32_bytes, log):
    """Export `model` to models/<name>.onnx, score it with ONNX Runtime on the CPU: the report's `onnx` entry."""
    from ..quant.deploy.onnx_export import export_onnx
    from ..quant.deploy.onnx_runtime import OrtModule
    path = os.path.join(models, name + ".onnx")
    summary = export_onnx(model, task.example_input(model), path, nonuniform=job.onnx_nonuniform)
    metrics = task.evaluate(OrtModule(path), not job.quiet, desc=f"eval {name} ONNX Runtime")
    log(f"{name} ONNX Runtime (CPU): {json.dumps(metrics)}; {summary['bytes']} bytes, FP32 export {fp32_bytes}; "
        f"{len(summary['float_sites'])} sites without Q/DQ")
    final = os.path.join(job.out_dir, "models")
    return {"path": os.path.join(final, name + ".onnx"), "bytes": summary["bytes"],
            "fp32_path": os.path.join(final, "fp32.onnx"), "fp32_bytes": fp32_bytes,
            "size_ratio": summary["bytes"] / fp32_bytes, "metrics": metrics, "runtime": "onnxruntime CPU",
            "qdq_activations": summary["qdq_activations"], "int8_weights": summary["int8_weights"],
            "float_sites": summary["float_sites"], "nonuniform": summary["nonuniform"], "opset": summary["opset"]}


__all__ = ["build_task", "check_model", "dry_run", "onnx_entry", "run_job", "run_plan", "site_summary"]
