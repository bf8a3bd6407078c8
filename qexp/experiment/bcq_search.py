"""Search of the importance knobs E, C, P of binary-coding quantization (Kwon et al. 2021, Tables 4, 8, 9, 11, 13,
17): ``recipe.bcq.search.mode`` =

- ``manual``: the recipe's manual sets (Table 5) in turn, one trial each, all layers sharing the set;
- ``model``: model-wise Bayesian optimisation, one (E, C, P) shared by every layer (3 dimensions);
- ``layer``: layer-wise Bayesian optimisation, one (E, C, P) per weight matrix (3 x L dimensions).

Every trial quantizes (only the layers whose E, C, P changed since the last trial: the model and the objective data
stay loaded) and evaluates the objective on ``samples`` examples of the task's *training* data (never its evaluation
split): the loss, or the task metric with ``objective=metric``.  The first trial is always the recipe's own E, C, P
(for every layer), so a search never ends worse than its starting point on the objective.  The sampler is Optuna's
(``gp``: its Gaussian-process sampler with log-EI, the default; ``tpe``; ``random``), seeded by the run's seed; the
trials live in an Optuna journal file (``<cache_dir>/bcq_search/<run id>.journal``), so an interrupted search resumes
from its stored trials.  The best trial's settings are applied for the evaluation, written to the record
(``bcq.search``: every trial with its parameters, loss, metric and the seconds spent quantizing and evaluating) and to
``<results_dir>/bcq_search/<run id>.json``, which ``recipe.bcq.params_from=PATH`` reloads (a record file works too).

Optuna is used rather than a hand-written GP: it is maintained, its GP sampler is a standard EI Bayesian optimiser,
and its journal storage gives resumption for free.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from ..quant.bcq import BCQError, Importance
from ..quant.bcq_step import BCQConfig, bcq_layers, quantize_layer

log = logging.getLogger("qexp")

MODES = ("none", "manual", "model", "layer")
SAMPLERS = ("gp", "tpe", "random")
OBJECTIVES = ("loss", "metric")
KEYS = ("mode", "trials", "sampler", "objective", "samples", "bounds", "startup_trials")
VALID = {"E": "E >= 0", "C": "0 < C <= 1", "P": "0 <= P < 1"}   # Importance checks them; these say the rule


class SearchError(ValueError):
    pass


@dataclass(frozen=True)
class SearchConfig:
    mode: str = "none"
    trials: int = 30                 # model / layer: the BO budget (Table 4's "maximum iterations"), first trial included
    sampler: str = "gp"
    objective: str = "loss"
    samples: int = 256               # training examples (GLUE) or windows (language models) for the objective
    bounds: tuple = (("E", 0.0, 2.0), ("C", 0.95, 1.0), ("P", 0.0, 0.2))
    startup_trials: int = 8          # random trials before the GP/TPE model is used

    @classmethod
    def from_config(cls, cfg: dict | None) -> "SearchConfig":
        """Every key and value checked now, before anything loads; a bad one is named with the valid choices."""
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - set(KEYS))
        if unknown:
            raise SearchError(f"recipe.bcq.search: unknown key(s) {unknown}; valid: {', '.join(KEYS)}")
        for key, choices in (("mode", MODES), ("sampler", SAMPLERS), ("objective", OBJECTIVES)):
            if key in cfg and cfg[key] not in choices:
                raise SearchError(f"recipe.bcq.search.{key}={cfg[key]!r}; valid: {', '.join(choices)}")
        for key in ("trials", "samples", "startup_trials"):
            if key in cfg and (isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1):
                raise SearchError(f"recipe.bcq.search.{key}={cfg[key]!r} must be a positive integer")
        if "bounds" in cfg:
            bounds = dict(cfg["bounds"])
            if set(bounds) != set(VALID):
                raise SearchError(f"recipe.bcq.search.bounds names {sorted(bounds)}; it needs exactly E, C, P, each "
                                  f"[low, high]")
            rows = []
            for name in ("E", "C", "P"):
                pair = list(bounds[name])
                rule = VALID[name]
                if len(pair) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair):
                    raise SearchError(f"recipe.bcq.search.bounds.{name}={pair!r} must be [low, high]")
                low, high = float(pair[0]), float(pair[1])
                if low > high:
                    raise SearchError(f"recipe.bcq.search.bounds.{name}=[{low}, {high}]: low > high")
                for v in (low, high):
                    try:
                        Importance(**{name: v})
                    except BCQError as e:
                        raise SearchError(f"recipe.bcq.search.bounds.{name}=[{low}, {high}] leaves the valid range "
                                          f"({rule}): {e}") from None
                rows.append((name, low, high))
            cfg["bounds"] = tuple(rows)
        return cls(**cfg)

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


def load_params(path: str) -> dict[str, Importance]:
    """Per-layer E, C, P saved by a search: its ``bcq_search/<run id>.json`` or a record (``bcq.search.best``)."""
    p = Path(path)
    if not p.is_file():
        raise SearchError(f"recipe.bcq.params_from={path!r}: no such file (a bcq_search/<run id>.json written by a "
                          f"search, or a record of a run with recipe.bcq.search)")
    data = json.loads(p.read_text())
    if "bcq" in data:   # a record
        data = ((data["bcq"] or {}).get("search") or {}).get("best") or {}
    layers = data.get("layers")
    if not layers:
        raise SearchError(f"recipe.bcq.params_from={path!r} holds no per-layer settings ('layers': "
                          f"{{name: {{E, C, P}}}}); is it a search's output?")
    return {name: Importance(float(v["E"]), float(v["C"]), float(v["P"])) for name, v in layers.items()}


class LayerState:
    """The model's BCQ layers and the E, C, P each is quantized with now: :meth:`apply` re-quantizes only the layers
    whose setting changed."""

    def __init__(self, model, cfg: BCQConfig):
        self.cfg, self.layers = cfg, bcq_layers(model, cfg)
        self.names = [n for n, _ in self.layers]
        self.applied: dict[str, Importance] = {}
        self.reports: dict[str, dict] = {}

    def apply(self, settings: dict[str, Importance]) -> int:
        changed = 0
        for name, m in self.layers:
            imp = settings[name]
            if self.applied.get(name) != imp:
                self.reports[name] = quantize_layer(name, m, self.cfg, imp)
                self.applied[name] = imp
                changed += 1
        return changed

    def report(self) -> list[dict]:
        return [self.reports[n] for n in self.names]


def _params_to_settings(mode: str, params: dict, names: list[str], manual: dict) -> dict[str, Importance]:
    if mode == "manual":
        s = manual[str(params["set"])]
        return {n: Importance(float(s["E"]), float(s["C"]), float(s["P"])) for n in names}
    if mode == "model":
        imp = Importance(float(params["E"]), float(params["C"]), float(params["P"]))
        return {n: imp for n in names}
    return {n: Importance(float(params[f"{n}.E"]), float(params[f"{n}.C"]), float(params[f"{n}.P"])) for n in names}


def _distributions(mode: str, scfg: SearchConfig, names: list[str], manual: dict) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if mode == "manual":
        return {"set": CategoricalDistribution(list(manual))}
    keys = ["E", "C", "P"] if mode == "model" else [f"{n}.{k}" for n in names for k in ("E", "C", "P")]
    bounds = {name: (low, high) for name, low, high in scfg.bounds}
    return {k: FloatDistribution(*bounds[k.rsplit(".", 1)[-1]]) for k in keys}


def _start_params(mode: str, base: Importance, names: list[str], manual: dict, scfg: SearchConfig) -> dict:
    if mode == "manual":
        return {"set": next(iter(manual))}
    clip = {name: (low, high) for name, low, high in scfg.bounds}

    def inside(k, v):
        low, high = clip[k]
        return min(max(float(v), low), high)

    one = {k: inside(k, getattr(base, k)) for k in ("E", "C", "P")}
    return one if mode == "model" else {f"{n}.{k}": v for n in names for k, v in one.items()}


def _sampler(scfg: SearchConfig, seed: int):
    import optuna

    if scfg.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=scfg.startup_trials)
    if scfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=scfg.startup_trials)
    return optuna.samplers.RandomSampler(seed=seed)


def search(model, cfg: BCQConfig, scfg: SearchConfig, kind, storage: Path, study_name: str,
           manual_sets: dict | None = None, progress: bool = False) -> dict:
    """Run (or resume) the search, apply the best trial's settings to ``model``; the report for the record."""
    import optuna

    mode, seed = scfg.mode, int(kind.ctx.seed)
    manual = {str(k): dict(v) for k, v in (manual_sets or {}).items()}
    if mode == "manual" and not manual:
        raise SearchError("recipe.bcq.search.mode=manual needs the recipe's manual_sets (recipe pwq_manual)")
    state = LayerState(model, cfg)
    data = kind.objective_data(int(scfg.samples))
    dists = _distributions(mode, scfg, state.names, manual)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    store = JournalStorage(JournalFileBackend(str(storage)))

    def evaluate(params: dict) -> tuple[dict, dict]:
        t0 = time.perf_counter()
        changed = state.apply(_params_to_settings(mode, params, state.names, manual))
        t1 = time.perf_counter()
        out = kind.objective(model, data)
        attrs = {"loss": out["loss"], "metric": out["metric"], "changed_layers": changed,
                 "seconds_quantize": round(t1 - t0, 3), "seconds_evaluate": round(time.perf_counter() - t1, 3)}
        return out, attrs

    def value(out: dict) -> float:
        v = out["loss"] if scfg.objective == "loss" else out["metric"]
        return float(v) if math.isfinite(v) else (math.inf if direction == "minimize" else -math.inf)

    # the recipe's own setting first: it fixes the direction (a metric may rise or fall) and the starting point
    start = _start_params(mode, cfg.importance, state.names, manual, scfg)
    first, first_attrs = evaluate(start)
    direction = "maximize" if scfg.objective == "metric" and first["higher_is_better"] else "minimize"
    study = optuna.create_study(study_name=study_name, storage=store, direction=direction,
                                sampler=_sampler(scfg, seed), load_if_exists=True)
    # resuming (issue 27 #3): a trial left RUNNING by a killed process is a zombie -> failed; the sampler is re-seeded
    # from the number of stored trials, else its start-up points replay the first ones exactly
    for t in study.trials:
        if t.state == optuna.trial.TrialState.RUNNING:
            study._storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
            log.warning("bcq search: trial %d of %s was left running by an interrupted process; marked failed",
                        t.number, study_name)
    if study.trials:
        study.sampler = _sampler(scfg, seed + 7919 * len(study.trials))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        study.add_trial(optuna.trial.create_trial(params=start, distributions=dists, value=value(first),
                                                  user_attrs=first_attrs))
    else:
        log.info("bcq search: resuming %s with %d stored trial(s) (%s)", study_name, len(done), storage)
    if mode == "manual":
        tried = {str(t.params["set"]) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
        for k in manual:
            if k not in tried:
                study.enqueue_trial({"set": k}, skip_if_exists=True)
        budget = len([k for k in manual if k not in tried])
    else:
        budget = max(0, scfg.trials - len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]))

    def objective(trial) -> float:
        params = {k: (trial.suggest_categorical(k, d.choices) if mode == "manual" else
                      trial.suggest_float(k, d.low, d.high)) for k, d in dists.items()}
        out, attrs = evaluate(params)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        return value(out)

    from tqdm.auto import tqdm

    with tqdm(total=budget, desc=f"bcq {mode} search", disable=not progress, leave=False) as bar:
        study.optimize(objective, n_trials=budget, callbacks=[lambda s, t: bar.update(1)])

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial
    settings = _params_to_settings(mode, best.params, state.names, manual)
    state.apply(settings)
    trace = [{"trial": t.number, "params": t.params, "objective": t.value, **t.user_attrs} for t in complete]
    seconds_q = [t.user_attrs.get("seconds_quantize", 0.0) for t in complete]
    seconds_e = [t.user_attrs.get("seconds_evaluate", 0.0) for t in complete]
    return {
        "mode": mode, "sampler": scfg.sampler if mode != "manual" else "enqueued (manual sets)",
        "objective": scfg.objective, "metric_name": first["metric_name"], "direction": direction,
        "data": {"samples": int(first["n"]),
                 "source": "training data (objective_data: the objective seed stream, seed + 4)"},
        "trials_requested": scfg.trials if mode != "manual" else len(manual), "trials": trace,
        "storage": str(storage),
        "best": {"trial": best.number, "objective": best.value, "params": best.params, **best.user_attrs,
                 "layers": {n: {"E": i.E, "C": i.C, "P": i.P} for n, i in settings.items()}},
        "seconds_per_trial": {"quantize_mean": round(sum(seconds_q) / len(seconds_q), 3),
                              "evaluate_mean": round(sum(seconds_e) / len(seconds_e), 3),
                              "first_trial_quantize": first_attrs["seconds_quantize"]},
        "layers": state.report(),
    }
