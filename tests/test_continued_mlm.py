"""Issue 28: continued masked-LM pre-training of a *pretrained* BERT encoder (Bondarenko et al. 2023, Table 9's setting
on MiniLM-L6's family), on a tiny BERT saved as a local HF folder *without* an MLM head (as MiniLM-L6 ships): the
new head is warmed up with the encoder frozen (once, shared by every variant), the gates and clipped softmax enter
qexp's encoder wrapper (the gates leave the output unchanged at their initial value; clipped softmax is the formula),
the run trains, caches, resumes after a kill, feeds PTQ, and bad input is refused before any training."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from qexp.cli import compose
from qexp.experiment.pipeline import run
from qexp.kinds.base import KindError
from qexp.models import continued

from .helpers import killing_trainer, write_corpus

SHORT = ["task.seq_length=32", "task.train.max_steps=6", "task.train.batch_size=4", "task.train.warmup_steps=2",
         "task.train.eval_steps=3", "task.train.save_steps=3", "task.train.eval_batches=1", "task.eval.batch_size=4",
         "task.eval.blocks=8", "task.train.logging_steps=1", "calibration.batch_size=2", "calibration.num_batches=2",
         "task.train.learning_rate=1e-2", "task.head_warmup.steps=4", "task.head_warmup.batch_size=4",
         "task.head_warmup.warmup_steps=1", "progress=false", "report_to=none"]
CFG = OmegaConf.create({"name": "minilm_l6", "family": "bert"})


def tiny_bert(folder, seed=0):
    """A bare BertModel (no MLM head, like the MiniLM-L6 package) with a WordPiece character tokenizer."""
    from transformers import BertModel

    from qexp.models.tiny import char_tokenizer, tiny_bert_config

    tok = char_tokenizer()
    torch.manual_seed(seed)
    model = BertModel(tiny_bert_config(vocab_size=len(tok), hidden_size=32, num_attention_heads=4,
                                       attn_implementation="eager"))
    with torch.no_grad():   # a large weight, so the outlier metrics have something to see
        model.encoder.layer[0].output.dense.weight[3] *= 20
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("bert") / "tiny")


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus", 120, 30)


def _cfg(tmp_path, corpus, bert_dir, *overrides):
    return compose(["task=continue_mlm", "model=minilm_l6", f"model.path={bert_dir}", f"task.data_dir={corpus}",
                    f"results_dir={tmp_path / 'runs'}", f"cache_dir={tmp_path / 'cache'}", *SHORT, *overrides])


def _run(tmp_path, corpus, bert_dir, *overrides):
    return run(_cfg(tmp_path, corpus, bert_dir, *overrides), list(overrides))


def _mlm(bert_dir):
    from transformers import BertModel

    return continued.with_mlm_head(BertModel.from_pretrained(str(bert_dir), attn_implementation="eager"), seed=0)


def _batch(n=2, t=12):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 60, (n, t), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0   # padding in the second row: the additive mask path
    return ids, mask


def test_the_mlm_head_is_new_the_encoder_is_the_pretrained_one(bert_dir):
    from transformers import BertModel

    enc = BertModel.from_pretrained(str(bert_dir))
    mlm = _mlm(bert_dir)
    mine = mlm.bert.state_dict()
    for k, v in enc.state_dict().items():
        if not k.startswith("pooler."):
            assert torch.equal(mine[k], v), k
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight   # tied
    assert sorted(continued.head_parameters(mlm)) == sorted([
        "cls.predictions.bias", "cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias"])
    assert continued.with_mlm_head(mlm, seed=1) is mlm   # a model with a head keeps it
    a, b = _mlm(bert_dir), _mlm(bert_dir)   # the head's init is drawn from the seed
    assert torch.equal(a.cls.predictions.transform.dense.weight, b.cls.predictions.transform.dense.weight)


def test_bert_gates_at_their_initial_value_leave_the_encoder_unchanged(bert_dir):
    """In qexp's encoder wrapper (which computes the attention itself) and in the HF model (the forward hook): pi_init
    0.5 with zero weights is the pretrained output bit for bit; the authors' N(0, 0.001) weights move it by float
    noise only; a clearly open/closed gate changes it (the gate is applied at all)."""
    ids, mask = _batch()
    ref_hf = _mlm(bert_dir).eval()
    ref = continued.attach(_mlm(bert_dir), CFG, {"name": "vanilla"}, 0).eval()(ids, attention_mask=mask).logits
    with torch.no_grad():
        ref_hf_logits = ref_hf(ids, attention_mask=mask).logits
    assert torch.allclose(ref, ref_hf_logits, atol=1e-5)   # the wrapper is HF's eager encoder (tested elsewhere too)
    for std, exact in ((0.0, True), (1e-3, False)):
        hf = _mlm(bert_dir).eval()
        wrapper = continued.attach(hf, CFG, {"name": "gated_finetune", "pi_init": 0.5, "std": std}, seed=0).eval()
        assert len(hf.qexp_gates) == 2
        assert not any(n.startswith("bert.") and "qexp_gate" in n for n, _ in hf.named_parameters())   # once only
        # the wrapper holds them: its parameters (what DDP syncs) and state dict (what a checkpoint resumes)
        gate_ids = {id(p) for p in hf.qexp_gates.parameters()}
        assert gate_ids <= {id(p) for p in wrapper.parameters()}
        assert any(k.startswith("qexp_gates.") for k in wrapper.state_dict())
        out = wrapper(ids, attention_mask=mask).logits
        with torch.no_grad():
            out_hf = hf(ids, attention_mask=mask).logits   # the HF path: the hook on BertSelfAttention
        if exact:
            assert torch.equal(out, ref)
            assert torch.equal(out_hf, ref_hf_logits)
        else:
            assert not torch.equal(out, ref) and torch.allclose(out, ref, atol=1e-3, rtol=1e-3)
            assert torch.allclose(out_hf, ref_hf_logits, atol=1e-3, rtol=1e-3)
    # a nearly closed gate (zero weights, bias -4): layer 0's context (its input is the same embeddings) is exactly
    # 2 sigmoid(-4) = 0.036 times the ungated one -- the gate is applied where the paper applies it, before the
    # context site
    hf = _mlm(bert_dir).eval()
    wrapper = continued.attach(hf, CFG, {"name": "gated_finetune", "pi_init": 0.5, "std": 0.0}, seed=0).eval()
    vanilla = continued.attach(_mlm(bert_dir), CFG, {"name": "vanilla"}, 0).eval()
    with torch.no_grad():
        for g in hf.qexp_gates:
            g.gate.bias.fill_(-4.0)
    ctx = []
    for m in (vanilla, wrapper):
        m.layers[0].attn.context.register_forward_hook(lambda mod, i, o: ctx.append(o.detach()))
        m(ids, attention_mask=mask)
    assert torch.allclose(ctx[1], ctx[0] * (2 * torch.sigmoid(torch.tensor(-4.0))), rtol=1e-5, atol=1e-7)


def test_clipped_softmax_in_the_pretrained_encoder_is_the_formula(bert_dir):
    """The probabilities the wrapper computes are clip((zeta - gamma) softmax(scores + mask) + gamma, 0, 1) of its own
    scores (checked at the two sites around the softmax, float64 reference); gamma 0, zeta 1 is vanilla bit for bit."""
    ids, mask = _batch()
    gamma, zeta = -0.1, 1.05
    wrapper = continued.attach(_mlm(bert_dir), CFG, {"name": "clipped", "gamma": gamma, "zeta": zeta}, 0).eval()
    seen = {}
    att = wrapper.layers[1].attn
    att.softmax_input.register_forward_hook(lambda m, i, o: seen.__setitem__("scores", o.detach()))
    att.softmax_output.register_forward_hook(lambda m, i, o: seen.__setitem__("probs", o.detach()))
    wrapper(ids, attention_mask=mask)
    add = (1.0 - mask[:, None, None, :].double()) * torch.finfo(torch.float32).min
    want = torch.clamp((zeta - gamma) * torch.softmax(seen["scores"].double() + add, -1) + gamma, 0, 1)
    assert torch.allclose(seen["probs"].double(), want, atol=1e-6)
    assert (seen["probs"] == 0).any()   # exact zeros reached (what clipping is for)
    ref = continued.attach(_mlm(bert_dir), CFG, {"name": "vanilla"}, 0).eval()(ids, attention_mask=mask).logits
    same = continued.attach(_mlm(bert_dir), CFG, {"name": "clipped", "gamma": 0.0, "zeta": 1.0}, 0).eval()
    assert torch.equal(same(ids, attention_mask=mask).logits, ref)


def test_variant_of_resolves_alpha_and_refuses_what_a_pretrained_model_cannot_take():
    v = continued.variant_of(OmegaConf.create({"attention": {"name": "clipped_alpha", "softmax": "clipped",
                                                             "alpha": 12, "zeta": 1.0, "gate": "none"}}), 128)
    assert v == {"name": "clipped", "gamma": -12 / 128, "zeta": 1.0}
    with pytest.raises(continued.ContinuedModelError, match="cannot be put into a pretrained model"):
        continued.variant_of(OmegaConf.create({"attention": {"name": "gated_linear", "softmax": "vanilla",
                                                             "gate": "linear"}}), 128)
    with pytest.raises(continued.ContinuedModelError, match="puts clipped softmax into bert attention; this model is "
                                                            "'llama'"):
        continued.check_type("llama", v)


def test_continued_mlm_warms_the_head_once_trains_caches_and_feeds_ptq(tmp_path, corpus, bert_dir):
    """The warm-up trains the head only (the encoder is bit for bit the pretrained one in its saved model) and is
    shared: the second variant and the pretrained row reuse it; each variant trains, caches and is quantized."""
    from safetensors.torch import load_file

    fp = _run(tmp_path, corpus, bert_dir, "+model/attention=vanilla")
    hw = fp["head_warmup"]
    assert hw["trained_by_this_run"] and hw["steps"] == 4 and hw["stage"] == "head_warmup"
    assert all(n.startswith("cls.") for n in hw["trained"])
    from transformers import BertModel

    warm = load_file(f"{hw['folder']}/model.safetensors")
    for k, v in BertModel.from_pretrained(str(bert_dir)).state_dict().items():
        if not k.startswith("pooler."):
            assert torch.equal(warm[f"bert.{k}"], v), k   # the encoder was frozen
    assert fp["pretrain"]["trained_by_this_run"] and fp["pretrain"]["steps"] == 6
    v = fp["metrics"]["valid"]
    assert v["eval_mask_seed"] == 1000 and v["max_inf_norm"] > 0 and v["perplexity"] > 1
    gated = _run(tmp_path, corpus, bert_dir, "+model/attention=gated_finetune")
    assert not gated["head_warmup"]["trained_by_this_run"] and gated["head_warmup"]["folder"] == hw["folder"]
    f = gated["metrics"]["valid"]["gate_factor"]
    assert len(f) == 2 and len(f[0]) == 4 and all(0 < x < 2 for layer in f for x in layer)
    q = _run(tmp_path, corpus, bert_dir, "+model/attention=gated_finetune", "+recipe=bq23_w8a8")
    assert not q["pretrain"]["trained_by_this_run"] and q["pretrain"]["folder"] == gated["pretrain"]["folder"]
    assert q["metrics"]["valid"]["perplexity"] != gated["metrics"]["valid"]["perplexity"]
    clipped = _run(tmp_path, corpus, bert_dir, "+model/attention=clipped_alpha")
    assert clipped["attention"] == {"name": "clipped", "gamma": -12 / 32, "zeta": 1.0}
    saved = json.loads((tmp_path / "cache" / "pretrain" / clipped["pretrain"]["folder"].split("/")[-1] /
                        "config.json").read_text())
    assert saved["qexp_attention"]["softmax"] == "clipped"
    before = _run(tmp_path, corpus, bert_dir, "task.train.max_steps=0")
    assert before["pretrain"]["steps"] == 0 and not before["head_warmup"]["trained_by_this_run"]
    # a setting the warm-up's training reads (task.train's weight decay) is in its cache key: a new warm-up
    wd = _run(tmp_path, corpus, bert_dir, "task.train.max_steps=0", "task.train.weight_decay=0.1")
    assert wd["head_warmup"]["trained_by_this_run"] and wd["head_warmup"]["folder"] != hw["folder"]
    assert len({r["run_id"] for r in (fp, gated, q, clipped, before, wd)}) == 6


def test_a_killed_continued_mlm_training_resumes_without_repeating_or_skipping_a_step(tmp_path, corpus, bert_dir,
                                                                                      monkeypatch):
    """The run resumes from its last complete checkpoint (weights, AdamW state, schedule, data position): the steps
    before the kill are the uninterrupted run's to the last digit, every step runs once.  The steps after it are not
    bit for bit the uninterrupted run's: Accelerate's data loader collates one batch ahead, so the masks of the batch
    after the checkpoint were drawn *before* the checkpoint's RNG state was saved (between two steps' dropout), and
    no restored state can reproduce them (the causal LM, whose collator draws nothing, resumes bit for bit:
    tests/test_continued.py)."""
    from qexp.train import pretrain as training

    att = "+model/attention=gated_finetune"
    whole = _run(tmp_path / "a", corpus, bert_dir, att)
    real = training._trainer_class
    # the continued training (6 steps), not the head warm-up (4)
    monkeypatch.setattr(training, "_trainer_class", killing_trainer(real, step=4, max_steps=6))
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", corpus, bert_dir, att)
    assert not list((tmp_path / "b" / "runs").glob("*.json"))
    monkeypatch.setattr(training, "_trainer_class", real)
    resumed = _run(tmp_path / "b", corpus, bert_dir, att)
    assert resumed["pretrain"]["resumed_from"] == "checkpoint-3" and resumed["pretrain"]["steps"] == 6
    assert not resumed["head_warmup"]["trained_by_this_run"]
    a, b = whole["pretrain"], resumed["pretrain"]
    assert [x["step"] for x in b["train_loss"]] == [x["step"] for x in a["train_loss"]] == [1, 2, 3, 4, 5, 6]
    assert [x["loss"] for x in b["train_loss"][:3]] == [x["loss"] for x in a["train_loss"][:3]]
    assert [c for c in b["curves"] if c["step"] <= 3] == [c for c in a["curves"] if c["step"] <= 3]
    assert b["train_loss_mean_steps"] == 6


def test_the_ffn_term_of_a_bert_encoder_is_lambda_times_the_mean_squared_ffn_outputs(bert_dir):
    ids, mask = _batch()
    hf = _mlm(bert_dir)
    wrapper = continued.attach(hf, CFG, {"name": "vanilla"}, 0).train()
    seen = []
    for layer in wrapper.layers:
        layer.ffn_output.register_forward_hook(lambda m, i, o: seen.append(o.detach().double()))
    pen = continued.FFNPenalty(hf, 0.5, wrapper)
    wrapper(ids, attention_mask=mask)
    want = 0.5 * sum(float((o ** 2).mean()) for o in seen)
    assert len(seen) == 2 and float(pen.take()) == pytest.approx(want, rel=1e-6)
    with pytest.raises(continued.ContinuedModelError, match="needs its quantizable wrapper"):
        continued.FFNPenalty(hf, 0.5)


@pytest.mark.parametrize("overrides, message", [
    (["+model/attention=gated_linear"], r"model/attention=gated_linear cannot be put into a pretrained model"),
    (["task.train.ffn_l2=-0.1"], r"task.train.ffn_l2=-0.1 must be a number >= 0"),
    (["+model/attention=clipped_alpha", "task.train.gate_lr=0.01"], r"task.train.gate_lr=0.01 applies to gates, but "
                                                                      r"the attention is clipped"),
    (["task.head_warmup.steps=-1"], r"task.head_warmup.steps=-1 must be a non-negative integer"),
    (["task.head_warmup.learning_rate=0"], r"task.head_warmup.learning_rate=0 must be a positive number"),
    (["task.mlm_probability=1.5"], r"task.mlm_probability=1.5 must lie in \(0, 1\)"),
])
def test_bad_input_is_refused_before_any_work(tmp_path, corpus, bert_dir, overrides, message, monkeypatch):
    import qexp.kinds.continued as kind

    monkeypatch.setattr(kind, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(KindError, match=message):
        _run(tmp_path, corpus, bert_dir, *overrides)
    assert not (tmp_path / "cache" / "pretrain").exists()


def test_another_family_or_architecture_is_refused_before_any_work(tmp_path, corpus, bert_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(KindError, match=r"task 'continue_mlm' \(continue_mlm\) needs an encoder model, but model "
                                        r"'smollm2_135m' is of family 'decoder'"):
        run(compose(["task=continue_mlm", "model=smollm2_135m", f"task.data_dir={corpus}", *SHORT]), [])
    clm_short = [o for o in SHORT if not o.startswith("task.head_warmup")]
    with pytest.raises(KindError, match=r"model/attention=clipped_alpha|puts clipped softmax into bert attention; "
                                        r"this model is 'decoder'"):
        run(compose(["task=continue_clm", "model=smollm2_135m", f"task.data_dir={corpus}",
                     "+model/attention=clipped_alpha", *clm_short]), [])
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2)).save_pretrained(str(gpt2))
    with pytest.raises(KindError, match=r"holds a GPT2LMHeadModel \(gpt2\), not a BERT encoder; continue_mlm"):
        _run(tmp_path, corpus, gpt2)
    assert not (tmp_path / "cache" / "pretrain").exists()
