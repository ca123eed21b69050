"""`relu_fisher`: the two CVPR 2025 codes of the AdaLog family combined, plus general changes of ours, each a switch
so that ablation decides (measured on the DeiT-S-shaped reference at 100 iterations per block, docs/results.md, "The
frontier on the DeiT-S shape": below `fimaq` at W3A3 and W2A4; the MLP step and the fold at every width are the
measured causes, so it is not a recommended recipe):

1. APHQ-ViT's MLP reconstruction (`mlp_relu`, plugin.quant.recon.mlp_relu): GELU → ReLU, each MLP re-fitted to the
   float outputs before quantization; the FC2 input then sits on a grid with its zero point fixed at 0;
2. the AdaLog family's calibration (plugin.quant.adalog_family) with FIMA-Q's per-token input and operand scales;
3. `qdrop_recon` with FIMA-Q's Fisher-information DPLR loss (APHQ-ViT's own block loss is the average-perturbation
   Hessian one; `loss="aph"` switches to it);
4. ours: the post-LayerNorm scales are folded into the LayerNorm at every width (the official codes fold only when the
   activation and weight widths are equal, so at W2A4 the post-LayerNorm inputs of qkv and fc1 keep one scale for all
   channels); `reparam_always=False` gives the official rule;
5. optional, ours: `softmax="adalog"` puts the post-Softmax input on AdaLog's adaptive-base log grid
   (plugin.quant.adalog) instead of the uniform grid both official codes use.

Settings as `aphq`: `paper` (1024 images, 128 set the quantizers, 20000 steps per MLP and per block) and `small`.
"""
from functools import partial

from ...adalog_family import adalog_family_recipe, grid, softmax_spec
from ...passes import PASSES
from ...recipe import register_recipe
from ...recon import clamp_pct


@register_recipe("relu_fisher")
def relu_fisher_recipe(w_bits, a_bits, *, setting="paper", loss="fisher_dplr", token_wise=True, reparam_always=True,
                       softmax="grid", iters=None, mlp_iters=None, batch_size=32, eq_n=128, name="relu_fisher"):
    pre = [PASSES["mlp_relu"].from_dict(dict(setting=setting, iters=mlp_iters, clamp_pct=clamp_pct(a_bits),
                                              loss="aph", batch_size=batch_size))]
    post = [PASSES["qdrop_recon"].from_dict(dict(setting=setting, iters=iters, batch_size=batch_size, drop_prob=0.5,
                                                 loss=loss))]
    return adalog_family_recipe(name, w_bits, a_bits, setting=setting, pre=pre, post=post,
                                post_gelu=grid(a_bits, zero_fixed=True, eq_n=eq_n), eq_n=eq_n, token_wise=token_wise,
                                post_softmax=softmax_spec(softmax, a_bits, eq_n, name), reparam_always=reparam_always)


ABLATIONS = {"relu_fisher_small": dict(setting="small"), "relu_fisher_aph": dict(loss="aph"),
             "relu_fisher_official_reparam": dict(reparam_always=False),
             "relu_fisher_adalog_softmax": dict(softmax="adalog")}
for _name, _switches in ABLATIONS.items():
    register_recipe(_name)(partial(relu_fisher_recipe, name=_name, **_switches))
