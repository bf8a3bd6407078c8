import numpy as np
import pytest
import torch

from qexp.quant.affine import BitWidthError, check_bits, fake_quantize, qparams, quantize_int

from .reference import np_quantize


@pytest.mark.parametrize("bits", range(2, 17))
@pytest.mark.parametrize("symmetric", [True, False])
def test_matches_float64_reference(bits, symmetric):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(4000, generator=g, dtype=torch.float64) * 3 + 0.5
    x_min, x_max = torch.tensor(-2.7, dtype=torch.float64), torch.tensor(4.1, dtype=torch.float64)
    ours = fake_quantize(x, qparams(x_min, x_max, bits, symmetric)).numpy()
    ref = np_quantize(x.numpy(), -2.7, 4.1, bits, symmetric)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_hand_computed_asymmetric_2bit():
    # range [-1, 2] at 2 bits: scale = 3/3 = 1, zero point = round(1/1) = 1, grid {-1, 0, 1, 2}
    p = qparams(torch.tensor(-1.0), torch.tensor(2.0), 2, symmetric=False)
    assert float(p.scale) == 1.0 and float(p.zero_point) == 1.0
    x = torch.tensor([-1.6, -0.5, 0.4, 0.5, 1.5, 2.6])
    # -0.5 and 0.5 round half to even: -0, 0; 1.5 -> 2
    assert fake_quantize(x, p).tolist() == [-1.0, 0.0, 0.0, 0.0, 2.0, 2.0]
    assert quantize_int(x, p).tolist() == [0, 1, 1, 1, 3, 3]


def test_hand_computed_symmetric_signed_and_unsigned():
    # signed 4-bit, range +-7: scale 1, grid -8..7
    p = qparams(torch.tensor(-7.0), torch.tensor(3.0), 4, symmetric=True)
    assert (p.q_min, p.q_max, float(p.scale)) == (-8, 7, 1.0)
    assert fake_quantize(torch.tensor([-9.0, -7.4, 2.5, 8.0]), p).tolist() == [-8.0, -7.0, 2.0, 7.0]
    # non-negative data uses the unsigned grid 0..15: scale = 15/15
    p = qparams(torch.tensor(0.0), torch.tensor(15.0), 4, symmetric=True)
    assert (p.q_min, p.q_max, float(p.scale)) == (0, 15, 1.0)


def test_range_always_contains_zero():
    p = qparams(torch.tensor(2.0), torch.tensor(6.0), 8, symmetric=False)  # widened to [0, 6]
    assert float(p.zero_point) == 0.0
    assert float(fake_quantize(torch.tensor(0.0), p)) == 0.0


def test_straight_through_gradient():
    p = qparams(torch.tensor(-1.0), torch.tensor(1.0), 8, symmetric=False)
    x = torch.tensor([-3.0, -0.3, 0.2, 0.77, 5.0], requires_grad=True)
    fake_quantize(x, p).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # identity inside the grid, zero where clipped


def test_learned_range_gets_gradient():
    lo = torch.tensor(-1.0, requires_grad=True)
    hi = torch.tensor(1.0, requires_grad=True)
    x = torch.tensor([-2.0, 0.3, 3.0])
    fake_quantize(x, qparams(lo, hi, 4, symmetric=False)).sum().backward()
    assert hi.grad is not None and hi.grad != 0


@pytest.mark.parametrize("bad", [0, 1, 17, 32, 8.5, "8", True, -4])
def test_bad_bit_widths_are_rejected_with_the_valid_range(bad):
    with pytest.raises((BitWidthError, TypeError, ValueError), match="2 to 16|bit-width"):
        check_bits(bad)
    with pytest.raises((BitWidthError, TypeError, ValueError), match="2 to 16|bit-width"):
        check_bits(bad, symmetric=True)


def test_one_bit_is_an_asymmetric_two_level_grid():
    """Hand calculation, range [-0.5, 1.5] at 1 bit: scale = 2.0 / (2^1 - 1) = 2.0, zero point round(0.25) = 0, so
    the levels are 0 and 2.0; -0.5 and 0.9 round to 0, 1.1 and 1.5 to 2.0."""
    assert check_bits(1, symmetric=False) == 1
    with pytest.raises(BitWidthError, match="1 bit needs an asymmetric grid"):
        check_bits(1, symmetric=True)
    p = qparams(torch.tensor(-0.5), torch.tensor(1.5), 1, symmetric=False)
    assert (p.q_min, p.q_max, float(p.scale), float(p.zero_point)) == (0, 1, 2.0, 0.0)
    assert fake_quantize(torch.tensor([-0.5, 0.9, 1.1, 1.5]), p).tolist() == [0.0, 0.0, 2.0, 2.0]


def _chain_reference(x, p):
    """The straight-through autograd chain fake_quantize used before the fused function (issue 31 #5), written out."""
    def ste(v):
        return v + (torch.round(v) - v).detach()
    if p.offset_first:
        zp = (-p.zero_point) * p.scale
        return torch.clamp(ste((x - zp) / p.scale), p.q_min, p.q_max) * p.scale + zp
    return (torch.clamp(ste(x / p.scale) + p.zero_point, p.q_min, p.q_max) - p.zero_point) * p.scale


@pytest.mark.parametrize("symmetric, grid, per_channel", [(True, "qexp", False), (False, "qexp", False),
                                                          (False, "deepspeed", False), (True, "qexp", True),
                                                          (False, "deepspeed", True), (False, "qexp", True)])
def test_the_fused_fake_quantizer_equals_the_autograd_chain_bit_for_bit(symmetric, grid, per_channel):
    """Values and the gradient w.r.t. x, with values on exact .5 ties, at the clipping edges and outside the range."""
    from qexp.quant.affine import fake_quantize, qparams

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 40, generator=g) * 3
    x[0, :8] = torch.tensor([0.5, 1.5, -2.5, 2.5, 7.0, -9.0, 1e-9, 0.0])
    lo = x.amin(1) * 0.7 if per_channel else x.min() * 0.7
    hi = x.amax(1) * 0.6 if per_channel else x.max() * 0.6
    p = qparams(lo[:, None] if per_channel else lo, hi[:, None] if per_channel else hi, 4, symmetric, grid)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    ya, yb = fake_quantize(a, p), _chain_reference(b, p)
    assert torch.equal(ya, yb)
    up = torch.randn(ya.shape, generator=g)
    ya.backward(up)
    yb.backward(up)
    assert torch.equal(a.grad, b.grad) and (a.grad == 0).any() and (a.grad != 0).any()


def test_a_learned_range_keeps_its_gradient():
    from qexp.quant.affine import fake_quantize, qparams

    lo, hi = torch.tensor(-1.0, requires_grad=True), torch.tensor(2.0, requires_grad=True)
    x = torch.linspace(-3, 3, 25, requires_grad=True)
    fake_quantize(x, qparams(lo, hi, 4, False)).sum().backward()
    assert hi.grad is not None and x.grad is not None


@pytest.mark.slow   # Inductor compiles three loops on first use (~20-40 s on a CPU without its disk cache)
@pytest.mark.parametrize("symmetric, grid, per_channel", [(True, "qexp", False), (False, "qexp", False),
                                                          (False, "deepspeed", False), (True, "qexp", True),
                                                          (False, "deepspeed", True), (False, "qexp", True)])
def test_the_compiled_inference_chain_equals_the_eager_one_bit_for_bit(symmetric, grid, per_channel, monkeypatch):
    """Issue 31 #5 (QEXP_COMPILED_FAKEQUANT=1): the same bits as the eager in-place chain, on exact .5 ties of the
    grid (round half to even), the clipping edges, signed zeros and values far outside the range, in two shapes."""
    from qexp.quant import affine

    g = torch.Generator().manual_seed(0)
    for shape in ((6, 40), (3, 6, 40)):
        x = torch.randn(*shape, generator=g) * 3
        lo = x.amin(-1, keepdim=True) * 0.7 if per_channel else x.min() * 0.7
        hi = x.amax(-1, keepdim=True) * 0.6 if per_channel else x.max() * 0.6
        p = affine.qparams(lo, hi, 4, symmetric, grid)
        s = p.scale.expand_as(x) if per_channel else p.scale.expand(x.shape)
        flat = x.reshape(-1, x.shape[-1])
        flat[0, :6] = (torch.tensor([0.5, 1.5, -2.5, 2.5, 3.5, -0.5]) * s.reshape(-1, x.shape[-1])[0, :6])   # ties
        flat[1, :4] = torch.tensor([-0.0, 0.0, 1e9, -1e9])
        zero = symmetric and p.q_min < 0
        monkeypatch.setattr(affine, "COMPILED", False)
        eager = affine.fake_quantize_inplace(x.clone(), p, zero_point_is_zero=zero)
        monkeypatch.setattr(affine, "COMPILED", True)
        compiled = affine.fake_quantize_inplace(x.clone(), p, zero_point_is_zero=zero)
        assert torch.equal(eager.view(torch.int32), compiled.view(torch.int32))   # bits, signed zeros included
        for on in (False, True):   # written into the input (an owned site): the same bits, in x's own storage
            monkeypatch.setattr(affine, "COMPILED", on)
            owned = x.clone()
            into = affine.fake_quantize_inplace(owned, p, zero_point_is_zero=zero, overwrite=True)
            assert into.data_ptr() == owned.data_ptr() and torch.equal(eager.view(torch.int32), owned.view(torch.int32))

