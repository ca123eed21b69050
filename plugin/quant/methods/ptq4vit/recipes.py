"""PTQ4ViT's recipes: "ptq4vit" (the official code's reading, with the `hessian_search` pass) and "ptq4vit_mse"
(our earlier reading, an MSE search on each quantizer's own input)."""
from ...recipe import Recipe, first_layer_sites, register_recipe
from ...spec import QuantSpec


@register_recipe("ptq4vit")
def ptq4vit_recipe(w_bits, a_bits, metric="hessian", grad="label"):
    """PTQ4ViT (Yuan et al., ECCV 2022) as its official code (hahnyuan/PTQ4ViT) does it: symmetric uniform grids,
    Linear weights per tensor (a fused qkv weight per q/k/v slice), the patch embedding's weights per output channel
    and its input in float, attention operands q, k and v per head, twin-uniform post-Softmax and post-GELU; every
    scale starts at min-max and is then searched on the module's output error weighted by squared task-loss gradients,
    all from the float model (`hessian_search`)."""
    act = QuantSpec(a_bits, symmetric=True)
    per_head = QuantSpec(a_bits, granularity="head", symmetric=True)
    sites = {
        "patch_embed.input": None,
        "patch_embed.weight": QuantSpec(w_bits, granularity="channel", symmetric=True),
        "qkv.weight": QuantSpec(w_bits, granularity="channel", symmetric=True, options=(("groups", 3),)),
        "q": per_head, "k": per_head, "v": per_head,
        "post_softmax": QuantSpec(a_bits, kind="twin_uniform", options=(("mode", "magnitude"),)),
        "post_gelu": QuantSpec(a_bits, kind="twin_uniform", options=(("mode", "sign"),)),
    }
    return Recipe(
        name="ptq4vit", w_bits=w_bits, a_bits=a_bits,
        weight=QuantSpec(w_bits, symmetric=True), act=act, sites=sites, sequential="none",
        passes=[dict(type="hessian_search", metric=metric, grad=grad)], calib_num=32,
    )


@register_recipe("ptq4vit_mse")
def ptq4vit_mse_recipe(w_bits, a_bits):
    """Our earlier PTQ4ViT reading: twin-uniform post-Softmax and post-GELU, every other range from an MSE search on
    the quantizer's own input (weights per output channel, asymmetric activations), block-sequential calibration."""
    sites = first_layer_sites(w_bits)
    sites["post_softmax"] = QuantSpec(a_bits, kind="twin_uniform", options=(("mode", "magnitude"),))
    sites["post_gelu"] = QuantSpec(a_bits, kind="twin_uniform", options=(("mode", "sign"),))
    return Recipe(
        name="ptq4vit_mse", w_bits=w_bits, a_bits=a_bits,
        weight=QuantSpec(w_bits, granularity="channel", search="mse"),
        act=QuantSpec(a_bits, search="mse"),
        sites=sites,
    )


__all__ = ["ptq4vit_mse_recipe", "ptq4vit_recipe"]
