"""ONNX Runtime on the CPU: the QDQ export of a calibrated model against the FP32 export of its float model, batch-1
latency and throughput at the benchmark's batch size, and the ops left after ONNX Runtime's graph optimisation."""
import os
import tempfile
import time

import torch


def ort_session(path, threads=None, optimized_path=None):
    """A CPU InferenceSession of `path` (`threads` intra-op threads, default torch's); with `optimized_path`, the
    graph as ONNX Runtime runs it is written there (to count fused ops)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
        opts.log_severity_level = 3  # not the warning that this optimized file is specific to this machine
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def ort_times(session, shape, s):
    """(median ms of one batch-1 run, seconds of `s.eval_batches` runs at `s.batch_size`) for one session."""
    import numpy as np
    name = session.get_inputs()[0].name
    rng = np.random.RandomState(0)
    one = rng.randn(1, *shape).astype(np.float32)
    many = rng.randn(s.batch_size, *shape).astype(np.float32)
    for _ in range(s.warmup):
        session.run(None, {name: one})
        session.run(None, {name: many})
    single = []
    for _ in range(s.onnx_reps):
        t0 = time.perf_counter()
        session.run(None, {name: one})
        single.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(s.eval_batches):
        session.run(None, {name: many})
    return 1000 * sorted(single)[len(single) // 2], time.perf_counter() - t0


def _op_counts(path):
    import onnx
    ops = {}
    for node in onnx.load(path).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return ops


def onnx_bench(base, model, name, method, shape, s, log, rounds=3):
    """ONNX Runtime CPU: the QDQ export of `model` against the FP32 export of `base`, timed alternately in `rounds`
    rounds (the best round of each counts, so a burst of load on a shared machine hits both alike)."""
    from ..quant.deploy.onnx_export import export_float_onnx, export_onnx
    example = torch.randn(1, *shape)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"fp32": os.path.join(tmp, "fp32.onnx"), "int8_qdq": os.path.join(tmp, "qdq.onnx")}
        fp32_bytes = export_float_onnx(base, example, paths["fp32"])
        summary = export_onnx(model, example, paths["int8_qdq"])
        sessions, fused = {}, {}
        for key, path in paths.items():
            sessions[key] = ort_session(path, s.onnx_threads, os.path.join(tmp, key + "_opt.onnx"))
            fused[key] = _op_counts(os.path.join(tmp, key + "_opt.onnx"))
        best = {k: [float("inf"), float("inf")] for k in paths}
        for _ in range(rounds):
            for key, sess in sessions.items():
                lat, secs = ort_times(sess, shape, s)
                best[key] = [min(best[key][0], lat), min(best[key][1], secs)]
    out = {"bytes": summary["bytes"], "fp32_bytes": fp32_bytes, "float_sites": len(summary["float_sites"]),
           "threads": s.onnx_threads or torch.get_num_threads(), "rounds": rounds,
           "ops_after_ort_optimization": fused}
    for key, (lat, secs) in best.items():
        out[key] = {"latency_ms_batch1": lat, "images_per_s": s.batch_size * s.eval_batches / secs}
    out["ratios"] = {"latency_fp32_over_int8": out["fp32"]["latency_ms_batch1"] / out["int8_qdq"]["latency_ms_batch1"],
                     "throughput_int8_over_fp32": out["int8_qdq"]["images_per_s"] / out["fp32"]["images_per_s"],
                     "size_int8_over_fp32": summary["bytes"] / fp32_bytes}
    log(f"  {name} {method} ONNX Runtime CPU: batch-1 latency fp32 {out['fp32']['latency_ms_batch1']:.2f} ms, "
        f"int8 QDQ {out['int8_qdq']['latency_ms_batch1']:.2f} ms; throughput ratio int8/fp32 "
        f"{out['ratios']['throughput_int8_over_fp32']:.2f}")
    return out
