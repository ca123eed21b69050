"""Agreement with the float model and the paired bootstrap (plugin/tasks/agreement.py)."""
import pytest
import torch

from plugin.tasks.agreement import classification_agreement, paired_bootstrap


def test_identical_outputs_agree_fully():
    logits = torch.randn(50, 10, generator=torch.Generator().manual_seed(0))
    a = classification_agreement(logits, logits.clone())
    assert a["top1_agreement"] == 100.0 and a["mean_kl"] == pytest.approx(0.0, abs=1e-6)
    b = paired_bootstrap(torch.ones(50), torch.ones(50))
    assert b["diff"] == 0.0 and b["ci95"] == [0.0, 0.0] and b["tie"]


def test_changed_predictions_are_counted_and_kl_is_positive():
    fp = torch.zeros(4, 3)
    fp[torch.arange(4), torch.tensor([0, 1, 2, 0])] = 5.0
    q = fp.clone()
    q[3] = torch.tensor([0.0, 5.0, 0.0])  # one of four images changes its class
    a = classification_agreement(fp, q)
    assert a["top1_agreement"] == 75.0 and a["mean_kl"] > 0


def test_bootstrap_interval_excludes_zero_for_a_clear_drop_and_is_seeded():
    fp = torch.ones(400)
    q = torch.ones(400)
    q[:100] = 0  # 25 points lost
    b = paired_bootstrap(fp, q, resamples=500, seed=3)
    assert b["diff"] == pytest.approx(-25.0) and b["ci95"][1] < 0 and not b["tie"]
    assert b == paired_bootstrap(fp, q, resamples=500, seed=3)
    assert b["ci95"][0] < -25.0 < b["ci95"][1]
