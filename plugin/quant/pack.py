"""Packed integer weight codes in a saved model (save_quantized / load_quantized).

A fake-quant model keeps float weights W and rounds them on every forward: Ŵ = s·(q − z), q = clamp(round(W/s + z),
qmin, qmax) (plugin.quant.quantizers.UniformQuantizer). Where the weight grid is a plain integer grid, the saved file
holds q instead of W, and loading puts Ŵ back as the weight:
- codes of 5 to 8 bits: one per byte, int8 for a signed grid (qmin < 0), uint8 for an unsigned one;
- codes of at most 4 bits: two per byte (uint8), the element of even index in the low nibble; a signed code is stored
  as its low 4 bits (two's complement) and sign-extended on unpacking; an odd count ends in a zero nibble;
- the scale and zero point are the weight quantizer's own buffers, saved as before.

Exactness: the codes are the lowering's (plugin.quant.deploy.lower.lower_weight, the quantizer's own operations), Ŵ is
computed as the quantizer computes it, and a weight is packed only when its quantizer rounds Ŵ to what it rounds W to
(checked at save time), so the reloaded model's outputs equal the saved model's bit for bit. A weight stays float,
with the reason in the JSON's `packed.float`, where its grid is not a plain integer grid of at most 8 bits per tensor
or per output channel (non-uniform grids such as log2, a disabled quantizer), where a low-rank branch is kept beside it
(AIQViT unmerged: W alone is not what is rounded), where hooks still act on its quantizer (learned rounding not hardened
yet), where the parameter is shared, or where that check fails.
"""
import torch

from .quantizers import UniformQuantizer, _broadcast

NIBBLE_BITS = 4  # at most this many bits: two codes per byte


def grid_bounds(bits, signed):
    """(qmin, qmax) of a `bits`-bit grid, as UniformQuantizer sets them."""
    _check_bits(bits)
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def _check_bits(bits):
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"packed codes need 1 to 8 bits, got {bits!r}")


def storage_dtype(bits, signed):
    """The dtype of the stored codes: uint8 for nibble pairs and unsigned bytes, int8 for signed bytes."""
    _check_bits(bits)
    return torch.int8 if bits > NIBBLE_BITS and signed else torch.uint8


def packed_numel(numel, bits):
    """How many bytes `numel` codes of `bits` bits take."""
    _check_bits(bits)
    return (numel + 1) // 2 if bits <= NIBBLE_BITS else numel


def pack_codes(codes, bits, signed):
    """Integer codes (any shape, integer or integral float values in [qmin, qmax]) as a 1-D byte tensor."""
    qmin, qmax = grid_bounds(bits, signed)
    if codes.is_floating_point() and not bool((codes == codes.round()).all()):
        raise ValueError("packed codes must be integers")
    if codes.numel() and (float(codes.min()) < qmin or float(codes.max()) > qmax):  # before any integer cast wraps
        raise ValueError(f"codes outside the {bits}-bit {'signed' if signed else 'unsigned'} range [{qmin}, {qmax}]")
    flat = codes.reshape(-1).to(torch.int16)
    if bits > NIBBLE_BITS:
        return flat.to(storage_dtype(bits, signed))
    nibbles = flat & 0xF  # two's complement low bits of a signed code
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, nibbles.new_zeros(1)])
    return (nibbles[0::2] | (nibbles[1::2] << 4)).to(torch.uint8)


def unpack_codes(data, bits, signed, numel):
    """The `numel` codes stored by `pack_codes`, as a 1-D int16 tensor. ValueError for data of the wrong dtype, size
    or (bytes) range."""
    qmin, qmax = grid_bounds(bits, signed)
    expected = storage_dtype(bits, signed)
    if data.dtype != expected or data.dim() != 1 or data.numel() != packed_numel(numel, bits):
        raise ValueError(f"{numel} codes of {bits} bits need {packed_numel(numel, bits)} values of {expected}, "
                         f"got shape {tuple(data.shape)} of {data.dtype}")
    wide = data.to(torch.int16)
    if bits <= NIBBLE_BITS:
        wide = torch.stack([wide & 0xF, wide >> 4], dim=1).reshape(-1)[:numel]
        if signed:
            wide = torch.where(wide >= 8, wide - 16, wide)
    if wide.numel() and (int(wide.min()) < qmin or int(wide.max()) > qmax):
        raise ValueError(f"stored codes outside the {bits}-bit range [{qmin}, {qmax}]")
    return wide


def dequantize(codes, scale, zero, shape, dtype):
    """Ŵ = (q − z)·s in the fake quantizer's own operations (float32, per tensor or along dim 0), then `dtype`."""
    q = codes.to(torch.float32).reshape(shape)
    return ((q - _broadcast(zero.float(), q, 0)) * _broadcast(scale.float(), q, 0)).to(dtype)


def _shared_parameters(model):
    counts = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    return {k for k, n in counts.items() if n > 1}


def _float_reason(m, shared):
    """Why the weight of the quantized module `m` stays float, or None: it packs if the exactness check passes.
    Like the lowering's `weight_reason` (plugin.quant.deploy.lower), but any UniformQuantizer subclass with a plain
    per-tensor / per-output-channel grid qualifies (APHQ-ViT's and FIMA-Q's `percentile_grid` weights): packing needs
    no integer kernel, and the check in `pack_state` catches a subclass whose rounding differs."""
    from .deploy.lower import active
    from .modules import QuantConv2d, QuantLinear
    q = m.weight_quantizer
    if getattr(m, "lowrank", None) is not None:
        return "low-rank branch kept beside the weight (not merged): the quantizer rounds W + A·B or adds A·B to Q(W)"
    if type(m) not in (QuantLinear, QuantConv2d):
        return f"{type(m).__name__}: a quantized module whose weight lowering is not known"
    if not active(q):
        return "weight not quantized (no calibrated, enabled quantizer)"
    if not isinstance(q, UniformQuantizer):
        return f"{q.kind} grid: not a uniform integer grid"
    if q.qmax - q.qmin + 1 > 256:
        return f"{q.bits}-bit grid: more than 8 bits"
    if q.scale.dim() > 1 or q.scale.numel() not in (1, m.weight.shape[0]) or \
            (q.scale.numel() > 1 and q.channel_axis % m.weight.dim() != 0):
        return f"weight grid is neither per tensor nor per output channel (axis {q.channel_axis})"
    if q.zero_point.numel() != q.scale.numel():
        return "zero point and scale of different sizes"
    if q._forward_hooks or q._forward_pre_hooks:
        return "hooks act on the weight quantizer (e.g. learned rounding not hardened yet)"
    if id(m.weight) in shared:
        return "weight parameter shared with another module"
    return None


def pack_state(model, state):
    """Replace, in the state dict `state` (of `model`, on the CPU), each weight on a plain integer grid by its packed
    codes under `<module>.weight.codes`. Returns the JSON record {"weights": {weight key: how to unpack it},
    "float": {weight key: why it stays float}}."""
    from .deploy.lower import lower_weight
    shared = _shared_parameters(model)
    weights, floats = {}, {}
    for name, m in model.named_modules():
        q = getattr(m, "weight_quantizer", None)
        key = f"{name}.weight" if name else "weight"
        if q is None or key not in state:
            continue
        reason = _float_reason(m, shared)
        if reason is None:
            bits, signed = q.spec.bits, q.qmin < 0
            if (q.qmin, q.qmax) != grid_bounds(bits, signed):
                reason = f"grid [{q.qmin}, {q.qmax}] is not the standard {bits}-bit grid"
            elif f"{key}.codes" in state:
                reason = f"the state already has a tensor {key}.codes"
        if reason is None:
            with torch.no_grad():
                low = lower_weight(m)
                codes = (low.codes.to(torch.int16) + low.offset).cpu()
                w = m.weight.detach()
                deq = dequantize(codes, q.scale.detach().cpu(), q.zero_point.detach().cpu(), w.shape, w.dtype)
                # the weight the reloaded forward rounds is deq: it must give what the saved one gives
                exact = torch.equal(q.quantize(deq.to(w.device)), q.quantize(w))
            if not exact:
                reason = "the dequantized codes do not round to the saved fake-quant weight"
        if reason is not None:
            floats[key] = reason
            continue
        prefix = f"{name}.weight_quantizer" if name else "weight_quantizer"
        state[f"{key}.codes"] = pack_codes(codes, bits, signed)
        del state[key]
        weights[key] = {"bits": bits, "signed": signed, "shape": list(w.shape), "dtype": str(w.dtype)[len("torch."):],
                        "scale": f"{prefix}.scale", "zero_point": f"{prefix}.zero_point"}
    return {"weights": weights, "float": floats}


def float_extra_bytes(record, state):
    """How many more bytes the tensors of `state` would take with the packed weights of `record` as float tensors of
    their saved dtype (the file without packing, its header aside)."""
    extra = 0
    for key, info in record["weights"].items():
        numel = 1
        for d in info["shape"]:
            numel *= d
        extra += numel * getattr(torch, info["dtype"]).itemsize - state[f"{key}.codes"].nbytes
    return extra


def unpack_state(state, record):
    """Put the float weight Ŵ back for every packed weight of `record` (from pack_state) in `state`, in place.
    ValueError naming the weight for a record or tensor that does not fit."""
    weights = record.get("weights") if isinstance(record, dict) else None
    if not isinstance(weights, dict):
        raise ValueError("'packed' must hold a 'weights' mapping")
    for key, info in weights.items():
        try:
            bits, signed, shape = info["bits"], info["signed"], [int(d) for d in info["shape"]]
            if not isinstance(signed, bool):
                raise ValueError(f"'signed' must be true or false, got {signed!r}")
            dtype = getattr(torch, info["dtype"])
            if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
                raise ValueError(f"dtype {info['dtype']!r} is not a float dtype")
            data, scale, zero = state.pop(f"{key}.codes"), state[info["scale"]], state[info["zero_point"]]
            numel = 1
            for d in shape:
                numel *= d
            codes = unpack_codes(data, bits, signed, numel)
            per_channel_ok = bool(shape) and scale.numel() == shape[0]
            if (scale.numel() != 1 and not per_channel_ok) or zero.numel() != scale.numel():
                raise ValueError(f"scale/zero point of {scale.numel()}/{zero.numel()} values for a weight of shape "
                                 f"{shape}")
            state[key] = dequantize(codes, scale, zero, shape, dtype)
        except KeyError as exc:
            raise ValueError(f"packed weight {key!r}: missing {exc}") from exc
        except (TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"packed weight {key!r}: {exc}") from exc
    return state


__all__ = ["NIBBLE_BITS", "dequantize", "float_extra_bytes", "grid_bounds", "pack_codes", "pack_state", "packed_numel",
           "storage_dtype", "unpack_codes", "unpack_state"]
