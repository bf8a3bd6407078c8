"""The integer inference backends (qexp/inference.py) against fake quantization, on the CPU.

Independent references: NumPy int64 einsum for the accumulator; float64 F.linear of the fake-quantized (dequantized)
operands for the output, which the integer path must match within fp32 rounding of its epilogue (a few ulp of
|acc * sx * sw| + |b|), far tighter than fake quantization's own fp32 GEMM (whose error grows with K)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qexp.integer.backends import (
    Int8Activation,
    Int8Weight,
    IntegerBackendError,
    activation_operand,
    attach,
    padded,
    reference_gemm,
    weight_operand,
)
from qexp.common.registry import UnknownChoiceError
from qexp.quant.affine import quantize_int
from qexp.quant.granularity import (
    PerChannel,
    PerEmbeddingGroup,
    PerGroup,
    PerTensor,
    PerToken,
)
from qexp.quant.modules import QLinear
from qexp.quant.quantizer import Quantizer, QuantSpec

EPS32 = float(torch.finfo(torch.float32).eps)


def _quantizer(name, spec, data=None, kind="activation"):
    q = Quantizer(name, spec)
    q.kind = kind
    if not spec.granularity.dynamic:
        q.estimator.observe(q.slots(data))
        q.compute_encodings()
    q.set_state("fixed")
    return q


def _layer(k, n, wspec, ispec, x_cal, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
        lin.bias.copy_(torch.randn(n, generator=g))
    layer = QLinear(lin, "lin", quantize_output=False)
    layer.weight_quantizer = _quantizer("lin.weight", wspec, lin.weight.detach(), kind="weight")
    layer.input_quantizer = _quantizer("lin.input", ispec, x_cal)
    return layer


def _inputs(m, k, seed, nonnegative=False):
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(m, k, generator=g) * 2 + 0.3
    x[:, 1] += 25.0  # an outlier feature, as in BERT and the decoders
    return x.abs() if nonnegative else x


def _check_against_fake(layer, x):
    """Codes, accumulator and output of the torch_int backend against the fake-quantized layer."""
    wq, iq = layer.weight_quantizer, layer.input_quantizer
    w = layer.inner.weight.detach()
    fake = layer(x)  # fake quantization (no backend attached)
    # the dequantized operands fake quantization multiplies, in float64
    w_deq, x_deq = wq(w).double(), iq(x).double()
    expected = F.linear(x_deq, w_deq, layer.inner.bias.detach().double())

    a, wo = activation_operand(iq, x), weight_operand(wq, w)
    k = x.shape[1]
    assert a.codes.shape == (x.shape[0], padded(k)) and wo.codes.shape == (w.shape[0], padded(k))
    assert not a.codes[:, k:].any() and not wo.codes[:, k:].any()  # zero padding
    # the codes are fake quantization's, bit for bit (shifted by the zero point's -128 on an unsigned grid)
    x_codes = quantize_int(x, iq.qparams_for(x, *((x.amin(1), x.amax(1)) if iq.spec.granularity.dynamic else ())))
    assert torch.equal(a.codes[:, :k].int() - a.zero_point[:, None], x_codes - iq.qparams_for(
        x, *((x.amin(1), x.amax(1)) if iq.spec.granularity.dynamic else ())).zero_point.round().int())
    if wq.rounding is None:
        assert torch.equal(wo.codes[:, :k].int(), quantize_int(w, wq.qparams_for(w)))
    # the dequantized operands are codes x scales
    a_deq = (a.codes[:, :k].double() - a.zero_point[:, None]) * a.scale[:, None].double()
    px = iq.qparams_for(x, *((x.amin(1), x.amax(1)) if iq.spec.granularity.dynamic else ()))
    if px.offset_first:
        # grid: deepspeed, asymmetric: fake quantization dequantizes in DeepSpeed's float32 order, q s + zp (issue 31
        # #4); the integer path is exact, so they differ by that sum's rounding: at most one float32 ulp of each term
        z = px.zero_point.double().reshape(-1, 1)
        q = a.codes[:, :k].double() - a.zero_point[:, None] + z          # DeepSpeed's code, 0..2^b - 1
        s = a.scale[:, None].double()
        bound = 2 ** -23 * (q.abs() * s + (z * s).abs() + a_deq.abs())   # an ulp of q s, of zp and of their sum
        assert bool(((a_deq - x_deq).abs() <= bound).all())
    else:
        torch.testing.assert_close(a_deq, x_deq, rtol=1e-6, atol=0)
    torch.testing.assert_close(wo.codes[:, :k].double() * wo.scale[:, None].double(), w_deq, rtol=1e-6, atol=0)

    acc_np = np.einsum("mk,nk->mn", a.codes.numpy().astype(np.int64) - a.zero_point.numpy()[:, None],
                       wo.codes.numpy().astype(np.int64))
    ones = (torch.ones_like(a.scale), torch.ones_like(wo.scale))  # unit scales: the output is float(acc), exact < 2^24
    unit = reference_gemm(Int8Activation(a.codes, ones[0], a.zero_point), Int8Weight(wo.codes, ones[1], wo.wsum, k))
    assert np.abs(acc_np).max() < 2 ** 24 and np.array_equal(unit.double().numpy(), acc_np.astype(np.float64))
    # each dequantized operand element carries its own fp32 rounding, so the bound scales with sum_k |x_q| |w_q|
    scale = (x_deq.abs() @ w_deq.abs().T).numpy()
    got = reference_gemm(a, wo, layer.inner.bias.detach())
    bound = 4 * EPS32 * (scale + np.abs(layer.inner.bias.detach().double().numpy())[None, :]) + 1e-30
    err = np.abs(got.double().numpy() - expected.numpy())
    assert (err <= bound).all(), f"max error / bound = {(err / bound).max():.2f}"

    net = nn.Sequential(layer)
    summary = attach(net, "torch_int")
    assert summary == {"backend": "torch_int", "integer_linears": 1, "float_linears": 0}
    integer = layer(x)
    assert torch.equal(integer, got)  # the attached layer runs exactly the reference GEMM
    torch.testing.assert_close(integer, fake, rtol=1e-4, atol=1e-4 * float(fake.detach().abs().max()))
    attach(net, "fake")
    assert torch.equal(layer(x), fake)


W_SPECS = {
    "per_tensor": QuantSpec(bits=8, symmetric=True, granularity=PerTensor()),
    "per_channel": QuantSpec(bits=8, symmetric=True, granularity=PerChannel()),
    "per_group_rows": QuantSpec(bits=8, symmetric=True, granularity=PerGroup(12)),  # 48 rows -> 4 rows per group
    "int4_groups": QuantSpec(bits=4, symmetric=True, granularity=PerGroup(48)),     # ZeroQuant's W4 FFN weights
}
I_SPECS = {
    "per_token_sym": QuantSpec(bits=8, symmetric=True, granularity=PerToken()),
    "per_token_asym": QuantSpec(bits=8, symmetric=False, granularity=PerToken()),
    "static_sym": QuantSpec(bits=8, symmetric=True, granularity=PerTensor(), estimator="running_minmax"),
    "static_asym": QuantSpec(bits=8, symmetric=False, granularity=PerTensor(), estimator="running_minmax"),
    # the ZeroQuant authors' grid (the zq_* recipes' default): cpu_int8 once quantized these on qexp's grid
    "per_token_sym_ds": QuantSpec(bits=8, symmetric=True, granularity=PerToken(), grid="deepspeed"),
    "per_token_asym_ds": QuantSpec(bits=8, symmetric=False, granularity=PerToken(), grid="deepspeed"),
    "static_sym_ds": QuantSpec(bits=8, symmetric=True, granularity=PerTensor(), estimator="running_minmax",
                               grid="deepspeed"),
}


@pytest.mark.parametrize("wname", list(W_SPECS))
@pytest.mark.parametrize("iname", list(I_SPECS))
@pytest.mark.parametrize("m,k", [(37, 72), (5, 768)])
def test_integer_path_matches_fake_quantization(wname, iname, m, k):
    x = _inputs(m, k, seed=m)
    layer = _layer(k, 48, W_SPECS[wname], I_SPECS[iname], _inputs(64, k, seed=1), seed=k)
    _check_against_fake(layer, x)


@pytest.mark.parametrize("iname", ["per_token_sym", "static_sym"])
def test_an_unsigned_grid_is_shifted_into_int8(iname):
    """Symmetric quantization of non-negative data (a ReLU output: OPT's fc2 input) uses the unsigned grid 0..255,
    which is stored as codes - 128 with zero point -128 and folded back through the weight row sums."""
    x = _inputs(9, 40, seed=3, nonnegative=True)
    layer = _layer(40, 16, W_SPECS["per_channel"], I_SPECS[iname], _inputs(32, 40, seed=4, nonnegative=True))
    a = activation_operand(layer.input_quantizer, x)
    assert (a.zero_point == -128).all() and int(a.codes.min()) < 0
    _check_against_fake(layer, x)


def test_adaround_weights_run_on_the_integer_path():
    x = _inputs(11, 64, seed=5)
    layer = _layer(64, 24, W_SPECS["per_channel"], I_SPECS["per_token_sym"], None)
    w = layer.inner.weight.detach()
    p = layer.weight_quantizer.qparams_for(w)
    layer.weight_quantizer.rounding = (torch.rand(w.shape, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    wo = weight_operand(layer.weight_quantizer, w)
    expected = torch.clamp(torch.floor(w / p.scale) + layer.weight_quantizer.rounding, -128, 127)
    assert torch.equal(wo.codes[:, :64].float(), expected)
    _check_against_fake(layer, x)


def _errors(layer):
    with pytest.raises(IntegerBackendError) as e:
        attach(nn.Sequential(layer), "torch_int")
    return str(e.value)


def test_unsupported_layers_are_clear_errors():
    x_cal = _inputs(16, 32, seed=0)
    split = _layer(32, 8, QuantSpec(bits=8, symmetric=True, granularity=PerGroup(16)), I_SPECS["per_token_sym"],
                   x_cal)  # 16 groups of 16 elements: half a row each
    assert "varies along the reduction dimension" in _errors(split) and "n_groups dividing the 8 rows" in _errors(split)
    asym_w = _layer(32, 8, QuantSpec(bits=8, symmetric=False), I_SPECS["per_token_sym"], x_cal)
    assert "symmetric weights" in _errors(asym_w)
    wide = _layer(32, 8, W_SPECS["per_channel"], QuantSpec(bits=16, symmetric=True, granularity=PerToken()), x_cal)
    assert "16-bit inputs do not fit INT8" in _errors(wide)
    peg = _layer(32, 8, W_SPECS["per_channel"], QuantSpec(bits=8, granularity=PerEmbeddingGroup(4)), x_cal)
    assert "per_token (dynamic) or per_tensor (static)" in _errors(peg)
    weight_only = _layer(32, 8, W_SPECS["per_channel"], I_SPECS["per_token_sym"], x_cal)
    weight_only.input_quantizer = Quantizer("lin.input", QuantSpec(enabled=False))
    assert "lin.weight (weight only)" in _errors(weight_only)
    with pytest.raises(UnknownChoiceError, match=r"unknown inference backend 'int4'; valid choices: cpu_int8, cupy_int8, fake, torch_int"):
        attach(nn.Sequential(weight_only), "int4")
    nothing = QLinear(nn.Linear(4, 4), "lin")
    with pytest.raises(IntegerBackendError, match="quantizes no linear layer"):
        attach(nn.Sequential(nothing), "torch_int")


def test_cupy_backend_without_a_gpu_says_why():
    from qexp.integer.kernels import KernelError, kernels_available

    if kernels_available():
        pytest.skip("this machine can run the kernels")
    layer = _layer(32, 8, W_SPECS["per_channel"], I_SPECS["per_token_sym"], None)
    with pytest.raises(KernelError, match="the CuPy INT8 kernels cannot run here: "):
        attach(nn.Sequential(layer), "cupy_int8")


def test_overflowing_accumulator_is_an_error():
    k = 2 ** 17 + 16  # 128 * 127 * K > 2^31
    a = Int8Activation(torch.full((1, k), -128, dtype=torch.int8), torch.ones(1), torch.zeros(1, dtype=torch.int32))
    w = Int8Weight(torch.full((1, k), -128, dtype=torch.int8), torch.ones(1), torch.zeros(1, dtype=torch.int32), k)
    with pytest.raises(IntegerBackendError, match="int32 accumulator overflows"):
        reference_gemm(a, w)
    short = Int8Weight(torch.zeros((1, 32), dtype=torch.int8), torch.ones(1), torch.zeros(1, dtype=torch.int32), 32)
    with pytest.raises(IntegerBackendError, match=r"padded K differs: activations \(1, 131088\), weights \(1, 32\)"):
        reference_gemm(a, short)


def test_runner_integer_backend_matches_fake_quantization(tmp_path, wikitext_like):
    """A ZeroQuant W8A8 decoder run on the torch integer backend scores what fake quantization scores (within fp32
    rounding), with its own run id and the backend in the record; the static-input PTQ recipe too."""
    from tests.helpers import run_cfg

    for recipe, extra in [("zq_w8a8", ["recipe.groups=16"]), ("zq_ptq_w8a8_asym", [])]:
        common = [f"+recipe={recipe}", *extra, "model=tiny_gpt2", "task=wikitext2", f"task.data_dir={wikitext_like}"]
        fake = run_cfg(tmp_path / recipe / "fake", *common)
        integer = run_cfg(tmp_path / recipe / "int", *common, "inference.backend=torch_int")
        assert fake["inference"] == {"backend": "fake", "integer_linears": 0}
        assert integer["inference"] == {"backend": "torch_int", "integer_linears": 8, "float_linears": 1}  # 2 blocks
        assert integer["run_id"] != fake["run_id"]
        assert abs(integer["score"] - fake["score"]) <= 1e-4 * fake["score"], (integer["score"], fake["score"])


def test_runner_refuses_a_weight_only_recipe_on_an_integer_backend(tmp_path, wikitext_like):
    from tests.helpers import run_cfg

    with pytest.raises(IntegerBackendError, match=r"recipe .zq_w48a16. quantizes no linear inputs"):   # before loading
        run_cfg(tmp_path, "+recipe=zq_w48a16", "recipe.groups=16", "model=tiny_gpt2", "task=wikitext2",
                f"task.data_dir={wikitext_like}", "inference.backend=torch_int")
    with pytest.raises(UnknownChoiceError, match=r"unknown inference backend 'int2'; valid choices: cpu_int8, cupy_int8, fake, torch_int"):
        run_cfg(tmp_path, "model=tiny_gpt2", "task=wikitext2", f"task.data_dir={wikitext_like}",
                "inference.backend=int2")
