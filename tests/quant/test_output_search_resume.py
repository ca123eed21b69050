"""Per-unit resume of the AdaLog family's `output_search` pass (plugin/quant/output_search.py) through the run's
checkpoints (plugin/quant/resume.py): a run interrupted inside the pass and resumed ends bit-identical to an
uninterrupted one, and a run without a checkpoint directory searches exactly as the per-site loop always did."""
import copy
import json
from dataclasses import dataclass

import pytest
import torch

import timm_toys as T
from plugin.quant import CalibData, quantize
from plugin.quant import output_search as OS
from plugin.quant.errors import CheckpointError
from plugin.quant.methods.fimaq import fimaq_recipe
from plugin.quant.passes import PASSES, PassConfig, register_pass
from plugin.quant.percentile_grid import PercentileGridQuantizer
from plugin.quant.resume import CalibCheckpoint

QUIET = dict(log=lambda *a: None, seed=5)


@pytest.fixture(autouse=True)
def few_rows(monkeypatch):
    """Rows are subsampled at every input quantizer, so the pass's one random generator is drawn from all along: a
    resumed run must continue it where the checkpoint left it."""
    monkeypatch.setattr(OS, "MAX_ROWS", 50)


def data():
    return CalibData([T.images(4, seed) for seed in range(2)], lambda m, b: m(b))


def search_only(pass_type="output_search"):
    recipe = fimaq_recipe(4, 4, recon=False, eq_n=16)
    recipe.passes = [dict(p, type=pass_type, rounds=1) for p in recipe.passes]
    return recipe


class Killed(Exception):
    pass


def equal_states(a, b):
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_output_search_resumes_bit_for_bit(tmp_path, monkeypatch):
    fp = T.build("vit")
    full = quantize(copy.deepcopy(fp), search_only(), data(), **QUIET)
    real, names = OS._capture, []
    monkeypatch.setattr(OS, "_capture", lambda ctx, site, once: names.append(site.name) or real(ctx, site, once))
    quantize(copy.deepcopy(fp), search_only(), data(), **QUIET)
    order, names[:] = list(names), []
    kill_at = 9  # the 10th site: inside block 1, after some of its sites were searched
    saved_at = []

    def capture(ctx, site, once):
        if len(names) == kill_at:
            raise Killed
        return names.append(site.name) or real(ctx, site, once)
    ckpt, real_save = tmp_path / "ckpt", CalibCheckpoint.save
    with monkeypatch.context() as m:
        m.setattr(OS, "_capture", capture)
        m.setattr(CalibCheckpoint, "save", lambda self, *a, **k: saved_at.append(len(names)) or real_save(self, *a, **k))
        with pytest.raises(Killed):
            quantize(copy.deepcopy(fp), search_only(), data(), checkpoint_dir=str(ckpt), **QUIET)
    meta = json.load(open(ckpt / "calib.json"))
    assert meta["pass"] == "output_search" and meta["step"] == len(saved_at) - 1 >= 1
    assert saved_at[-1] < kill_at  # the interrupted unit had finished sites that the resumed run searches again
    names[:], lines = [], []
    resumed = quantize(copy.deepcopy(fp), search_only(), data(), checkpoint_dir=str(ckpt), resume=True,
                       **dict(QUIET, log=lines.append))
    assert any(f"[output_search] resumed after unit {meta['step'] + 1}/" in line for line in lines)
    assert names == order[saved_at[-1]:]  # the finished units are skipped, the rest searched
    assert equal_states(full, resumed)
    x = T.images(4, 9)
    with torch.no_grad():
        assert torch.equal(full(x), resumed(x))
    # the search moved the scales: the equality above is not that of two untouched models
    start = search_only()
    start.passes = []
    assert not equal_states(full, quantize(copy.deepcopy(fp), start, data(), **QUIET))


def test_a_checkpoint_of_another_unit_is_refused(tmp_path):
    """A checkpoint whose step another unit wrote (as an older version's qdrop_recon step would be read here) is
    refused, not loaded in the middle of the search."""
    fp, ckpt = T.build("vit"), tmp_path / "ckpt"
    quantize(copy.deepcopy(fp), search_only(), data(), checkpoint_dir=str(ckpt), **QUIET)
    meta = json.load(open(ckpt / "calib.json"))
    meta.update(step=1, **{"pass": "qdrop_recon"}, pass_index=1, unit_index=1)
    json.dump(meta, open(ckpt / "calib.json", "w"))
    with pytest.raises(CheckpointError, match="older version"):
        quantize(copy.deepcopy(fp), search_only(), data(), checkpoint_dir=str(ckpt), resume=True, **QUIET)


@dataclass
class _PerSiteSearch(PassConfig):
    """The pass as it was before it had units (test only): every site in `ctx.sites` order, one generator."""
    rounds: int = 3

    def run(self, ctx):
        gen = torch.Generator().manual_seed(ctx.seed)
        _, per_forward = ctx.execution_order()
        for site in ctx.sites:
            if any(isinstance(q, PercentileGridQuantizer) for _, q in site.quantizers()):
                calls = OS._capture(ctx, site, once=per_forward.get(site.name, 0) == 1)
                OS._search_site(site, calls, self.rounds, gen)
                OS._expand_tokens(site, calls)


def test_without_a_checkpoint_directory_the_search_is_the_per_site_loop(tmp_path):
    fp = T.build("vit")
    register_pass("_per_site_output_search")(_PerSiteSearch)
    try:  # registered only while this test runs (other tests list the registered passes)
        before = quantize(copy.deepcopy(fp), search_only("_per_site_output_search"), data(), **QUIET)
    finally:
        PASSES.unregister("_per_site_output_search")
    assert equal_states(before, quantize(copy.deepcopy(fp), search_only(), data(), **QUIET))
    # a checkpoint directory changes nothing either
    assert equal_states(before, quantize(copy.deepcopy(fp), search_only(), data(), checkpoint_dir=str(tmp_path),
                                         **QUIET))
