import pytest
import torch

from qexp.quant.granularity import (GranularityError, PerChannel, PerEmbeddingGroup, PerTensor, PerToken,
                                    make_granularity, range_permutation)
from qexp.quant.quantizer import QuantSpec, Quantizer
from qexp.quant.sites import configure  # noqa: F401  (import check)


def _calibrated(spec, x, perm=None):
    q = Quantizer("site", spec)
    if perm is not None:
        q.perm = perm
    q.set_state("estimating")
    q(x)
    q.compute_encodings()
    q.set_state("fixed")
    return q


def test_slot_views():
    x = torch.arange(24.0).reshape(2, 3, 4)
    assert PerTensor().slots(x).shape == (1, 24)
    s = PerChannel(axis=1).slots(x)
    assert s.shape == (3, 8) and torch.equal(s[1], x[:, 1].flatten())
    t = PerToken().slots(x)
    assert t.shape == (6, 4) and torch.equal(t[4], x[1, 1])
    g = PerEmbeddingGroup(n_groups=2).slots(x)
    assert g.shape == (2, 12) and torch.equal(g[0].sort().values, x[..., :2].flatten().sort().values)


def test_expand_broadcasts_back():
    x = torch.zeros(2, 3, 4)
    assert PerChannel(axis=1).expand(torch.tensor([1.0, 2.0, 3.0]), x).shape == (1, 3, 1)
    assert PerToken().expand(torch.arange(6.0), x).shape == (2, 3, 1)
    assert PerEmbeddingGroup(2).expand(torch.tensor([1.0, 2.0]), x).tolist() == [1.0, 1.0, 2.0, 2.0]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_peg_with_one_group_is_per_tensor_exactly(bits):
    x = torch.randn(3, 5, 12) * torch.linspace(0.1, 9, 12)
    a = _calibrated(QuantSpec(bits=bits, granularity=PerEmbeddingGroup(1)), x)(x)
    b = _calibrated(QuantSpec(bits=bits, granularity=PerTensor()), x)(x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_peg_with_d_groups_is_per_embedding_exactly(bits):
    x = torch.randn(3, 5, 12) * torch.linspace(0.1, 9, 12)
    a = _calibrated(QuantSpec(bits=bits, granularity=PerEmbeddingGroup(12)), x)(x)
    b = _calibrated(QuantSpec(bits=bits, granularity=PerChannel(axis=-1)), x)(x)
    assert torch.equal(a, b)


def test_permutation_groups_the_largest_ranges_together():
    d = 12
    scale = torch.ones(d)
    outliers = [1, 6, 10]
    scale[outliers] = 100.0
    x = torch.randn(4, 16, d) * scale
    perm = range_permutation(x.reshape(-1, d).amax(0) - x.reshape(-1, d).amin(0))
    assert sorted(perm[-3:].tolist()) == outliers  # ascending by range: outliers last
    spec = QuantSpec(granularity=PerEmbeddingGroup(4, permute=True))
    q = _calibrated(spec, x, perm)
    x_max = q.expand(q.x_max, x)
    group_of = {int(dim): pos // 3 for pos, dim in enumerate(perm)}
    assert len({group_of[i] for i in outliers}) == 1  # one group holds every outlier dimension
    normal = [i for i in range(d) if i not in outliers]
    assert x_max[normal].max() < 10 < x_max[outliers].min()


def test_groups_must_divide_the_embedding_dimension():
    with pytest.raises(GranularityError, match=r"does not divide.*768.*\[1, 2, 3, 4, 6, 8"):
        PerEmbeddingGroup(5).check(torch.Size([2, 3, 768]))
    with pytest.raises(GranularityError, match="positive integer"):
        PerEmbeddingGroup(0)


def test_bad_granularities():
    with pytest.raises(GranularityError, match="valid choices.*per_tensor"):
        make_granularity("per_row")
    with pytest.raises(GranularityError, match="tokens"):
        PerToken().slots(torch.zeros(5))
    with pytest.raises(GranularityError, match="axis 3 is out of range"):
        PerChannel(axis=3).slots(torch.zeros(2, 2))
    assert make_granularity({"name": "per_embedding_group", "n_groups": 6}) == PerEmbeddingGroup(6)


def test_granularities_are_frozen_values():
    assert PerChannel(0) == PerChannel(0) and hash(PerChannel(0)) == hash(PerChannel(0))
    with pytest.raises(Exception):
        PerChannel(0).axis = 1
