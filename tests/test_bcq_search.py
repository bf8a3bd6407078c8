"""The E, C, P search of binary-coding quantization (Kwon et al. 2021): manual, model-wise and layer-wise BO on the
training data; the best trial is applied, saved and reloadable; an interrupted search resumes from its journal; bad
settings are refused before anything loads."""
import json

import pytest

from qexp.experiment.bcq_search import LayerState, SearchConfig, SearchError
from qexp.kinds.base import KindError
from qexp.quant.bcq import Importance

from .helpers import run_cfg


@pytest.fixture
def rte(rte_like):
    (rte_like / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + "".join(
        f"{i}\ta dog {i}.\ta dog.\tentailment\n" for i in range(5)))   # another size than train's 24 rows
    return ["task=rte", f"task.data_dir={rte_like}"]


def _layer_settings(rec) -> dict:
    return {r["layer"]: (r["E"], r["C"], r["P"]) for r in rec["bcq"]["layers"]}


def test_model_wise_search_starts_at_the_recipe_and_applies_its_best(tmp_path, rte):
    rec = run_cfg(tmp_path, *rte, "+recipe=pwq_bo_model", "recipe.bcq.E=0.5", "recipe.bcq.search.trials=4",
                  "recipe.bcq.search.startup_trials=2", "recipe.bcq.search.samples=16")
    s = rec["bcq"]["search"]
    assert [t["trial"] for t in s["trials"]] == [0, 1, 2, 3]
    assert s["trials"][0]["params"] == {"E": 0.5, "C": 1.0, "P": 0.0}   # the recipe's own setting first
    assert s["best"]["objective"] == min(t["objective"] for t in s["trials"]) and s["direction"] == "minimize"
    assert all(0 <= t["params"]["E"] <= 2 and 0.95 <= t["params"]["C"] <= 1 and 0 <= t["params"]["P"] <= 0.2
               for t in s["trials"])
    best = s["best"]["params"]
    assert set(_layer_settings(rec).values()) == {(best["E"], best["C"], best["P"])}   # what was evaluated
    assert s["data"]["samples"] == 16
    assert all(t["seconds_quantize"] >= 0 and t["seconds_evaluate"] > 0 for t in s["trials"])


def test_the_objective_draws_training_rows_only(tmp_path, rte, monkeypatch):
    from qexp.kinds import glue

    seen = []
    real = glue.sample

    def spy(ds, n, seed):
        seen.append((len(ds), n))
        return real(ds, n, seed)

    monkeypatch.setattr(glue, "sample", spy)
    rec = run_cfg(tmp_path, *rte, "+recipe=pwq_bo_model", "recipe.bcq.search.trials=2",
                  "recipe.bcq.search.samples=7")
    # the training rows (24, limited to 16 by debug=smoke), never the 5-row dev split
    assert (16, 7) in seen and all(size == 16 for size, _ in seen)
    assert rec["bcq"]["search"]["data"]["samples"] == 7


def test_layer_wise_search_has_three_parameters_per_layer_and_saves_them(tmp_path, rte):
    rec = run_cfg(tmp_path, *rte, "+recipe=pwq_bo_layer", "recipe.bcq.search.trials=3",
                  "recipe.bcq.search.startup_trials=2", "recipe.bcq.search.samples=8")
    s = rec["bcq"]["search"]
    layers = _layer_settings(rec)
    assert len(layers) == 12 and len(s["trials"][1]["params"]) == 3 * 12
    best = s["best"]["params"]
    assert layers == {n: (best[f"{n}.E"], best[f"{n}.C"], best[f"{n}.P"]) for n in layers}
    saved = json.loads(open(s["params_file"]).read())
    assert {n: (v["E"], v["C"], v["P"]) for n, v in saved["layers"].items()} == layers
    # reloaded on another run (no search): the same per-layer settings
    again = run_cfg(tmp_path, *rte, "+recipe=pwq_alternating", f"recipe.bcq.params_from={s['params_file']}")
    assert _layer_settings(again) == layers and "search" not in again["bcq"]
    # a record works as the file too
    assert _layer_settings(run_cfg(tmp_path, *rte, "+recipe=pwq_alternating", "recipe.bcq.rounds=14",
                                   f"recipe.bcq.params_from={_record(tmp_path, rec)}")) == layers


def _record(tmp_path, rec) -> str:
    return str(next(p for p in (tmp_path / "runs").glob("*.json") if rec["run_id"] in p.name))


def test_only_changed_layers_are_requantized():
    import torch

    from qexp.quant.bcq import BCQ
    from qexp.quant.bcq_step import BCQConfig

    from .helpers import tiny_configured_decoder

    model, cfg = tiny_configured_decoder("pwq_alternating")
    state = LayerState(model, BCQConfig.from_config(dict(cfg.recipe.bcq), 3))
    base = {n: Importance() for n in state.names}
    assert state.apply(base) == 6 and state.apply(base) == 0
    one = state.names[2]
    assert state.apply({**base, one: Importance(1.0, 0.99, 0.05)}) == 1
    m = dict(state.layers)[one]
    want = BCQ(3, 15, None, Importance(1.0, 0.99, 0.05)).quantize(m.inner.weight.detach().float())[0]
    assert torch.equal(m.weight_quantizer.values, want)
    assert state.report()[2]["E"] == 1.0 and state.report()[0]["E"] == 0.0


def test_an_interrupted_search_resumes_from_its_stored_trials(tmp_path, rte, monkeypatch):
    from qexp.kinds import glue

    real, calls = glue.Glue.objective, []

    def flaky(self, model, data):
        calls.append(1)
        if fail["at"] and len(calls) == fail["at"]:
            raise RuntimeError("killed")
        return real(self, model, data)

    fail = {"at": 4}   # the start evaluation, trials 1 and 2, then trial 3 dies
    monkeypatch.setattr(glue.Glue, "objective", flaky)
    args = (*rte, "+recipe=pwq_bo_model", "recipe.bcq.search.trials=5", "recipe.bcq.search.startup_trials=2",
            "recipe.bcq.search.samples=8")
    with pytest.raises(RuntimeError, match="killed"):
        run_cfg(tmp_path, *args)
    calls.clear()
    fail["at"] = None
    rec = run_cfg(tmp_path, *args)
    s = rec["bcq"]["search"]
    # the start evaluation again, only 2 new trials, then the record's train_objective
    assert len(s["trials"]) == 5 and len(calls) == 1 + 2 + 1
    assert [t["trial"] for t in s["trials"]] == [0, 1, 2, 4, 5]   # trial 3 failed and stays out


def test_manual_search_runs_the_16_sets_in_process(tmp_path, rte):
    rec = run_cfg(tmp_path, *rte, "+recipe=pwq_manual", "recipe.bcq.search.mode=manual",
                  "recipe.bcq.search.objective=metric", "recipe.bcq.search.samples=8", "recipe.bcq.rounds=2")
    s = rec["bcq"]["search"]
    assert sorted(t["params"]["set"] for t in s["trials"]) == sorted(str(i) for i in range(1, 17))
    assert s["direction"] == "maximize" and s["best"]["objective"] == max(t["objective"] for t in s["trials"])
    want = rec["config"]["recipe"]["bcq"]["manual_sets"][s["best"]["params"]["set"]]
    assert set(_layer_settings(rec).values()) == {(want["E"], want["C"], want["P"])}


def test_a_perplexity_task_searches_on_its_calibration_text(tmp_path, wikitext_like):
    lm = ["model=tiny_gpt2", "task=wikitext2", f"task.data_dir={wikitext_like}"]
    rec = run_cfg(tmp_path, *lm, "+recipe=pwq_bo_model", "recipe.bcq.search.trials=2",
                  "recipe.bcq.search.samples=4", "recipe.bcq.search.objective=metric")
    s = rec["bcq"]["search"]
    assert s["metric_name"] == "perplexity" and s["direction"] == "minimize" and len(s["trials"]) == 2
    with pytest.raises(KindError, match="calibration text is its evaluation text"):
        run_cfg(tmp_path, *lm, "task.files.calibration=wiki.test.raw", "+recipe=pwq_bo_model")


@pytest.mark.parametrize("override,match", [
    ("recipe.bcq.search.mode=bayes", r"mode='bayes'; valid: none, manual, model, layer"),
    ("recipe.bcq.search.sampler=cmaes", r"sampler='cmaes'; valid: gp, tpe, random"),
    ("recipe.bcq.search.objective=accuracy", r"objective='accuracy'; valid: loss, metric"),
    ("recipe.bcq.search.trials=0", r"trials=0 must be a positive integer"),
    ("recipe.bcq.search.bounds.C=[0.5,1.5]", r"bounds.C=\[0.5, 1.5\] leaves the valid range \(0 < C <= 1\)"),
    ("recipe.bcq.search.bounds.E=[1,0]", r"bounds.E=\[1.0, 0.0\]: low > high"),
    ("+recipe.bcq.search.trails=3", r"unknown key\(s\) \['trails'\]"),
    ("recipe.bcq.params_from=/no/such.json", r"params_from='/no/such.json': no such file"),
])
def test_bad_search_settings_are_refused_before_anything_loads(tmp_path, override, match):
    with pytest.raises((SearchError, ValueError), match=match):
        run_cfg(tmp_path, "+recipe=pwq_bo_model", override)
    assert not (tmp_path / "cache").exists()


def test_search_needs_a_task_with_training_data_and_excludes_params_from(tmp_path, rte):
    with pytest.raises(KindError, match=r"needs an objective on the task's training data.*'text_outliers'"):
        run_cfg(tmp_path, "+recipe=pwq_bo_model")
    saved = tmp_path / "p.json"
    saved.write_text(json.dumps({"layers": {"encoder.layer.0.attn.query": {"E": 1, "C": 1, "P": 0}}}))
    with pytest.raises(ValueError, match="exclude each other"):
        run_cfg(tmp_path, *rte, "+recipe=pwq_bo_model", f"recipe.bcq.params_from={saved}")
    empty = tmp_path / "e.json"
    empty.write_text("{}")
    with pytest.raises(SearchError, match="holds no per-layer settings"):
        run_cfg(tmp_path, *rte, "+recipe=pwq_alternating", f"recipe.bcq.params_from={empty}")


def test_search_config_defaults_are_off():
    assert not SearchConfig().enabled and SearchConfig.from_config({"mode": "layer"}).enabled


def test_kwon_runs_record_the_training_loss_and_metric(tmp_path, rte):
    """Tables 1/15: every pwq_* run (the uniform baseline too) records the quantized model's loss and metric on
    training rows, at most once each (16 rows under debug=smoke, though 256 are asked for)."""
    rec = run_cfg(tmp_path, *rte, "+recipe=pwq_uniform")
    t = rec["train_objective"]
    assert t["n"] == 16 and t["metric_name"] == "accuracy" and 0 <= t["metric"] <= 100 and t["loss"] > 0
    assert "train_objective" not in run_cfg(tmp_path, *rte, "+recipe=w8a8_ptq")


def test_objectives_against_references(tmp_path, rte, wikitext_like, monkeypatch):
    """The GLUE objective equals NumPy's mean cross-entropy and accuracy on the logits it saw; the language-model
    objective equals a float64 log-softmax of the same windows' logits."""
    import numpy as np
    import torch

    from qexp.kinds import glue
    from qexp.kinds.lm import LanguageModelKind

    calls = []
    real_predict = glue.predict
    monkeypatch.setattr(glue, "predict", lambda m, b, d: calls.append(real_predict(m, b, d)) or calls[-1])
    real_objective = glue.Glue.objective
    outs = []
    monkeypatch.setattr(glue.Glue, "objective", lambda self, m, d: outs.append(real_objective(self, m, d)) or outs[-1])
    run_cfg(tmp_path, *rte, "+recipe=pwq_uniform")
    logits, labels = calls[-2]            # the objective's predict (the last call is the evaluation)
    lg = logits.astype(np.float64)
    m = lg.max(1, keepdims=True)
    logz = (m + np.log(np.exp(lg - m).sum(1, keepdims=True)))[:, 0]
    ce = float(np.mean(logz - lg[np.arange(len(labels)), labels]))
    assert outs[-1]["loss"] == pytest.approx(ce, rel=1e-6)
    assert outs[-1]["metric"] == pytest.approx(100 * float(np.mean(lg.argmax(1) == labels)))

    lm_outs, seen = [], {}
    real_lm = LanguageModelKind.objective

    def lm_spy(self, model, data):
        seen["model"], seen["data"] = model, data
        lm_outs.append(real_lm(self, model, data))
        return lm_outs[-1]

    monkeypatch.setattr(LanguageModelKind, "objective", lm_spy)
    run_cfg(tmp_path, "model=tiny_gpt2", "task=wikitext2", f"task.data_dir={wikitext_like}", "+recipe=pwq_uniform",
            "recipe.train_objective.samples=4")
    data = seen["data"]
    with torch.no_grad():   # the reference: float64 log-softmax of every window's next-token logits
        logits = seen["model"](input_ids=data).logits[:, :-1].double()
        ref = -torch.log_softmax(logits, -1).gather(-1, data[:, 1:].unsqueeze(-1)).mean().item()
    assert lm_outs[-1]["loss"] == pytest.approx(ref, rel=1e-5) and lm_outs[-1]["n"] == 4


def test_a_resumed_search_never_replays_a_point_and_fails_zombie_trials(tmp_path, rte, monkeypatch):
    """Issue 27 #3: killed after a few trials and resumed, the re-seeded sampler replayed its start-up points (trials
    6-8 repeated 1-3) and a RUNNING zombie trial stayed in the journal."""
    import optuna

    from qexp.kinds import glue

    real, calls = glue.Glue.objective, []

    def flaky(self, model, data):
        calls.append(1)
        if fail["at"] and len(calls) == fail["at"]:
            raise RuntimeError("killed")
        return real(self, model, data)

    fail = {"at": 4}
    monkeypatch.setattr(glue.Glue, "objective", flaky)
    args = (*rte, "+recipe=pwq_bo_model", "recipe.bcq.search.trials=7", "recipe.bcq.search.startup_trials=7",
            "recipe.bcq.search.samples=8")
    with pytest.raises(RuntimeError, match="killed"):
        run_cfg(tmp_path, *args)
    journal = next((tmp_path / "cache" / "bcq_search").glob("*.journal"))
    store = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=optuna.get_all_study_names(store)[0], storage=store)
    store.create_new_trial(study._study_id)          # what a SIGKILL mid-trial leaves: a RUNNING trial
    fail["at"] = None
    rec = run_cfg(tmp_path, *args)
    trials = rec["bcq"]["search"]["trials"]
    points = [tuple(sorted(t["params"].items())) for t in trials]
    assert len(trials) == 7 and len(set(points)) == 7, points
    states = [t.state for t in optuna.load_study(study_name=study.study_name, storage=store).trials]
    assert optuna.trial.TrialState.RUNNING not in states
