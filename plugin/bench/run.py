"""A whole benchmark run as one report: the run's settings and environment, each model's figures (plugin/bench/speed)
and the Linear micro-benchmark, written after every method so a run cut short keeps what finished."""
import platform
import time

import torch

from .linear import linear_microbench, triton_status
from .speed import bench_model


def _header(s, device):
    return {
        "device": device.type, "quick": s.quick, "torch": torch.__version__, "python": platform.python_version(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(), "w_bits": s.w_bits, "a_bits": s.a_bits,
        "batch_size": s.batch_size, "compile": s.compile, "cuda_graph": s.cuda_graph,
        "int8_backend": s.int8_backend,
        "calib_num": s.calib_num, "iters": s.iters, "calib_batch": s.calib_batch,
        "model_kwargs": s.model_kwargs,
        "methods": s.method, "onnx": s.onnx,
        "models": {},
    }


def run_benchmark(s, device, command, write=None, log=lambda *a: None):
    """The report of one run (`command` recorded in it). `write(report)` is called as the report grows (after each
    method, `complete` False) and once at the end (`complete` True)."""
    report = _header(s, device)
    report["command"] = command
    t0 = time.perf_counter()

    def save(done=False):
        report["total_s"] = time.perf_counter() - t0
        report["complete"] = done
        if write is not None:
            write(report)
    for name in [] if s.micro_only else s.model:
        log(f"[benchmark] {name}")
        bench_model(name, s, device, log, report["models"].setdefault(name, {}), save)
    report["linear_microbench"] = [] if s.no_micro else linear_microbench(s, device)
    if triton_status(device) is None:
        from ..quant.deploy.triton_int8 import tuned_configs
        report["triton_tuned_configs"] = tuned_configs()
    if s.onnx:
        import onnxruntime
        report["onnxruntime"] = onnxruntime.__version__
    save(done=True)
    return report
