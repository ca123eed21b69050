"""Progress lines for long loops (calibration, evaluation), readable in CI logs: about ten lines per loop."""
import sys
import time


def progress(iterable, total=None, desc="", enabled=True, stream=None):
    stream = stream or sys.stderr
    if total is None:
        total = len(iterable) if hasattr(iterable, "__len__") else None
    if not enabled:
        yield from iterable
        return
    t0, step, done = time.time(), max(1, (total or 10) // 10), 0
    for item in iterable:
        yield item
        done += 1
        if done % step == 0 or done == total:
            of = f"/{total}" if total else ""
            print(f"[{desc}] {done}{of} ({time.time() - t0:.1f}s)", file=stream, flush=True)
