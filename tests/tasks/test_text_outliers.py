import numpy as np
import torch

from qexp.quant.analysis import ErrorAccumulator, inf_norm, kurtosis
from qexp.models.tiny import char_tokenizer
from qexp.tasks.text_outliers import windows
from qexp.tasks.texts import pydoc_topics


def test_windows_are_full_and_unpadded():
    tok = char_tokenizer()
    w = windows(tok, pydoc_topics(), 64, 5)
    assert w.shape == (5, 64)
    assert (w[:, 0] == tok.cls_token_id).all() and (w[:, -1] == tok.sep_token_id).all()
    assert not (w == tok.pad_token_id).any()
    assert len(set(map(tuple, w.tolist()))) == 5  # five different windows of real text


def test_kurtosis_and_inf_norm_against_numpy():
    x = torch.randn(3, 7, 5, dtype=torch.float64) ** 3
    for i in range(3):
        s = x[i].numpy().ravel()
        ref = ((s - s.mean()) ** 4).mean() / (s.std(ddof=1) ** 4 + 1e-6)
        assert kurtosis(x)[i].item() == np.float64(ref).item() or abs(kurtosis(x)[i].item() - ref) < 1e-9
        assert inf_norm(x)[i].item() == np.abs(s).max()


def test_gaussian_kurtosis_is_about_three():
    x = torch.randn(2, 200000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(kurtosis(x), torch.full((2,), 3.0, dtype=torch.float64), atol=0.05)


def test_relative_error_accumulates_over_batches():
    acc = ErrorAccumulator()
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([1.0, 0.0])
    acc.add("s", a + torch.tensor([0.0, 1.0]), a)   # err^2 1, norm^2 25
    acc.add("s", b * 2, b)                           # err^2 1, norm^2 1
    assert abs(acc.result()["s"] - (2 / 26) ** 0.5) < 1e-12
