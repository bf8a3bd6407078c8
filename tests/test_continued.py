"""Issue 28: continued pre-training of a *pretrained* decoder with gated attention (Bondarenko et al. 2023, Table 9),
on a tiny Llama (grouped-query attention, rotary embeddings, tied embeddings) saved as a local HF folder: the gates
leave the pretrained output unchanged at their initial value, the run trains, caches, resumes after a kill, feeds PTQ,
the FFN regularization is the term it says, and bad input is refused before any training."""
import json

import pytest
import torch

from qexp.cli import compose
from qexp.experiment.pipeline import run
from qexp.kinds.base import KindError

from .helpers import killing_trainer, write_corpus

SHORT = ["task.seq_length=32", "task.train.max_steps=6", "task.train.batch_size=4", "task.train.warmup_steps=2",
         "task.train.eval_steps=3", "task.train.save_steps=3", "task.train.eval_batches=1", "task.eval.batch_size=4",
         "task.eval.blocks=8", "task.train.logging_steps=1", "calibration.batch_size=2", "calibration.num_batches=2",
         "task.train.learning_rate=1e-2", "progress=false"]


def tiny_llama(folder, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    from qexp.models.tiny import byte_tokenizer

    tok = byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():   # a few large weights, so the outlier metrics have something to see
        model.model.layers[0].mlp.down_proj.weight[3] *= 20
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("llama") / "tiny")


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus", 120, 30)


def _cfg(tmp_path, corpus, llama_dir, *overrides):
    return compose(["task=continue_clm", "model=smollm2_135m", f"model.path={llama_dir}", f"task.data_dir={corpus}",
                    f"task.heldout.wikitext2.data_dir={corpus}", "task.heldout.wikitext2.files.eval=valid.txt",
                    "task.heldout_limit.windows=4",
                    f"results_dir={tmp_path / 'runs'}", f"cache_dir={tmp_path / 'cache'}", *SHORT, *overrides])


def _run(tmp_path, corpus, llama_dir, *overrides):
    return run(_cfg(tmp_path, corpus, llama_dir, *overrides), list(overrides))


def test_gates_at_their_initial_value_leave_the_pretrained_model_unchanged(llama_dir):
    """After wrapping (the o_proj hook must sit on the linear that runs): pi_init 0.5 with zero weights is the
    pretrained output bit for bit; the authors' N(0, 0.001) weights move it by float noise only."""
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from qexp.models import continued

    ids = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(0))
    ref = AutoModelForCausalLM.from_pretrained(str(llama_dir))(ids).logits
    cfg = OmegaConf.create({"name": "smollm2_135m", "family": "decoder"})
    for std, exact in ((0.0, True), (1e-3, False)):
        hf = AutoModelForCausalLM.from_pretrained(str(llama_dir))
        wrapper = continued.attach(hf, cfg, {"name": "gated_finetune", "pi_init": 0.5, "std": std}, seed=0)
        assert len(hf.qexp_gates) == 2
        out = wrapper(ids).logits
        if exact:
            assert torch.equal(out, ref)
            from qexp.models.gate_finetune import gate_factors

            with gate_factors(hf.qexp_gates) as factors:
                wrapper(ids)
            assert factors == [[1.0] * 4] * 2   # sigmoid(0) / 0.5
        else:
            assert not torch.equal(out, ref) and torch.allclose(out, ref, atol=5e-3, rtol=0)
    # the gate really acts: a closed gate (bias -> -inf) silences attention, so the output changes a lot
    with torch.no_grad():
        for g in hf.qexp_gates:
            g.gate.bias.fill_(-30.0)
    assert (wrapper(ids).logits - ref).abs().max() > 1e-2
    from qexp.models.gate_finetune import gate_factors

    with gate_factors(hf.qexp_gates) as factors:
        wrapper(ids)
    assert len(factors) == 2 and all(f < 1e-12 for h in factors for f in h)


def test_continued_training_caches_feeds_ptq_and_saves_the_gates(tmp_path, corpus, llama_dir):
    before = _run(tmp_path, corpus, llama_dir, "task.train.max_steps=0", "task.train.eval_batches=2")
    assert before["pretrain"]["steps"] == 0 and before["attention"] == {"name": "vanilla"}
    fp = _run(tmp_path, corpus, llama_dir, "+model/attention=gated_finetune", "task.train.eval_batches=2")
    pre = fp["pretrain"]
    assert pre["steps"] == 6 and pre["trained_by_this_run"] and [c["step"] for c in pre["curves"]] == [0, 3, 6]
    assert pre["attention"] == {"name": "gated_finetune", "pi_init": 0.5, "std": 0.001}
    # step 0 of the curve is the pretrained model with gates at their initial value: the before-fine-tuning numbers
    assert pre["curves"][0]["perplexity"] == pytest.approx(before["score"], rel=1e-3)
    m = fp["metrics"]["valid"]
    assert len(m["per_tensor"]) == 2 * 5 + 1 and m["max_inf_norm"] > 0 and m["avg_kurtosis"] > 0
    factors = m["gate_factor"]   # per layer, per head: the mean of sigmoid(G(x)) / pi_init, in (0, 2)
    assert len(factors) == 2 and all(len(h) == 4 and all(0 < f < 2 for f in h) for h in factors)
    assert "gate_factor" not in before["metrics"]["valid"]
    from safetensors.torch import load_file

    state = load_file(str(next((tmp_path / "cache" / "pretrain").glob("smollm2_135m*")) / "model.safetensors"))
    gate_bias = [v for k, v in state.items() if k.startswith("qexp_gates.") and k.endswith("bias")]
    assert len(gate_bias) == 2 and any(float(b.abs().max()) > 0 for b in gate_bias)   # the gates trained
    q = _run(tmp_path, corpus, llama_dir, "+model/attention=gated_finetune", "task.train.eval_batches=2", "+recipe=bq23_w8a8",
             "calibration.seed=1")
    assert "pretrain" not in q["timings"] and q["model_identity"] == fp["model_identity"]
    assert q["sites"]["weight"]["quantized"] == q["sites"]["weight"]["sites"] - 1   # lm_head stays FP
    assert q["score"] != fp["score"]
    vanilla = _run(tmp_path, corpus, llama_dir)   # another variant: another cached model
    assert vanilla["model_identity"] != fp["model_identity"] and vanilla["pretrain"]["trained_by_this_run"]


def test_a_killed_continued_training_resumes_to_the_uninterrupted_result(tmp_path, corpus, llama_dir, monkeypatch):
    from qexp.train import pretrain as training

    att = "+model/attention=gated_finetune"
    whole = _run(tmp_path / "a", corpus, llama_dir, att)
    real = training._trainer_class
    monkeypatch.setattr(training, "_trainer_class", killing_trainer(real, step=4))
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", corpus, llama_dir, att)
    assert not list((tmp_path / "b" / "runs").glob("*.json"))
    monkeypatch.setattr(training, "_trainer_class", real)
    resumed = _run(tmp_path / "b", corpus, llama_dir, att)
    assert resumed["pretrain"]["resumed_from"] == "checkpoint-3" and resumed["pretrain"]["steps"] == 6
    assert resumed["score"] == whole["score"]
    assert resumed["pretrain"]["curves"] == whole["pretrain"]["curves"]


def test_the_ffn_penalty_is_lambda_times_the_mean_squared_ffn_outputs(llama_dir):
    """Against the FFN outputs taken independently (the same forward, hooks of the test's own)."""
    from transformers import AutoModelForCausalLM

    from qexp.models.continued import FFNPenalty

    hf = AutoModelForCausalLM.from_pretrained(str(llama_dir)).train()
    seen = []
    for layer in hf.model.layers:
        layer.mlp.register_forward_hook(lambda m, i, o: seen.append(o.detach().double()))
    pen = FFNPenalty(hf, 0.25)
    ids = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(1))
    hf(ids)
    want = 0.25 * sum(float((o ** 2).mean()) for o in seen)
    term = pen.take()
    assert term.requires_grad and float(term) == pytest.approx(want, rel=1e-6)
    assert pen.take() is None                      # cleared
    hf.eval()
    hf(ids)
    assert pen.take() is None                      # evaluation passes add nothing
    assert FFNPenalty(hf, 0.0).handles == []


def test_the_penalty_enters_the_training_loss_and_the_record(tmp_path, corpus, llama_dir):
    """One step on the same batch with and without the term: the logged losses (rounded to 4 decimals by the Trainer)
    differ by the term the record holds."""
    one = ["task.train.max_steps=1", "task.train.eval_steps=1", "task.train.save_steps=1", "task.train.warmup_steps=0"]
    plain = _run(tmp_path / "a", corpus, llama_dir, *one)
    reg = _run(tmp_path / "b", corpus, llama_dir, *one, "task.train.ffn_l2=1000")
    assert reg["run_id"] != plain["run_id"] and reg["pretrain"]["ffn_l2"] == 1000 and "penalty" not in plain["pretrain"]
    term = reg["pretrain"]["penalty"]
    assert term["forwards"] == 1 and term["last"] > 1e-3
    diff = reg["pretrain"]["train_loss"][0]["loss"] - plain["pretrain"]["train_loss"][0]["loss"]
    assert diff == pytest.approx(term["last"], abs=2e-4)


@pytest.mark.parametrize("overrides, message", [
    (["+model/attention=clipped"], r"model/attention=clipped puts clipped softmax into bert attention; this model is "
                                   r"'decoder' \(use model/attention=vanilla, or a BERT encoder"),
    (["+model/attention=gated_linear"], r"model/attention=gated_linear cannot be put into a pretrained model; valid .*"
                                        r"vanilla, gated_finetune, clipped"),
    (["task.train.ffn_l2=-0.1"], r"task.train.ffn_l2=-0.1 must be a number >= 0"),
    (["+recipe=qpt_w8a8"], r"recipe 'qpt_w8a8' quantizes training from scratch \(qpt\), but task 'continue_clm'"),
    (["task.train.learning_rate=0"], r"task.train.learning_rate=0 must be > 0"),
])
def test_bad_input_is_refused_before_any_work(tmp_path, corpus, llama_dir, overrides, message, monkeypatch):
    from qexp.kinds import continued

    # the name the kind calls (patching qexp.models.loading instead missed an already-imported kind, and a kind first
    # imported during the patch kept the failing stub for the rest of the worker's tests)
    monkeypatch.setattr(continued, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(KindError, match=message):
        _run(tmp_path, corpus, llama_dir, *overrides)


def test_a_scratch_model_or_another_architecture_is_refused(tmp_path, corpus, llama_dir):
    from transformers import BertConfig, BertModel

    with pytest.raises(KindError, match=r"model 'opt_cpu' is built from scratch .* use task=pretrain_clm"):
        run(compose(["task=continue_clm", "model=opt_cpu", f"task.data_dir={corpus}", *SHORT]), [])
    bert = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(str(bert))
    with pytest.raises(KindError, match=r"holds a BertModel \(bert\), not a causal LM"):
        _run(tmp_path, corpus, bert)
    gpt2 = tmp_path / "gpt2"
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2)).save_pretrained(str(gpt2))
    with pytest.raises(KindError, match=r"adds gates to llama and bert attention; this model is 'gpt2'"):
        _run(tmp_path, corpus, gpt2, "+model/attention=gated_finetune")
    cached = json.dumps(sorted(p.name for p in (tmp_path / "cache").rglob("*"))) if (tmp_path / "cache").exists() else ""
    assert "pretrain" not in cached   # nothing trained


def test_the_gates_own_learning_rate(tmp_path, corpus, llama_dir):
    """task.train.gate_lr moves the gates into AdamW groups of their own at that peak rate (the same schedule); null
    (the default, the paper) leaves run ids and cache keys as they were before the key existed."""
    from qexp.experiment.records import run_id
    from qexp.models.continued import gate_groups

    lin, gates = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    groups = [{"params": [lin.weight, gates.weight], "weight_decay": 0.1}, {"params": [lin.bias, gates.bias],
                                                                            "weight_decay": 0.0}]
    out = gate_groups(groups, gates, 0.5)
    assert [(len(g["params"]), g.get("lr"), g["weight_decay"]) for g in out] == [(1, None, 0.1), (1, 0.5, 0.1),
                                                                                 (1, None, 0.0), (1, 0.5, 0.0)]
    cfg = _cfg(tmp_path, corpus, llama_dir, "+model/attention=gated_finetune")
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    without = {**plain, "task": {**plain["task"], "train": {k: v for k, v in plain["task"]["train"].items()
                                                            if k != "gate_lr"}}}
    assert plain["task"]["train"]["gate_lr"] is None and run_id(plain) == run_id(without)
    att = ["+model/attention=gated_finetune", "task.train.max_steps=3", "task.train.eval_steps=3",
           "task.train.save_steps=3", "task.train.learning_rate=1e-4"]
    slow = _run(tmp_path / "a", corpus, llama_dir, *att)
    fast = _run(tmp_path / "b", corpus, llama_dir, *att, "task.train.gate_lr=0.1")
    assert fast["pretrain"]["gate_lr"] == 0.1 and "gate_lr" not in slow["pretrain"]
    assert fast["run_id"] != slow["run_id"]
    from safetensors.torch import load_file

    def bias_moved(root):
        state = load_file(str(next((root / "cache" / "pretrain").glob("smollm2_135m*")) / "model.safetensors"))
        return max(float(v.abs().max()) for k, v in state.items() if k.startswith("qexp_gates.") and k.endswith("bias"))

    # Adam moves a parameter by about its learning rate per step: 3 steps at 1e-4 vs at 0.1 (warm-up 2 steps)
    assert bias_moved(tmp_path / "a") < 1e-3 < 0.05 < bias_moved(tmp_path / "b")
    with pytest.raises(KindError, match=r"gate_lr=0.1 applies to gates, but the attention is vanilla"):
        _run(tmp_path / "c", corpus, llama_dir, "task.train.gate_lr=0.1")
