"""scripts/migrate_run_ids.py: records written while recipes carried ``table_row`` get the id the code gives now."""
import importlib.util
import json
from pathlib import Path

import pytest

from qexp.experiment.records import record_path, run_id, write_atomic

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "migrate_run_ids.py"
spec = importlib.util.spec_from_file_location("migrate_run_ids", SCRIPT)
migrate_run_ids = importlib.util.module_from_spec(spec)
spec.loader.exec_module(migrate_run_ids)


def _old_record(runs: Path, seed=0) -> Path:
    cfg = {"model": {"name": "m"}, "task": {"name": "rte"}, "seed": seed, "results_dir": str(runs),
           "recipe": {"name": "w8a8_ptq", "table_row": {"table": "bondarenko2021_table1", "row": "W8A8"}}}
    path = record_path(runs, cfg)
    write_atomic(path, {"schema": 1, "run_id": run_id(cfg), "config": cfg, "score": 1.0})
    return path


def test_migration_renames_and_keeps_the_old_id(tmp_path):
    old = _old_record(tmp_path)
    old_id = json.loads(old.read_text())["run_id"]
    new = migrate_run_ids.migrate(old, dry_run=False)
    rec = json.loads(new.read_text())
    assert not old.exists() and new.exists() and new != old
    assert "table_row" not in rec["config"]["recipe"]
    assert rec["run_id"] == run_id(rec["config"]) != old_id and rec["previous_run_ids"] == [old_id]
    assert new == record_path(tmp_path, rec["config"])  # where `qexp run` looks for it now: the run resumes
    assert migrate_run_ids.migrate(new, dry_run=False) is None  # idempotent


def test_dry_run_changes_nothing(tmp_path):
    old = _old_record(tmp_path)
    before = old.read_text()
    assert migrate_run_ids.migrate(old, dry_run=True) is not None and old.read_text() == before


def test_machine_paths_become_checkout_relative_and_the_id_follows_the_files_read(tmp_path):
    """Issue 27: records held the developer machine's absolute paths; issue 27 #6: the id of a GLUE run hashed every
    file in its folder.  After the migration the record names ``results/runs`` / ``../shared/...`` relative to the
    checkout and its id is what ``qexp run`` computes now (a NOTES.txt beside the TSVs changes nothing)."""
    from qexp.common.provenance import REPO

    data = tmp_path / "glue"
    data.mkdir()
    (data / "train.tsv").write_text("a\tb\n")
    (data / "dev.tsv").write_text("c\td\n")
    task = {"name": "rte", "data_dir": str(data), "tsv": {"train": "train.tsv"},
            "eval_splits": [{"name": "validation", "tsv": "dev.tsv"}]}
    cfg = {"model": {"name": "m"}, "task": task, "seed": 0, "recipe": {"name": "w8a8_ptq"},
           "results_dir": str(REPO / "results" / "runs"), "cache_dir": str(REPO.parent / "scratch" / "cache")}
    old_id = "0123456789ab"
    path = tmp_path / f"m__rte__w8a8_ptq__seed0__{old_id}.json"
    write_atomic(path, {"schema": 1, "run_id": old_id, "config": cfg, "score": 1.0,
                        "finetune": {"checkpoint": str(REPO / "cache" / "finetune" / "x")}})
    new = migrate_run_ids.migrate(path, dry_run=False)
    rec = json.loads(new.read_text())
    assert rec["config"]["results_dir"] == "results/runs" and rec["config"]["cache_dir"] == "../scratch/cache"
    assert rec["finetune"]["checkpoint"] == "cache/finetune/x"
    assert rec["config"]["task"]["data_dir"] == str(data)   # outside the checkout's parent: as given
    assert rec["previous_run_ids"] == [old_id] and rec["run_id"] == run_id(cfg)
    (data / "NOTES.txt").write_text("my notes")
    (data / "train.tsv~").write_text("editor backup")
    assert run_id(cfg) == rec["run_id"]
    (data / "dev.tsv").write_text("c\te\n")   # a file the task reads: a new id
    assert run_id(cfg) != rec["run_id"]


def test_an_interrupted_migration_resumes(tmp_path, monkeypatch):
    old = _old_record(tmp_path)
    monkeypatch.setattr(Path, "unlink", lambda self, *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        migrate_run_ids.migrate(old, dry_run=False)  # killed after writing the new record, before removing the old
    monkeypatch.undo()
    assert len(list(tmp_path.glob("*.json"))) == 2
    new = migrate_run_ids.migrate(old, dry_run=False)
    assert list(tmp_path.glob("*.json")) == [new] and json.loads(new.read_text())["previous_run_ids"] == [
        json.loads(_old_record(tmp_path / "again").read_text())["run_id"]]


def test_no_recipe_carries_a_table_row():
    conf = Path(__file__).resolve().parents[1] / "conf" / "recipe"
    assert not [p.name for p in conf.glob("*.yaml") if "table_row" in p.read_text()]


def _here(cfg: dict, shared: Path) -> dict:
    """``cfg`` with every path into a ``shared/data`` folder moved to this machine's ``../shared/data``: run ids hash
    the data's content (issue 14 #1), which is found wherever the checkout lies."""
    def move(v):
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        if isinstance(v, list):
            return [move(x) for x in v]
        if isinstance(v, str) and "/shared/data/" in v:
            return str(shared / v.split("/shared/data/", 1)[1])
        return v
    return move(cfg)


def test_every_committed_record_has_its_current_id():
    """Each committed record's file name and run id are those of its own config, its data read here (records whose
    data is not on this machine are not checked: their ids cannot be recomputed)."""
    from qexp.experiment.records import DATA_PATHS, load_records

    from .conftest import SHARED_DATA

    runs = Path(__file__).resolve().parents[1] / "results" / "runs"
    recs = load_records(runs)
    assert recs, "no committed records"
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not here: the content ids cannot be recomputed")
    bad = []
    for r in recs:
        cfg = _here(r["config"], SHARED_DATA)
        paths = [cfg["task"].get("data_dir")] if cfg["task"].get("data_dir") else []
        if any(not Path(p).exists() for p in paths):
            continue
        if r["run_id"] != run_id(cfg) or Path(r["_path"]) != record_path(runs, cfg):
            bad.append(r["_path"])
    assert DATA_PATHS and not bad, bad


def test_keys_no_code_reads_do_not_change_the_run_id():
    """Issue 26 #2: the table tags, a pre-training task's objective (the kind decides), the causal LM's
    mlm_probability, and calibration.momentum without a running min-max estimator changed run ids and cache keys."""
    base = {"model": {"name": "m"}, "seed": 0, "recipe": {"name": "r", "paper": "kwon2021"},
            "task": {"name": "qpt_clm", "kind": "pretrain_clm", "objective": "clm", "mlm_probability": 0.15,
                     "paper": "chitsaz2024"},
            "calibration": {"weights": {"name": "mse"}, "activations": {"name": "current_minmax"}, "momentum": 0.9}}
    same = json.loads(json.dumps(base))
    same["recipe"]["paper"] = "other"
    same["task"].update(objective="mlm", mlm_probability=0.3, paper="x")
    same["calibration"]["momentum"] = 0.5
    assert run_id(same) == run_id(base)
    mlm = json.loads(json.dumps(base))
    mlm["task"].update(kind="pretrain_mlm")
    changed = json.loads(json.dumps(mlm))
    changed["task"]["mlm_probability"] = 0.3
    assert run_id(changed) != run_id(mlm)                               # read by the masked LM
    running = json.loads(json.dumps(base))
    running["calibration"]["activations"]["name"] = "running_minmax"
    faster = json.loads(json.dumps(running))
    faster["calibration"]["momentum"] = 0.5
    assert run_id(faster) != run_id(running)                            # read by running min-max


def _eval_record(runs: Path, downstream: dict | None, finished: str, rid: str, score=2.0) -> Path:
    cfg = {"model": {"name": "m"}, "task": {"name": "qpt_clm", "seq_length": 32}, "seed": 0, "recipe": {"name": "fp32"}}
    if downstream is not None:
        cfg["task"]["downstream"] = downstream
    metrics = {"valid": {"perplexity": score}, **({"downstream": {"t": {"acc": 0.5}}} if (downstream or {}).get(
        "enabled") else {})}
    path = runs / f"m__qpt_clm__fp32__seed0__{rid}.json"
    write_atomic(path, {"schema": 1, "run_id": rid, "config": cfg, "score": score, "metrics": metrics,
                        "finished": finished})
    return path


def test_records_that_differed_only_in_an_evaluation_become_one(tmp_path):
    """Issue 26 #2: a re-evaluation with task.downstream wrote a second record under another id; the migration keeps
    one record under the id without it -- the one with the downstream metrics -- and the other id in its history."""
    a = _eval_record(tmp_path, {"enabled": False, "num_fewshot": 5}, "2026-12-01", "aaaaaaaaaaaa")
    b = _eval_record(tmp_path, {"enabled": True, "num_fewshot": 5}, "2026-12-02", "bbbbbbbbbbbb")
    for p in sorted(tmp_path.glob("*.json")):
        migrate_run_ids.migrate(p, dry_run=False)
    (left,) = tmp_path.glob("*.json")
    rec = json.loads(left.read_text())
    assert not a.exists() and not b.exists() and "downstream" in rec["metrics"]
    assert set(rec["previous_run_ids"]) == {"aaaaaaaaaaaa", "bbbbbbbbbbbb"} and rec["run_id"] == run_id(rec["config"])
    assert "previous_evaluations" not in rec            # the dropped record had no downstream evaluation to keep
    other = _eval_record(tmp_path, {"enabled": True, "num_fewshot": 2}, "2026-12-03", "cccccccccccc")
    migrate_run_ids.migrate(other, dry_run=False)       # two downstream settings: the newer kept, the older in history
    (left,) = tmp_path.glob("*.json")
    rec = json.loads(left.read_text())
    assert rec["config"]["task"]["downstream"]["num_fewshot"] == 2
    assert rec["previous_evaluations"][0]["settings"]["task.downstream"]["num_fewshot"] == 5


def test_records_that_differ_in_results_settings_are_never_merged(tmp_path, monkeypatch):
    a = _eval_record(tmp_path, {"enabled": True}, "2026-12-01", "aaaaaaaaaaaa")
    migrate_run_ids.migrate(a, dry_run=False)
    b = _eval_record(tmp_path, None, "2026-12-02", "bbbbbbbbbbbb")
    rec = json.loads(b.read_text())
    rec["config"]["task"]["seq_length"] = 64           # a result-changing key: another run
    monkeypatch.setattr(migrate_run_ids, "record_path", lambda runs, cfg: next(p for p in tmp_path.glob("*.json")
                                                                                if p != b))
    write_atomic(b, rec)
    with pytest.raises(SystemExit, match="already exists and differs"):
        migrate_run_ids.migrate(b, dry_run=False)
