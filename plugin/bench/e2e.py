"""Whole-model deployment throughput (issue 14): images/s of bf16_compiled, torchao_int8_dynamic, torchao_fp8_dynamic
(torchao is optional: skipped with a note where absent), ours_w8a8 and ours_fp8 (plugin.quant.deploy) on ViT-B/16,
DeiT-S and Swin-T at batch 64, 8, 1; every path torch.compile'd and timed as CUDA-graph replays; each row records the
recipe of each site, and `e2e_profile` cells add GPU time per op class (plugin/bench/profile.py)."""
import copy
import platform
import time

import torch

from ..classification.timm_models import input_size
from ..utils.timing import capture_graph, timed
from .models import QUICK_MODEL_ARGS, random_calib
from .profile import forward_profile

E2E_MODELS = ["vit_base_patch16_224", "deit_small_patch16_224", "swin_tiny_patch4_window7_224"]
E2E_BATCHES = [64, 8, 1]
E2E_PATHS = ["bf16_compiled", "torchao_int8_dynamic", "torchao_fp8_dynamic", "ours_w8a8", "ours_fp8"]
# run order: ours first (the torchao paths compile slowest: 41 s for ViT-B at batch 64 on an H100, bf16 12 s)
E2E_RUN_ORDER = ["ours_fp8", "bf16_compiled", "ours_w8a8", "torchao_fp8_dynamic", "torchao_int8_dynamic"]
# quick: toy models of the same families, small batches (a CPU smoke run)
E2E_QUICK_ARGS = {
    **QUICK_MODEL_ARGS,
    "swin_tiny_patch4_window7_224": dict(img_size=32, patch_size=2, window_size=4, embed_dim=32, depths=(2, 2),
                                         num_heads=(2, 4), num_classes=10),
}


def gpu_slug(device):
    """A short name of the GPU for file names (h100, a100, …; "cpu" off CUDA)."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    for key in ("h200", "h100", "a100", "l40s", "l4", "b200", "a10g"):
        if key in name:
            return key
    return "".join(c for c in name if c.isalnum())[:16] or "gpu"


def torchao_status():
    """None when torchao's quantize_ imports, else why not."""
    try:
        import torchao  # noqa: F401
        from torchao.quantization import quantize_  # noqa: F401
    except Exception as e:  # ImportError, or a torchao that does not load with this torch
        return f"torchao not available ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    return None


def build_path(path, base, calibrated, dtype):
    """The model of one path (not compiled) and its recipe summary."""
    if path in ("ours_w8a8", "ours_fp8"):
        from ..quant.deploy import deploy, deploy_report
        dep = deploy(calibrated, "int8" if path == "ours_w8a8" else "fp8", dtype=dtype)
        return dep, deploy_report(dep)["summary"]
    model = copy.deepcopy(base).to(dtype)
    if path == "bf16_compiled":
        return model, [{"role": "all", "op": f"timm model in {dtype}", "recipe": "not quantized"}]
    from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, Int8DynamicActivationInt8WeightConfig,
                                      PerRow, quantize_)
    if path == "torchao_int8_dynamic":
        quantize_(model, Int8DynamicActivationInt8WeightConfig())
        recipe = "torchao Int8DynamicActivationInt8WeightConfig: W int8 per-channel, A int8 per-token dynamic"
    else:
        quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        recipe = "torchao Float8DynamicActivationFloat8WeightConfig(PerRow): W/A e4m3 rowwise, A dynamic"
    return model, [{"role": "Linear", "op": "torchao quantize_", "recipe": recipe},
                   {"role": "other", "op": f"timm default in {dtype}", "recipe": "not quantized"}]


def time_path(fn, x, device, min_time):
    """images/s of fn(x): warm-up (compiles), then CUDA-graph replays (eager calls where capture fails or off
    CUDA), timed in three rounds of >= min_time / 3 s each; the median round."""
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        step, note = (lambda: fn(x)), None
        if device.type == "cuda":
            try:
                step = capture_graph(lambda: fn(x), device).replay
            except RuntimeError as e:
                torch.cuda.synchronize(device)
                note = "eager (CUDA graph capture failed: " + str(e).splitlines()[0][:150] + ")"
        _, once = timed(step, device)
        reps = max(3, int(min_time / 3 / max(once, 1e-6)))
        rounds = []
        for _ in range(3):
            _, sec = timed(lambda: [step() for _ in range(reps)], device)
            rounds.append(sec / reps)
    rounds.sort()
    return x.shape[0] / rounds[1], note


def cell_order(s):
    """(model, batch) cells in run order: the `e2e_first` cells (the acceptance row) for every path before the
    rest, so that a run stopped by its time limit has measured what matters most."""
    first = []
    for spec in s.e2e_first or []:
        model, _, batch = spec.rpartition(":")
        if model in s.e2e_models and batch.isdigit() and int(batch) in s.e2e_batches:
            first.append((model, int(batch)))
    rest = [(m, b) for m in s.e2e_models for b in s.e2e_batches if (m, b) not in first]
    return [first, rest]


def known_failure(path, batch, s):
    """Cells not run because they fail on every setup measured (`e2e_try_all` runs them anyway)."""
    if path == "torchao_int8_dynamic" and batch <= 16 and not s.e2e_try_all:
        return ("not run: at batch <= 16 the classifier Linear has M = batch <= 16 rows and torch._int_mm needs "
                "M > 16 (RuntimeError 'self.size(0) needs to be greater than 16' at batch 8 on an H100, torch 2.11, "
                "torchao 0.16, after 104 s of compiling); --e2e-try-all runs it")
    return None


class _ModelCache:
    """model name -> (float model, calibrated W8A8 copy or None, input shape); one model held at a time."""

    def __init__(self, s, device, calibrate):
        self.s, self.device, self.calibrate, self.built = s, device, calibrate, {}

    def __call__(self, name):
        if name not in self.built:
            import timm

            from ..quant import get_recipe, quantize
            self.built.clear()
            torch.manual_seed(0)
            base = timm.create_model(name, pretrained=False, **(E2E_QUICK_ARGS.get(name, {}) if self.s.quick
                                                                 else {})).eval().to(self.device)
            shape = input_size(base)
            calibrated = None
            if self.calibrate:
                _, calib = random_calib(shape, self.s.calib_num, self.s.calib_batch, self.device)
                calibrated = quantize(copy.deepcopy(base), get_recipe(self.s.e2e_method, 8, 8), calib,
                                      log=lambda *a: None)
            self.built[name] = (base, calibrated, shape)
        return self.built[name]


def _new_report(s, device, command, tao_skip):
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    report = {"command": command, "device": dev_name, "torch": torch.__version__,
              "compile": not s.e2e_no_compile, "timing": "torch.compile (inductor default, dynamo reset before each) "
              "per path, model and batch (static shapes), then CUDA-graph replays; images/s of the median of three "
              "timed rounds",
              "method": f"{s.e2e_method} W8A8, {s.calib_num} random calibration images", "quick": s.quick,
              "notes": [], "rows": [], "recipes": {}, "profile": {}, "compile_s": {}}
    if tao_skip:
        report["notes"].append(f"torchao rows skipped: {tao_skip}")
    if device.type != "cuda":
        report["notes"].append("not a GPU: torchao rows skipped, ours_* run torch._int_mm / float32 e4m3 emulation")
    rows = {(name, b): {"device": dev_name, "torch": torch.__version__, "model": name, "batch": b,
                        "img_s": {p: None for p in E2E_PATHS}, "notes": {}}
            for name in s.e2e_models for b in s.e2e_batches}
    report["rows"] = list(rows.values())
    return report, rows


def _time_cell(report, row, model, name, b, path, shape, s, device, profile_at, log):
    # A fresh compile per cell: a long grid otherwise reaches dynamo's recompile limit (8 per code object, shared by
    # every model of one timm class) and later cells silently run eager; the DeiT-S cells of one H100 grid came out
    # 0.42x (fp8) to 0.84x (w8a8) of their value in a run of their own (docs/performance.md).
    torch._dynamo.reset()
    fn = model if s.e2e_no_compile else torch.compile(model, dynamic=False)
    x = torch.randn(b, *shape, device=device, generator=torch.Generator(device).manual_seed(0)).to(torch.bfloat16)
    t0 = time.perf_counter()
    try:
        img_s, note = time_path(fn, x, device, s.e2e_min_time)
    except Exception as e:
        img_s, note = None, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    row["img_s"][path] = img_s
    if note:
        row["notes"][path] = note
    report["compile_s"][f"{name}:{b}:{path}"] = time.perf_counter() - t0
    log(f"[e2e] {name} b{b} {path}: {img_s if img_s is None else round(img_s, 1)} img/s "
        f"({time.perf_counter() - t0:.1f}s incl. compile){' ' + note if note else ''}")
    if f"{name}:{b}" in profile_at and img_s is not None:
        try:
            report["profile"].setdefault(f"{name}:{b}", {})[path] = forward_profile(fn, x, device)
        except Exception as e:
            report["profile"].setdefault(f"{name}:{b}", {})[path] = {"error": str(e)[:200]}


def run_e2e(s, device, command, write, log=lambda *a: None):
    """The deployment-throughput report; `write(report)` after every (model, path), so a run stopped at its time
    limit keeps its rows, and at the end."""
    dtype = torch.bfloat16
    profile_at = set(s.e2e_profile if s.e2e_profile else
                     (["vit_base_patch16_224:64"] if s.e2e_profile is not None else []))
    tao_skip = torchao_status()
    report, rows = _new_report(s, device, command, tao_skip)
    t_start = time.perf_counter()
    paths = [p for p in E2E_RUN_ORDER if p in s.e2e_paths]
    models = _ModelCache(s, device, calibrate=any(p.startswith("ours") for p in paths))
    for cells in cell_order(s):
        for name in dict.fromkeys(m for m, _ in cells):
            batches = [b for m, b in cells if m == name]
            base, calibrated, shape = models(name)
            report["recipes"].setdefault(name, {})
            for path in paths:
                todo = []
                for b in batches:
                    why = known_failure(path, b, s)
                    if path.startswith("torchao") and (tao_skip or device.type != "cuda"):
                        why = tao_skip or "torchao rows need CUDA here"
                    elif s.e2e_budget_s is not None and time.perf_counter() - t_start > s.e2e_budget_s:
                        why = "skipped: --e2e-budget-s reached"
                    if why:
                        rows[(name, b)]["notes"][path] = why
                    else:
                        todo.append(b)
                if not todo:
                    continue
                try:
                    model, recipe = build_path(path, base, calibrated, dtype)
                except Exception as e:  # a torchao config that does not apply, say: the row says why
                    for b in todo:
                        rows[(name, b)]["notes"][path] = f"build failed: {type(e).__name__}: {str(e)[:200]}"
                    log(f"[e2e] {name} {path}: build failed: {e}")
                    continue
                report["recipes"][name][path] = recipe
                for b in todo:
                    _time_cell(report, rows[(name, b)], model, name, b, path, shape, s, device, profile_at, log)
                del model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                report["total_s"] = time.perf_counter() - t_start
                write(report)
    models.built.clear()
    for r in report["rows"]:
        bf = r["img_s"].get("bf16_compiled")
        r["speedup_vs_bf16_compiled"] = {p: (v / bf if v and bf else None) for p, v in r["img_s"].items()}
        if not r["notes"]:
            del r["notes"]
    report["total_s"] = time.perf_counter() - t_start
    write(report)
    return report
