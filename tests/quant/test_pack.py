"""Packed integer weight codes (plugin.quant.pack): code round trips, the byte layout, bad input, and saved models:
file sizes, weights kept float and why, `pack=False`, and a file of format 1 (written before packing) still loading."""
import json
import os

import pytest
import safetensors.torch
import torch
from repo_paths import REPO
from timm_toys import build, calib_data, images, quantized

from plugin.quant import QuantSpec, get_recipe, load_quantized, quantize, read_meta, save_quantized
from plugin.quant import pack
from plugin.quant.quantizers import UniformQuantizer, _broadcast

OLD = os.path.join(REPO, "tests", "fixtures", "old_format")


# --------------------------------------------------------------------------------------------------- codes
@pytest.mark.parametrize("numel", [1, 2, 7, 33, 64])
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("bits", range(1, 9))
def test_codes_round_trip(bits, signed, numel):
    qmin, qmax = pack.grid_bounds(bits, signed)
    gen = torch.Generator().manual_seed(bits * 100 + numel)
    codes = torch.randint(qmin, qmax + 1, (numel,), generator=gen)
    codes[0] = qmin
    codes[-1] = qmax
    data = pack.pack_codes(codes.reshape(-1, 1).float(), bits, signed)  # integral floats of any shape are fine
    assert data.dtype == pack.storage_dtype(bits, signed) and data.dim() == 1
    assert data.numel() == pack.packed_numel(numel, bits) == ((numel + 1) // 2 if bits <= 4 else numel)
    assert torch.equal(pack.unpack_codes(data, bits, signed, numel), codes.to(torch.int16))


def test_byte_layout():
    """Even index in the low nibble, a signed code as its two's complement low bits; 8 bits signed is plain int8."""
    assert pack.pack_codes(torch.tensor([1, 2, 3]), 4, False).tolist() == [0x21, 0x03]
    assert pack.pack_codes(torch.tensor([-1, 7]), 4, True).tolist() == [0x7F]
    assert pack.pack_codes(torch.tensor([-2, 1]), 2, True).tolist() == [0x1E]
    assert pack.pack_codes(torch.tensor([-128, 127]), 8, True).dtype == torch.int8
    assert pack.pack_codes(torch.tensor([0, 255]), 8, False).tolist() == [0, 255]


@pytest.mark.parametrize("codes, bits, signed, match", [
    (torch.tensor([8]), 4, True, "outside"), (torch.tensor([-1]), 4, False, "outside"),
    (torch.tensor([256]), 8, False, "outside"), (torch.tensor([0.5]), 4, False, "integers"),
    (torch.tensor([65536.0 + 3]), 4, False, "outside"),  # would wrap to 3 in int16
    (torch.tensor([0]), 0, False, "1 to 8 bits"), (torch.tensor([0]), 9, True, "1 to 8 bits"),
    (torch.tensor([0]), True, True, "1 to 8 bits"),
])
def test_pack_refuses_bad_codes(codes, bits, signed, match):
    with pytest.raises(ValueError, match=match):
        pack.pack_codes(codes, bits, signed)


@pytest.mark.parametrize("data, bits, signed, numel", [
    (torch.zeros(4, dtype=torch.uint8), 4, False, 9),      # 9 codes need 5 bytes
    (torch.zeros(4, dtype=torch.int8), 4, True, 8),        # nibble pairs are uint8
    (torch.zeros(4, dtype=torch.uint8), 8, True, 4),       # signed bytes are int8
    (torch.zeros(2, 2, dtype=torch.uint8), 8, False, 4),   # 1-D only
    (torch.full((2,), 0x88, dtype=torch.uint8), 3, False, 4),  # nibble 8: outside the 3-bit range [0, 7]
])
def test_unpack_refuses_data_that_does_not_fit(data, bits, signed, numel):
    with pytest.raises(ValueError):
        pack.unpack_codes(data, bits, signed, numel)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_dequantize_is_the_quantizers_own_output(symmetric, granularity):
    q = UniformQuantizer(QuantSpec(3, granularity=granularity, symmetric=symmetric), channel_axis=0)
    w = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)) * 0.1 + 0.02
    q.calibrate_tensor(w)
    s, z = _broadcast(q.scale, w, 0), _broadcast(q.zero_point, w, 0)
    codes = torch.clamp(w / s + z, q.qmin, q.qmax).round()
    assert torch.equal(pack.dequantize(codes, q.scale, q.zero_point, w.shape, torch.float32), q.quantize(w))


# --------------------------------------------------------------------------------------------------- saved models
def _same_outputs(model, path, arch="vit"):
    loaded = load_quantized(build(arch, seed=123), path)
    x = images(3, seed=5)
    with torch.no_grad():
        return torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("w_bits, symmetric", [(2, True), (3, False), (4, False), (6, True), (8, False)])
def test_weights_pack_at_every_bit_width(tmp_path, w_bits, symmetric):
    recipe = get_recipe("minmax", w_bits, 8)
    recipe.weight = recipe.weight.replace(symmetric=symmetric)
    model = quantize(build("vit"), recipe, calib_data(), log=lambda *a: None)
    path = str(tmp_path / "m")
    save_quantized(model, path)
    meta = read_meta(path)
    weights = {f"{n}.weight" for n, m in model.named_modules() if getattr(m, "weight_quantizer", None) is not None}
    assert set(meta["packed"]["weights"]) == weights and meta["packed"]["float"] == {}
    stored = safetensors.torch.load_file(path + ".safetensors")
    for key, info in meta["packed"]["weights"].items():
        assert (info["bits"], info["signed"]) == (w_bits, symmetric)
        assert stored[key + ".codes"].dtype == pack.storage_dtype(w_bits, symmetric)
        assert key not in stored
    assert _same_outputs(model, path)


def test_file_sizes_and_pack_false(tmp_path):
    """W4 codes take an eighth of float32; the JSON's float_bytes is what the unpacked file really takes (within its
    header); pack=False writes the float file (no `packed` record) and reloads identically too."""
    model = quantized("vit", "repq", 4, 4)
    packed, plain = str(tmp_path / "packed"), str(tmp_path / "plain")
    save_quantized(model, packed)
    save_quantized(model, plain, pack=False)
    size, size_plain = os.path.getsize(packed + ".safetensors"), os.path.getsize(plain + ".safetensors")
    meta, meta_plain = read_meta(packed), read_meta(plain)
    assert meta["size"]["file_bytes"] == size and meta_plain["size"] == {"file_bytes": size_plain,
                                                                         "float_bytes": size_plain}
    assert abs(meta["size"]["float_bytes"] - size_plain) < 0.005 * size_plain
    assert size < 0.25 * size_plain
    assert "packed" not in meta_plain
    assert safetensors.torch.load_file(plain + ".safetensors").keys() == model.state_dict().keys()
    assert _same_outputs(model, packed) and _same_outputs(model, plain)


def test_old_format_file_loads(tmp_path):
    """A file of format 1 (every weight float, tests/fixtures/old_format) loads with the current code and gives the
    output it gave when it was saved."""
    meta = read_meta(os.path.join(OLD, "vit_repq_w4a4"))
    assert meta["format_version"] == 1 and "packed" not in meta
    ref = safetensors.torch.load_file(os.path.join(OLD, "vit_repq_w4a4_io.safetensors"))
    loaded = load_quantized(build("vit", embed_dim=32, depth=1, seed=9), os.path.join(OLD, "vit_repq_w4a4"))
    with torch.no_grad():
        assert torch.equal(loaded(ref["x"]), ref["y"])
    save_quantized(loaded, str(tmp_path / "again"))  # saving it again packs its weights, outputs unchanged
    assert read_meta(str(tmp_path / "again"))["packed"]["weights"]
    again = load_quantized(build("vit", embed_dim=32, depth=1), str(tmp_path / "again"))
    with torch.no_grad():
        assert torch.equal(again(ref["x"]), ref["y"])


def test_weights_that_stay_float_are_named_with_a_reason(tmp_path, monkeypatch):
    model = quantized("vit", "minmax", 4, 4)
    hooked = model.blocks[0].mlp.fc1.weight_quantizer
    handle = hooked.register_forward_hook(lambda mod, inp, out: out)  # like AdaRound before it is hardened
    path = str(tmp_path / "m")
    save_quantized(model, path)
    handle.remove()
    record = read_meta(path)["packed"]
    assert set(record["float"]) == {"blocks.0.mlp.fc1.weight"} and "hooks" in record["float"]["blocks.0.mlp.fc1.weight"]
    assert "blocks.0.mlp.fc1.weight" in safetensors.torch.load_file(path + ".safetensors")
    assert _same_outputs(model, path)
    # the save-time check: codes that would not give the saved fake-quant weight back stay float
    real = pack.dequantize
    monkeypatch.setattr(pack, "dequantize", lambda *a: real(*a) * 1.5)
    save_quantized(model, path)
    record = read_meta(path)["packed"]
    assert not record["weights"] and all("do not round" in r for r in record["float"].values())
    assert _same_outputs(model, path)


def test_non_uniform_weight_grid_stays_float(tmp_path):
    recipe = get_recipe("minmax", 4, 4)
    recipe.weight = QuantSpec(4, granularity="tensor", kind="log2")
    model = quantize(build("vit"), recipe, calib_data(), log=lambda *a: None)
    path = str(tmp_path / "m")
    save_quantized(model, path)
    record = read_meta(path)["packed"]
    assert not record["weights"] and record["float"]
    assert all("log2 grid" in r for r in record["float"].values())
    assert _same_outputs(model, path)


def test_merged_low_rank_branches_pack(tmp_path):
    """AIQViT with its branches merged (W ← W + A·B): plain integer weights, packed; kept branches: test_io."""
    recipe = get_recipe("aiqvit", 4, 4)
    recipe.passes = [p.replace(iters=2, batch_size=4) for p in recipe.passes]
    model = quantize(build("vit"), recipe, calib_data(), log=lambda *a: None)
    assert not any(hasattr(m, "lowrank") for m in model.modules())
    path = str(tmp_path / "m")
    save_quantized(model, path)
    record = json.load(open(path + ".json"))["packed"]
    assert record["weights"] and record["float"] == {}
    assert _same_outputs(model, path)
