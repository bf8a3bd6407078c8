"""The Quantizer module against the float64 NumPy reference, for every granularity and bit-width 2-16."""
import numpy as np
import pytest
import torch

from qexp.quant.estimators import CalibrationError
from qexp.quant.granularity import GranularityError, PerChannel, PerEmbeddingGroup, PerTensor, PerToken
from qexp.quant.quantizer import QuantSpec, Quantizer

from .reference import np_quantize

X = torch.randn(3, 7, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * \
    torch.linspace(0.2, 6.0, 12, dtype=torch.float64) + 0.4


def f32(v):
    """Static ranges are stored in float32, as in a model."""
    return np.float64(np.float32(v))


def np_reference(x, granularity, bits, symmetric):
    """Per-slot min/max and quantization, written out per granularity in plain NumPy."""
    x = x.numpy()
    out = np.empty_like(x)
    if isinstance(granularity, PerTensor):
        return np_quantize(x, f32(x.min()), f32(x.max()), bits, symmetric)
    if isinstance(granularity, PerChannel):  # axis=-1 here
        for c in range(x.shape[-1]):
            out[..., c] = np_quantize(x[..., c], f32(x[..., c].min()), f32(x[..., c].max()), bits, symmetric)
        return out
    if isinstance(granularity, PerToken):
        for i in range(x.shape[0]):
            for t in range(x.shape[1]):
                row = x[i, t]
                out[i, t] = np_quantize(row, row.min(), row.max(), bits, symmetric)
        return out
    if isinstance(granularity, PerEmbeddingGroup):
        size = x.shape[-1] // granularity.n_groups
        for gi in range(granularity.n_groups):
            sl = x[..., gi * size:(gi + 1) * size]
            out[..., gi * size:(gi + 1) * size] = np_quantize(sl, f32(sl.min()), f32(sl.max()), bits, symmetric)
        return out
    raise AssertionError(granularity)


# per-channel symmetric: the signed grid is chosen once for the whole tensor (as in the authors' code), which the
# per-slot reference above cannot express when some channels are non-negative; X has negative values in every slot.
GRANULARITIES = [PerTensor(), PerChannel(axis=-1), PerToken(), PerEmbeddingGroup(3), PerEmbeddingGroup(4)]


@pytest.mark.parametrize("granularity", GRANULARITIES, ids=str)
@pytest.mark.parametrize("bits", range(2, 17))
@pytest.mark.parametrize("symmetric", [False, True])
def test_quantizer_matches_reference(granularity, bits, symmetric):
    if symmetric and not isinstance(granularity, PerTensor):
        x = X - 3.0  # every slot holds negative values: same signed grid everywhere
    else:
        x = X
    q = Quantizer("site", QuantSpec(bits=bits, symmetric=symmetric, granularity=granularity))
    q.set_state("estimating")
    assert torch.equal(q(x), x)  # estimating never changes the forward
    q.compute_encodings()
    q.set_state("fixed")
    ref = np_reference(x, granularity, bits, symmetric)
    ours = q(x).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_dynamic_granularity_needs_a_dynamic_estimator():
    with pytest.raises(GranularityError, match="running_minmax.*per_token.*current_minmax"):
        QuantSpec(granularity=PerToken(), estimator="running_minmax")


def test_states():
    q = Quantizer("encoder.layer.0.ffn.output", QuantSpec(bits=4))
    with pytest.raises(CalibrationError, match="encoder.layer.0.ffn.output.*calibrate"):
        q.set_state("fixed")
    with pytest.raises(ValueError, match="unknown quantizer state"):
        q.set_state("frozen")
    q.set_state("estimating")
    with pytest.raises(CalibrationError, match="encoder.layer.0.ffn.output.*NaN"):
        q(torch.tensor([[1.0, float("nan")]]))
    off = Quantizer("x", QuantSpec(enabled=False))
    off.set_state("fixed")  # a disabled quantizer stays off
    assert off.state == "off"


def test_learned_state_makes_ranges_trainable():
    q = Quantizer("x", QuantSpec(bits=4))
    q.set_state("estimating")
    q(X.float())
    q.compute_encodings()
    q.set_state("learned")
    assert {n for n, _ in q.named_parameters()} == {"x_min", "x_max"}
    q(X.float() * 2).sum().backward()
    assert q.x_max.grad is not None


def test_spec_validation():
    with pytest.raises(ValueError, match="unknown quantizer option.*bitz"):
        QuantSpec.from_config({"bitz": 8})
    with pytest.raises(ValueError, match="2 to 16"):
        QuantSpec.from_config({"bits": 1, "symmetric": True})
    with pytest.raises(ValueError, match="1 to 16"):
        QuantSpec.from_config({"bits": 0})
    with pytest.raises(ValueError, match="grid='tensorrt' is not a quantization grid; valid: qexp, deepspeed"):
        QuantSpec.from_config({"grid": "tensorrt"})


def test_the_inference_grid_is_recomputed_whenever_a_range_or_shape_changes():
    """Issue 31 #5 keeps a fixed site's grid between inference forwards; it must follow a new range (assigned or
    changed in place, as load_state_dict does), a new spec and an input of another shape (per-group grids expand to
    it) -- each checked against a quantizer built fresh with the same range."""
    from qexp.quant.granularity import PerGroup

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, generator=g)

    def fresh(q, v):
        r = Quantizer("r", q.spec)
        r.x_min, r.x_max = q.x_min.clone(), q.x_max.clone()
        r.set_state("fixed")
        return r(v)

    q = Quantizer("s", QuantSpec(bits=4, granularity=PerGroup(n_groups=2)))
    q.set_state("estimating")
    q(x)
    q.compute_encodings()
    q.set_state("fixed")
    with torch.no_grad():
        assert torch.equal(q(x), fresh(q, x))
        q.x_max.mul_(0.5)                          # in place
        assert torch.equal(q(x), fresh(q, x))
        q.x_min = q.x_min * 2                      # assigned
        assert torch.equal(q(x), fresh(q, x))
        y = torch.randn(2, 8, generator=g)         # another shape: per-group expansion differs
        assert torch.equal(q(y), fresh(q, y))
        q.spec = q.spec.updated(bits=3)
        assert torch.equal(q(x), fresh(q, x))
