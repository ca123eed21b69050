"""How far a quantized model's outputs moved from the float model's, image by image (torch only).

Agreement measures quantization damage directly, also on models too weak for their task metric to separate methods;
the paired bootstrap says whether a quantized-minus-float difference of the task metric is more than noise of the
evaluation set.
"""
import torch


def classification_agreement(fp_logits, q_logits):
    """Top-1 agreement (% of images whose predicted class is the float model's) and the mean KL(float ‖ quantized)
    of the softmax outputs, in nats."""
    fp_logits, q_logits = fp_logits.float(), q_logits.float()
    agree = (fp_logits.argmax(1) == q_logits.argmax(1)).float().mean().item() * 100.0
    p_log, q_log = fp_logits.log_softmax(1), q_logits.log_softmax(1)
    kl = (p_log.exp() * (p_log - q_log)).sum(1).mean().item()
    return {"top1_agreement": agree, "mean_kl": kl}


def bootstrap_indices(n, resamples=1000, seed=0):
    """(resamples, n) sample indices drawn with replacement from a seeded generator. Pairing: the float and the
    quantized statistic of one resample are computed on the same draw."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (resamples, n), generator=gen)


def bootstrap_counts(n, resamples=1000, seed=0):
    """The same draws as `bootstrap_indices`, as (resamples, n) multiplicities: how often each sample was drawn.
    For statistics that are not means of per-sample scores (COCO mAP), which weight each sample by its count."""
    idx = bootstrap_indices(n, resamples, seed)
    return torch.zeros(resamples, n, dtype=torch.int64).scatter_add_(1, idx, torch.ones_like(idx))


def bootstrap_interval(diff, resampled):
    """`diff` (the difference on the whole evaluation set) with the 95 % percentile interval of its resampled values;
    `tie` when the interval holds 0. NaN resamples (a statistic undefined on that draw) are left out of the interval
    and of the `resamples` count."""
    values = torch.as_tensor(resampled, dtype=torch.float64).flatten()
    values = values[~values.isnan()]
    if values.numel() == 0:
        return {"diff": diff, "ci95": None, "tie": None, "resamples": 0}
    lo, hi = torch.quantile(values, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"diff": diff, "ci95": [lo, hi], "tie": lo <= 0.0 <= hi, "resamples": values.numel()}


def paired_bootstrap(fp_scores, q_scores, resamples=1000, seed=0):
    """Mean of (quantized − float) per-sample scores, ×100 (a percentage-point difference for 0/1 scores), with a
    95 % interval from `resamples` paired resamples of the samples (fixed seed). `tie` when the interval holds 0."""
    diff = torch.as_tensor(q_scores, dtype=torch.float64) - torch.as_tensor(fp_scores, dtype=torch.float64)
    means = diff[bootstrap_indices(len(diff), resamples, seed)].mean(1) * 100.0
    return bootstrap_interval(diff.mean().item() * 100.0, means)
