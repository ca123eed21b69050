"""Reliability: bit-identical calibration on CPU, checkpoint + resume of the reconstruction passes, atomic outputs of
tools/ptq_test.py under SIGKILL, and the report of rolled-back units (docs/reliability.md)."""
import copy
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import plugin  # noqa: F401
from plugin.config import load_config
from plugin.quant.errors import CheckpointError
from plugin.quant import get_recipe, quantize, recon, save_quantized, state
from plugin.quant.recon import engine
from plugin.tasks.base import get_task

from repo_paths import REPO  # noqa: E402
CONFIG = os.path.join(REPO, "configs/classification/fmnist_vit_tiny.py")
CKPT = os.path.join(REPO, "plugin/assets/fmnist_vit_tiny.safetensors")
ITERS = 5


@pytest.fixture(scope="module")
def embedded():
    """The embedded default's task, float model and 32 calibration images."""
    cwd = os.getcwd()
    os.chdir(REPO)  # the config names its data relative to the repository
    try:
        task = get_task("classification")(load_config(CONFIG), CKPT, device="cpu")
        fp = task.build_model()
        calib = task.calib_data(fp, 32, 0)
    finally:
        os.chdir(cwd)
    return fp, calib


def quiet(_):
    pass


def short(name):
    recipe = get_recipe(name, 4, 4)
    recipe.passes = [dict(p, iters=ITERS, batch_size=8) for p in recipe.passes]
    return recipe


def run_once(embedded, name, path, **kwargs):
    fp, calib = embedded
    model = quantize(copy.deepcopy(fp), short(name), calib, log=quiet, seed=3, **kwargs)
    save_quantized(model, str(path))
    return model


@pytest.mark.parametrize("name", ["minmax", "repq", "isvit"])
def test_same_seed_same_bytes(embedded, tmp_path, name):
    run_once(embedded, name, tmp_path / "a")
    run_once(embedded, name, tmp_path / "b")
    assert open(tmp_path / "a.safetensors", "rb").read() == open(tmp_path / "b.safetensors", "rb").read()


class Killed(Exception):
    pass


def _interrupt_after(monkeypatch, units):
    """Make reconstruct_unit raise after `units` units have finished (a crash in the middle of the pass)."""
    real, count = engine.reconstruct_unit, [0]

    def wrapped(*args, **kwargs):
        if count[0] == units:
            raise Killed
        count[0] += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(engine, "reconstruct_unit", wrapped)


UNINTERRUPTED = {}


@pytest.mark.parametrize("name,stop_at", [("isvit", 6), ("isvit", 9), ("aiqvit", 4)])
def test_resume_equals_uninterrupted(embedded, tmp_path, monkeypatch, name, stop_at):
    # isvit: SOS over 6 units (patch embedding, 4 blocks, head) twice, with the stage-2 reparameterisation
    # between; stop_at 6 checkpoints the last unit of stage 1, 9 lands in stage 3. aiqvit: low-rank branches restored from the checkpoint.
    fp, calib = embedded
    if name not in UNINTERRUPTED:
        UNINTERRUPTED[name] = quantize(copy.deepcopy(fp), short(name), calib, log=quiet, seed=3)
    full = UNINTERRUPTED[name]
    ckpt = tmp_path / "ckpt"
    with monkeypatch.context() as m:
        _interrupt_after(m, stop_at)
        with pytest.raises(Killed):
            quantize(copy.deepcopy(fp), short(name), calib, log=quiet, seed=3, checkpoint_dir=str(ckpt))
    meta = json.load(open(ckpt / "calib.json"))
    assert meta["step"] == stop_at - 1 and os.path.isfile(ckpt / meta["file"])
    visited = []
    real = engine.reconstruct_unit
    monkeypatch.setattr(engine, "reconstruct_unit", lambda *a, **k: visited.append(a[1].name) or real(*a, **k))
    resumed = quantize(copy.deepcopy(fp), short(name), calib, log=quiet, seed=3, checkpoint_dir=str(ckpt),
                       resume=True)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(visited) > 0 and json.load(open(ckpt / "calib.json"))["step"] == stop_at - 1 + len(visited)
    assert state(resumed).rollbacks == state(full).rollbacks
    assert state(resumed).units == state(full).units and len(state(full).units) > stop_at
    if name == "aiqvit":
        assert state(resumed).ranks == state(full).ranks


def test_resume_accepts_the_same_recipe_in_an_older_json_form(embedded, tmp_path):
    """A checkpoint written before the recipe format changed (version 3: no `overrides`) resumes, and a changed
    option is still refused."""
    fp, calib = embedded
    ckpt = tmp_path / "ckpt"
    quantize(copy.deepcopy(fp), short("isvit"), calib, log=quiet, seed=3, checkpoint_dir=str(ckpt))
    meta = json.load(open(ckpt / "calib.json"))
    del meta["recipe"]["overrides"]
    meta["recipe"]["version"] = 3
    (ckpt / "calib.json").write_text(json.dumps(meta))
    logs = []
    quantize(copy.deepcopy(fp), short("isvit"), calib, log=logs.append, seed=3, checkpoint_dir=str(ckpt), resume=True)
    assert any("[resume]" in line and "continuing after" in line for line in logs)
    meta["recipe"]["passes"][0]["iters"] = ITERS + 1
    (ckpt / "calib.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="different recipe"):
        quantize(copy.deepcopy(fp), short("isvit"), calib, log=quiet, seed=3, checkpoint_dir=str(ckpt), resume=True)


def test_resume_refuses_other_recipe_or_model(embedded, tmp_path):
    fp, calib = embedded
    ckpt = str(tmp_path / "ckpt")
    quantize(copy.deepcopy(fp), short("isvit"), calib, log=quiet, seed=3, checkpoint_dir=ckpt)
    other = short("isvit")
    other.passes = [dict(p, iters=ITERS + 1) for p in other.passes]
    with pytest.raises(CheckpointError, match="different recipe"):
        quantize(copy.deepcopy(fp), other, calib, log=quiet, seed=3, checkpoint_dir=ckpt, resume=True)
    changed = copy.deepcopy(fp)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    with pytest.raises(CheckpointError, match="different model"):
        quantize(changed, short("isvit"), calib, log=quiet, seed=3, checkpoint_dir=ckpt, resume=True)
    with pytest.raises(CheckpointError, match="different seed"):
        quantize(copy.deepcopy(fp), short("isvit"), calib, log=quiet, seed=4, checkpoint_dir=ckpt, resume=True)
    with open(os.path.join(ckpt, "calib.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(CheckpointError, match="cannot read calibration checkpoint"):
        quantize(copy.deepcopy(fp), short("isvit"), calib, log=quiet, seed=3, checkpoint_dir=ckpt, resume=True)


def test_rollback_recorded(embedded, monkeypatch):
    """A unit whose loss becomes NaN is rolled back to its state before the optimisation and reported."""
    fp, calib = embedded
    real_loss = recon.BlockRecon.loss
    monkeypatch.setattr(recon.BlockRecon, "loss", lambda self, out, tgt: real_loss(self, out, tgt) * float("nan"))
    recipe = get_recipe("repq", 4, 4)
    recipe.passes = [dict(type="block_recon", iters=ITERS, batch_size=8, layers=False)]
    before = quantize(copy.deepcopy(fp), get_recipe("repq", 4, 4), calib, log=quiet, seed=3)
    model = quantize(copy.deepcopy(fp), recipe, calib, log=quiet, seed=3)
    rollbacks = state(model).rollbacks
    assert [r["unit"] for r in rollbacks] == [f"blocks.{i}" for i in range(4)]
    assert all("NaN/inf" in r["reason"] and r["pass"] == "block_recon" for r in rollbacks)
    assert [u["status"] for u in state(model).units] == [r["reason"] for r in rollbacks]
    a, b = before.state_dict(), model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # every block is back at its state before reconstruction


# ---------------------------------------------------------------------------------------------------------------
# The CLI in a subprocess: SIGKILL at a chosen moment, then --resume.

DRIVER = """
import os, signal, sys
sys.path.insert(0, {tools!r})
import torch; torch.set_num_threads(1)
import plugin
from plugin.quant import recon
from plugin.quant.recon import engine
recon.SETTINGS["small"] = dict(low_bit_iters={iters}, high_bit_iters={iters}, batch_size=8)
import ptq_test
from plugin.classification.task import ClassificationTask
kill_at = os.environ.get("KILL_AT")
calls = [0]
real_eval = ClassificationTask.evaluate
def evaluate(self, *a, **k):
    calls[0] += 1
    if kill_at == "eval" and calls[0] == 2:   # in the first quantized evaluation
        os.kill(os.getpid(), signal.SIGKILL)
    return real_eval(self, *a, **k)
ClassificationTask.evaluate = evaluate
real_unit = engine.reconstruct_unit
units = [0]
def unit(*a, **k):
    if kill_at == "unit" and units[0] == 2:    # after two units (and their checkpoints) finished
        os.kill(os.getpid(), signal.SIGKILL)
    units[0] += 1
    return real_unit(*a, **k)
engine.reconstruct_unit = unit
sys.exit(ptq_test.main(sys.argv[1:]))
"""


def run_driver(tmp_path, kill_at, *argv):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tools=os.path.join(REPO, "tools"), iters=ITERS))
    env = dict(os.environ, KILL_AT=kill_at, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(driver), CONFIG, CKPT, *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def outputs(out):
    return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)


def test_cli_kill_then_resume(tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["--bits", "4", "--method", "isvit", "--calib-num", "32", "--recon-setting", "small", "--no-fp",
            "--save-model", "--seed", "1", "--device", "cpu", "--quiet", "--out", str(out)]
    killed = run_driver(tmp_path, "unit", *argv)
    assert killed.returncode == -signal.SIGKILL
    files = outputs(out)
    assert "report.json" not in files and "report.md" not in files
    assert all(f.startswith(os.path.join("ckpt", "isvit_w4a4")) for f in files), files
    assert json.load(open(out / "ckpt/isvit_w4a4/calib.json"))["step"] == 1
    resumed = run_driver(tmp_path, "", *argv, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    fresh_out = tmp_path / "fresh"  # the uninterrupted run, in this process (same settings as the driver's)
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import ptq_test
    monkeypatch.setitem(recon.SETTINGS, "small", dict(low_bit_iters=ITERS, high_bit_iters=ITERS, batch_size=8))
    monkeypatch.chdir(REPO)
    assert ptq_test.main([CONFIG, CKPT] + argv[:-1] + [str(fresh_out)]) == 0
    a = open(out / "models/isvit_w4a4.safetensors", "rb").read()
    assert a == open(fresh_out / "models/isvit_w4a4.safetensors", "rb").read()
    r1, r2 = json.load(open(out / "report.json")), json.load(open(fresh_out / "report.json"))
    assert r1["results"][0]["metrics"] == r2["results"][0]["metrics"]
    assert r1["results"][0]["rolled_back"] == r2["results"][0]["rolled_back"]


def test_cli_killed_mid_evaluation_leaves_no_output(tmp_path):
    out = tmp_path / "out"
    killed = run_driver(tmp_path, "eval", "--bits", "4", "--method", "minmax", "repq", "--save-model",
                        "--device", "cpu", "--quiet", "--out", str(out))
    assert killed.returncode == -signal.SIGKILL
    files = outputs(out) if os.path.isdir(out) else []
    assert not [f for f in files if f.endswith((".json", ".md", ".safetensors")) and not f.startswith("ckpt")], files
