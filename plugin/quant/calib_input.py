"""What `quantize` accepts besides a Recipe and a CalibData: a recipe name with bit widths, and calibration data as a
PyTorch user holds it (a DataLoader, a list of tensors or of (x, y) batches, one tensor), cut to `calib_num` samples.

This is the one-call form, beside NVIDIA ModelOpt's `mtq.quantize(model, config, forward_loop)`:

    quantize(model, "isvit", w_bits=4, a_bits=4, calib=loader, calib_num=256)

Our choices: batches are read once and kept (the methods run the calibration set several times: once per block, then
per reconstruction pass), so a DataLoader over a whole training set must be cut with `calib_num`; without `forward`,
a batch that is a tuple or list is `(x, ...)` and the model runs on `x`, moved to the model's device; `calib_num`
counts samples (the first dimension), never clamps (more than the data holds is an error), and stops reading the
loader once reached.
"""
import torch

from .errors import CalibrationError, ConfigError
from .recipe import Recipe, get_recipe


def resolve_recipe(recipe, w_bits=None, a_bits=None):
    """A Recipe as given, or the registered recipe `recipe` (a name) at `w_bits`/`a_bits` (get_recipe's defaults
    where None)."""
    bits = {k: v for k, v in (("w_bits", w_bits), ("a_bits", a_bits)) if v is not None}
    if isinstance(recipe, Recipe):
        if bits:
            raise ConfigError(f"w_bits/a_bits apply to a recipe name; the Recipe {recipe.name!r} given already has "
                              f"its bit widths (get_recipe(name, w_bits, a_bits) builds another)")
        return recipe
    if isinstance(recipe, str):
        return get_recipe(recipe, **bits)
    raise ConfigError(f"recipe must be a registered name (e.g. 'repq') or a Recipe, got {type(recipe).__name__}")


def _model_input(batch):
    """The tensor the default forward feeds the model: the batch, or its first element for (x, y, ...) batches."""
    x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"a calibration batch of type {type(batch).__name__} is not a tensor nor an (x, ...) tuple "
                          f"of one: pass forward=lambda model, batch: ... to say how the model runs on it")
    return x


def _sample_count(batch):
    """Samples in a batch for `calib_num`: the first dimension of the tensor it is or starts with."""
    x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise ConfigError(f"calib_num counts samples along the first dimension of each batch (a tensor or a tuple "
                          f"starting with one); a batch of type {type(batch).__name__} cannot be counted: pass the "
                          f"batches you want and no calib_num")
    return x.shape[0]


def _cut(batch, n):
    """The first `n` samples of a tensor batch or of each same-length tensor of a tuple/list batch."""
    if isinstance(batch, torch.Tensor):
        return batch[:n]
    size = _sample_count(batch)
    return type(batch)(t[:n] if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == size else t for t in batch)


def _device(model):
    return next((p.device for p in model.parameters()), None)


def calib_batches(calib, model, forward=None, calib_num=None):
    """(batches, forward) of calibration data given as a tensor (one batch) or any iterable (DataLoader, list,
    generator), read batch by batch, stopping after `calib_num` samples when given."""
    if calib is None:
        raise ConfigError("quantize needs calibration data: calib=<DataLoader or list of batches> (from a training "
                          "split, never the evaluation split)")
    if calib_num is not None and (isinstance(calib_num, bool) or not isinstance(calib_num, int) or calib_num < 1):
        raise ConfigError(f"calib_num must be a positive integer, got {calib_num!r}")
    if isinstance(calib, torch.Tensor):
        calib = [calib]
    try:
        batches_in = iter(calib)
    except TypeError:
        raise ConfigError(f"calib must be a CalibData, a DataLoader or a list of batches, got "
                          f"{type(calib).__name__}") from None
    device = _device(model) if forward is None else None
    batches, taken = [], 0
    for batch in batches_in:
        if calib_num is not None:
            size = _sample_count(batch)
            if taken + size > calib_num:
                batch, size = _cut(batch, calib_num - taken), calib_num - taken
            taken += size
        if forward is None:
            x = _model_input(batch)
            batch = x.to(device) if device is not None else x
        batches.append(batch)
        if calib_num is not None and taken >= calib_num:
            break
    if calib_num is not None and taken < calib_num:
        raise CalibrationError(f"calib_num={calib_num} but the calibration data holds {taken} samples")
    return batches, (forward if forward is not None else _run_model)


def _run_model(model, x):
    return model(x)
