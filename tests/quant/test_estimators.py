"""Each estimator against a naive NumPy computation and hand-computed cases."""
import numpy as np
import pytest
import torch

from qexp.quant.estimators import CalibrationError, make_estimator
from qexp.common.registry import UnknownChoiceError

from .reference import np_quantize


def batches(n=3, slots=4, m=50, seed=0):
    g = np.random.default_rng(seed)
    return [g.standard_normal((slots, m)) * (1 + i) + 0.3 * i for i in range(n)]


def observe_all(est, bs):
    for b in bs:
        est.observe(torch.from_numpy(b))
    return est


def test_current_minmax_uses_the_last_batch_only():
    bs = batches()
    lo, hi = observe_all(make_estimator("current_minmax"), bs).compute_range(8, False)
    np.testing.assert_array_equal(lo.numpy(), bs[-1].min(1))
    np.testing.assert_array_equal(hi.numpy(), bs[-1].max(1))


def test_running_minmax_hand_computed():
    est = make_estimator({"name": "running_minmax", "momentum": 0.9})
    for lo, hi in [(-1.0, 1.0), (-3.0, 2.0), (0.0, 5.0)]:
        est.observe(torch.tensor([[lo, hi]]))
    x_min, x_max = est.compute_range(8, False)
    # -1 -> 0.9*-1 + 0.1*-3 = -1.2 -> 0.9*-1.2 + 0.1*0 = -1.08;  1 -> 1.1 -> 0.9*1.1 + 0.5 = 1.49
    assert x_min.item() == pytest.approx(-1.08, abs=1e-12)
    assert x_max.item() == pytest.approx(1.49, abs=1e-12)


def test_running_minmax_matches_numpy_loop():
    bs = batches(5)
    lo, hi = observe_all(make_estimator({"name": "running_minmax", "momentum": 0.95}), bs).compute_range(8, False)
    r_lo, r_hi = bs[0].min(1), bs[0].max(1)
    for b in bs[1:]:
        r_lo = 0.95 * r_lo + 0.05 * b.min(1)
        r_hi = 0.95 * r_hi + 0.05 * b.max(1)
    np.testing.assert_allclose(lo.numpy(), r_lo, rtol=0, atol=1e-12)
    np.testing.assert_allclose(hi.numpy(), r_hi, rtol=0, atol=1e-12)


def test_percentile_matches_numpy_both_tails():
    bs = batches(3, m=1001)
    lo, hi = observe_all(make_estimator({"name": "percentile", "percentile": 99.0}), bs).compute_range(8, False)
    np.testing.assert_allclose(lo.numpy(), np.mean([np.percentile(b, 1.0, axis=1) for b in bs], 0), atol=1e-12)
    np.testing.assert_allclose(hi.numpy(), np.mean([np.percentile(b, 99.0, axis=1) for b in bs], 0), atol=1e-12)


def test_running_percentile_is_an_ema_of_numpy_percentiles():
    """The authors' 2023 OPT calibration: per-batch 99.999th percentiles, then running min-max with momentum 0.9."""
    bs = batches(4, m=1001)
    est = make_estimator({"name": "percentile", "percentile": 99.9, "momentum": 0.9})
    lo, hi = observe_all(est, bs).compute_range(8, False)
    r_lo, r_hi = np.percentile(bs[0], 0.1, axis=1), np.percentile(bs[0], 99.9, axis=1)
    for b in bs[1:]:
        r_lo = 0.9 * r_lo + 0.1 * np.percentile(b, 0.1, axis=1)
        r_hi = 0.9 * r_hi + 0.1 * np.percentile(b, 99.9, axis=1)
    np.testing.assert_allclose(lo.numpy(), r_lo, rtol=0, atol=1e-12)
    np.testing.assert_allclose(hi.numpy(), r_hi, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\) or null.*got 1.5"):
        make_estimator({"name": "percentile", "momentum": 1.5})


def np_mse_search(bs, bits, symmetric, k_max=100):
    """Brute force: candidate k/K of the first batch's range; summed squared error over all batches."""
    out_lo, out_hi = [], []
    for s in range(bs[0].shape[0]):
        b_lo, b_hi = min(bs[0][s].min(), 0), max(bs[0][s].max(), 0)
        best, arg = np.inf, None
        for k in range(1, k_max + 1):
            lo, hi = b_lo * k / k_max, b_hi * k / k_max
            if symmetric:
                r = max(-lo, hi)
                lo, hi = (-r if b_lo < 0 else 0.0), r
            err = sum(((np_quantize(b[s], lo, hi, bits, symmetric) - b[s]) ** 2).sum() for b in bs)
            if err < best:
                best, arg = err, (lo, hi)
        out_lo.append(arg[0])
        out_hi.append(arg[1])
    return np.array(out_lo), np.array(out_hi)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("expect", [True, False])
def test_mse_matches_brute_force(symmetric, bits, expect):
    bs = [b ** 3 for b in batches(2, slots=3, m=200, seed=bits)]  # heavy tails, so clipping pays
    est = make_estimator({"name": "mse", "num_candidates": 40})
    if expect:  # accumulate losses batch by batch instead of keeping the batches
        est.expect(bits, symmetric)
    lo, hi = observe_all(est, bs).compute_range(bits, symmetric)
    r_lo, r_hi = np_mse_search(bs, bits, symmetric, 40)
    np.testing.assert_allclose(lo.numpy(), r_lo, atol=1e-12)
    np.testing.assert_allclose(hi.numpy(), r_hi, atol=1e-12)
    assert (hi.numpy() < np.max([b.max(1) for b in bs], 0)).any()  # it did clip somewhere


def test_reset_forgets():
    est = make_estimator("current_minmax")
    est.observe(torch.ones(1, 3))
    est.reset()
    with pytest.raises(CalibrationError, match="before any data"):
        est.compute_range(8, False)


def test_non_finite_calibration_data_is_an_error():
    est = make_estimator("running_minmax")
    with pytest.raises(CalibrationError, match="NaN"):
        est.observe(torch.tensor([[1.0, float("nan")]]))


def test_unknown_estimator_lists_choices():
    with pytest.raises(UnknownChoiceError, match="current_minmax, mse, percentile, running_minmax"):
        make_estimator("kl_divergence")
    with pytest.raises(ValueError, match="momentum"):
        make_estimator({"name": "running_minmax", "momentum": 1.5})
    with pytest.raises(ValueError, match="bad arguments"):
        make_estimator({"name": "current_minmax", "momentum": 0.9})


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_mse_fast_squared_error_equals_fake_quantize_error(symmetric, bits):
    """The MSE estimator's in-place error kernel is the model's fake_quantize math (float64 data: exact)."""
    from qexp.quant.affine import fake_quantize, qparams
    from qexp.quant.estimators.mse import _squared_error

    g = torch.Generator().manual_seed(bits)
    x = torch.randn(3, 1000, generator=g, dtype=torch.float64) * torch.tensor([[0.1], [1.0], [5.0]], dtype=torch.float64)
    x[2] += 2.0  # a skewed slot
    lo, hi = x.amin(1, keepdim=True) * 0.7, x.amax(1, keepdim=True) * 0.6
    p = qparams(lo, hi, bits, symmetric)
    expected = ((fake_quantize(x, p) - x) ** 2).sum(dim=1)
    torch.testing.assert_close(_squared_error(x, p), expected, rtol=1e-12, atol=0)
