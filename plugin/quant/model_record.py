"""How a saved quantized model names the float model it was made from, so `load_quantized(path)` can rebuild it.

The core knows no model library (it imports torch only): a layer above registers a *model recorder*, a pair of
callbacks. `describe(model)` returns a JSON-able record of how to build a float model of the same architecture (or None
when the model is not one it knows); `build(record)` builds that float model (or returns None when the record is not
one of its own). `save_quantized` writes the first record a recorder gives as the JSON's `model` entry, unless the
caller's `extra_meta` already has one; `load_quantized(path)` without a float model asks each recorder to build it.
`import plugin` registers one for timm models (plugin/classification/timm_models.py, imported on first use).
"""
from .errors import CheckpointError
from .registry import Registry

MODEL_RECORDERS = Registry("model recorder")


def register_model_recorder(name, describe, build):
    """Register `describe(model) -> dict | None` and `build(record) -> nn.Module | None` under `name`."""
    return MODEL_RECORDERS.register(name, (describe, build))


def describe_model(model):
    """The first recorder's record of `model` (a dict), or None when no registered recorder knows it."""
    for describe, _ in MODEL_RECORDERS.values():
        record = describe(model)
        if record is not None:
            return record
    return None


def build_recorded_model(record, where):
    """The float model that `record` (a saved JSON's `model` entry) describes, built by the recorder that owns it."""
    if not isinstance(record, dict):
        raise CheckpointError(f"{where} records no model recipe (no 'model' entry: saved from a model no recorder "
                              f"knows); build the float model and call load_quantized(float_model, path)")
    for name, (_, build) in MODEL_RECORDERS.items():
        model = build(record)
        if model is not None:
            return model
    known = ", ".join(MODEL_RECORDERS.names()) or "none; `import plugin` registers the timm one"
    raise CheckpointError(f"{where}: no model recorder can build the recorded model {record!r} (recorders: {known}); "
                          f"build the float model and call load_quantized(float_model, path)")
