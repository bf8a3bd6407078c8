import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, BertModel, RobertaConfig,
                          RobertaForSequenceClassification)

from qexp.models.quant_bert import QuantEncoder
from qexp.quant.calibrate import calibrate
from qexp.quant.sites import configure, quantizers, site_names

SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             attn_implementation="eager")


def _inputs(pad_id=0):
    ids = torch.randint(3, 99, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[0, 7:], mask[0, 7:] = pad_id, 0
    return ids, mask


@pytest.mark.parametrize("cls,config_cls,pad", [(BertForSequenceClassification, BertConfig, 0),
                                                (RobertaForSequenceClassification, RobertaConfig, 1)])
def test_all_quantizers_off_equals_hf_eager(cls, config_cls, pad):
    torch.manual_seed(0)
    hf = cls(config_cls(num_labels=3, pad_token_id=pad, **SMALL)).eval()
    q = QuantEncoder(hf).eval()
    ids, mask = _inputs(pad)
    tt = torch.zeros_like(ids)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits
        ours = q(ids, mask, tt).logits
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_bert_base_has_161_activation_sites():
    """The paper's count: 13 per layer x 12 + 3 embedding sites + pooler + classifier (Bondarenko et al. 2021)."""
    cfg = BertConfig(num_labels=2)  # BERT-base sizes, random weights
    with torch.device("meta"):
        hf = BertForSequenceClassification(cfg)
    q = QuantEncoder(hf)
    acts = site_names(q, "activations")
    assert len(acts) == 161
    assert len(set(acts)) == 161
    layer = [n.removeprefix("encoder.layer.11.") for n in acts if n.startswith("encoder.layer.11.")]
    assert layer == ["attn.query", "attn.key", "attn.value", "attn.softmax_input", "attn.softmax_output",
                     "attn.context", "attn.output", "attn.residual_sum", "ffn.input", "ffn.intermediate",
                     "ffn.output", "ffn.residual_sum", "output"]
    assert acts[:3] == ["embeddings.sum_token_type", "embeddings.sum", "embeddings.ln"]
    assert acts[-2:] == ["pooler", "classifier"]
    weights = site_names(q, "weights")
    # 4 embedding tables/LN + 8 per layer (q, k, v, o, 2 LN, 2 FFN) + pooler + classifier
    assert len(weights) == 4 + 8 * 12 + 2
    assert "encoder.layer.3.ffn.intermediate.weight" in weights


def test_depth_comes_from_the_config():
    hf = BertModel(BertConfig(**{**SMALL, "num_hidden_layers": 3}))
    acts = site_names(QuantEncoder(hf), "activations")
    assert len(acts) == 3 + 13 * 3  # a bare encoder has no pooler/classifier sites


def test_glob_selects_sites_and_calibration_fixes_ranges():
    torch.manual_seed(0)
    hf = BertForSequenceClassification(BertConfig(num_labels=2, **SMALL)).eval()
    q = QuantEncoder(hf)
    configure(q, {"weights": {"bits": 8, "symmetric": True}, "activations": {"bits": 8},
                  "sites": [{"match": "encoder.layer.*.ffn.residual_sum", "bits": 16}]})
    ids, mask = _inputs()
    calibrate(q, lambda: [{"input_ids": ids, "attention_mask": mask}], 1, progress=False)
    bits = {x.name: x.spec.bits for x in quantizers(q, "activation")}
    assert bits["encoder.layer.1.ffn.residual_sum"] == 16 and bits["encoder.layer.1.ffn.output"] == 8
    assert all(x.state == "fixed" for x in quantizers(q) if x.group != "inputs")
    assert all(x.state == "off" for x in quantizers(q, group="inputs"))  # no `inputs:` default: linear inputs stay FP
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        out = q(ids, mask).logits
    assert not torch.equal(out, ref) and torch.allclose(out, ref, atol=0.05)


def test_cached_quantized_weights_follow_weight_changes():
    torch.manual_seed(0)
    hf = BertForSequenceClassification(BertConfig(num_labels=2, **SMALL)).eval()
    q = QuantEncoder(hf)
    configure(q, {"weights": {"bits": 8, "symmetric": True}, "activations": {"enabled": False}})
    ids, mask = _inputs()
    calibrate(q, lambda: [{"input_ids": ids}], 1, progress=False)
    with torch.no_grad():
        a = q(ids, mask).logits
        hf.classifier.weight.mul_(2.0)
        b = q(ids, mask).logits
    assert not torch.allclose(a, b)


def test_a_cached_quantized_weight_survives_a_state_toggle_but_not_new_ranges():
    """qexp bench fakequant toggles every site off and on between timed forwards: that bumped the cache key and
    re-quantized every weight inside the timing, which no evaluation does.  New ranges still invalidate it."""
    from qexp.quant.sites import quantizers

    torch.manual_seed(0)
    hf = BertForSequenceClassification(BertConfig(num_labels=2, **SMALL)).eval()
    q = QuantEncoder(hf).eval()
    configure(q, {"weights": {"bits": 8, "symmetric": True}, "activations": {"enabled": False}})
    ids, mask = _inputs()
    calibrate(q, lambda: [{"input_ids": ids}], 1, progress=False)
    layer = q.layers[0].intermediate
    with torch.no_grad():
        a = q(ids, mask).logits
        cached = layer._wq_cache
        for s in quantizers(q):
            s.set_state("off")
        fp = q(ids, mask).logits
        for s in quantizers(q):
            s.set_state("fixed")
        assert torch.equal(q(ids, mask).logits, a) and not torch.equal(fp, a)
        assert layer._wq_cache is cached                     # not recomputed
        wq = layer.weight_quantizer
        wq.x_min, wq.x_max = wq.x_min * 0.5, wq.x_max * 0.5   # new ranges: recomputed, different
        q(ids, mask)
        assert layer._wq_cache is not cached and not torch.equal(layer._wq_cache, cached)


def _w8a8_encoder(inputs_too: bool = True):
    torch.manual_seed(0)
    hf = BertForSequenceClassification(BertConfig(num_labels=2, **SMALL)).eval()
    q = QuantEncoder(hf).eval()
    cfg = {"weights": {"bits": 8, "symmetric": True}, "activations": {"bits": 8}}
    if inputs_too:   # ZeroQuant-style linear-input sites: they must never write into the shared layer input
        cfg["inputs"] = {"bits": 8}
    configure(q, cfg)
    ids, mask = _inputs()
    calibrate(q, lambda: [{"input_ids": ids, "attention_mask": mask}], 1, progress=False)
    return q, ids, mask


def test_inference_in_place_quantization_gives_the_same_bits_as_new_tensors(monkeypatch):
    """Issue 31 #5: owned sites (an operation's output) quantize into their input at inference, the attention scales
    and masks its own scores in place.  The logits are the ones of the path that makes a new tensor at every site, bit
    for bit (the switch below turns ownership off everywhere); so are the gradients of a training forward."""
    from qexp.quant.quantizer import Quantizer

    q, ids, mask = _w8a8_encoder()
    assert any(x.owns_input for x in quantizers(q)) and not any(x.owns_input for x in quantizers(q, group="inputs"))
    with torch.no_grad():
        fast = q(ids, mask).logits
    for x in quantizers(q):
        monkeypatch.setattr(x, "owns_input", False)
    monkeypatch.setattr(Quantizer, "owns_input", False)
    with torch.no_grad():
        plain = q(ids, mask).logits
    assert torch.equal(fast.view(torch.int32), plain.view(torch.int32))
    assert not torch.equal(fast, q.hf_model(input_ids=ids, attention_mask=mask).logits)   # it quantizes


def test_a_site_that_is_observed_or_does_not_own_its_input_leaves_the_input_alone():
    """A forward hook reads the site's input after the call (ZeroQuant's relative error compares output and input):
    then, under autograd, and at a linear-input site, the quantizer makes a new tensor."""
    from qexp.quant.analysis import quantization_errors

    q, ids, mask = _w8a8_encoder()
    site = q.layers[0].attn.residual_sum
    linear_input = q.layers[0].attn.query.input_quantizer
    x = torch.randn(3, 11, 32)
    with torch.no_grad():
        kept = x.clone()
        linear_input(x)
        assert torch.equal(x, kept)                  # not owned: untouched
        seen = []
        h = site.register_forward_hook(lambda m, args, out: seen.append(args[0] is out))
        y = site(x)
        h.remove()
        assert seen == [False] and torch.equal(x, kept) and not torch.equal(y, x)
        y = site(x)                                  # owned, unobserved: the result is written into x
        assert y.data_ptr() == x.data_ptr() and not torch.equal(x, kept)
    z = torch.randn(3, 11, 32)
    before = z.clone()
    site(z)                                          # grad mode on: a new tensor
    assert torch.equal(z, before)
    errors = quantization_errors(q, {"input_ids": ids, "attention_mask": mask})
    assert errors["sites"]["encoder.layer.0.attn.residual_sum"] > 0 and errors["sites"]["encoder.layer.0.output"] > 0
