"""Loading user checkpoints without arbitrary code execution.

.safetensors files are read with safetensors; .pth/.pt/.bin with `torch.load(weights_only=True)`, which refuses
pickled objects. `unsafe=True` (the CLI's --unsafe-load) is the explicit opt-in for checkpoints that need pickle.
"""
import os
import re

from ..errors import UserInputError

WRAPPER_KEYS = ("state_dict", "model", "model_ema", "module", "base_model", "net")


def load_state_dict_file(path, unsafe=False, map_location="cpu"):
    """Return the tensor dict of a checkpoint file (unwrapping common containers and 'module.' prefixes)."""
    import torch
    if not os.path.isfile(path):
        raise UserInputError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            state = load_file(path, device=str(map_location))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserInputError(f"cannot read safetensors checkpoint {path}: {exc}") from exc
    else:
        try:
            state = torch.load(path, map_location=map_location, weights_only=not unsafe)
        except Exception as exc:  # UnpicklingError for pickled objects; RuntimeError/EOFError for broken files
            raise UserInputError(_load_error(path, exc)) from exc
    for _ in range(3):
        if isinstance(state, dict) and not any(hasattr(v, "shape") for v in state.values()):
            inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
            if inner is None:
                break
            state = inner
    if not isinstance(state, dict) or not any(hasattr(v, "shape") for v in state.values()):
        raise UserInputError(f"checkpoint {path} holds no state dict of tensors")
    state = {k: v for k, v in state.items() if hasattr(v, "shape")}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _load_error(path, exc):
    """One line for a torch.load failure: a refused global (named, with the --unsafe-load hint) or a file that is no
    readable checkpoint (where --unsafe-load would not help)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch's message carries terminal colour codes
    # torch's weights-only unpickler names the global it refuses in one of two forms (torch/_weights_only_unpickler.py):
    # a module on its block list (os, posix, subprocess, …) or any other global not allow-listed.
    refused = (re.search(r"unsupported GLOBAL ([\w.]+) whose module", text)
               or re.search(r"Unsupported global: GLOBAL ([\w.]+)", text))
    names = [refused.group(1)] if refused else (_pickled_globals(path) if "Unsupported operand" in text else [])
    if names:
        return (f"checkpoint {path} refused: loading it would run code ({', '.join(names[:3])}); --unsafe-load only "
                f"for files you trust")
    if "WeightsUnpickler error:" in text:  # what the unpickler tripped over, not torch's general advice
        text = text.split("WeightsUnpickler error:", 1)[1]
    detail = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    detail = detail.split(". ")[0].rstrip(".")
    return f"checkpoint {path} is not a readable PyTorch checkpoint (damaged, truncated or another format): {detail}"


# Globals that tensor checkpoints name and torch's weights-only unpickler accepts: not code the user must vet.
_TENSOR_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.frozenset")


def _pickled_globals(path):
    """The globals a plain (non-zip) pickle would import, read from its opcodes without running any: torch's
    weights-only unpickler stops at opcodes it does not know (protocol 4's FRAME) before naming them. [] when the
    file is no pickle."""
    import pickletools
    names, strings = [], []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL":
                    names.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001  (any opcode error: a damaged file, reported as such)
        return []
    return list(dict.fromkeys(n for n in names if not n.startswith(_TENSOR_GLOBALS)))


def load_into(model, state, path, filter_fn=None):
    """Load strictly, with one clear message listing what does not match."""
    if filter_fn is not None:
        state = filter_fn(state, model)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
             for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
            if keys:
                parts.append(f"{label} ({len(keys)}): {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}")
        raise UserInputError(f"checkpoint {path} does not match the model: " + "; ".join(parts))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return model
