"""One model's figures: calibration wall time (and peak GPU memory) per method, then images/s of the float, fake-quant
and frozen INT8 models, their agreement and ratios, and (optionally) ONNX Runtime CPU timings."""
import copy
import os
import sys
import time

import torch

from ..classification.timm_models import input_size
from ..utils.timing import forward_throughput, peak_gib_so_far, peak_memory, timed
from .models import bench_recipe, build_model, random_calib


def throughput(model, device, shape, s, autocast_bf16=False):
    """images/s of `model` on a seeded random batch of `s.batch_size` images of `shape` (plugin.utils.timing)."""
    x = torch.randn(s.batch_size, *shape, device=device, generator=torch.Generator(device).manual_seed(0))
    return forward_throughput(model, x, s.eval_batches, s.warmup, cuda_graph=s.cuda_graph, compile=s.compile,
                              autocast_bf16=autocast_bf16)


def calibrate_timed(model, recipe, calib, s, device, ckpt_name):
    """quantize() timed, with the peak GPU memory of the calibration itself (model, cached inputs and targets,
    optimiser state) and, with `s.checkpoint_dir`, a checkpoint per reconstruction unit (`s.resume` continues it).
    With `s.verbose`, progress lines on stderr carry the elapsed time and peak memory (a run cut short shows both)."""
    from ..quant import quantize
    t0 = time.perf_counter()

    def progress(*a):
        print(f"[{time.perf_counter() - t0:7.1f}s{peak_gib_so_far(device)}]", *a, file=sys.stderr)
    quiet = progress if s.verbose else (lambda *a: None)
    ckpt = os.path.join(s.checkpoint_dir, ckpt_name) if s.checkpoint_dir else None
    with peak_memory(device) as peak:
        _, calib_s = timed(lambda: quantize(model, recipe, calib, log=quiet, checkpoint_dir=ckpt, resume=s.resume,
                                            skip_finished_blocks=not s.no_block_skip), device)
    res = {"calib_s": calib_s, "resumed": bool(s.resume), "block_skip": not s.no_block_skip}
    if peak["bytes"] is not None:
        res["calib_peak_mem_bytes"] = peak["bytes"]
    return res


def _frozen_figures(res, model, images, s, device, shape):
    """Freeze a copy of the calibrated `model` and add its throughput and agreement with the fake-quant model."""
    from ..quant.deploy.freeze import freeze, frozen_summary
    frozen = freeze(copy.deepcopy(model))
    summary = frozen_summary(frozen)
    res["frozen_summary"] = {k: v for k, v in summary.items() if k != "not_frozen"}
    res["frozen_summary"]["not_frozen"] = len(summary["not_frozen"])
    if summary["frozen"]:
        res["int8_frozen"] = throughput(frozen, device, shape, s)
        x = images[: s.calib_batch]
        with torch.no_grad():
            a, b = model(x), frozen(x)
        res["int8_vs_fake_top1_agreement"] = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
        res["int8_vs_fake_max_abs_logit_diff"] = (a - b).abs().max().item()


def _ratios(res, entry):
    f = entry["float"]["images_per_s"]
    ratios = {"fake_over_float": res["fake_quant"]["images_per_s"] / f}
    if "int8_frozen" in res:
        ratios["int8_over_float"] = res["int8_frozen"]["images_per_s"] / f
        ratios["int8_over_fake"] = res["int8_frozen"]["images_per_s"] / res["fake_quant"]["images_per_s"]
        if "float_bf16" in entry:
            ratios["int8_over_float_bf16"] = res["int8_frozen"]["images_per_s"] / entry["float_bf16"]["images_per_s"]
    return ratios


def bench_model(name, s, device, log, entry, saved):
    """Fills `entry` with one model's figures; `saved` is called after each method, so that the caller writes the
    report as it grows."""
    base = build_model(name, s.quick, device, s.model_kwargs)
    shape = input_size(base)
    images, calib = random_calib(shape, s.calib_num, s.calib_batch, device)
    entry.update(input_size=list(shape), params=sum(p.numel() for p in base.parameters()), methods={})
    if not s.calib_only:
        entry["float"] = throughput(base, device, shape, s)
        if device.type == "cuda":
            entry["float_bf16"] = throughput(base, device, shape, s, autocast_bf16=True)
    for method in s.method:
        model = copy.deepcopy(base)
        recipe = bench_recipe(method, s.w_bits, s.a_bits, s.iters, s.quick, s.calib_batch)
        res = entry["methods"][method] = calibrate_timed(model, recipe, calib, s, device, f"{name}/{method}")
        log(f"  {name} {method}: calibrated in {res['calib_s']:.2f}s"
            + (f", peak {res['calib_peak_mem_bytes'] / 2 ** 30:.2f} GiB" if "calib_peak_mem_bytes" in res else ""))
        if s.calib_only:
            del model
            saved()
            continue
        res["fake_quant"] = throughput(model, device, shape, s)
        _frozen_figures(res, model, images, s, device, shape)
        res["ratios"] = _ratios(res, entry)
        if s.onnx:
            from .onnx_bench import onnx_bench
            res["onnx"] = onnx_bench(base, model, name, method, shape, s, log)
        del model
        saved()
