"""Config loading: a small loader for plain configs, mmengine's Config for the OpenMMLab ones.

The small loader understands plain Python config files with `_base_` (a path or list of paths relative to the file),
merging dicts recursively; keys of the child win, and `_delete_=True` in a child dict replaces the base dict.
mmengine's Config (when installed) reads a config that needs it: one the small loader cannot read (a `_base_` in
another package, `mmdet::…`) or one that sets `custom_imports` or `default_scope` (OpenMMLab's registries: the
detection configs). So a classification or point-cloud run never imports mmengine (an import of seconds).
"""
import os
import runpy

from .errors import UserInputError


def _merge(base, child):
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not value.get("_delete_", False):
            out[key] = _merge(out[key], value)
        else:
            out[key] = {k: v for k, v in value.items() if k != "_delete_"} if isinstance(value, dict) else value
    return out


class _AttrDict(dict):
    def __getattr__(self, name):
        try:
            value = self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc
        return _AttrDict(value) if isinstance(value, dict) and not isinstance(value, _AttrDict) else value


def _load_plain(path):
    ns = runpy.run_path(path)
    values = {k: v for k, v in ns.items() if not k.startswith("__") and not callable(v) and not hasattr(v, "__file__")}
    bases = values.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else list(bases)
    merged = {}
    for base in bases:
        merged = _merge(merged, _load_plain(os.path.join(os.path.dirname(path), base)))
    return _merge(merged, values)


OPENMMLAB_KEYS = ("custom_imports", "default_scope")


def load_config(path, use_mmengine=None):
    """Load a Python config file; returns an object with attribute and item access. `use_mmengine`: None decides as the
    module docstring says; True / False force one loader."""
    if not os.path.isfile(path):
        raise UserInputError(f"config file not found: {path}")
    if not path.endswith(".py"):
        raise UserInputError(f"unsupported config file (expected a .py config): {path}")
    if use_mmengine is None:
        try:
            plain = _load_plain(path)
        except Exception:  # e.g. a `_base_` in another package: mmengine reads it, or reports the error below
            plain = None
        if plain is not None and not any(k in plain for k in OPENMMLAB_KEYS):
            return _AttrDict(plain)
        try:
            import mmengine  # noqa: F401
            use_mmengine = True
        except ImportError:
            use_mmengine = False
    try:
        if use_mmengine:
            from mmengine.config import Config
            return Config.fromfile(path)
        return _AttrDict(_load_plain(path))
    except UserInputError:
        raise
    except Exception as exc:  # a syntax error or a missing base file in the user's config
        raise UserInputError(f"cannot read config {path}: {type(exc).__name__}: {exc}") from exc


def apply_cfg_options(cfg, options):
    """Apply `KEY=VALUE` overrides (mmengine's --cfg-options syntax: dotted keys, values read as Python literals when
    they parse, else kept as text) to a loaded config, in place; returns it."""
    if not options:
        return cfg
    import ast
    updates = {}
    for item in options:
        if "=" not in item:
            raise UserInputError(f"--cfg-options entries must be KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
        updates[key] = value
    if hasattr(cfg, "merge_from_dict"):
        cfg.merge_from_dict(updates)
    else:
        for key, value in updates.items():
            node = cfg
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return cfg
