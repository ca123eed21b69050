"""The models and recipes a benchmark runs: timm models with random weights (speed does not depend on them) at full
or toy (`quick`) size, the embedded default with its trained weights, recipes with shortened passes, and random
calibration images at the model's input size."""
import os

import torch

from ..utils.paths import REPO_ROOT

MODELS = ["deit_small_patch16_224", "vit_base_patch16_224"]
METHODS = ["minmax", "ptq4vit", "repq", "dopq_lite"]
# quick: the same families at toy sizes, so the whole run takes seconds on a CPU.
QUICK_MODEL_ARGS = {
    "deit_small_patch16_224": dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10),
    "vit_base_patch16_224": dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10),
}
# model "fmnist_vit_tiny": the embedded default (configs/classification/fmnist_vit_tiny.py) with its trained weights.
EMBEDDED = {"fmnist_vit_tiny": ("vit_tiny_patch16_224", dict(img_size=28, patch_size=4, in_chans=1, num_classes=10,
                                                             embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0),
                                "plugin/assets/fmnist_vit_tiny.safetensors")}


def build_model(name, quick, device, model_kwargs=None):
    """timm model `name` in eval mode on `device` (seeded random weights; the embedded default with its own)."""
    import timm
    torch.manual_seed(0)
    if name in EMBEDDED:
        from safetensors.torch import load_file
        timm_name, kwargs, weights = EMBEDDED[name]
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
        model.load_state_dict(load_file(os.path.join(REPO_ROOT, weights)))
        return model.eval().to(device)
    kwargs = {**(QUICK_MODEL_ARGS.get(name, {}) if quick else {}), **(model_kwargs or {})}
    return timm.create_model(name, pretrained=False, **kwargs).eval().to(device)


def bench_recipe(method, w_bits, a_bits, iters=None, quick=False, calib_batch=None):
    """The registered recipe; with `iters`, every pass shortened to that many iterations (and, when `quick`, to
    batches of at most `calib_batch`)."""
    from ..quant import get_recipe
    recipe = get_recipe(method, w_bits, a_bits)
    if iters is not None:
        recipe.passes = [p.replace(iters=iters) for p in recipe.passes]
        if quick:
            recipe.passes = [p.replace(batch_size=min(p.batch_size or calib_batch, calib_batch))
                             for p in recipe.passes]
    return recipe


def random_calib(shape, num, batch, device):
    """(images, CalibData): `num` seeded random images of `shape` in batches of `batch`."""
    from ..quant import CalibData
    gen = torch.Generator(device).manual_seed(1)
    images = torch.randn(num, *shape, device=device, generator=gen)
    return images, CalibData(list(images.split(batch)), lambda m, b: m(b))


__all__ = ["EMBEDDED", "METHODS", "MODELS", "QUICK_MODEL_ARGS", "bench_recipe", "build_model", "random_calib"]
