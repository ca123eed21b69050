"""save_quantized / load_quantized: identical outputs after a reload, safetensors without pickle, JSON metadata,
clear errors for corrupted metadata and mismatched models; non-finite calibration data is refused."""
import json
import pickle
import struct

import pytest
import safetensors
import safetensors.torch
import torch
import torch.nn as nn
from timm_toys import build, calib_data, images, quantized

from plugin.quant.errors import CalibrationError, CheckpointError, ConfigError, QuantError
from plugin.quant import (RECIPES, CalibData, Recipe, get_recipe, iter_quantizers, load_quantized, quantize, read_meta,
                          save_quantized)

BASELINES = ["minmax", "ptq4vit", "repq"]


def reloaded_state(model, path):
    """The state a reload of `path` (saved from `model`) must have: the model's, each packed weight replaced by its
    fake-quant value (what the saved model's forward used)."""
    state = model.state_dict()
    for key in read_meta(path).get("packed", {"weights": {}})["weights"]:
        module = model.get_submodule(key[: -len(".weight")])
        with torch.no_grad():
            state[key] = module.weight_quantizer.quantize(module.weight)
    return state


def quantized_weights(model):
    return {f"{n}.weight" for n, m in model.named_modules() if getattr(m, "weight_quantizer", None) is not None}


@pytest.fixture(scope="module")
def saved_vit(tmp_path_factory):
    """A W4A4 repq ViT saved once: (model, path prefix)."""
    model = quantized("vit", "repq")
    path = str(tmp_path_factory.mktemp("saved") / "vit_repq")
    save_quantized(model, path, extra_meta={"note": "test"})
    return model, path


def test_baseline_recipes_are_registered():
    assert set(BASELINES) <= set(RECIPES)


@pytest.mark.parametrize("arch,recipe", [(a, r) for a in ("vit", "swin") for r in BASELINES]
                         + [("deit_distilled", "repq")])
def test_save_load_gives_identical_outputs(arch, recipe, tmp_path):
    model = quantized(arch, recipe)
    path = str(tmp_path / "model")
    tensors_path, meta_path = save_quantized(model, path)
    assert tensors_path == path + ".safetensors" and meta_path == path + ".json"
    fresh = build(arch, seed=123)  # different random init: every value must come from the file
    loaded = load_quantized(fresh, path)
    assert loaded is fresh
    x = images(3, seed=5)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    ref_state, new_state = reloaded_state(model, path), loaded.state_dict()
    assert ref_state.keys() == new_state.keys()
    assert all(torch.equal(ref_state[k], new_state[k]) for k in ref_state)
    packed = read_meta(path)["packed"]  # every weight of these recipes is on a uniform integer grid
    assert set(packed["weights"]) == quantized_weights(model) and packed["float"] == {}
    assert {n for n, _ in iter_quantizers(loaded)} == {n for n, _ in iter_quantizers(model)}
    assert all(q.ready for _, q in iter_quantizers(loaded))
    # a reloaded model saves again to the same tensors
    path2 = str(tmp_path / "again")
    save_quantized(loaded, path2)
    a, b = safetensors.torch.load_file(path + ".safetensors"), safetensors.torch.load_file(path2 + ".safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_safetensors_file_is_plain_safetensors(saved_vit):
    model, path = saved_vit
    raw = open(path + ".safetensors", "rb").read()
    assert not raw.startswith(b"\x80")  # not a pickle stream
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    assert header["__metadata__"]["format"] == "vitq-quantized"
    state = model.state_dict()
    packed = read_meta(path)["packed"]["weights"]
    assert packed and set(packed) <= set(state)
    with safetensors.safe_open(path + ".safetensors", framework="pt") as f:
        assert set(f.keys()) == (set(state) - set(packed)) | {k + ".codes" for k in packed}
        for k in f.keys():
            if k.endswith(".codes"):  # W4: two codes per byte
                assert f.get_tensor(k).dtype == torch.uint8
                assert f.get_tensor(k).numel() == (state[k[: -len(".codes")]].numel() + 1) // 2
            else:
                assert torch.equal(f.get_tensor(k), state[k]), k


def test_load_uses_no_pickle(saved_vit, monkeypatch):
    model, path = saved_vit

    def refuse(*a, **k):
        raise AssertionError("pickle used while loading")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = load_quantized(build("vit", seed=7), path)
    x = images(2, seed=8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("suffix", ["", ".safetensors", ".json"])
def test_either_file_or_the_prefix_names_a_saved_model(saved_vit, suffix):
    model, path = saved_vit
    assert read_meta(path + suffix)["recipe"]["name"] == "repq"
    loaded = load_quantized(build("vit", seed=7), path + suffix)
    x = images(2, seed=8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_json_holds_recipe_bits_adapter_versions(saved_vit):
    model, path = saved_vit
    meta = json.load(open(path + ".json"))
    assert meta == read_meta(path)
    assert meta["format"] == "vitq-quantized" and meta["format_version"] == 2
    assert meta["recipe"]["name"] == "repq"
    assert meta["recipe"]["w_bits"] == 4 and meta["recipe"]["a_bits"] == 4
    assert meta["recipe"]["weight"]["bits"] == 4 and meta["recipe"]["act"]["bits"] == 4
    assert meta["recipe"]["reparam"] == "mean"
    assert meta["adapter"] == "timm_vit"
    for pkg in ("python", "torch", "timm"):
        assert isinstance(meta["versions"].get(pkg), str) and meta["versions"][pkg], pkg
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["note"] == "test"
    assert Recipe.from_dict(meta["recipe"]).to_dict() == meta["recipe"]


def test_swin_json_names_its_adapter(tmp_path):
    path = str(tmp_path / "swin")
    save_quantized(quantized("swin", "minmax"), path)
    assert read_meta(path)["adapter"] == "timm_swin"


def test_save_needs_a_quantized_model(tmp_path):
    with pytest.raises(ConfigError):
        save_quantized(build("vit"), str(tmp_path / "float"))


# --------------------------------------------------------------------------------------------------- bad input
def _copy_saved(saved_vit, tmp_path):
    _, path = saved_vit
    new = str(tmp_path / "copy")
    for ext in (".safetensors", ".json"):
        with open(path + ext, "rb") as src, open(new + ext, "wb") as dst:
            dst.write(src.read())
    return new


def _edit_meta(fn):
    def edit(path):
        meta = json.load(open(path + ".json"))
        fn(meta)
        with open(path + ".json", "w") as f:
            json.dump(meta, f)
    return edit


def _write(text):
    def edit(path):
        with open(path + ".json", "w") as f:
            f.write(text)
    return edit


def _first_packed(meta):
    return meta["packed"]["weights"][sorted(meta["packed"]["weights"])[0]]


def _truncate_json(path):
    text = open(path + ".json").read()
    with open(path + ".json", "w") as f:
        f.write(text[: len(text) // 2])


CORRUPTIONS = {
    "truncated": _truncate_json,
    "not_json": _write("\x00\x01 garbage"),
    "empty": _write(""),
    "wrong_format": _edit_meta(lambda m: m.update(format="something-else")),
    "unknown_adapter": _edit_meta(lambda m: m.update(adapter="no_such_adapter")),
    "future_recipe_version": _edit_meta(lambda m: m["recipe"].update(version=99)),
    "bits_out_of_range": _edit_meta(lambda m: m["recipe"]["weight"].update(bits=12)),
    "unknown_quantizer_kind": _edit_meta(lambda m: m["recipe"]["act"].update(kind="nope")),
    "malformed_state": _edit_meta(lambda m: m.update(state={"ranks": 5})),
    "malformed_frozen": _edit_meta(lambda m: m.update(frozen=["blocks.0.mlp.fc1"])),
    "frozen_layer_unknown": _edit_meta(lambda m: m.update(frozen={"blocks.9.fc": {"in_features": 4}})),
    "future_format_version": _edit_meta(lambda m: m.update(format_version=99)),
    "packed_not_a_mapping": _edit_meta(lambda m: m.update(packed=[1, 2])),
    "packed_bits_out_of_range": _edit_meta(lambda m: _first_packed(m).update(bits=12)),
    "packed_bits_differ": _edit_meta(lambda m: _first_packed(m).update(bits=8)),
    "packed_shape_differs": _edit_meta(lambda m: _first_packed(m).update(shape=[3, 5])),
    "packed_dtype_not_float": _edit_meta(lambda m: _first_packed(m).update(dtype="load")),
    "packed_signed_not_bool": _edit_meta(lambda m: _first_packed(m).update(signed="yes")),
    "packed_scale_key_unknown": _edit_meta(lambda m: _first_packed(m).update(scale="no.such.tensor")),
    "packed_weight_unknown": _edit_meta(lambda m: m["packed"]["weights"].update({"blocks.9.fc.weight": {}})),
    "unpacked_weight_is_missing": _edit_meta(lambda m: m.pop("packed")),
}
BUGGY_CORRUPTIONS = {
    # json.load gives a list, then `meta.get` raises AttributeError (plugin/quant/io.py read_meta)
    "json_array": (_write("[1, 2, 3]"), AttributeError),
    # `meta["recipe"]` raises KeyError (plugin/quant/io.py load_quantized)
    "no_recipe": (_edit_meta(lambda m: m.pop("recipe")), KeyError),
    # Recipe.from_dict reads d["weight"] etc. without checking: KeyError (plugin/quant/recipe.py Recipe.from_dict)
    "recipe_missing_field": (_edit_meta(lambda m: m["recipe"].pop("weight")), KeyError),
    # Role(r) in Recipe.from_dict raises ValueError for an unknown role name
    "unknown_float_role": (_edit_meta(lambda m: m["recipe"].update(float_roles=["nope"])), ValueError),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupted_json_raises_user_input_error(saved_vit, tmp_path, corruption):
    path = _copy_saved(saved_vit, tmp_path)
    CORRUPTIONS[corruption](path)
    with pytest.raises(QuantError):  # CheckpointError, or ConfigError for an adapter name nobody registered
        load_quantized(build("vit"), path)


@pytest.mark.parametrize("corruption", sorted(BUGGY_CORRUPTIONS))
def test_malformed_json_raises_user_input_error(saved_vit, tmp_path, corruption):
    path = _copy_saved(saved_vit, tmp_path)
    edit, raw_error = BUGGY_CORRUPTIONS[corruption]
    edit(path)
    try:
        load_quantized(build("vit"), path)
    except CheckpointError:  # first: it is a ValueError too
        return
    except raw_error:
        pytest.fail(f"raised {raw_error.__name__}, not CheckpointError")
    pytest.fail("no error")


def test_missing_files_raise_user_input_error(saved_vit, tmp_path):
    with pytest.raises(CheckpointError):
        load_quantized(build("vit"), str(tmp_path / "does_not_exist"))


def test_model_with_other_depth_raises_user_input_error(saved_vit):
    _, path = saved_vit
    with pytest.raises(CheckpointError):
        load_quantized(build("vit", depth=3), path)


@pytest.mark.parametrize("change", [{"embed_dim": 96}, {"num_classes": 5}], ids=["embed_dim", "num_classes"])
def test_model_with_other_shapes_raises_user_input_error(saved_vit, change):
    _, path = saved_vit
    with pytest.raises(CheckpointError):
        load_quantized(build("vit", **change), path)


@pytest.mark.parametrize("other", ["swin", "sequential"])
def test_model_of_other_architecture_raises_user_input_error(saved_vit, other):
    _, path = saved_vit
    if other == "swin":
        model = build("swin")
    else:
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))
    with pytest.raises(CheckpointError):
        load_quantized(model, path)


# --------------------------------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("arch", ["vit", "swin"])
def test_non_finite_calibration_input_raises_calibration_error(arch, bad):
    x = images(2, seed=3)
    x[1, 0, 5, 7] = bad
    calib = CalibData(batches=[images(2, seed=2), x], forward=lambda model, batch: model(batch))
    with pytest.raises(CalibrationError):
        quantize(build(arch), get_recipe("minmax", 4, 4), calib, log=lambda *a: None)


def test_non_finite_activation_inside_the_model_raises_calibration_error():
    model = build("vit")
    with torch.no_grad():
        model.blocks[1].norm2.weight[3] = float("inf")
    with pytest.raises(CalibrationError):
        quantize(model, get_recipe("repq", 4, 4), calib_data(), log=lambda *a: None)


def test_empty_calibration_set_raises_calibration_error():
    with pytest.raises(CalibrationError):
        CalibData(batches=[], forward=lambda model, batch: model(batch))


def test_frozen_model_saves_and_loads(tmp_path):
    """A frozen model (Int8Linear layers) saves as it is and loads back frozen, with the same outputs."""
    from plugin.quant import freeze, frozen_summary, state
    model = freeze(quantized("vit", "minmax", 8, 8))
    summary = frozen_summary(model)
    assert summary["frozen"] > 0 and state(model).frozen
    path = str(tmp_path / "frozen")
    save_quantized(model, path)
    assert set(read_meta(path)["frozen"]) == {n for n, m in model.named_modules() if type(m).__name__ == "Int8Linear"}
    loaded = load_quantized(build("vit", seed=123), path)
    assert state(loaded).frozen and frozen_summary(loaded) == summary
    x = images(3, seed=5)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    a, b = reloaded_state(model, path), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_quant_state_survives_save_and_load(saved_vit, tmp_path):
    """The QuantState (recipe, adapter, per-unit records) is what the CLI and save/load read; a reload carries it."""
    from plugin.quant import QuantState, state
    model, path = saved_vit
    loaded = load_quantized(build("vit", seed=123), path)
    assert isinstance(state(loaded), QuantState) and not state(loaded).frozen
    assert state(loaded).recipe.to_dict() == state(model).recipe.to_dict()
    assert state(loaded).adapter == state(model).adapter
    assert state(build("vit")) is None
    with pytest.raises(ConfigError, match="needs a model returned by quantize"):
        save_quantized(build("vit"), str(tmp_path / "float"))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_umask_mode_not_mkstemps_private_one(tmp_path, umask, mode):
    import os

    from plugin.quant.io import write_json
    model = quantized("vit", "minmax")
    old = os.umask(umask)
    try:
        files = list(save_quantized(model, str(tmp_path / "m")))
        write_json(str(tmp_path / "r.json"), {"a": 1})
    finally:
        os.umask(old)
    for path in files + [str(tmp_path / "r.json")]:
        assert os.stat(path).st_mode & 0o777 == mode, path


def _strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


@pytest.mark.parametrize("method", ["dopq", "aiqvit"])
def test_saved_model_names_no_module_path(method, tmp_path):
    """A saved model refers to code only by registered names (recipe, quantizer kinds, passes, rules, load hooks), never
    by module or class path, so moving modules (plugin/quant/methods/, deploy/) leaves files saved before loadable.
    AIQViT's branches are kept unmerged here, so loading goes through the `restore_branches` load hook."""
    recipe = RECIPES[method](4, 4, iters=2, batch_size=4)
    if method == "aiqvit":
        recipe.passes = [recipe.passes[0].replace(placement="post", merge=False, rank_candidates=[4], search=False)]
    recipe.passes = [p.replace(iters=2, batch_size=4) for p in recipe.passes]
    model = quantize(build("vit"), recipe, calib_data())
    path = str(tmp_path / method)
    save_quantized(model, path)
    meta = json.load(open(path + ".json"))
    paths = [s for s in _strings(meta) if "plugin." in s or s.endswith(".py") or s.endswith("Quantizer")]
    assert paths == []
    if method == "aiqvit":
        assert any(k.endswith(".lowrank.A") for k in safetensors.torch.load_file(path + ".safetensors"))
        # a kept branch: the quantizer rounds W + A·B (or adds A·B to Q(W)), so W itself is saved float, and said so
        branched = {f"{n}.weight" for n, m in model.named_modules() if hasattr(m, "lowrank")}
        assert branched and all("low-rank branch" in meta["packed"]["float"][k] for k in branched)
    else:
        assert meta["packed"]["float"] == {} and meta["packed"]["weights"]
    loaded = load_quantized(build("vit", seed=123), path)
    x = images(3, seed=5)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
