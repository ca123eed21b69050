"""DopQ-ViT (arXiv 2408.03291) recipes.

- `dopq`: on I&S-ViT's pipeline: TanQ post-Softmax, channel-wise post-LN quantizers and the `sos` pass
  (plugin.quant.recon.sos) with the MOSF rule at its channel→layer step (stage 2). The paper's W3A3 numbers are out
  of reach without reconstruction, hence our reading that it optimises like I&S-ViT (docs/methods.md).
- `dopq_lite`: the reconstruction-free variant: TanQ and RepQ-style reparameterisation at calibration with the MOSF
  scale, where the rule is inert (plugin.quant.methods.dopq.mosf).

Ablations are one switch each (`dopq_no_tanq`, `dopq_no_mosf`, `dopq_lite_no_tanq`). The choices behind the defaults
(calibration sizes, iteration counts) are in docs/methods.md.
"""
from ...recipe import mse_recipe, register_ablations, register_recipe, setting_pass
from ...spec import QuantSpec


@register_recipe("dopq")
def dopq_recipe(w_bits, a_bits, *, tanq=True, mosf=True, setting="paper", iters=None, batch_size=None, lr=4e-5,
                name="dopq"):
    """DopQ-ViT: I&S-ViT's SOS with TanQ post-Softmax and the MOSF rule at the channel→layer step.

    Off switches fall back to what DopQ-ViT improves on: log√2 post-Softmax (RepQ-ViT's), the `mean` scale rule."""
    softmax = QuantSpec(a_bits, kind="tanq" if tanq else "log_sqrt2", search="mse")
    rule = "mosf" if mosf else "mean"
    passes = [setting_pass("sos", setting, iters=iters, batch_size=batch_size, lr=lr, rule=rule)]
    return mse_recipe(name, w_bits, a_bits, softmax, QuantSpec(a_bits, granularity="channel", search="mse"),
                      reparam=rule, passes=passes, calib_num=1024)


@register_recipe("dopq_lite")
def dopq_lite_recipe(w_bits, a_bits, *, tanq=True, name="dopq_lite"):
    """DopQ-ViT without reconstruction: TanQ and RepQ-style post-LN folding at calibration with the MOSF scale (inert
    there: the exact fold absorbs any layer-wise scale, plugin.quant.methods.dopq.mosf), on the task's default calibration size
    (32 images on classification, like RepQ-ViT)."""
    softmax = QuantSpec(a_bits, kind="tanq" if tanq else "log_sqrt2", search="mse")
    return mse_recipe(name, w_bits, a_bits, softmax, QuantSpec(a_bits, search="mse"), reparam="mosf")


ABLATIONS = {  # name -> (recipe function, switches): one switch off each, registered by name
    "dopq_no_tanq": (dopq_recipe, dict(tanq=False)),
    "dopq_no_mosf": (dopq_recipe, dict(mosf=False)),
    "dopq_lite_no_tanq": (dopq_lite_recipe, dict(tanq=False)),
}
register_ablations(ABLATIONS)

__all__ = ["ABLATIONS", "dopq_lite_recipe", "dopq_recipe"]
