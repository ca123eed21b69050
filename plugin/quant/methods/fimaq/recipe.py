"""FIMA-Q as its official code runs it (`test_quant.py --config configs/{3,4}bit/best.py --calibrate --optimize`):
the AdaLog family's calibration (plugin.quant.adalog_family) on 128 images, then `qdrop_recon`: block-wise
AdaRound/QDrop reconstruction (drop probability 0.5) whose loss weights the output error by the Fisher information
approximated as diagonal plus low rank (`optim_metric = "fisher_dplr"`, rank k = 5, p1 = p2 = 1), 20000 steps per
block, batch 32, on 1024 images. No MLP change: GELU stays, the post-GELU input of FC2 on the plain grid.

The official configs set `token_channel_wise = True`: after the search, each Linear input scale (inputs of three
dimensions) and each attention operand scale becomes one scale per token (per row of the left operand, per column of
the right one: per key token of kᵀ, per channel of v), initialised to the searched value, so only the scales learned
in reconstruction differ (`token_wise=False` keeps one per tensor / head).

`setting="paper"` is that; `"small"`: 256 images (128 set the quantizers) and the reconstruction pass's "small"
iterations. `recon=False`: calibration only; `loss="mse"`: QDrop with plain MSE. Ours, not in the official code:
`softmax="adalog"` (`fimaq_adalog_softmax`) puts the post-Softmax input on AdaLog's adaptive-base log grid
(plugin.quant.adalog, per head) instead of the uniform grid; `gelu="adalog"` does the same for the post-GELU input of
FC2 (per tensor, shifted by GELU's minimum, as AdaLog's configs do); `fimaq_adalog` switches both. `lowrank=True`
(`fimaq_adalog_softmax_lowrank`): AIQViT's low-rank compensation (`lowrank` pass) after the reconstruction.
"""
from functools import partial

from ...adalog_family import adalog_family_recipe, gelu_spec, softmax_spec
from ...passes import PASSES
from ...recipe import register_recipe


@register_recipe("fimaq")
def fimaq_recipe(w_bits, a_bits, *, setting="paper", recon=True, loss="fisher_dplr", iters=None, batch_size=32,
                 eq_n=128, token_wise=True, softmax="grid", gelu="grid", lowrank=False, name="fimaq"):
    post = [PASSES["qdrop_recon"].from_dict(dict(setting=setting, iters=iters, batch_size=batch_size, drop_prob=0.5,
                                                 loss=loss))] if recon else []
    if lowrank:  # AIQViT's pass, found in the registry when the recipe is built; its own defaults but iters
        post.append(PASSES["lowrank"].from_dict(dict(setting=setting, iters=iters)))
    return adalog_family_recipe(name, w_bits, a_bits, setting=setting, post=post, eq_n=eq_n, token_wise=token_wise,
                                post_softmax=softmax_spec(softmax, a_bits, eq_n, name),
                                post_gelu=gelu_spec(gelu, a_bits, eq_n, name))


for _name, _switches in {"fimaq_small": dict(setting="small"), "fimaq_no_recon": dict(recon=False),
                         "fimaq_adalog_softmax": dict(softmax="adalog"),
                         "fimaq_adalog": dict(softmax="adalog", gelu="adalog"),
                         "fimaq_adalog_softmax_lowrank": dict(softmax="adalog", lowrank=True)}.items():
    register_recipe(_name)(partial(fimaq_recipe, name=_name, **_switches))
