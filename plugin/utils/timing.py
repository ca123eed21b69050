"""Wall-clock and GPU-memory measurement of torch code (torch only): synchronised timing, CUDA-graph capture, and the
images/s of a model's forward. Used by plugin/bench and the tools; nothing here knows a model family or a method."""
import time
from contextlib import contextmanager

import torch


def sync(device):
    """Wait for the device's queued work (CUDA); a no-op elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def peak_memory(device):
    """The peak CUDA memory allocated by this process inside the block: yields a dict whose "bytes" is set on leaving
    it (the device synchronised before the count starts and before it is read); it stays None off CUDA."""
    device = torch.device(device)
    peak = {"bytes": None}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield peak
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak["bytes"] = torch.cuda.max_memory_allocated(device)


def timed(fn, device):
    """(fn(), seconds), the device synchronised before and after so queued kernels are counted."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def capture_graph(fn, device, reps=1):
    """A CUDA graph of `reps` calls of `fn` (warm it up and autotune before), captured on a side stream and replayed
    once (the first replay uploads the graph)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side), torch.cuda.graph(g, stream=side):
        for _ in range(reps):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    g.replay()
    return g


def time_op(fn, device, reps, warmup=2, graph=False):
    """Seconds per call of `fn`. With `graph` (CUDA), the `reps` calls are captured once in a CUDA graph and the
    replay is timed: kernel time without the host's launch cost (a Python-launched Triton kernel costs tens of µs
    on the host, as long as a whole ViT-B-sized matmul)."""
    for _ in range(warmup):  # also autotunes, before any capture
        fn()
    if graph and device.type == "cuda":
        _, seconds = timed(capture_graph(fn, device, reps).replay, device)
        return seconds / reps
    _, seconds = timed(lambda: [fn() for _ in range(reps)], device)
    return seconds / reps


def forward_throughput(model, x, eval_batches, warmup, cuda_graph=False, compile=False, autocast_bf16=False):
    """images/s of `model(x)` over `eval_batches` timed calls (after `warmup` untimed ones) and, on CUDA, the peak
    memory of the timed part. With `cuda_graph` on CUDA the forward is captured once and replayed; a forward that
    cannot be captured (a host sync inside) is timed eagerly, and the result says so."""
    device = x.device
    if compile:
        model = torch.compile(model)
    # autocast's weight cache cannot live across a graph capture
    ctx = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)) if autocast_bf16
           else torch.no_grad)

    def forward():
        with torch.no_grad(), ctx():
            model(x)
    for _ in range(warmup):
        forward()
    step, graph_error = forward, None
    if cuda_graph and device.type == "cuda":
        try:
            step = capture_graph(forward, device).replay
        except RuntimeError as e:  # e.g. a .item() inside the forward
            torch.cuda.synchronize(device)
            graph_error = str(e).splitlines()[0][:200]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _, seconds = timed(lambda: [step() for _ in range(eval_batches)], device)
    result = {"images_per_s": x.shape[0] * eval_batches / seconds, "seconds": seconds,
              "cuda_graph": step is not forward}
    if graph_error:
        result["cuda_graph_error"] = graph_error
    if device.type == "cuda":
        result["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device)
    return result


def peak_gib_so_far(device):
    """' peak X.XXGiB' of CUDA memory allocated since the last reset, '' elsewhere (for progress lines)."""
    return f" peak {torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f}GiB" if device.type == "cuda" else ""
