"""The one progress style (plugin/quant/progress.py) and per-unit resume of PTQ4ViT's Hessian-guided search."""
import copy
import json
import os

import pytest
import torch

import plugin  # noqa: F401
from plugin.config import load_config
from plugin.quant import get_recipe, quantize
from plugin.quant.methods.ptq4vit import hessian
from plugin.quant.progress import Progress, clock, progress
from plugin.tasks.base import get_task

from repo_paths import REPO  # noqa: E402


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_lines_are_throttled_and_carry_elapsed_and_eta():
    lines, t = [], Clock()
    p = Progress(10, "[x]", lines.append, every=5.0, timer=t)
    for _ in range(3):  # 1 s each: under the 5 s throttle
        t.t += 1
        p.step()
    assert lines == []
    t.t += 3  # 6 s since the start: 4 of 10 done, 1.5 s each, 6 left
    p.step("units")
    assert lines == ["[x] 4/10 units, 0:06 elapsed, ETA 0:09"]
    for _ in range(6):
        t.t += 0.5
        p.step()
    assert lines[-1] == "[x] 10/10, 0:09 elapsed"  # the last item always logs, without an ETA


def test_eta_counts_only_items_done_in_this_run():
    lines, t = [], Clock()
    p = Progress(10, "[x]", lines.append, every=0, done=8, timer=t)
    t.t += 60
    p.step()
    assert lines == ["[x] 9/10, 1:00 elapsed, ETA 1:00"]  # 60 s for the one item this run did, not 60/9


def test_clock_and_wrap():
    assert (clock(59.6), clock(61), clock(3725)) == ("1:00", "1:01", "1:02:05")
    lines = []
    assert list(progress(range(3), "[e]", log=lines.append)) == [0, 1, 2]
    assert lines == ["[e] 3/3, 0:00 elapsed"]
    assert list(progress(iter(range(2)), "[e]", log=lines.append)) == [0, 1] and lines[-1] == "[e] 2, 0:00 elapsed"
    assert list(progress(range(3), "[e]", log=lines.append, enabled=False)) == [0, 1, 2] and len(lines) == 2


@pytest.fixture(scope="module")
def embedded():
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        task = get_task("classification")(load_config(os.path.join(REPO, "configs/classification/fmnist_vit_tiny.py")),
                                          os.path.join(REPO, "plugin/assets/fmnist_vit_tiny.safetensors"),
                                          device="cpu")
        fp = task.build_model()
        calib = task.calib_data(fp, 8, 0)
    finally:
        os.chdir(cwd)
    return fp, calib


def short_search():
    recipe = get_recipe("ptq4vit", 4, 4)
    recipe.passes = [dict(p, eq_n=6, rounds=1, split_candidates=4, grad="random") for p in recipe.passes]
    return recipe


class Killed(Exception):
    pass


def test_hessian_search_resumes_bit_for_bit(embedded, tmp_path, monkeypatch):
    fp, calib = embedded
    lines = []
    full = quantize(copy.deepcopy(fp), short_search(), calib, log=lines.append, seed=3)
    assert any(line.startswith("[hessian_search] ") and "elapsed" in line for line in lines)
    ckpt, real, count = tmp_path / "ckpt", hessian._Capture.run, [0]

    def run(self, *args):
        if count[0] == 3:  # units 1-3 searched and checkpointed, the 4th interrupted
            raise Killed
        count[0] += 1
        return real(self, *args)
    with monkeypatch.context() as m:
        m.setattr(hessian._Capture, "run", run)
        with pytest.raises(Killed):
            quantize(copy.deepcopy(fp), short_search(), calib, log=lambda s: None, seed=3, checkpoint_dir=str(ckpt))
    meta = json.load(open(ckpt / "calib.json"))
    assert meta["pass"] == "hessian_search" and meta["step"] == 2
    searched, lines = [], []
    monkeypatch.setattr(hessian._Capture, "run", lambda self, *a: searched.append(1) or real(self, *a))
    resumed = quantize(copy.deepcopy(fp), short_search(), calib, log=lines.append, seed=3, checkpoint_dir=str(ckpt),
                       resume=True)
    assert any("[hessian_search] resumed after unit 3/" in line for line in lines)
    n_units = json.load(open(ckpt / "calib.json"))["step"] + 1
    assert len(searched) == n_units - 3 > 0
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the searched scales differ from where the search started: the comparison above is not trivially true
    start = quantize(copy.deepcopy(fp), _no_passes(), calib, log=lambda s: None, seed=3).state_dict()
    assert any(not torch.equal(a[k], start[k]) for k in a)


def _no_passes():
    recipe = get_recipe("ptq4vit", 4, 4)
    recipe.passes = []
    return recipe
