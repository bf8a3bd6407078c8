"""Quantized pre-training (Chitsaz et al. 2024) end to end on a tiny corpus: every qpt recipe composes and trains a
step, the pipeline trains quantized and evaluates held-out perplexity, divergence is recorded, bad input refused."""
import math

import pytest
import torch

from qexp.cli import compose, conf_dir
from qexp.config.training_quant import TrainingQuantConfigError, training_quant
from qexp.experiment.pipeline import run
from qexp.models import scratch
from qexp.models.families import family_of
from qexp.quant.modules import QLinear
from qexp.quant.optim import QuantizedAdamW
from qexp.quant.training_linear import attach

from .test_pretrain import corpus  # noqa: F401  (fixture)

QPT = sorted(p.stem for p in (conf_dir() / "recipe").glob("qpt_*.yaml"))
TINY = ["model=gpt2_cpu", "model.architecture.num_hidden_layers=2", "model.architecture.hidden_size=32",
        "model.architecture.num_attention_heads=2", "model.architecture.intermediate_size=64",
        "task.tokenizer.vocab_size=300"]
SHORT = ["task.seq_length=32", "task.train.max_steps=4", "task.train.batch_size=4", "task.train.warmup_steps=1",
         "task.train.eval_steps=2", "task.train.save_steps=2", "task.train.eval_batches=1", "task.eval.batch_size=4",
         "task.eval.blocks=8", "calibration.batch_size=2", "calibration.num_batches=1", "progress=false"]


@pytest.fixture
def heldout(tmp_path):
    d = tmp_path / "heldout"
    d.mkdir()
    (d / "wiki.test.raw").write_text(" = Heading = \n the old tree near the river bank , and the cat sat . \n" * 20)
    (d / "ptb.test.txt").write_text(" the fox jumps over the lazy dog \n a bird sings in the morning \n" * 20)
    return d


def _run(tmp_path, corpus, heldout, *overrides):
    cfg = compose(["task=qpt_clm", *TINY, f"task.data_dir={corpus}", f"results_dir={tmp_path / 'runs'}",
                   f"cache_dir={tmp_path / 'cache'}", f"task.heldout.wikitext2.data_dir={heldout}",
                   f"task.heldout.ptb.data_dir={heldout}", *SHORT, *overrides])
    return run(cfg, list(overrides))


def _tiny_decoder():
    cfg = compose(["task=qpt_clm", *TINY])
    hf = scratch.build(cfg.model, 64, 16, {}, seed=0)
    return family_of(cfg.model).wrap(hf)


@pytest.mark.parametrize("recipe", QPT)
def test_every_qpt_recipe_composes_and_trains_one_step(recipe):
    """STYLE 13 for qpt recipes: compose, build the spec, attach to a tiny decoder, one optimizer step (cheap: the
    pipeline runs of a few of them are below)."""
    tq = training_quant(compose(["task=qpt_clm", f"+recipe={recipe}"]).recipe)
    model = _tiny_decoder()
    spec = tq.linear if tq.trains else None
    layers = attach(model, spec, list(tq.sites), list(tq.exclude_sites))
    assert len(layers) == 2 * 6 and all(n.startswith("decoder.layer.") for n in layers)  # q k v out fc1 fc2
    opt = QuantizedAdamW(model.parameters(), m1=tq.m1, m2=tq.m2, timing=tq.timing, lr=1e-3)
    ids = torch.randint(0, 64, (2, 16))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    assert math.isfinite(loss.item())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_attach_names_the_layers_and_refuses_a_typo():
    model = _tiny_decoder()
    with pytest.raises(ValueError, match=r"'decoder\.layr\.\*' matches no linear weight site.*decoder\.layer\.0\.attn"):
        attach(model, None, ["decoder.layr.*"], [])
    got = attach(model, None, ["decoder.layer.*.weight"], ["*.fc2.weight"])
    assert "decoder.layer.0.ffn.fc2" not in got and "decoder.layer.1.ffn.fc1" in got
    assert not any(m.training_quant for m in model.modules() if isinstance(m, QLinear))


def test_quantized_training_end_to_end(tmp_path, corpus, heldout):
    fp = _run(tmp_path, corpus, heldout)
    q = _run(tmp_path, corpus, heldout, "+recipe=qpt_w8a8g8", "recipe.qpt.adam.m1={bits: 8, granularity: per_channel}")
    for rec in (fp, q):
        assert rec["pretrain"]["steps"] == 4 and rec["pretrain"]["diverged"] is None
        assert [c["step"] for c in rec["pretrain"]["curves"]] == [0, 2, 4]
        for name in ("wikitext2", "ptb"):
            m = rec["metrics"][name]
            assert m["tokens"] > 0 and math.isclose(m["perplexity"], math.exp(m["nll"]))
    assert fp["pretrain"]["folder"] != q["pretrain"]["folder"]        # the quantized run trained its own model
    assert q["qpt"]["layers"] == 12 and q["pretrain"]["qpt_layers"] == 12
    assert q["qpt"]["gradients"].startswith("8-bit per_token") and q["qpt"]["adam"]["m1"].startswith("8-bit")
    assert q["score"] != fp["score"]
    # Table 10: PTQ of the FP baseline reuses its trained model and quantizes the forward only
    ptq = _run(tmp_path, corpus, heldout, "+recipe=qpt_ptq_w4_tensor")
    assert ptq["pretrain"]["folder"] == fp["pretrain"]["folder"] and ptq["qpt"]["during"] == "eval"
    assert ptq["metrics"]["valid"]["loss"] > fp["metrics"]["valid"]["loss"]


def test_a_diverging_run_is_recorded_as_diverged(tmp_path, corpus, heldout):
    rec = _run(tmp_path, corpus, heldout, "task.train.learning_rate=1e30", "task.train.max_grad_norm=1e30",
               "task.train.warmup_steps=0")
    d = rec["pretrain"]["diverged"]
    assert d is not None and 1 <= d["step"] <= 4 and ("loss" in d["reason"] or "weights" in d["reason"])
    assert rec["score"] is None and rec["metrics"]["valid"]["diverged"] == d


def test_held_out_windows_batched_equal_one_at_a_time():
    from qexp.tasks.perplexity import evaluate, evaluate_batched

    model = _tiny_decoder().eval()
    ids = torch.randint(0, 64, (1, 16 * 5 + 7))
    a = evaluate(model, ids, 16, None, "cpu")
    b = evaluate_batched(model, ids, 16, "cpu", batch_size=3)
    assert a["tokens"] == b["tokens"] == 5 * 15 + 6 and a["windows"] == b["windows"] == 6
    assert math.isclose(a["perplexity"], b["perplexity"], rel_tol=1e-5)


@pytest.mark.parametrize("overrides, match", [
    (["+recipe=qpt_w8a8", "recipe.qpt.weights.granularity=per_token"], r"weights\.granularity='per_token'"),
    (["+recipe=qpt_g8_token", "recipe.qpt.grad_path=dx"], r"grad_path='dx'; valid: weight, input, both"),
    (["+recipe=qpt_ptq_w8_tensor", "recipe.qpt.gradients={bits: 8}"], "gradients and Adam states exist only"),
    (["+recipe=qpt_w8a8", "recipe.qpt.weights.bits=1"], "bit-width 1"),
    (["+recipe=w8a8_ptq", "+recipe.qpt={weights: {bits: 8}}"], r"both a qpt block .* and PTQ quantizers"),
    # issue 27 #2 / issue 26: both recorded an FP run under the name qpt_w8a8
    (["+recipe=qpt_w8a8", "++recipe.qpt.enabled=false"], r"recipe 'qpt_w8a8' quantizes nothing"),
    (["+recipe=qpt_w8a8", "recipe.qpt.exclude_sites=[*]"], r"leaves no linear layer: the recipe would quantize nothing"),
    (["+recipe=qpt_w8a8", "++recipe.qpt.exclude=[*]"],     # issue 26 #4: the old dialect, with the new spelling
     r"recipe.qpt.exclude is now recipe.qpt.exclude_sites.*write recipe.qpt.exclude_sites=\[\*\]"),
])
def test_bad_qpt_settings_are_refused_before_any_work(overrides, match, tmp_path, corpus, heldout):
    with pytest.raises(ValueError, match=match):
        _run(tmp_path, corpus, heldout, *overrides)
    assert not (tmp_path / "cache" / "pretrain").exists()   # refused before any training


def test_a_qpt_recipe_on_a_glue_task_is_refused(tmp_path):
    cfg = compose(["task=rte", "+recipe=qpt_w8a8", f"results_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"quantizes training from scratch \(qpt\).*valid: the pre-training tasks"):
        run(cfg, [])


def test_recipe_without_components_is_refused():
    from omegaconf import OmegaConf

    with pytest.raises(TrainingQuantConfigError, match="quantizes nothing"):
        training_quant(OmegaConf.create({"qpt": {"weights": None}}))


def test_missing_heldout_text_is_named_before_training(tmp_path, corpus):
    cfg = compose(["task=qpt_clm", *TINY, f"task.data_dir={corpus}", f"results_dir={tmp_path / 'runs'}",
                   f"cache_dir={tmp_path / 'cache'}", f"task.heldout.ptb.data_dir={tmp_path}", *SHORT])
    with pytest.raises(ValueError, match=r"task\.heldout\.ptb: no file .*ptb\.test\.txt"):
        run(cfg, [])


@pytest.mark.slow   # real GLUE files + lm-eval: about a minute
def test_downstream_few_shot_runs_on_the_quantized_model(tmp_path, corpus, heldout, glue_dir):
    """Tables 6-9's path: lm-eval few-shot on the trained model in memory, with its training quantizers on."""
    rec = _run(tmp_path, corpus, heldout, "+recipe=qpt_w8a8", "task.downstream.enabled=true",
               f"task.downstream.data_dir={glue_dir}", "task.downstream.tasks=[qexp_glue_rte_local]",
               "task.downstream.num_fewshot=2", "task.downstream.limit.docs=3", "task.heldout_limit.windows=2")
    acc = rec["metrics"]["downstream"]["qexp_glue_rte_local"]["acc"]
    assert acc in (0.0, 1 / 3, 2 / 3, 1.0) and rec["metrics"]["downstream_avg"] == pytest.approx(100 * acc)


def test_an_unknown_downstream_task_is_refused_early(tmp_path, corpus, heldout):
    with pytest.raises(ValueError, match=r"unknown local lm-eval task\(s\) \['qexp_glue_mnli_local'\]"):
        _run(tmp_path, corpus, heldout, "task.downstream.enabled=true", "task.downstream.data_dir=.",
             "task.downstream.tasks=[qexp_glue_mnli_local]")


def test_an_exploded_loss_gives_an_infinite_perplexity_not_a_crash():
    """Found by the 8-bit second-moment run (validation loss > 709 nats): exp() overflowed and the run was lost."""
    from qexp.tasks.perplexity import evaluate_batched, perplexity_of

    assert perplexity_of(2.0) == pytest.approx(math.exp(2.0)) and perplexity_of(800.0) == math.inf
    assert math.isnan(perplexity_of(float("nan")))

    class Exploded(torch.nn.Module):
        def forward(self, input_ids):
            logits = torch.zeros(*input_ids.shape, 8)
            logits[..., 0] = 1e4            # every token predicted as id 0 with a huge margin
            return type("Out", (), {"logits": logits})()

    ids = torch.full((1, 40), 3)
    out = evaluate_batched(Exploded(), ids, 16, "cpu")
    assert out["nll"] > 709 and out["perplexity"] == math.inf


def test_a_re_evaluation_replaces_the_record_instead_of_writing_another(tmp_path, corpus, heldout, monkeypatch):
    """Issue 26 #2: task.downstream is evaluation-only -- no part of the run id.  A run that asks for a downstream
    evaluation the record lacks re-evaluates and replaces that record (same file); one that asks for less or the same
    skips; other downstream settings replace it again, the earlier evaluation kept under previous_evaluations."""
    from qexp.tasks import zeroshot

    calls = []

    def fake_evaluate(model, tokenizer, ds, device, progress):   # lm-eval itself: test_downstream_few_shot_... (slow)
        calls.append(int(ds.num_fewshot))
        return {"qexp_glue_rte_local": {"acc": 0.25 * int(ds.num_fewshot)}}

    monkeypatch.setattr(zeroshot, "evaluate", fake_evaluate)
    monkeypatch.setattr(zeroshot, "score", lambda res, ds: 100 * res["qexp_glue_rte_local"]["acc"])
    ds = ["task.downstream.enabled=true", f"task.downstream.data_dir={tmp_path}",
          "task.downstream.tasks=[qexp_glue_rte_local]"]
    first = _run(tmp_path, corpus, heldout, "+recipe=qpt_w8a8")
    runs = list((tmp_path / "runs").glob("*.json"))
    again = _run(tmp_path, corpus, heldout, "+recipe=qpt_w8a8", *ds, "task.downstream.num_fewshot=1")
    assert list((tmp_path / "runs").glob("*.json")) == runs and again["run_id"] == first["run_id"]
    assert again["metrics"]["downstream_avg"] == 25.0 and again["metrics"]["valid"] == first["metrics"]["valid"]
    assert _run(tmp_path, corpus, heldout, "+recipe=qpt_w8a8", *ds, "task.downstream.num_fewshot=1")["skipped"]
    assert _run(tmp_path, corpus, heldout, "+recipe=qpt_w8a8")["skipped"]          # asks for less
    third = _run(tmp_path, corpus, heldout, "+recipe=qpt_w8a8", *ds, "task.downstream.num_fewshot=2")
    assert calls == [1, 2] and third["metrics"]["downstream_avg"] == 50.0
    assert third["previous_evaluations"][0]["metrics"]["downstream_avg"] == 25.0
    assert list((tmp_path / "runs").glob("*.json")) == runs
