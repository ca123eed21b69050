"""timm models as the rest of the package needs them: the input size a model was built for, timm's preprocessing at
that size, and the record that lets `plugin.quant.load_quantized(path)` rebuild a timm model from a saved JSON.

The pitfall these fix: timm's `resolve_data_config({}, model=model)` reads the preset of the model's *name*
(`pretrained_cfg["input_size"]`), so a `vit_tiny_patch16_224` built with `img_size=48` is given 224-pixel inputs and
its first forward fails ("Input height (224) doesn't match model (48)"). The size the model was built with is on its
patch embedding.
"""
import torch

from ..errors import UserInputError


def patch_embedding(model):
    """The model's patch embedding: `patch_embed` (ViT, DeiT, Swin) or any submodule with timm PatchEmbed's
    `img_size` and `proj` (e.g. MLP-Mixer's `stem`)."""
    pe = getattr(model, "patch_embed", None)
    if pe is not None and getattr(pe, "img_size", None) is not None:
        return pe
    for m in model.modules():
        if getattr(m, "img_size", None) is not None and hasattr(m, "proj"):
            return m
    return None


def input_size(model):
    """(C, H, W) of the inputs `model` was built for: its patch embedding's `img_size` and input channels, else the
    `input_size` of its pretrained config. UserInputError when neither says."""
    pe = patch_embedding(model)
    if pe is not None:
        size = pe.img_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (getattr(getattr(pe, "proj", None), "in_channels", 3), *size)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if cfg.get("input_size"):
        return tuple(cfg["input_size"])
    raise UserInputError(f"cannot tell the input size of {type(model).__name__}: it has no timm patch embedding and "
                         f"no pretrained_cfg input_size")


def data_config_for(model, **overrides):
    """timm's `resolve_data_config` for `model`, with the input size it was built for (not its name's preset) unless
    `overrides` give `input_size`; `overrides` (mean, std, interpolation, crop_pct, crop_mode) replace the model's
    pretrained config. Feed the result to `timm.data.create_transform(**cfg)`."""
    return image_data_config(overrides, model)


PREPROCESS_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")


def image_data_config(data_cfg, model):
    """timm's preprocessing for an image folder: what the config's `data` gives (input_size, mean, std, interpolation,
    crop_pct, crop_mode), the rest from the model's pretrained_cfg; the input size from the model as built (its
    kwargs applied, e.g. img_size=64), not from the preset of its name."""
    import timm.data
    args = {k: data_cfg[k] for k in PREPROCESS_KEYS if data_cfg.get(k) is not None}
    for key in ("mean", "std"):
        if key in args:
            args[key] = tuple(float(v) for v in (args[key] if isinstance(args[key], (list, tuple)) else [args[key]]))
    if "input_size" in args:
        size = args["input_size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        if len(size) == 2:
            size = (input_size(model)[0] if patch_embedding(model) is not None else 3,) + size
        if len(size) != 3 or not all(isinstance(v, int) and v > 0 for v in size):
            raise UserInputError(f"data.input_size must be an int, (H, W) or (C, H, W), got {data_cfg['input_size']!r}")
        args["input_size"] = size
    elif patch_embedding(model) is not None:  # timm's resolve_data_config would take the name's preset size
        args["input_size"] = input_size(model)
    return timm.data.resolve_data_config(args, model=model)


# --- the record of a timm model, for load_quantized(path) --------------------------------------------------------

def _first_block(model):
    if hasattr(model, "blocks"):
        return model.blocks[0]
    return model.layers[0].blocks[0]  # Swin: stages of blocks


def _heads(model):
    if hasattr(model, "blocks"):
        return model.blocks[0].attn.num_heads
    return [stage.blocks[0].attn.num_heads for stage in model.layers]


def _size(v):
    v = tuple(v) if not isinstance(v, int) else (v, v)
    return v[0] if v[0] == v[1] else list(v)


# create_model keyword -> how to read it off a built ViT/DeiT/Swin; a reader that fails means "not this family"
_READERS = {
    "img_size": lambda m: _size(patch_embedding(m).img_size),
    "patch_size": lambda m: _size(patch_embedding(m).patch_size),
    "in_chans": lambda m: patch_embedding(m).proj.in_channels,
    "num_classes": lambda m: m.num_classes,
    "embed_dim": lambda m: m.embed_dim,
    "depth": lambda m: len(m.blocks),
    "depths": lambda m: [len(stage.blocks) for stage in m.layers],
    "num_heads": _heads,
    "window_size": lambda m: _size(m.layers[0].blocks[0].window_size),
    "mlp_ratio": lambda m: _first_block(m).mlp.fc1.out_features / _first_block(m).mlp.fc1.in_features,
    "qkv_bias": lambda m: _first_block(m).attn.qkv.bias is not None,
}


def _read(model):
    out = {}
    for key, read in _READERS.items():
        try:
            out[key] = read(model)
        except (AttributeError, IndexError, TypeError):
            continue
    return out


def _create(name, kwargs, device=None):
    import timm
    if device is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    with torch.device(device):
        return timm.create_model(name, pretrained=False, **kwargs)


def _same_structure(candidate, model):
    """Every tensor of `candidate` (a float model) is in `model`'s state with the same shape, and every Linear, Conv
    or LayerNorm of `model` exists in `candidate`: `model` (quantized or not) was built like `candidate`. Layers
    frozen to Int8Linear hold `weight_int8` instead of `weight`."""
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, value in candidate.state_dict().items():
        alt = key[:-len("weight")] + "weight_int8" if key.endswith("weight") else None
        if state.get(key, state.get(alt)) != tuple(value.shape):
            return False
    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm)
    names = dict(candidate.named_modules())
    return all(name in names for name, m in model.named_modules()
               if isinstance(m, kinds) or type(m).__name__ == "Int8Linear")


def describe_timm_model(model):
    """{"task", "timm_model", "timm_kwargs"} of a timm model whose hyperparameters this reads back (ViT, DeiT, Swin:
    those differing from the name's defaults), checked by building the float model on the meta device and comparing
    every tensor shape; None for any other model or a model it cannot read back exactly."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if not isinstance(name, str) or not type(model).__module__.startswith("timm."):
        return None
    try:
        default = _read(_create(name, {}, "meta"))
        built = _read(model)
        kwargs = {k: v for k, v in built.items() if default.get(k) != v}
        if not _same_structure(_create(name, kwargs, "meta"), model):
            return None
    except Exception:  # noqa: BLE001  (a model timm cannot build back by name: no record, load needs the model)
        return None
    return {"task": "classification", "timm_model": name, "timm_kwargs": kwargs}


def build_timm_model(record):
    """The float timm model of a record written by describe_timm_model or by tools/ptq_test.py (`task.model_meta`);
    None for a record that names no timm model."""
    if not isinstance(record, dict) or not isinstance(record.get("timm_model"), str):
        return None
    kwargs = record.get("timm_kwargs") or {}
    try:
        return _create(record["timm_model"], dict(kwargs)).eval()
    except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
        raise UserInputError(f"cannot build the recorded timm model {record['timm_model']!r} with {kwargs}: "
                             f"{exc}") from exc

