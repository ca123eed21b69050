"""The min-max baseline recipe ("minmax")."""
from ...recipe import Recipe, first_layer_sites, register_recipe
from ...spec import QuantSpec


@register_recipe("minmax")
def minmax_recipe(w_bits, a_bits):
    """Plain min-max uniform quantization: per-channel weights, per-tensor activations, uniform everywhere."""
    return Recipe(
        name="minmax", w_bits=w_bits, a_bits=a_bits,
        weight=QuantSpec(w_bits, granularity="channel"),
        act=QuantSpec(a_bits),
        sites=first_layer_sites(w_bits),
    )


__all__ = ["minmax_recipe"]
