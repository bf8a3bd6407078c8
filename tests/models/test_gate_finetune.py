"""Issue 28's first piece: gates added to pretrained BERT and Llama attention in the authors' fine-tuning form leave the
model's output unchanged at their initial value (float tolerance against the unmodified model), and learn."""
import copy

import pytest
import torch

from qexp.models.gate_finetune import GateConfigError, add_gates


def bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, attn_implementation="eager")).eval()


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # grouped-query attention (4 query heads, 2 key/value heads) and rotary embeddings, as SmolLM2
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=64,
                                        attn_implementation="eager")).eval()


def out(model, ids):
    with torch.no_grad():
        o = model(input_ids=ids)
    return o.last_hidden_state if hasattr(o, "last_hidden_state") else o.logits


@pytest.mark.parametrize("build", [bert, llama])
@pytest.mark.parametrize("pi_init", [0.5, 0.25])
def test_gates_at_their_initial_value_leave_the_output_unchanged(build, pi_init):
    ids = torch.randint(0, 50, (3, 11), generator=torch.Generator().manual_seed(1))
    plain = build()
    ref = out(plain, ids)
    gated = copy.deepcopy(plain)
    gates = add_gates(gated, pi_init=pi_init, std=0.0)   # G(x) = logit(pi_init) exactly
    assert len(gates) == 2
    got = out(gated, ids)
    if pi_init == 0.5:
        assert torch.equal(got, ref)              # sigmoid(0) * 2 == 1 exactly
    else:
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)   # sigmoid(logit(pi)) / pi = 1 up to an ulp
    near = copy.deepcopy(plain)
    add_gates(near, pi_init=pi_init, std=1e-3)       # the authors' N(0, 0.001): close, not equal
    diff = (out(near, ids) - ref).abs().max()
    assert 0 < diff < 1e-2 * ref.abs().max()


def test_the_gates_change_the_output_when_they_move_and_take_gradients():
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(2))
    model = llama()
    ref = out(model, ids)
    gates = add_gates(model, std=0.0)
    with torch.no_grad():
        gates[0].gate.bias.fill_(-2.0)                # head gates closing on layer 0
    assert not torch.allclose(out(model, ids), ref)
    model.train()
    model(input_ids=ids).logits.sum().backward()
    assert gates[1].gate.weight.grad is not None and gates[1].gate.weight.grad.abs().sum() > 0


def test_bad_gate_settings_and_other_families_are_refused():
    with pytest.raises(GateConfigError, match="pi_init=1.5 must lie in"):
        add_gates(bert(), pi_init=1.5)
    with pytest.raises(GateConfigError, match="has no BertSelfAttention or LlamaAttention"):
        add_gates(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_the_real_minilm_is_unchanged_by_gates_at_their_initial_value(minilm_dir):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(minilm_dir), attn_implementation="eager").eval()
    ids = torch.randint(1000, 2000, (2, 16), generator=torch.Generator().manual_seed(3))
    ref = out(model, ids)
    add_gates(model, std=0.0)
    assert torch.equal(out(model, ids), ref)
