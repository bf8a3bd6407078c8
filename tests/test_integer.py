"""The integer reference path (qexp/integer.py) against fake quantization and a NumPy integer GEMM."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qexp.integer import IntegerPathError, IntTensor, int_accumulate, int_linear
from qexp.quant.affine import fake_quantize, qparams


def _operands(m, k, n, seed, act_sym, act_per_token, w_per_channel, bits=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g, dtype=torch.float64) * 3 + 0.5
    x[:, 1] += 20.0  # an outlier feature, as in BERT
    w = torch.randn(n, k, generator=g, dtype=torch.float64) * 0.05
    b = torch.randn(n, generator=g, dtype=torch.float64)
    dims = {"dim": 1, "keepdim": True} if act_per_token else {}
    px = qparams(x.amin(**dims), x.amax(**dims), bits, act_sym)
    wd = {"dim": 1, "keepdim": True} if w_per_channel else {}
    pw = qparams(w.amin(**wd), w.amax(**wd), bits, True)
    return x, w, b, px, pw


@pytest.mark.parametrize("act_sym", [True, False])
@pytest.mark.parametrize("act_per_token", [True, False])
@pytest.mark.parametrize("w_per_channel", [True, False])
@pytest.mark.parametrize("shape", [(7, 33, 5), (64, 768, 96), (1, 3072, 17)])
def test_integer_path_equals_fake_quantization(act_sym, act_per_token, w_per_channel, shape):
    x, w, b, px, pw = _operands(*shape, seed=sum(shape), act_sym=act_sym, act_per_token=act_per_token,
                                w_per_channel=w_per_channel)
    expected = F.linear(fake_quantize(x, px), fake_quantize(w, pw), b)  # what the fake-quant model computes
    got = int_linear(IntTensor.quantize(x, px), IntTensor.quantize(w, pw), b, out_dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_accumulator_is_the_exact_integer_sum():
    x, w, _, px, pw = _operands(9, 257, 11, seed=3, act_sym=False, act_per_token=True, w_per_channel=True)
    xi, wi = IntTensor.quantize(x, px), IntTensor.quantize(w, pw)
    acc = int_accumulate(xi, wi)
    xc = xi.codes.numpy().astype(np.int64) - xi.zero_point.numpy().astype(np.int64)
    ref = np.einsum("mk,nk->mn", xc, wi.codes.numpy().astype(np.int64))  # NumPy, no torch matmul
    assert acc.dtype == torch.int32 and np.array_equal(acc.numpy(), ref)
    assert xi.codes.min() >= 0 and xi.codes.max() <= 255 and wi.codes.abs().max() <= 128


def test_unsupported_granularities_and_overflow_are_clear_errors():
    x, w, _, px, pw = _operands(4, 8, 3, seed=0, act_sym=True, act_per_token=True, w_per_channel=True)
    per_feature = qparams(x.amin(0, keepdim=True), x.amax(0, keepdim=True), 8, True)  # varies along K
    with pytest.raises(IntegerPathError, match=r"neither per-tensor nor one per row"):
        int_linear(IntTensor.quantize(x, per_feature), IntTensor.quantize(w, pw))
    asym_w = qparams(w.amin(), w.amax(), 8, False)
    with pytest.raises(IntegerPathError, match="weights must be symmetric"):
        int_linear(IntTensor.quantize(x, px), IntTensor.quantize(w, asym_w))
    big = IntTensor(torch.full((1, 4), 32767, dtype=torch.int32), torch.tensor(1.0), torch.tensor(0.0))
    with pytest.raises(IntegerPathError, match="int32 accumulator overflows"):
        int_accumulate(big, big)
    with pytest.raises(IntegerPathError, match=r"do not make an \(M, K\) x \(N, K\) GEMM"):
        int_accumulate(IntTensor.quantize(x, px), IntTensor.quantize(w[:, :5], pw))
