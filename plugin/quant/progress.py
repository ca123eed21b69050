"""Progress lines for the long loops (calibration groups, search and reconstruction units, evaluation batches), one
style everywhere: `[desc] i/N[ note], 0:41 elapsed, ETA 2:03`.

A line is written at most every `every` seconds and always after the last item, so a fast loop stays short in a CI
log and a slow one (a block taking minutes) reports each item. The ETA is the mean time per item done *in this run*
times the items left: items a resumed run skips (`done`) count towards i/N but not towards the rate.
"""
import logging
import sys
import time

_logger = logging.getLogger("plugin.quant")


def clock(seconds):
    """'m:ss', or 'h:mm:ss' from an hour on."""
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class Progress:
    """Counts finished items of a loop of `total` and logs through `log(message)` (default: logging, INFO, logger
    "plugin.quant"). `done`: items already finished before this run (a resume). `timer`: a clock for tests."""

    def __init__(self, total, desc, log=None, every=5.0, done=0, timer=time.monotonic):
        self.total, self.desc, self.every, self.timer = total, desc, every, timer
        self.log = log or _logger.info
        self.done = self.start = done
        self.t0 = self.last = timer()

    def line(self, note=""):
        elapsed = self.timer() - self.t0
        of = f"/{self.total}" if self.total else ""
        text = f"{self.desc} {self.done}{of}{' ' + note if note else ''}, {clock(elapsed)} elapsed"
        ran = self.done - self.start
        if self.total and ran > 0 and self.done < self.total:
            text += f", ETA {clock(elapsed / ran * (self.total - self.done))}"
        return text

    def step(self, note="", n=1):
        """`n` more items finished; log a line if `every` seconds passed since the last one or the loop is done."""
        self.done += n
        now = self.timer()
        if now - self.last >= self.every or (self.total and self.done >= self.total):
            self.last = now
            self.log(self.line(note))

    def wrap(self, iterable):
        """Yield the items of `iterable`, counting each one after the loop body has run."""
        for item in iterable:
            yield item
            self.step()
        if not self.total:  # an unknown length: step() could not tell the last item
            self.log(self.line())


def to_stderr(message):
    """A `log` for progress that must show whatever the logging configuration (the tasks' evaluation loops)."""
    print(message, file=sys.stderr, flush=True)


def progress(iterable, desc, total=None, log=None, enabled=True, every=5.0):
    """The items of `iterable`, with Progress lines (`total` defaults to its length); the items alone when not
    `enabled`."""
    if not enabled:
        return iter(iterable)
    if total is None:
        total = len(iterable) if hasattr(iterable, "__len__") else None
    return Progress(total, desc, log, every).wrap(iterable)


__all__ = ["Progress", "clock", "progress", "to_stderr"]
