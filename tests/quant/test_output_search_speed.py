"""The `output_search` pass scores the candidates of Linear and attention-matmul quantizers in stacked chunks
(`_Search.errors`); these tests hold it to the one-candidate-at-a-time reference (`_Search.error`, the module run once
per candidate, which Conv sites still use): the same error values up to float summation order, and the same picks."""
import copy

import pytest
import torch

import timm_toys as T
from plugin.quant import CalibData, iter_quantizers, quantize
from plugin.quant import output_search as OS
from plugin.quant.methods.aphq import aphq_recipe
from plugin.quant.methods.fimaq import fimaq_recipe
from plugin.quant.modules import MatMul, QuantLinear
from plugin.quant.percentile_grid import PercentileGridQuantizer

QUIET = dict(log=lambda *a: None)
RECIPES = {
    "aphq": lambda: aphq_recipe(3, 3, setting="small", recon=False, mlp_iters=3, eq_n=32),
    "fimaq": lambda: fimaq_recipe(3, 3, recon=False, eq_n=32, token_wise=False),
}


def calib(n_batches=2, size=4):
    return CalibData([T.images(size, seed) for seed in range(n_batches)], lambda m, b: m(b))


def _reference_errors(search, slot, q, scales, zeros):
    return torch.stack([search.error(slot, q, s, z) for s, z in zip(scales, zeros)])


def _states(model):
    return {name: (q.scale.clone(), q.zero_point.clone()) for name, q in iter_quantizers(model)
            if isinstance(q, PercentileGridQuantizer)}


def _run(recipe, monkeypatch, batched, picks):
    """Quantize the toy ViT, recording every pick's indices; `batched=False`: the per-candidate reference path."""
    original = OS._Search.pick

    def recording_pick(self, slot, q, scales, zeros):
        picks.append((type(self.module).__name__, slot, original(self, slot, q, scales, zeros).clone()))
        return picks[-1][2]

    with monkeypatch.context() as mp:
        mp.setattr(OS._Search, "pick", recording_pick)
        if not batched:
            mp.setattr(OS._Search, "batched", lambda self, q: False)
        return quantize(copy.deepcopy(T.build("vit")), recipe, calib(), **QUIET)


@pytest.mark.parametrize("name", list(RECIPES))
def test_batched_search_picks_what_the_per_candidate_search_picks(name, monkeypatch):
    monkeypatch.setattr(OS, "CHUNK_ELEMS", 3000)  # several chunks per quantizer on the toy model
    ref_picks, new_picks = [], []
    ref = _run(RECIPES[name](), monkeypatch, False, ref_picks)
    new = _run(RECIPES[name](), monkeypatch, True, new_picks)
    assert {kind for kind, _, _ in new_picks} >= {"QuantLinear", "MatMul"}  # both batched paths ran
    assert len(ref_picks) == len(new_picks)
    for (kind, slot, a), (_, _, b) in zip(ref_picks, new_picks):
        assert torch.equal(a, b), (kind, slot)
    ref_states, new_states = _states(ref), _states(new)
    assert ref_states.keys() == new_states.keys()
    for key, (scale, zero) in ref_states.items():
        assert torch.equal(scale, new_states[key][0]) and torch.equal(zero, new_states[key][1]), key


def test_batched_errors_match_the_per_candidate_errors(monkeypatch):
    """Every Linear / matmul quantizer slot of a calibrated toy ViT: errors of 32 candidates around its scale."""
    monkeypatch.setattr(OS, "CHUNK_ELEMS", 5000)
    model = quantize(copy.deepcopy(T.build("vit")), RECIPES["fimaq"](), calib(), **QUIET)
    model.eval()
    sites, checked = {}, 0
    for name, mod in model.named_modules():
        if isinstance(mod, (QuantLinear, MatMul)):
            calls = []
            h = mod.register_forward_hook(lambda m, a, o: calls.append((a, o)))
            with torch.no_grad():
                model(T.images(3, 7))
            h.remove()
            sites[name] = (mod, calls)
    with torch.no_grad():
        for name, (mod, calls) in sites.items():
            search = OS._Search(type("Site", (), {"module": mod})(), [(a, o + 0.01 * o.std()) for a, o in calls])
            for slot in ("input_quantizer", "weight_quantizer", "a_quantizer", "b_quantizer"):
                q = getattr(mod, slot, None)
                if not isinstance(q, PercentileGridQuantizer) or not search.batched(q):
                    continue
                factor = torch.linspace(0.5, 2.0, 32)[:, None]
                scales = q.scale.reshape(1, -1) * factor
                zeros = q.zero_point.reshape(1, -1).expand_as(scales).clone()
                ref = _reference_errors(search, slot, q, scales, zeros)
                new = search.errors(slot, q, scales, zeros)
                assert new.shape == ref.shape, (name, slot)
                torch.testing.assert_close(new, ref, rtol=1e-4, atol=1e-6, msg=f"{name} {slot}")
                checked += 1
    assert checked >= 8
