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


def paired_bootstrap(fp_scores, q_scores, resamples=1000, seed=0):
    """Mean of (quantized − float) per-sample scores, ×100 (a percentage-point difference for 0/1 scores), with a
    95 % interval from `resamples` paired resamples of the samples (fixed seed). `tie` when the interval holds 0."""
    diff = torch.as_tensor(q_scores, dtype=torch.float64) - torch.as_tensor(fp_scores, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(diff), (resamples, len(diff)), generator=gen)
    means = diff[idx].mean(1) * 100.0
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"diff": diff.mean().item() * 100.0, "ci95": [lo, hi], "tie": lo <= 0.0 <= hi, "resamples": resamples}
