"""How much of mmengine a detection run shows, and where its runner writes.

mmengine's runner logs its environment, the whole config and every test-loop step at INFO, and pycocotools prints its
evaluation tables on stdout: about 130 lines per evaluation. Our choice: that output appears only when the `plugin`
logger is enabled for INFO (`tools/ptq_test.py --verbose`, or `logging.getLogger("plugin").setLevel(logging.INFO)`
from Python); otherwise the runner logs warnings only and pycocotools' prints are dropped. The runner's work dir
(its log files) defaults to a temporary folder removed when the process exits, instead of ./work_dirs/<config> in the
working folder; `--work-dir` (or a `work_dir` in the config) keeps it where asked.
"""
import atexit
import contextlib
import io
import logging
import shutil
import tempfile


def verbose():
    """True when the user asked for the libraries' own progress (the `plugin` logger enabled for INFO)."""
    return logging.getLogger("plugin").isEnabledFor(logging.INFO)


def set_log_level(logger, level):
    logger.setLevel(level)
    for handler in logger.handlers:
        handler.setLevel(level)


@contextlib.contextmanager
def quiet_runner(logger, show):
    """mmengine's logger at WARNING and stdout dropped for the block, unless `show`; the level is restored after."""
    level = logger.level
    if not show:
        set_log_level(logger, logging.WARNING)
    try:
        with contextlib.nullcontext() if show else contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        set_log_level(logger, level)


def quiet_stdout():
    """stdout dropped for the block (pycocotools' "loading annotations" prints) unless verbose()."""
    return contextlib.nullcontext() if verbose() else contextlib.redirect_stdout(io.StringIO())


def scratch_work_dir():
    """A fresh temporary folder for the runner's logs, removed at process exit."""
    path = tempfile.mkdtemp(prefix="vitq-mmengine-")
    atexit.register(shutil.rmtree, path, True)
    return path
