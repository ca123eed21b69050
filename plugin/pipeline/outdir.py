"""The output folder of a run (--out), written as a whole at the end.

A run owns `OWNED` in its folder: report.json, report.md, models/ and, by default, the reconstruction checkpoints
in ckpt/. A folder that already holds any file is refused unless --overwrite is given (or --resume, which continues
from the checkpoints a run left there). The run writes into a staging folder next to --out; `commit()` replaces the
previous run's entries with the new ones, so no model file of another method stays beside the new report. Files the
run does not own (a command.txt or log.txt that a script put there) are never deleted. A failed run removes its staging
folder and the folders it created, if they stayed empty; checkpoints of finished units stay for --resume.
"""
import os
import shutil
import tempfile

from ..errors import UserInputError

OWNED = ("report.json", "report.md", "models")
CKPT = "ckpt"


def _existing_ancestor(path):
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_out_dir(path, overwrite=False, resume=False, protect=()):
    """Refuse, with one line, an output folder that cannot be written or that holds files without --overwrite/--resume,
    and one that holds the run's own inputs (`protect`: --overwrite must never replace them)."""
    base = _existing_ancestor(path)
    if not os.path.isdir(base) or not os.access(base, os.W_OK | os.X_OK):
        why = "not a folder" if not os.path.isdir(base) else "permission denied"
        raise UserInputError(f"cannot write to the output folder {path}: {base} is {why}")
    if base != path:
        return
    entries = sorted(os.listdir(path))
    if entries and not (overwrite or resume):
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise UserInputError(f"the output folder {path} is not empty ({shown}): pass --overwrite to replace the "
                             f"previous run's report and models, --resume to continue from its checkpoints, or "
                             f"choose another --out")
    for item in protect:
        if os.path.abspath(item).startswith(path.rstrip(os.sep) + os.sep):
            raise UserInputError(f"the output folder {path} holds {item}, an input of this run: choose another --out")


class OutputFolder:
    """Staging next to `path` while the run works (`staging`), `commit()` at the end, `discard()` on failure."""

    def __init__(self, path, clear_ckpt=False):
        self.path, self.clear_ckpt = path, clear_ckpt
        self.created = []  # folders made here, deepest last (removed again on failure when empty)
        parent = os.path.dirname(path)
        missing = []
        while not os.path.exists(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        for folder in reversed(missing):
            os.mkdir(folder)
            self.created.append(folder)
        if not os.path.exists(path):
            self.created.append(path)  # made by commit() or by a checkpoint writer during the run
        self.staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.staging-", dir=os.path.dirname(path))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.staging, 0o777 & ~umask)  # mkdtemp makes it 0700; the output keeps the user's usual modes
        if clear_ckpt and os.path.isdir(os.path.join(path, CKPT)):  # --overwrite without --resume: a fresh start
            shutil.rmtree(os.path.join(path, CKPT))

    def commit(self):
        """Move the staged entries into `path`, replacing the previous run's."""
        os.makedirs(self.path, exist_ok=True)
        for name in OWNED:
            old = os.path.join(self.path, name)
            if os.path.isdir(old) and not os.path.islink(old):
                shutil.rmtree(old)
            elif os.path.lexists(old):
                os.remove(old)
        for name in sorted(os.listdir(self.staging)):
            os.replace(os.path.join(self.staging, name), os.path.join(self.path, name))
        os.rmdir(self.staging)
        self.created = []

    def discard(self):
        shutil.rmtree(self.staging, ignore_errors=True)
        for folder in reversed(self.created):
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)


__all__ = ["CKPT", "OWNED", "OutputFolder", "check_out_dir"]
