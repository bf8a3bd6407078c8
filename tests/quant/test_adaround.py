"""AdaRound (qexp/quant/adaround.py) against hand-derived facts and float64 references."""
import numpy as np
import pytest
import torch
from torch import nn

from qexp.quant.adaround import (AdaRoundConfig, adaround_layer, beta_at, init_v, reconstruction_error,
                                 rectified_sigmoid)
from qexp.quant.affine import fake_quantize, fake_quantize_rounded, qparams
from qexp.quant.modules import QLinear
from qexp.quant.quantizer import QuantSpec, Quantizer

from .reference import np_quantize


def test_init_v_inverts_the_rectified_sigmoid():
    f = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    assert torch.allclose(rectified_sigmoid(init_v(f, 1.1, -0.1), 1.1, -0.1), f, atol=1e-12)


def test_rectified_sigmoid_reaches_exact_zero_and_one():
    h = rectified_sigmoid(torch.tensor([-20.0, 20.0]), 1.1, -0.1)
    assert h.tolist() == [0.0, 1.0]


def test_beta_schedule_warmup_then_cosine_from_20_to_2():
    cfg = AdaRoundConfig(iterations=100, warmup=0.2)
    assert beta_at(0, cfg) is None and beta_at(19, cfg) is None
    assert beta_at(20, cfg) == pytest.approx(20.0)
    assert beta_at(60, cfg) == pytest.approx(11.0)  # halfway: (20 + 2) / 2
    assert beta_at(100, cfg) == pytest.approx(2.0)


def test_rounded_quantization_with_nearest_decisions_equals_round_to_nearest():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=g, dtype=torch.float64)
    for bits, sym in ((4, True), (4, False), (8, True), (3, False)):
        p = qparams(x.min(), x.max(), bits, sym)
        frac = x / p.scale - torch.floor(x / p.scale)
        assert not torch.any((frac - 0.5).abs() < 1e-9)  # no ties in this draw
        up = (frac >= 0.5).to(x.dtype)
        got = fake_quantize_rounded(x, p, up)
        ref = np_quantize(x.numpy(), float(x.min()), float(x.max()), bits, sym)
        np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-12)
        assert torch.equal(got, fake_quantize(x, p))


def test_forced_rounding_moves_values_by_exactly_one_step():
    x = torch.tensor([0.26, -0.74, 0.5])
    p = qparams(torch.tensor(-1.0), torch.tensor(1.0), 4, True)  # s = 1/7
    down = fake_quantize_rounded(x, p, torch.zeros(3))
    up = fake_quantize_rounded(x, p, torch.ones(3))
    assert torch.allclose(up - down, torch.full((3,), 1 / 7))
    assert torch.allclose(down, torch.floor(x * 7) / 7)


def _layer(w, b=None, bits=4):
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if b is not None:
            lin.bias.copy_(b)
    layer = QLinear(lin, "toy")
    q = layer.weight_quantizer
    q.spec, q.estimator = QuantSpec(bits=bits, symmetric=True), Quantizer("t", QuantSpec(bits=bits)).estimator
    q.x_min, q.x_max = w.min(), w.max()
    q.set_state("fixed")
    return layer


def test_adaround_lowers_the_reconstruction_error_of_a_linear_layer():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 32, generator=g) * 0.1
    mix = torch.randn(32, 32, generator=g)  # correlated inputs: where rounding jointly matters
    x = (torch.randn(64, 10, 32, generator=g) @ mix)
    y = x @ w.T
    layer = _layer(w)
    cfg = AdaRoundConfig(iterations=800, batch_size=16, lr=1e-2)
    rep = adaround_layer(layer, x, y, cfg, torch.Generator().manual_seed(0))
    q = layer.weight_quantizer
    assert set(q.rounding.unique().tolist()) <= {0.0, 1.0}
    assert rep["error_adaround"] < 0.8 * rep["error_rtn"]
    # the stored decisions are what the quantizer now applies, and its values lie on the 4-bit grid
    wq = q(w)
    s = q.qparams_for(w).scale
    codes = wq / s
    assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= 8
    assert reconstruction_error(wq, None, x, y) == pytest.approx(rep["error_adaround"], rel=1e-6)
    assert 0 < rep["flipped_vs_rtn"] < 0.5


def test_adaround_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="unknown adaround option.*'iters'.*valid"):
        AdaRoundConfig.from_config({"iters": 3})
    with pytest.raises(ValueError, match="iterations=0"):
        AdaRoundConfig.from_config({"iterations": 0})


def test_adaround_on_a_real_minilm_layer_at_4_bits(minilm_dir):
    """Landing check (issue 3, item 4): on layer 0's FFN output projection of the real MiniLM-L6 (1536 -> 384), with
    real text as input, learned rounding beats round-to-nearest on the optimisation data and on held-out windows."""
    from transformers import AutoModel, AutoTokenizer

    from qexp.quant.analysis import full_precision
    from qexp.models.quant_bert import QuantEncoder
    from qexp.quant.adaround import _capture_input
    from qexp.quant.sites import configure
    from qexp.tasks.text_outliers import TEXT_SOURCES, windows

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    model = QuantEncoder(AutoModel.from_pretrained(str(minilm_dir))).eval()
    configure(model, {"weights": {"enabled": True, "bits": 4, "symmetric": True, "estimator": {"name": "mse"}},
                      "activations": {"enabled": False}, "sites": []})
    layer = model.layers[0].ffn_output
    for m in model.modules():  # only this layer's weights are quantized: MSE-calibrating all of MiniLM takes ~40 s
        if hasattr(m, "weight_quantizer") and m is not layer:
            m.weight_quantizer.set_state("off")
    q = layer.weight_quantizer
    q.estimator.observe(q.slots(layer.inner.weight.detach()))
    q.compute_encodings()
    q.set_state("fixed")
    ids = windows(tok, TEXT_SOURCES.get("pydoc_topics")(), 64, 48)
    batches = lambda part: [{"input_ids": part}]  # noqa: E731
    x_q = _capture_input(model, layer, batches(ids[:32]))
    x_h = _capture_input(model, layer, batches(ids[32:]))
    with full_precision(model):
        y = layer.inner(_capture_input(model, layer, batches(ids[:32]))).detach()
        y_h = layer.inner(_capture_input(model, layer, batches(ids[32:]))).detach()
    w, b = layer.inner.weight.detach(), layer.inner.bias.detach()
    held_rtn = reconstruction_error(layer.weight_quantizer(w).detach(), b, x_h, y_h)
    rep = adaround_layer(layer, x_q, y, AdaRoundConfig(iterations=200, batch_size=4, lr=2e-2), torch.Generator().manual_seed(0))
    held_ada = reconstruction_error(layer.weight_quantizer(w).detach(), b, x_h, y_h)
    print(f"\nminilm layer0 ffn.output W4: train SSE/seq RTN {rep['error_rtn']:.4f} AdaRound {rep['error_adaround']:.4f};"
          f" held-out RTN {held_rtn:.4f} AdaRound {held_ada:.4f}; flipped {rep['flipped_vs_rtn']:.3%}")
    assert rep["error_adaround"] < rep["error_rtn"]
    assert held_ada < held_rtn
