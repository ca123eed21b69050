"""Tests of the AdaLog family's quantizers: `percentile_grid` (the uniform grid APHQ-ViT and FIMA-Q calibrate with
AdaLog's quantile candidates) and `adalog` (the adaptive-base log grid)."""
import pytest
import torch

from plugin.quant import Observation, QuantSpec, build_quantizer
from plugin.quant.adalog import GELU_SHIFT
from plugin.quant.errors import ConfigError


def softmax_batch(seed=0, temperature=3.0, shape=(4, 3, 17, 17)):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * temperature).softmax(-1)


def grid(bits, granularity="tensor", axis=-1, **options):
    return build_quantizer(QuantSpec(bits, kind="percentile_grid", granularity=granularity, options=options), axis)


def adalog(bits, granularity="tensor", axis=-1, **options):
    return build_quantizer(QuantSpec(bits, kind="adalog", granularity=granularity, options=options), axis)


def heavy_tailed(seed=0, n=4096, c=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g)
    x[:4] *= 12  # a few outliers: min-max wastes most of the grid on them
    return x


# --- percentile_grid -------------------------------------------------------------------------------------------------
def test_range_candidates_cover_inner_spread_to_min_max_with_every_zero_point_at_4_bits():
    q = grid(4, eq_n=64)
    rows = heavy_tailed().reshape(-1, 1)
    scales, zeros = q.candidates(rows)
    assert scales.shape == zeros.shape == (64, 1)                       # 16 zero points x 4 widths
    assert sorted(set(zeros.flatten().tolist())) == list(range(16))
    spread = torch.quantile(rows[:, 0], 0.9) - torch.quantile(rows[:, 0], 0.1)
    assert scales.min().item() == pytest.approx(spread.item() / 15, rel=1e-5)
    assert scales.max().item() == pytest.approx((rows.max() - rows.min()).item() / 15, rel=1e-5)


def test_calibrated_grid_has_at_most_2b_levels_and_is_monotone():
    x = heavy_tailed()
    q = grid(3).calibrate(Observation.from_tensor(x, -1))
    xs = torch.linspace(x.min().item(), x.max().item(), 2001)[:, None]
    y = q(xs)[:, 0]
    assert len(torch.unique(y)) <= 8
    assert bool((y[1:] >= y[:-1]).all())


@pytest.mark.parametrize("bits", [3, 4])
def test_per_channel_search_is_never_worse_than_min_max(bits):
    # the candidates include the full min..max width with every integer zero point, i.e. min-max's own grid
    x = heavy_tailed(seed=bits)
    obs = Observation.from_tensor(x, -1)
    minmax = build_quantizer(QuantSpec(bits, granularity="channel"), -1).calibrate(obs)
    searched = grid(bits, "channel").calibrate(obs)
    err = lambda q: (q(x) - x).pow(2).sum(0)  # noqa: E731
    assert bool((err(searched) <= err(minmax) + 1e-6).all())
    assert err(searched).sum() < 0.8 * err(minmax).sum()  # and clips the outliers


def test_zero_fixed_keeps_zero_point_at_zero_for_post_relu_inputs():
    x = torch.relu(heavy_tailed())
    q = grid(4, zero_fixed=True).calibrate(Observation.from_tensor(x, -1))
    assert q.zero_point.item() == 0
    assert q(torch.zeros(3)).abs().max().item() == 0


def test_pair_value_operands_get_one_range_per_head():
    a = softmax_batch()                                                 # (batch, heads, tokens, tokens)
    a[:, 1] *= 0.25                                                     # head 1 holds smaller values
    q = grid(4, "head", axis=1, mode="pair_value").calibrate(Observation.from_tensor(a, 1))
    assert q.scale.shape == (3,)
    assert q.scale[1] < q.scale[0]
    lowers, uppers = q.pair_bounds(Observation.from_tensor(a, 1).samples)
    assert lowers.shape == uppers.shape == (128, 3)
    assert bool((uppers[1:] >= uppers[:-1] - 1e-7).all())


def test_pair_pct_weights_per_output_channel():
    w = torch.randn(8, 4096, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 9)[:, None]
    q = grid(4, "channel", axis=0, mode="pair_pct").calibrate_tensor(w)
    assert q.scale.shape == (8,)
    assert bool((q.scale[1:] > q.scale[:-1]).all())                     # each row its own range
    assert (q(w) - w).pow(2).mean(1).div(w.pow(2).mean(1)).max() < 0.03


@pytest.mark.parametrize("options", [dict(mode="log"), dict(eq_n=1), dict(lo_pct=0.3), dict(lo_pct=0.99, hi_pct=0.9)])
def test_bad_percentile_grid_options_are_refused(options):
    with pytest.raises(ConfigError):
        grid(4, **options)


def test_symmetric_percentile_grid_is_refused():
    with pytest.raises(ConfigError):
        build_quantizer(QuantSpec(4, kind="percentile_grid", symmetric=True))


# --- adalog ----------------------------------------------------------------------------------------------------------
def test_adalog_levels_are_powers_of_its_base_and_zero():
    q = adalog(3)
    q.set_params(scale=torch.ones(1), q=torch.full((1,), 30.0))
    x = torch.linspace(0, 1, 5001)
    y = q(x)
    levels = {round(2 ** (-k * 30 / 37), 6) for k in range(8)} | {0.0}
    assert {round(v, 6) for v in torch.unique(y).tolist()} <= levels
    assert len(torch.unique(y)) == 9
    assert bool((y[1:] >= y[:-1]).all())
    assert y[-1].item() == 1.0 and y[0].item() == 0.0


def test_adalog_with_q_equal_r_is_the_log2_grid():
    q = adalog(4)
    q.set_params(scale=torch.ones(1), q=torch.full((1,), 37.0))
    a = softmax_batch()
    expected = torch.where(-torch.log2(a).round() < 16, 2.0 ** -(-torch.log2(a)).round().clamp(0, 15), 0.0)
    assert torch.allclose(q(a), expected)


@pytest.mark.parametrize("bits", [3, 4])
def test_adalog_error_below_plain_log2_on_softmax(bits):
    a = softmax_batch(temperature=2.0)
    q = adalog(bits).calibrate(Observation.from_tensor(a, -1))
    log2 = adalog(bits)
    log2.set_params(scale=torch.ones(1), q=torch.full((1,), 37.0))
    err, err_log2 = (q(a) - a).pow(2).sum(), (log2(a) - a).pow(2).sum()
    assert err < err_log2


def test_adalog_base_follows_the_depth_of_the_data():
    # values 2^-u, u uniform on [0, D]: a deeper range needs a larger base (a larger q) to reach it with 2^b codes
    g = torch.Generator().manual_seed(0)
    u = torch.rand(20000, 1, generator=g)
    q_shallow = adalog(3).calibrate(Observation.from_tensor(2.0 ** (-2 * u), -1)).q.item()
    q_deep = adalog(3).calibrate(Observation.from_tensor(2.0 ** (-24 * u), -1)).q.item()
    assert q_shallow < q_deep


def test_adalog_per_head_bases_and_negative_input_refused():
    a = torch.cat([softmax_batch(temperature=t, shape=(2, 1, 9, 9)) for t in (0.5, 6.0)], 1)
    q = adalog(3, "head", axis=1).calibrate(Observation.from_tensor(a, 1))
    assert q.q.shape == (2,)
    with pytest.raises(ConfigError):
        adalog(3).calibrate(Observation.from_tensor(torch.randn(10, 4), -1))


# --- adalog on post-GELU inputs (shifted, searched scale) -------------------------------------------------------------
def gelu_batch(seed=0, n=4096, c=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.gelu(torch.randn(n, c, generator=g) * 2 - 1)
    x[:3] = x[:3].abs() * 6 + 4  # a few large activations: clipping them is worth it on a log grid
    return x


def test_gelu_shift_is_the_lowest_gelu_output():
    xs = torch.linspace(-3, 0, 300001, dtype=torch.float64)
    assert torch.nn.functional.gelu(xs).min().item() == pytest.approx(-GELU_SHIFT, abs=1e-7)


def test_shifted_adalog_levels_are_a_log_grid_moved_down_by_the_shift():
    x = gelu_batch()
    q = adalog(3, scale=None, shift=GELU_SHIFT).calibrate(Observation.from_tensor(x, -1))
    s, base = q.scale.item(), q.q.item() / 37
    levels = {round(s * 2 ** (-k * base) - GELU_SHIFT, 5) for k in range(8)} | {round(-GELU_SHIFT, 5)}
    assert {round(v, 5) for v in torch.unique(q(x)).tolist()} <= levels
    assert q(torch.full((1,), -GELU_SHIFT)).item() == pytest.approx(-GELU_SHIFT)  # the zero code is GELU's floor


@pytest.mark.parametrize("bits", [3, 4])
def test_searched_scale_is_never_worse_than_the_maximum_and_clips_outliers(bits):
    x = gelu_batch(seed=bits)
    obs = Observation.from_tensor(x, -1)
    searched = adalog(bits, scale=None, shift=GELU_SHIFT).calibrate(obs)
    at_max = adalog(bits, scale=float(x.max()) + GELU_SHIFT, shift=GELU_SHIFT).calibrate(obs)
    err = lambda q: (q(x) - x).pow(2).sum().item()  # noqa: E731
    assert err(searched) <= err(at_max) + 1e-6
    assert searched.scale.item() < x.max().item() + GELU_SHIFT  # a quantile won, not the outliers' maximum


def test_values_below_the_shift_are_refused():
    x = gelu_batch()
    with pytest.raises(ConfigError, match="shift"):
        adalog(3, scale=None).calibrate(Observation.from_tensor(x, -1))
    with pytest.raises(ConfigError, match="shift"):
        adalog(3, scale=None, shift=GELU_SHIFT).calibrate(Observation.from_tensor(x - 0.5, -1))


@pytest.mark.parametrize("shift", [-0.1, "0.17", None])
def test_bad_shift_is_refused(shift):
    with pytest.raises(ConfigError, match="shift"):
        adalog(3, shift=shift)
