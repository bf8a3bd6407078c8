"""Quantized training's core: dynamic formats (Eq. 1), the quantized linear's forward/dX/dW, quantized AdamW.

References are written independently in float64 NumPy with explicit loops over slots (no torch quantization code)."""
import numpy as np
import pytest
import torch

from qexp.quant.dynamic import FormatError, TensorFormat, make_format
from qexp.quant.granularity import PerChannel, PerTensor, PerToken
from qexp.quant.optim import OptimizerConfigError, QuantizedAdamW
from qexp.quant.training_linear import LinearQuant, TrainingQuantError

AXES = {"per_tensor": None, "per_token": "rows", "per_channel0": 0, "per_channel-1": -1}


def ref_quant(x: np.ndarray, bits: int, how: str, symmetric: bool) -> np.ndarray:
    """Eq. 1 per slot, float64, one slot at a time."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    if how == "per_tensor":
        slots = [(Ellipsis,)]
    elif how == "per_token":
        slots = [idx + (slice(None),) for idx in np.ndindex(*x.shape[:-1])]
    else:
        axis = AXES[how] % x.ndim
        slots = [tuple(i if d == axis else slice(None) for d in range(x.ndim)) for i in range(x.shape[axis])]
    for s in slots:
        v = x[s]
        if symmetric:
            q = 2 ** (bits - 1) - 1
            scale = max(np.abs(v).max() / q, np.finfo(np.float32).tiny)
            out[s] = np.clip(np.round(v / scale), -q - 1, q) * scale
        else:
            q = 2 ** bits - 1
            scale = max((v.max() - v.min()) / q, np.finfo(np.float32).tiny)
            z = np.round(-v.min() / scale)
            out[s] = (np.clip(np.round(v / scale) + z, 0, q) - z) * scale
    return out


def fmt(bits, how, symmetric=True):
    g = {"per_tensor": PerTensor(), "per_token": PerToken(), "per_channel0": PerChannel(0),
         "per_channel-1": PerChannel(-1)}[how]
    return TensorFormat(bits, g, symmetric)


@pytest.mark.parametrize("how", list(AXES))
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_format_matches_float64_reference(how, bits, symmetric):
    x = torch.randn(3, 5, 7, dtype=torch.float64) * torch.logspace(-2, 1, 7, dtype=torch.float64)
    got = fmt(bits, how, symmetric).fake_quantize(x)
    np.testing.assert_allclose(got.numpy(), ref_quant(x.numpy(), bits, how, symmetric), rtol=0, atol=1e-12)


def test_hand_calculation_symmetric_4bit():
    # max|x| = 7 -> s = 7 / 7 = 1: values round half to even; -7 is the lowest code used (never -8)
    x = torch.tensor([[-7.0, 2.5, 3.5, 0.4]])
    assert fmt(4, "per_tensor").fake_quantize(x).tolist() == [[-7.0, 2.0, 4.0, 0.0]]
    # per token: row 2 has max 14 -> s = 2
    x = torch.tensor([[1.0, -7.0], [14.0, 3.0]])
    assert fmt(4, "per_token").fake_quantize(x).tolist() == [[1.0, -7.0], [14.0, 4.0]]


def test_zero_slot_stays_zero_and_ste_is_identity():
    x = torch.zeros(2, 3)
    x[1] = torch.tensor([1.0, -2.0, 0.5])
    f = fmt(8, "per_token")
    assert torch.equal(f.fake_quantize(x)[0], torch.zeros(3))
    x.requires_grad_(True)
    f.ste(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_make_format_errors_name_value_and_choices():
    assert make_format(None, "w", ("per_tensor",)) is None
    assert make_format({"enabled": False, "bits": 8}, "w", ("per_tensor",)) is None
    with pytest.raises(FormatError, match=r"per_token.*valid: per_tensor, per_channel"):
        make_format({"bits": 8, "granularity": "per_token"}, "recipe.qpt.weights", ("per_tensor", "per_channel"))
    with pytest.raises(FormatError, match="bit-width 1"):
        make_format({"bits": 1}, "recipe.qpt.weights", ("per_tensor",))
    with pytest.raises(FormatError, match=r"unknown key\(s\) \['bitz'\]"):
        make_format({"bitz": 8}, "recipe.qpt.weights", ("per_tensor",))


# -- the quantized linear: forward, dX, dW against float64 references --------------------------------------------------
GRANS = [("per_tensor", "per_tensor", "per_tensor"), ("per_channel0", "per_token", "per_token"),
         ("per_channel0", "per_channel-1", "per_tensor"), ("per_tensor", "per_token", "per_token")]


@pytest.mark.parametrize("wg,ag,gg", GRANS)
@pytest.mark.parametrize("grad_path", ["weight", "input", "both"])
@pytest.mark.parametrize("saved", ["quantized", "original"])
@pytest.mark.parametrize("a_sym", [True, False])
def test_quant_linear_forward_and_gradients(wg, ag, gg, grad_path, saved, a_sym):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 5, 4, dtype=torch.float64)
    spec = LinearQuant(fmt(4, wg), fmt(8, ag, a_sym), fmt(4, gg), grad_path=grad_path, saved=saved)
    y = spec(x, w, b)
    y.backward(dy)

    X, W, B, DY = (t.detach().numpy() for t in (x, w, b, dy))
    Xq, Wq = ref_quant(X, 8, ag, a_sym), ref_quant(W, 4, wg, True)
    DYq = ref_quant(DY, 4, gg, True)
    np.testing.assert_allclose(y.detach().numpy(), Xq @ Wq.T + B, rtol=1e-12, atol=1e-12)
    Xs, Ws = (Xq, Wq) if saved == "quantized" else (X, W)
    g_in = DYq if grad_path in ("input", "both") else DY
    g_w = DYq if grad_path in ("weight", "both") else DY
    np.testing.assert_allclose(x.grad.numpy(), g_in @ Ws, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), g_w.reshape(-1, 4).T @ Xs.reshape(-1, 6), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b.grad.numpy(), DY.reshape(-1, 4).sum(0), rtol=1e-12, atol=1e-12)


def test_quant_linear_off_equals_plain_linear_bit_for_bit():
    torch.manual_seed(1)
    lin = torch.nn.Linear(6, 4)
    x = torch.randn(3, 6, requires_grad=True)
    y0 = lin(x)
    y0.sum().backward()
    g0 = (x.grad.clone(), lin.weight.grad.clone(), lin.bias.grad.clone())
    x.grad = None
    lin.zero_grad()
    y1 = LinearQuant()(x, lin.weight, lin.bias)
    y1.sum().backward()
    assert torch.equal(y0, y1)
    for a, b_ in zip(g0, (x.grad, lin.weight.grad, lin.bias.grad)):
        torch.testing.assert_close(a, b_, rtol=1e-6, atol=1e-7)


def test_bad_switches_are_refused():
    with pytest.raises(TrainingQuantError, match="grad_path='dx'.*weight, input, both"):
        LinearQuant(grad_path="dx")
    with pytest.raises(TrainingQuantError, match="saved='raw'"):
        LinearQuant(saved="raw")


# -- quantized AdamW ---------------------------------------------------------------------------------------------------
def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(5, 4, generator=g)), torch.nn.Parameter(torch.randn(4, generator=g))]


def _grads(step, params):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g) * (1 + step) for p in params]


KW = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


@pytest.mark.parametrize("foreach", [False, True])
def test_quantized_adamw_off_is_adamw_bit_for_bit(foreach):
    a, b = _params(), _params()
    opt_a = torch.optim.AdamW(a, foreach=foreach, **KW)
    opt_b = QuantizedAdamW(b, foreach=foreach, **KW)
    for step in range(5):
        for p, q, g in zip(a, b, _grads(step, a)):
            p.grad, q.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b):
        assert torch.equal(p, q)
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    for k in sa["state"]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa["state"][k][key], sb["state"][k][key])


def ref_adamw(params, steps, m1=None, m2=None, timing="after_update"):
    """float64 AdamW written out (Loshchilov & Hutter; torch's bias correction), with moment quantization."""
    lr, (b1, b2), eps, wd = KW["lr"], KW["betas"], KW["eps"], KW["weight_decay"]
    ps = [p.detach().double().numpy().copy() for p in params]
    m = [np.zeros_like(p) for p in ps]
    v = [np.zeros_like(p) for p in ps]

    def q(spec, t):
        if spec is None:
            return t
        bits, how = spec
        how = "per_tensor" if (how == "per_channel0" and t.ndim < 2) else how
        return ref_quant(t, bits, how, True)

    for step in range(steps):
        grads = [g.double().numpy() for g in _grads(step, params)]
        for i, (p, g) in enumerate(zip(ps, grads)):
            if timing == "on_read" and step > 0:
                m[i], v[i] = q(m1, m[i]), q(m2, v[i])
            p *= 1 - lr * wd
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            t = step + 1
            denom = np.sqrt(v[i]) / np.sqrt(1 - b2 ** t) + eps
            p -= lr / (1 - b1 ** t) * m[i] / denom
            if timing == "after_update":
                m[i], v[i] = q(m1, m[i]), q(m2, v[i])
    return ps


@pytest.mark.parametrize("m1,m2", [((4, "per_tensor"), None), ((8, "per_channel0"), None),
                                   (None, (8, "per_channel0")), ((4, "per_channel0"), (8, "per_tensor"))])
@pytest.mark.parametrize("timing", ["after_update", "on_read"])
def test_quantized_adamw_matches_float64_reference(m1, m2, timing):
    params = [torch.nn.Parameter(p.detach().double()) for p in _params()]
    opt = QuantizedAdamW(params, m1=fmt(*m1) if m1 else None, m2=fmt(*m2) if m2 else None, timing=timing,
                         foreach=False, **KW)
    for step in range(4):
        for p, g in zip(params, _grads(step, params)):
            p.grad = g.double()
        opt.step()
    want = ref_adamw(_params(), 4, m1, m2, timing)
    for p, r in zip(params, want):
        np.testing.assert_allclose(p.detach().numpy(), r, rtol=1e-10, atol=1e-12)
    if timing == "after_update" and m1 is not None:  # what is stored is on the grid
        for p in params:
            t = opt.state[p]["exp_avg"]
            f = fmt(*m1)
            f = TensorFormat(f.bits, PerTensor()) if t.dim() < 2 else f
            assert torch.equal(f.fake_quantize(t), t)


def test_on_read_first_step_is_adamw():
    a, b = _params(), _params()
    opt_a = torch.optim.AdamW(a, foreach=False, **KW)
    opt_b = QuantizedAdamW(b, m2=fmt(8, "per_channel0"), timing="on_read", foreach=False, **KW)
    for p, q, g in zip(a, b, _grads(0, a)):
        p.grad, q.grad = g.clone(), g.clone()
    opt_a.step()
    opt_b.step()
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_second_moment_per_channel_8bit_zeroes_small_entries():
    """Figure 12's mechanism: max-scaled 8-bit second moments send the small entries of a row to exactly 0."""
    v = torch.tensor([[1.0, 1e-3, 3e-3, 0.5]])  # s = 1/127: 0.127 and 0.381 steps round to 0
    assert fmt(8, "per_channel0").fake_quantize(v).tolist()[0][1:3] == [0.0, 0.0]


def test_bad_timing_is_refused():
    with pytest.raises(OptimizerConfigError, match="timing='later'.*after_update, on_read"):
        QuantizedAdamW(_params(), timing="later", lr=1e-3)
