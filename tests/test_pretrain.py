"""Pre-training from scratch as a task kind (Bondarenko et al. 2023): end to end on a tiny corpus, the cache shared by
FP and PTQ runs, resume after a kill, the evaluation masks, the outlier metrics, and bad input refused early."""
import json
import math

import numpy as np
import pytest
import torch

from qexp.cli import compose
from qexp.experiment.pipeline import run

from .helpers import killing_trainer, write_corpus

TINY = ["model.architecture.num_hidden_layers=2", "model.architecture.hidden_size=32",
        "model.architecture.num_attention_heads=2", "model.architecture.intermediate_size=64"]
SHORT = ["task.seq_length=32", "task.train.max_steps=6", "task.train.batch_size=4", "task.train.warmup_steps=2",
         "task.train.eval_steps=3", "task.train.save_steps=3", "task.train.eval_batches=1", "task.eval.batch_size=4",
         "task.eval.blocks=8", "calibration.batch_size=2", "calibration.num_batches=2", "progress=false"]


@pytest.fixture
def corpus(tmp_path):
    """A small English corpus in brown_austen's layout (one paragraph per line, blank lines between documents)."""
    return write_corpus(tmp_path / "corpus", 240, 40, blank_every=10)


def _run(tmp_path, corpus, *overrides):
    model = "model=bert_cpu" if "task=pretrain_mlm" in overrides else "model=opt_cpu"
    extra = ["task.tokenizer.vocab_size=300"] if model == "model=opt_cpu" else []
    cfg = compose([model, *TINY, f"task.data_dir={corpus}", f"results_dir={tmp_path / 'runs'}",
                   f"cache_dir={tmp_path / 'cache'}", *SHORT, *extra, *overrides])
    return run(cfg, list(overrides))


@pytest.mark.parametrize("task, attention", [("pretrain_mlm", "gated_mlp"), ("pretrain_clm", "clipped_alpha")])
def test_pretrain_then_ptq_share_one_trained_model(task, attention, tmp_path, corpus, minilm_dir):
    fp = _run(tmp_path, corpus, f"task={task}", f"model/attention={attention}")
    assert fp["pretrain"]["steps"] == 6 and "pretrain" in fp["timings"]
    assert [c["step"] for c in fp["pretrain"]["curves"]] == [0, 3, 6]   # step 0 and every eval_steps
    m = fp["metrics"]["valid"]
    assert math.isclose(m["perplexity"], math.exp(m["loss"]))
    assert m["max_inf_norm"] > 0 and m["avg_kurtosis"] > 0 and m["per_tensor"]
    assert fp["attention"]["gate" if attention.startswith("gated") else "softmax"] != "none"
    mass = m["delimiter_attention"]   # per layer, per head: attention probability on delimiter keys
    assert len(mass) == 2 and all(len(h) == 2 and all(0 <= v <= 1 for v in h) for h in mass)
    maps = m["attention_maps"]
    assert len(maps["probs"]) == 2 and len(maps["probs"][0][0]) == len(maps["tokens"]) == 24
    assert "." in m["delimiters"]
    q = [_run(tmp_path, corpus, f"task={task}", f"model/attention={attention}", "+recipe=bq23_w8a8",
              f"calibration.seed={s}") for s in (0, 1)]
    for r in q:   # the cached model: no training, the same weights
        assert "pretrain" not in r["timings"] and r["model_identity"] == fp["model_identity"]
        assert r["sites"]["weight"]["quantized"] > 0
    assert q[0]["run_id"] != q[1]["run_id"]
    assert q[0]["metrics"]["valid"]["calibration_seed"] == 0 and q[1]["metrics"]["valid"]["calibration_seed"] == 1
    if task == "pretrain_clm":   # the final linear layer stays in floating point
        assert q[0]["sites"]["weight"]["quantized"] == q[0]["sites"]["weight"]["sites"] - 1


def test_the_evaluation_masks_do_not_depend_on_the_run(tmp_path, corpus, minilm_dir):
    """FP and W8A8 score the same masked positions: the masks come from task.eval_mask_seed only."""
    from qexp.tasks import pretraining

    blocks = [{"input_ids": torch.arange(5, 37), "special_tokens_mask": torch.zeros(32, dtype=torch.long)}
              for _ in range(8)]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    torch.manual_seed(123)
    a = pretraining.fixed_batches(blocks, tok, "mlm", 4, seed=1000)
    torch.manual_seed(456)
    b = pretraining.fixed_batches(blocks, tok, "mlm", 4, seed=1000)
    c = pretraining.fixed_batches(blocks, tok, "mlm", 4, seed=2000)
    assert all(torch.equal(x["labels"], y["labels"]) for x, y in zip(a, b))
    assert not all(torch.equal(x["labels"], y["labels"]) for x, y in zip(a, c))
    frac = torch.cat([x["labels"].ne(-100).flatten() for x in a]).float().mean()
    assert 0.05 < frac < 0.3   # p = 0.15


def test_outlier_metrics_match_a_numpy_reference(tmp_path):
    """Per tensor: the mean over samples of max|x| and of m4 / (std_unbiased^4 + 1e-6) over the flattened T x d."""
    from omegaconf import OmegaConf

    from qexp.models import scratch
    from qexp.models.families import FAMILIES
    from qexp.tasks import pretraining

    cfg = OmegaConf.create({"arch": "opt", "source": "scratch", "attention": {"softmax": "vanilla"},
                            "architecture": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
                                             "intermediate_size": 64}})
    model = FAMILIES.get("decoder").wrap(scratch.build(cfg, 50, 16, {"pad_token_id": 1}, 0)).eval()
    batches = [{"input_ids": torch.randint(2, 50, (3, 16)), "labels": torch.randint(2, 50, (3, 16))}
               for _ in range(2)]
    got = pretraining.evaluate(model, batches, "cpu")
    seen = {}
    fc2 = model.model.model.decoder.layers[1].fc2
    h = fc2.register_forward_hook(lambda m, i, o: seen.setdefault("x", []).append(o.detach().double().numpy()))
    with torch.no_grad():
        for b in batches:
            model(**b)
    h.remove()
    x = np.concatenate([a.reshape(3, -1) for a in seen["x"]])          # (6 samples, T*d)
    mu = x.mean(1, keepdims=True)
    kurt = ((x - mu) ** 4).mean(1) / (x.std(1, ddof=1) ** 4 + 1e-6)
    t = got["per_tensor"]["decoder.layers.1.fc2"]
    assert math.isclose(t["inf_norm"], np.abs(x).max(1).mean(), rel_tol=1e-6)
    assert math.isclose(t["kurtosis"], kurt.mean(), rel_tol=1e-6)
    res = [v["inf_norm"] for v in got["per_tensor"].values() if v["role"] == "residual"]
    assert got["max_inf_norm"] == max(res) and len(res) == 2
    assert math.isclose(got["perplexity"], math.exp(got["loss"]))


def test_a_killed_training_resumes_to_the_uninterrupted_result(tmp_path, corpus, monkeypatch):
    """Kill after step 4 (checkpoint at 3), rerun: the final weights equal an uninterrupted run's, bit for bit."""
    from qexp.train import pretrain as training

    base = ["task=pretrain_clm", "task.train.logging_steps=1"]
    whole = _run(tmp_path / "a", corpus, *base)
    real = training._trainer_class
    monkeypatch.setattr(training, "_trainer_class", killing_trainer(real, step=4))
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", corpus, *base)
    assert not list((tmp_path / "b" / "runs").glob("*.json"))          # no record for a killed run
    partial = list((tmp_path / "b" / "cache" / "pretrain").glob(".partial-*/trainer/checkpoint-3"))
    assert partial, "the checkpoint at step 3 survives the kill"
    # issue 27 #12: a kill during the next save leaves a newer, half-written checkpoint; the rerun falls back
    broken = partial[0].with_name("checkpoint-5")
    broken.mkdir()
    (broken / "optimizer.pt").write_bytes((partial[0] / "optimizer.pt").read_bytes()[:100])
    monkeypatch.setattr(training, "_trainer_class", real)
    resumed = _run(tmp_path / "b", corpus, *base)
    assert resumed["pretrain"]["resumed_from"] == "checkpoint-3" and resumed["pretrain"]["steps"] == 6
    assert resumed["score"] == whole["score"]
    assert resumed["pretrain"]["curves"] == whole["pretrain"]["curves"]
    # issue 27 #4: the mean training loss covers every step, not only the resumed process's (was ~half of it)
    assert resumed["pretrain"]["train_loss_mean"] == pytest.approx(whole["pretrain"]["train_loss_mean"], rel=1e-3)
    assert resumed["pretrain"]["train_loss_mean_steps"] == whole["pretrain"]["train_loss_mean_steps"] == 6
    from safetensors.torch import load_file

    wa = load_file(str(next((tmp_path / "a" / "cache" / "pretrain").glob("opt_cpu*")) / "model.safetensors"))
    wb = load_file(str(next((tmp_path / "b" / "cache" / "pretrain").glob("opt_cpu*")) / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("overrides, match", [
    (["model.attention.softmax=clippd"], r"softmax='clippd' is unknown; valid: vanilla, clipped"),
    (["model/attention=clipped", "model.attention.gamma=0.1"], r"gamma=0.1 must be <= 0"),
    (["model/attention=clipped", "model.attention.zeta=0.9"], r"zeta=0.9 must be >= 1"),
    (["model/attention=gated_linear", "model.attention.pi_init=1.5"], r"pi_init=1.5 must lie in \(0, 1\)"),
    (["model=opt_cpu"], r"needs an encoder model"),
    (["model=tiny_bert"], r"trains a model from scratch, but model 'tiny_bert' has source 'random'"),
    (["task.train.max_steps=0"], r"task.train.max_steps=0 must be a positive integer"),
    (["task.tokenizer.name=sentencepiece"], r"task.tokenizer.name='sentencepiece' is unknown"),
])
def test_bad_input_is_refused_before_any_work(overrides, match, tmp_path, corpus):
    cfg = compose(["task=pretrain_mlm", "model=bert_cpu", f"task.data_dir={corpus}", f"results_dir={tmp_path}/r",
                   f"cache_dir={tmp_path}/c", *overrides])
    with pytest.raises(ValueError, match=match):
        run(cfg)
    assert not (tmp_path / "c").exists()


def test_a_corpus_without_train_text_is_named(tmp_path):
    empty = tmp_path / "texts"
    empty.mkdir()
    (empty / "valid.txt").write_text("some text\n")
    cfg = compose(["task=pretrain_mlm", "model=bert_cpu", f"task.data_dir={empty}", f"cache_dir={tmp_path}/c"])
    with pytest.raises(ValueError, match=r"task.data_dir='.*texts' has no train text 'train.txt'.*\['valid.txt'\]"):
        run(cfg)


def test_a_checkpoint_of_another_variant_is_refused(tmp_path, corpus):
    from omegaconf import OmegaConf

    from qexp.models import scratch

    cfg = OmegaConf.create({"arch": "opt", "source": "scratch", "attention": {"gate": "linear", "pi_init": 0.25},
                            "architecture": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
                                             "intermediate_size": 64}})
    scratch.save(scratch.build(cfg, 300, 32, {"pad_token_id": 0}, 0), tmp_path / "ckpt")
    c = compose(["task=pretrain_clm", "model=opt_cpu", *TINY, f"task.data_dir={corpus}",
                 f"task.checkpoint={tmp_path / 'ckpt'}", f"cache_dir={tmp_path}/c", "task.seq_length=32"])
    with pytest.raises(ValueError, match=r"task.checkpoint='.*ckpt': .* was trained with attention .*gate='linear'.*"
                                         r"but the run asks for .*gate='none'"):
        run(c)
    rec = _run(tmp_path, corpus, "task=pretrain_clm", "model/attention=gated_linear",
               f"task.checkpoint={tmp_path / 'ckpt'}")
    assert rec["model_identity"].startswith("checkpoint:") and "pretrain" not in rec["timings"]
    json.dumps(rec)


@pytest.mark.parametrize("task", ["pretrain_clm", "pretrain_mlm"])
def test_kwon_search_runs_on_a_pretrained_model_with_training_blocks(task, tmp_path, corpus):
    """Kwon et al. 2021 on a model qexp pre-trained: the search objective and ``train_objective`` are the loss on
    training blocks (never the valid split), the value rebuilt from one block at a time; BO runs on the cached
    model."""
    from omegaconf import OmegaConf

    from qexp.experiment.pipeline import prepare, validated

    fp = _run(tmp_path, corpus, f"task={task}")
    rec = _run(tmp_path, corpus, f"task={task}", "+recipe=pwq_bo_model", "recipe.bcq.search.trials=2",
               "recipe.bcq.search.samples=6", "recipe.train_objective.samples=6")
    assert rec["model_identity"] == fp["model_identity"] and "pretrain" not in rec["timings"]
    s = rec["bcq"]["search"]
    assert len(s["trials"]) == 2 and s["direction"] == "minimize" and s["metric_name"] == "perplexity"
    assert all(math.isfinite(t["objective"]) for t in s["trials"])
    assert len(rec["bcq"]["layers"]) == 2 * 6          # 2 blocks x (q, k, v, out, fc1, fc2)
    t = rec["train_objective"]
    assert t["n"] == 6 and math.isclose(t["metric"], math.exp(t["loss"]))

    model = "model=bert_cpu" if task == "pretrain_mlm" else "model=opt_cpu"
    extra = ["task.tokenizer.vocab_size=300"] if task == "pretrain_clm" else []
    cfg = prepare(compose([model, *TINY, f"task.data_dir={corpus}", f"results_dir={tmp_path / 'runs'}",
                           f"cache_dir={tmp_path / 'cache'}", *SHORT, *extra, f"task={task}"]), tmp_path)
    _, kind, _, _ = validated(cfg, OmegaConf.to_container(cfg, resolve=True), tmp_path)
    loaded = kind.load()
    data = kind.objective_data(10)
    ids = torch.cat([b["input_ids"] for b in data])
    train = {tuple(r.tolist()) for r in kind.blocks["train"]["input_ids"]}
    valid = {tuple(r.tolist()) for r in kind.blocks["valid"]["input_ids"]}
    rows = [tuple(r.tolist()) for r in (torch.cat([b["labels"] for b in data]) if task == "pretrain_clm" else ids)]
    if task == "pretrain_clm":   # the MLM inputs are masked: compare the unmasked labels' positions instead
        assert len(rows) == 10 and all(r in train and r not in valid for r in rows)
    assert len({*rows}) == len(rows)                                  # no block twice
    got = kind.objective(loaded.model, data)
    ref_num, ref_den = 0.0, 0
    with torch.no_grad():   # one block at a time through the model's own forward, then the batch means rebuilt
        for b in data:
            n = b["input_ids"].shape[0]
            losses, scored = [], []
            for i in range(n):
                one = {k: v[i:i + 1] for k, v in b.items() if k != "special_tokens_mask"}
                losses.append(float(loaded.model(**one).loss))
                lab = one["labels"][:, 1:] if task == "pretrain_clm" else one["labels"]   # CLM: shifted targets
                scored.append(int((lab != -100).sum()))
            ref_num += n * sum(x * m for x, m in zip(losses, scored)) / sum(scored)   # the batch's token mean
            ref_den += n
    assert got["loss"] == pytest.approx(ref_num / ref_den, rel=1e-5)
    assert got["n"] == 10 and got["higher_is_better"] is False
    assert kind.objective_data(10)[0]["input_ids"].equal(data[0]["input_ids"])   # the same draw every trial


def test_a_run_on_a_cached_model_records_the_evaluation_schedule_it_was_trained_with(tmp_path, corpus, caplog):
    """Issue 27 #9: changing only task.train.eval_steps reused the cached model and recorded eval_steps=60 while its
    curves were every 30 steps."""
    first = _run(tmp_path, corpus, "task=pretrain_clm")
    assert first["pretrain"]["trained_by_this_run"] and first["pretrain"]["look"]["eval_steps"] == 3
    with caplog.at_level("WARNING"):
        again = _run(tmp_path, corpus, "task=pretrain_clm", "task.train.eval_steps=2")
    assert not again["pretrain"]["trained_by_this_run"]
    assert again["pretrain"]["look_differs"] == {"eval_steps": {"trained_with": 3, "asked": 2}}
    assert [c["step"] for c in again["pretrain"]["curves"]] == [c["step"] for c in first["pretrain"]["curves"]]
    assert "eval_steps=3 (asked 2)" in caplog.text
