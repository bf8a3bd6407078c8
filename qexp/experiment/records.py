"""Run records: one self-describing JSON file per run, written atomically (STYLE 10).

The run id is a hash of the resolved config without operational keys (paths, force, progress), so re-running the
same (config, seed) finds its record and skips, which is how an interrupted sweep resumes.  A record is written to a
temporary file in the same folder and renamed into place: readers never see half a record and a crash leaves none.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ..common.provenance import device_info, git_state, now, portable, versions, write_atomic  # noqa: F401  (the record's parts)

SCHEMA = 1
OPERATIONAL_KEYS = ("force", "results_dir", "cache_dir", "progress", "device", "report_to", "tb_dir")


# the config keys that name data a run reads: the run id hashes their content, not their path (issue 14 #1)
DATA_PATHS = (("task", "data_dir"), ("task", "heldout", "*", "data_dir"), ("task", "calibration_source"),
              ("recipe", "lkd", "text_file"), ("recipe", "bcq", "params_from"))

# Evaluation-only settings (issue 26 #2): an evaluation added to a trained and quantized model changes none of its
# weights, ranges or other scores, so it is no part of the run id.  A run that asks for more of it than the record
# holds re-evaluates and replaces that record (:func:`evaluates_more`); it never writes a second one.
EVALUATION_ONLY = (("task", "downstream"),)   # the few-shot lm-eval suite on a pre-trained model (Tables 6-9)


def read_files(node: dict) -> list[str] | None:
    """The file names a config node with a ``data_dir`` reads there (issue 27 #6: a ``NOTES.txt`` or an editor
    backup beside them must not change the run id): GLUE's ``tsv.train`` and each eval split's ``tsv``; a corpus' or
    perplexity text's ``files``; None (the whole folder) where the node names none."""
    tsv = node.get("tsv")
    if isinstance(tsv, dict) and tsv.get("train"):
        return [tsv["train"], *(e["tsv"] for e in node.get("eval_splits") or [] if isinstance(e, dict) and e.get("tsv"))]
    files = node.get("files")
    if isinstance(files, dict) and files:
        return sorted({str(v) for v in files.values() if v})
    return None


def locate(path: str) -> Path:
    """A data path as a record holds it: absolute, relative to the working directory, or (records are portable,
    :func:`portable`) relative to the qexp checkout."""
    from ..common.provenance import REPO

    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or not (REPO / p).exists():
        return p
    return REPO / p


def _with_content(node, keys: tuple):
    """``node`` with the value at ``keys`` ("*": every entry) replaced by its content fingerprint, where it exists."""
    from ..common.fingerprint import fingerprint

    if not isinstance(node, dict):
        return node
    head, rest = keys[0], keys[1:]
    names = list(node) if head == "*" else [head] if head in node else []
    out = dict(node)
    for name in names:
        if rest:
            out[name] = _with_content(node[name], rest)
        elif isinstance(node[name], str) and node[name]:
            fp = fingerprint(locate(node[name]), files=read_files(node) if name == "data_dir" else None)
            if fp is not None:
                out[name] = {"content": fp}
    return out


def identity(cfg: dict) -> dict:
    """The keys that define a run.  ``inference.backend=fake`` (the default, fake quantization) is left out, so the
    records written before the integer backends existed keep their ids; an integer backend is part of the identity.
    Data paths count by their content (:data:`DATA_PATHS`): the record keeps the path, the id does not depend on it."""
    out = {k: v for k, v in cfg.items() if k not in OPERATIONAL_KEYS}
    if (out.get("inference") or {}).get("backend", "fake") == "fake":
        out.pop("inference", None)
    out = _without_inert(out)
    for keys in DATA_PATHS:
        out = _with_content(out, keys)
    return out


def _uses_running_minmax(node) -> bool:
    if isinstance(node, dict):
        return node.get("name") == "running_minmax" or any(_uses_running_minmax(v) for v in node.values())
    if isinstance(node, list):
        return any(_uses_running_minmax(v) for v in node)
    return node == "running_minmax"


def _without_inert(cfg: dict) -> dict:
    """Keys no code reads for this run leave the id (issue 26 #2): the table-routing tags ``task.paper`` /
    ``recipe.paper``; a pre-training task's ``objective`` (its kind's ``lm_objective`` decides) and, for the causal
    LM, ``mlm_probability``; continued pre-training's ``task.train.gate_lr`` at null (the gates learn at the model's
    rate, which is what every run before the key existed did); ``calibration.momentum`` when no estimator of the calibration or the recipe is
    ``running_minmax`` (the only one that reads it); the evaluation-only settings (:data:`EVALUATION_ONLY`)."""
    out = without_evaluation(cfg)
    task, recipe = dict(out.get("task") or {}), dict(out.get("recipe") or {})
    task.pop("paper", None)
    recipe.pop("paper", None)
    kind = str(task.get("kind", ""))
    if kind.startswith("pretrain") or kind == "qpt_clm":
        task.pop("objective", None)
        if kind != "pretrain_mlm":
            task.pop("mlm_probability", None)
    train = task.get("train")
    if kind == "continue_clm" and isinstance(train, dict) and train.get("gate_lr", 0) is None:
        task["train"] = {k: v for k, v in train.items() if k != "gate_lr"}   # null: the model's rate (as before it)
    quant = recipe.get("quant")
    if isinstance(quant, dict) and quant.get("sites"):   # "distinct" marks a rule for a check; it changes no result
        recipe["quant"] = {**quant, "sites": [{k: v for k, v in r.items() if k != "distinct"} if isinstance(r, dict)
                                              else r for r in quant["sites"]]}
    cal = out.get("calibration")
    if isinstance(cal, dict) and "momentum" in cal and not (_uses_running_minmax(cal) or _uses_running_minmax(recipe)):
        cal = {k: v for k, v in cal.items() if k != "momentum"}
        out["calibration"] = cal
    if "task" in out:
        out["task"] = task
    if "recipe" in out:
        out["recipe"] = recipe
    return out


def without_evaluation(cfg: dict) -> dict:
    """``cfg`` without its evaluation-only settings (:data:`EVALUATION_ONLY`); the nodes on the way are copied."""
    out = dict(cfg)
    for keys in EVALUATION_ONLY:
        node = out
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                break
            node[k] = dict(node[k])
            node = node[k]
        else:
            node.pop(keys[-1], None)
    return out


def evaluation_settings(cfg: dict) -> dict:
    """The evaluation-only settings a config asks for, by dotted key: a block counts only while it is enabled."""
    out = {}
    for keys in EVALUATION_ONLY:
        node = cfg
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get("enabled", True):
            out[".".join(keys)] = node
    return out


def evaluates_more(record: dict, cfg: dict) -> bool:
    """Whether a run of ``cfg`` would add an evaluation the existing ``record`` (same run id) lacks: its
    evaluation-only settings are on and differ from the record's.  A run that asks for less (or the same) skips."""
    asked = evaluation_settings(cfg)
    return bool(asked) and asked != evaluation_settings(record.get("config") or {})


def replacing(new: dict, old: dict) -> dict:
    """``new`` (a re-evaluation of ``old``'s run id) keeping what ``old`` measured under other evaluation settings:
    its settings and metrics in ``previous_evaluations`` (newest last)."""
    history = list(old.get("previous_evaluations") or [])
    if evaluation_settings(old.get("config") or {}):
        history.append({"settings": evaluation_settings(old["config"]), "metrics": old.get("metrics"),
                        "finished": old.get("finished"), "git": old.get("git")})
    return {**new, "previous_evaluations": history} if history else new


def run_id(cfg: dict) -> str:
    blob = json.dumps(identity(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def record_path(results_dir: Path, cfg: dict) -> Path:
    recipe = (cfg.get("recipe") or {}).get("name", "fp32")
    name = f"{cfg['model']['name']}__{cfg['task']['name']}__{recipe}__seed{cfg['seed']}__{run_id(cfg)}.json"
    return Path(results_dir) / name


REQUIRED = ("model", "task", "recipe", "seed", "config", "metrics")
log = logging.getLogger("qexp")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def malformed(rec: dict) -> str | None:
    """Why a record with every required key still cannot feed a table (a hand-edited or badly merged file), or None:
    the score is a number or null (a diverged run), the seed an integer, the metrics a mapping."""
    if rec.get("score") is not None and not _number(rec["score"]):
        return f"its score {rec['score']!r} is not a number (nor null)"
    if not isinstance(rec.get("seed"), int) or isinstance(rec.get("seed"), bool):
        return f"its seed {rec.get('seed')!r} is not an integer"
    if not isinstance(rec.get("metrics"), dict):
        return f"its metrics {type(rec.get('metrics')).__name__} is not a mapping"
    return None


def read_done(path: Path) -> dict | None:
    """The record at ``path`` if :func:`load_records` would read it, else None: what "this run is done" means (issue
    27 #5: a truncated record is not done)."""
    try:
        with open(path) as f:
            rec = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    ok = (isinstance(rec, dict) and rec.get("schema") == SCHEMA and all(k in rec for k in REQUIRED)
          and malformed(rec) is None)
    return rec if ok else None



def set_aside(path: Path) -> Path:
    """Move an unreadable record to ``<results_dir>/unreadable/`` (a new name if one is there) so the run re-runs."""
    folder = path.parent / "unreadable"
    folder.mkdir(exist_ok=True)
    target, n = folder / path.name, 1
    while target.exists():
        target, n = folder / f"{path.stem}.{n}{path.suffix}", n + 1
    path.replace(target)
    return target


def load_records(results_dir: Path) -> list[dict]:
    """Every readable record of this schema; a file that is not one (truncated, another schema, keys missing) is
    skipped with a warning that names it, so one bad file never hides the others or stops a table."""
    out = []
    for p in sorted(Path(results_dir).glob("*.json")):
        try:
            with open(p) as f:
                rec = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            log.warning("skipping %s: not a readable JSON record (%s)", p, e)
            continue
        if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
            schema = rec.get("schema") if isinstance(rec, dict) else type(rec).__name__
            log.warning("skipping %s: record schema %r, this qexp reads schema %d (scripts/migrate_run_ids.py "
                        "migrates old records)", p, schema, SCHEMA)
            continue
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            log.warning("skipping %s: the record lacks %s", p, ", ".join(missing))
            continue
        bad = malformed(rec)
        if bad:
            log.warning("skipping %s: %s", p, bad)
            continue
        rec["_path"] = str(p)
        out.append(rec)
    return out
