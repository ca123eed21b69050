"""APHQ-ViT as its official code runs it (`test_quant.py --config configs/{3,4}bit/best.py --reconstruct-mlp
--calibrate --optimize`):

1. `mlp_relu` (plugin.quant.recon.mlp_relu): GELU → ReLU in every MLP, each MLP re-fitted to the original float outputs
   on the 1024 optimisation images (20000 steps, Adam 4e-5, batch 32, average-perturbation Hessian weights, fc2 input
   clamped at the 0.99 (3-bit) / 0.98 (2- and 4-bit configs) percentile);
2. the AdaLog family's calibration (plugin.quant.adalog_family) on 128 images, the FC2 input (now post-ReLU) with its
   zero point fixed at 0 (`post_relu` → `fix_zp_zero` in the official Linear);
3. `qdrop_recon`: block-wise AdaRound/QDrop reconstruction (drop probability 0.5) with the average-perturbation
   Hessian loss (`optim_metric = "hessian_perturb"`, mean Hessian over images), 20000 steps per block, batch 32, on
   the 1024 images, against the original (GELU) float network as the official `full_model` is.

`setting="paper"` is that; `"small"` (CIFAR-sized models): 256 images (128 of them set the quantizers), 500 MLP
steps, and the reconstruction pass's own "small" iterations. Ablations are switches: `mlp=False` (GELU kept, plain
post-GELU grid), `recon=False` (calibration only), `loss="mse"` (plain MSE in both the MLP and block stages),
`fc2_zero="searched"` (the FC2 input's zero point searched like any input's: what the official search does, since
its per-tensor candidates ignore the `post_relu` flag; docs/methods.md).
"""
from functools import partial

from ...adalog_family import adalog_family_recipe, grid
from ...errors import ConfigError
from ...passes import PASSES
from ...recipe import register_recipe
from ...recon import clamp_pct


@register_recipe("aphq")
def aphq_recipe(w_bits, a_bits, *, setting="paper", mlp=True, recon=True, loss="aph", iters=None, mlp_iters=None,
                batch_size=32, eq_n=128, fc2_zero="fixed", name="aphq"):
    pre = [PASSES["mlp_relu"].from_dict(dict(setting=setting, iters=mlp_iters, clamp_pct=clamp_pct(a_bits),
                                              loss=loss, batch_size=batch_size))] if mlp else []
    post = [PASSES["qdrop_recon"].from_dict(dict(setting=setting, iters=iters, batch_size=batch_size, drop_prob=0.5,
                                                 loss=loss))] if recon else []
    if fc2_zero not in ("fixed", "searched"):
        raise ConfigError(f"{name}: fc2_zero must be 'fixed' or 'searched', got {fc2_zero!r}")
    post_gelu = grid(a_bits, zero_fixed=True, eq_n=eq_n) if mlp and fc2_zero == "fixed" else None
    return adalog_family_recipe(name, w_bits, a_bits, setting=setting, pre=pre, post=post, post_gelu=post_gelu,
                                eq_n=eq_n)


for _name, _switches in {"aphq_small": dict(setting="small"), "aphq_no_mlp": dict(mlp=False),
                         "aphq_no_recon": dict(recon=False),
                         "aphq_fc2_zero_searched": dict(fc2_zero="searched")}.items():
    register_recipe(_name)(partial(aphq_recipe, name=_name, **_switches))
