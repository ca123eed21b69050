"""ONNX QDQ export (plugin.quant.deploy.onnx_export) checked by ONNX Runtime against the fake-quant model."""
import copy
import dataclasses
import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[onnx]')")

from onnx import numpy_helper  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import plugin  # noqa: E402,F401  (registers adapters and recipes)
from plugin.quant import CalibData, QuantLinear, QuantSpec, build_quantizer, get_recipe, quantize  # noqa: E402
from plugin.quant.methods.aiqvit.lowrank import attach_branch  # noqa: E402
from plugin.quant.deploy.onnx_export import export_copy, export_float_onnx, export_onnx  # noqa: E402
from plugin.quant.deploy.onnx_runtime import OrtModule, graph_stats  # noqa: E402

from repo_paths import REPO  # noqa: E402
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "tools"))
import timm_toys  # noqa: E402

CONFIG = os.path.join(REPO, "configs/classification/fmnist_vit_tiny.py")
CKPT = os.path.join(REPO, "plugin/assets/fmnist_vit_tiny.safetensors")


def embedded_float():
    import timm
    m = timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=4, in_chans=1, num_classes=10,
                          embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)
    m.load_state_dict(load_file(CKPT))
    return m.eval()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The embedded default at W8A8 (minmax, repq), exported, with its evaluation split and the FP32 export."""
    data = np.load(os.path.join(REPO, "plugin/assets/fashion_mnist_subset.npz"))
    prep = lambda x: ((torch.tensor(x).float() / 255 - 0.2860) / 0.3530).unsqueeze(1)  # noqa: E731
    calib = CalibData([prep(data["calib_images"][:32])], lambda m, b: m(b))
    images, labels = prep(data["eval_images"]), torch.tensor(data["eval_labels"]).long()
    out = tmp_path_factory.mktemp("onnx")
    fp = embedded_float()
    fp32_bytes = export_float_onnx(fp, images[:1], str(out / "fp32.onnx"))
    models = {}
    for method in ("minmax", "repq"):
        model = quantize(copy.deepcopy(fp), get_recipe(method, 8, 8), calib, log=lambda *a: None)
        summary = export_onnx(model, images[:1], str(out / f"{method}.onnx"))
        with torch.no_grad():
            fake = model(images)
        models[method] = (model, summary, fake)
    return dict(images=images, labels=labels, models=models, fp32_bytes=fp32_bytes, out=out)


def compare(fake_logits, onnx_logits, labels):
    """The acceptance check: top-1 within 0.1 points, ≥ 99 % top-1 agreement, mean |Δlogit| ≤ 2 % of mean |logit|."""
    top1 = lambda lg: 100.0 * (lg.argmax(1) == labels).float().mean().item()  # noqa: E731
    agree = (fake_logits.argmax(1) == onnx_logits.argmax(1)).float().mean().item()
    rel = ((fake_logits - onnx_logits).abs().mean() / fake_logits.abs().mean()).item()
    ok = abs(top1(fake_logits) - top1(onnx_logits)) <= 0.1 and agree >= 0.99 and rel <= 0.02
    return ok, dict(fake_top1=top1(fake_logits), onnx_top1=top1(onnx_logits), agreement=agree, rel_diff=rel)


@pytest.mark.parametrize("method", ["minmax", "repq"])
def test_embedded_w8a8_onnx_runtime_equals_fake_quant(embedded, method):
    _, summary, fake = embedded["models"][method]
    ok, stats = compare(fake, OrtModule(summary["path"])(embedded["images"]), embedded["labels"])
    assert ok, stats


def test_embedded_graph_holds_int8_weights_and_qdq(embedded):
    _, summary, _ = embedded["models"]["minmax"]
    model = onnx.load(summary["path"])
    onnx.checker.check_model(model)
    stats = graph_stats(summary["path"])
    # minmax at W8A8 is uniform everywhere: every site is Q/DQ, nothing left float
    assert summary["float_sites"] == {}
    assert stats["ops"]["QuantizeLinear"] == summary["qdq_activations"] == 34
    assert stats["ops"]["DequantizeLinear"] == summary["qdq_activations"] + summary["int8_weights"]
    assert summary["int8_weights"] == 18  # patch embedding, 4 x (qkv, proj, fc1, fc2), head
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    weight_inputs = [n.input[1] for n in model.graph.node if n.op_type in ("MatMul", "Conv")
                     and n.input[1] in producers and producers[n.input[1]].op_type == "DequantizeLinear"
                     and producers[n.input[1]].input[0] in inits]
    assert len(weight_inputs) == 18
    for name in weight_inputs:
        assert inits[producers[name].input[0]].dtype == np.int8
    assert not any(a.dtype == np.float32 and a.ndim == 2 and min(a.shape) > 10 for a in inits.values()), \
        "a float weight matrix is left in the graph"
    # the weights are 4x smaller; the whole file of this 0.15 M-parameter model carries ~65 kB of graph structure
    int8_bytes = stats["initializer_bytes"]["int8"]
    fp32_weight_bytes = 4 * int8_bytes
    assert graph_stats(str(embedded["out"] / "fp32.onnx"))["initializer_bytes"]["float32"] > 0.95 * fp32_weight_bytes
    assert summary["bytes"] < 0.45 * embedded["fp32_bytes"]


def test_embedded_repq_lists_the_log_sites(embedded):
    _, summary, _ = embedded["models"]["repq"]
    assert sorted(summary["float_sites"]) == [f"blocks.{i}.attn.matmul_av.a_quantizer" for i in range(4)]
    assert all("log_sqrt2" in why for why in summary["float_sites"].values())


def test_a_wrong_scale_breaks_the_check(embedded, tmp_path):
    """The acceptance check can fail: one weight scale of the graph off by 1.5x is caught."""
    _, summary, fake = embedded["models"]["minmax"]
    graph = onnx.load(summary["path"])
    producers = {o: n for n in graph.graph.node for o in n.output}
    fc1 = next(n for n in graph.graph.node if n.op_type == "MatMul" and "blocks.1/mlp/fc1" in n.name)
    scale_name = producers[fc1.input[1]].input[1]
    init = next(i for i in graph.graph.initializer if i.name == scale_name)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, scale_name))
    onnx.save(graph, str(tmp_path / "bad.onnx"))
    ok, stats = compare(fake, OrtModule(str(tmp_path / "bad.onnx"))(embedded["images"]), embedded["labels"])
    assert not ok, stats


def _one_linear(w_spec, x_spec, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(24, 16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(16, 24, generator=g))
    q = QuantLinear.from_module(lin, build_quantizer(x_spec, -1), build_quantizer(w_spec, 0))
    x = torch.randn(64, 24, generator=g) * 2 + 0.5
    q.weight_quantizer.calibrate_tensor(q.weight)
    q.input_quantizer.calibrate_tensor(x)
    return nn.Sequential(q).eval(), x


@pytest.mark.parametrize("bits", [8, 4, 3])
@pytest.mark.parametrize("w_sym,x_sym,per_channel", [(True, False, True), (False, False, True), (True, True, False),
                                                     (False, True, False)])
def test_one_layer_matches_fake_quant(tmp_path, bits, w_sym, x_sym, per_channel):
    """One Linear, inputs on the calibrated grid (no rounding ties): ONNX Runtime gives the fake-quant output."""
    w_spec = QuantSpec(bits, granularity="channel" if per_channel else "tensor", symmetric=w_sym)
    model, _ = _one_linear(w_spec, QuantSpec(bits, symmetric=x_sym))
    q = model[0].input_quantizer
    # inputs on the grid, codes from 5 below to 5 above the b-bit range: both must clip the same way
    k = torch.randint(q.qmin - 5, q.qmax + 6, (64, 24), generator=torch.Generator().manual_seed(1)).float()
    x = (k - q.zero_point) * q.scale
    summary = export_onnx(model, x[:1], str(tmp_path / "m.onnx"))
    assert summary["float_sites"] == {} and summary["int8_weights"] == 1 and summary["qdq_activations"] == 1
    with torch.no_grad():
        want = model(x)
    got = OrtModule(summary["path"])(x)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    assert graph_stats(summary["path"])["ops"].get("Clip", 0) == (1 if bits < 8 else 0)


def test_one_layer_wrong_zero_point_is_caught(tmp_path, monkeypatch):
    """The per-layer check fails when the exporter's weight zero point is off by one code."""
    import plugin.quant.deploy.onnx_export as oe
    real = oe.lower_weight
    monkeypatch.setattr(oe, "lower_weight", lambda m: dataclasses.replace(real(m), zero=real(m).zero + 1))
    model, x = _one_linear(QuantSpec(8, granularity="channel"), QuantSpec(8))
    xq = model[0].input_quantizer(x)
    summary = export_onnx(model, xq[:1], str(tmp_path / "m.onnx"))
    with torch.no_grad():
        want = model(xq)
    assert (OrtModule(summary["path"])(xq) - want).abs().max() > 1e-3 * want.abs().max()


def _agreement(model, path, x):
    with torch.no_grad():
        a = model(x)
    b = OrtModule(path)(x)
    return (a.argmax(1) == b.argmax(1)).float().mean().item(), ((a - b).abs().mean() / a.abs().mean()).item()


def test_swin_exports_with_a_dynamic_batch(tmp_path):
    model = timm_toys.quantized("swin", "minmax", 8, 8)
    summary = export_onnx(model, timm_toys.images(1), str(tmp_path / "swin.onnx"))
    assert summary["float_sites"] == {} and summary["int8_weights"] > 0
    agree, rel = _agreement(model, summary["path"], timm_toys.images(6, seed=7))  # batch 6, traced at 1
    assert agree == 1.0 and rel < 0.01


def test_four_bit_grids_clip_and_match_the_export_copy(tmp_path):
    """W4A4: Clip on the integer codes; ONNX Runtime computes what the export copy computes in torch."""
    model = timm_toys.quantized("vit", "minmax", 4, 4)
    summary = export_onnx(model, timm_toys.images(1), str(tmp_path / "w4.onnx"))
    assert graph_stats(summary["path"])["ops"]["Clip"] == summary["qdq_activations"] - 1  # the patch input is 8-bit
    x = timm_toys.images(8, seed=3)
    copy_, _ = export_copy(model)
    with torch.no_grad():
        want = copy_(x)
    assert (OrtModule(summary["path"])(x) - want).abs().max() <= 1e-4 * want.abs().max()
    codes = [numpy_helper.to_array(i) for i in onnx.load(summary["path"]).graph.initializer
             if i.data_type == onnx.TensorProto.INT8 and i.dims and len(i.dims) >= 2]
    assert codes and all(c.min() >= 0 and c.max() <= 15 for c in codes)  # minmax: asymmetric 4-bit weight codes


@pytest.mark.parametrize("mode", ["emulate", "float"])
def test_non_uniform_sites_are_listed(tmp_path, mode):
    model = timm_toys.quantized("vit", "ptq4vit", 8, 8)
    summary = export_onnx(model, timm_toys.images(1), str(tmp_path / "p.onnx"), nonuniform=mode)
    assert sorted(summary["float_sites"]) == sorted(
        [f"blocks.{i}.attn.matmul_av.a_quantizer" for i in range(2)] + [f"blocks.{i}.mlp.fc2.input_quantizer"
                                                                       for i in range(2)])
    assert all("twin_uniform" in why for why in summary["float_sites"].values())
    ops = graph_stats(summary["path"])["ops"]
    assert ("Where" in ops and "Round" in ops) if mode == "emulate" else "Round" not in ops
    agree, _ = _agreement(model, summary["path"], timm_toys.images(8, seed=3))
    assert agree >= 0.85  # (fidelity of the emulation: the repq test on the embedded default, log√2 sites)


def test_zero_point_outside_the_code_range_is_listed(tmp_path):
    model, x = _one_linear(QuantSpec(8, granularity="channel"), QuantSpec(8))
    model[0].input_quantizer.zero_point.fill_(300)
    summary = export_onnx(model, x[:1], str(tmp_path / "z.onnx"))
    assert list(summary["float_sites"]) == ["0.input_quantizer"]
    assert "zero point outside" in summary["float_sites"]["0.input_quantizer"]


@pytest.mark.parametrize("post", [False, True])
def test_low_rank_branches_fold_into_the_exported_weight(tmp_path, post):
    model, x = _one_linear(QuantSpec(4, granularity="channel"), QuantSpec(8))
    branch = attach_branch(model[0], [4], post=post, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        branch.A.normal_(0, 0.3)
    summary = export_onnx(model, x[:1], str(tmp_path / "l.onnx"))
    assert (summary["int8_weights"], len(summary["float_sites"])) == ((0, 1) if post else (1, 0))
    xq = model[0].input_quantizer(x)
    with torch.no_grad():
        want = model(xq)
    assert (OrtModule(summary["path"])(xq) - want).abs().max() <= 1e-5 * want.abs().max()


def test_cli_export_onnx_reports_the_onnx_runtime_metric(tmp_path):
    import ptq_test
    assert ptq_test.main([CONFIG, CKPT, "--bits", "8", "--method", "minmax", "--export-onnx", "--no-fp",
                          "--out", str(tmp_path), "--quiet", "--device", "cpu"]) == 0
    assert sorted(os.listdir(tmp_path / "models")) == ["fp32.onnx", "minmax_w8a8.onnx"]
    entry = json.load(open(tmp_path / "report.json"))["results"][0]
    o = entry["onnx"]
    assert o["path"] == str(tmp_path / "models" / "minmax_w8a8.onnx") and os.path.getsize(o["path"]) == o["bytes"]
    assert o["fp32_bytes"] == os.path.getsize(tmp_path / "models" / "fp32.onnx")
    assert abs(o["metrics"]["top1"] - entry["metrics"]["top1"]) <= 0.1
    assert o["float_sites"] == {} and o["size_ratio"] < 0.45
    assert "ONNX Runtime" in open(tmp_path / "report.md").read()


def test_cli_refuses_other_tasks_up_front(tmp_path, capsys):
    import ptq_test
    config = tmp_path / "pc.py"
    config.write_text("task = 'pointcloud_cls'\n")
    code = ptq_test.main([str(config), str(tmp_path / "none.pth"), "--export-onnx", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--export-onnx supports the classification task" in err[0]
    assert not (tmp_path / "o").exists()


def test_benchmark_onnx_quick(tmp_path):
    import benchmark
    out = tmp_path / "b.json"
    assert benchmark.main(["--quick", "--device", "cpu", "--onnx", "--no-micro", "--method", "minmax", "--model",
                           "deit_small_patch16_224", "--onnx-reps", "2", "--out", str(out)]) == 0
    o = json.load(open(out))["models"]["deit_small_patch16_224"]["methods"]["minmax"]["onnx"]
    assert o["int8_qdq"]["latency_ms_batch1"] > 0 and o["fp32"]["images_per_s"] > 0
    assert set(o["ratios"]) == {"latency_fp32_over_int8", "throughput_int8_over_fp32", "size_int8_over_fp32"}
    # ONNX Runtime turns the Q/DQ + MatMul units into integer kernels
    assert o["ops_after_ort_optimization"]["int8_qdq"].get("MatMulIntegerToFloat", 0) \
        + o["ops_after_ort_optimization"]["int8_qdq"].get("QLinearMatMul", 0) > 0


def test_cli_onnx_option_without_export_is_refused(tmp_path, capsys):
    import ptq_test
    code = ptq_test.main([CONFIG, CKPT, "--onnx-nonuniform", "float", "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "add --export-onnx" in err[0]
    assert not (tmp_path / "o").exists()
