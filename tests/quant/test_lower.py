"""The lowering layer (plugin.quant.deploy.lower): one rule for integer sites, codes that dequantize to the fake-quant
values exactly, and the consumers (freeze, ONNX export) reading their codes and reasons from it."""
import pytest
import torch
import torch.nn as nn

from plugin.quant import QuantLinear, QuantSpec, build_quantizer
from plugin.quant.deploy.freeze import Int8Linear
from plugin.quant.deploy.lower import gemm_reason, grid_reason, lower_grid, lower_weight, qdq_reason, weight_reason
from plugin.quant.deploy.onnx_export import export_copy


def layer(w_spec, x_spec, seed=0, k=16, n=8):
    torch.manual_seed(seed)
    m = QuantLinear.from_module(nn.Linear(k, n), build_quantizer(x_spec, -1), build_quantizer(w_spec, 0))
    m.weight_quantizer.calibrate_tensor(m.weight)
    m.input_quantizer.calibrate_tensor(torch.randn(32, k) + 0.5)
    return m


@pytest.mark.parametrize("gran", ["tensor", "channel"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_weight_codes_dequantize_to_the_fake_quant_weight(gran, symmetric, bits):
    m = layer(QuantSpec(bits, granularity=gran, symmetric=symmetric), QuantSpec(8))
    w = lower_weight(m)
    assert w.codes.dtype == torch.int8 and w.per_channel == (gran == "channel")
    view = (-1, 1) if w.per_channel else ()
    deq = (w.codes.float() - w.zero.float().reshape(view)) * w.scale.reshape(view)
    with torch.no_grad():
        assert torch.equal(deq, m.weight_quantizer(m.weight))
    assert int(w.codes.min()) >= w.qmin - w.offset and int(w.codes.max()) <= w.qmax - w.offset


def test_input_grid_range_is_the_fake_quant_clipping_range():
    m = layer(QuantSpec(8, granularity="channel"), QuantSpec(4))
    g = lower_grid(m.input_quantizer)
    lo, hi = g.range()
    big = torch.tensor([-1e3, 1e3])
    with torch.no_grad():
        assert torch.allclose(m.input_quantizer(big), torch.stack([lo, hi]))


def test_one_rule_and_what_each_consumer_adds():
    ok = layer(QuantSpec(8, granularity="channel"), QuantSpec(8))
    assert grid_reason(ok.weight_quantizer) is None and weight_reason(ok) is None and gemm_reason(ok) is None
    log_input = layer(QuantSpec(8, granularity="channel"), QuantSpec(8))
    log_input.input_quantizer = build_quantizer(QuantSpec(8, kind="log2"), -1)
    log_input.input_quantizer.calibrate_tensor(torch.rand(32, 16))
    assert "not a uniform grid" in gemm_reason(log_input)
    per_channel_input = layer(QuantSpec(8, granularity="channel"), QuantSpec(8, granularity="channel"))
    assert gemm_reason(per_channel_input) == "input grid is not per-tensor"
    assert qdq_reason(per_channel_input.input_quantizer) is None  # ONNX has per-axis Q/DQ
    # A zero point outside the code range: exact in int32 (GEMM), not a Q/DQ zero point (ONNX).
    shifted = layer(QuantSpec(8, granularity="channel"), QuantSpec(8))
    q = shifted.input_quantizer
    q.set_params(scale=q.scale.clone(), zero_point=torch.full_like(q.zero_point, float(q.qmax + 3)))
    assert gemm_reason(shifted) is None
    assert "zero point outside" in qdq_reason(q)
    uncalibrated = QuantLinear.from_module(nn.Linear(4, 4), build_quantizer(QuantSpec(8), -1),
                                           build_quantizer(QuantSpec(8), 0))
    assert "not quantized" in gemm_reason(uncalibrated)


def test_freeze_and_onnx_read_the_same_codes():
    m = layer(QuantSpec(4, granularity="channel"), QuantSpec(8))
    w = lower_weight(m)
    frozen = Int8Linear.from_quant_linear(m)
    assert torch.equal(frozen.weight_int8, w.codes)
    exported, summary = export_copy(nn.Sequential(m))
    assert summary["int8_weights"] == 1 and summary["float_sites"] == {}
    assert torch.equal(exported[0].weight_codes, w.codes.t())
    assert torch.equal(exported[0].weight_scale, w.scale)
