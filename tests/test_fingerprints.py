"""Issue 14 #1: run ids and fine-tuning cache keys follow the data's content, not its path."""
import json
import shutil

from qexp.common.fingerprint import fingerprint
from qexp.experiment.records import run_id

from .helpers import run_cfg


def _cfg(tmp_path, data_dir, *over):
    from omegaconf import OmegaConf

    from qexp.cli import compose
    from qexp.experiment.pipeline import prepare

    cfg = prepare(compose(["model=tiny_bert", "task=rte", f"task.data_dir={data_dir}", *over]), tmp_path)
    return OmegaConf.to_container(cfg, resolve=True)


def test_fingerprints_follow_content(tmp_path, rte_like):
    other = tmp_path / "elsewhere" / "RTE"
    shutil.copytree(rte_like, other)
    assert fingerprint(rte_like) == fingerprint(other) and fingerprint(tmp_path / "nothing") is None
    assert fingerprint(rte_like / "train.tsv") == fingerprint(other / "train.tsv") != fingerprint(rte_like)
    (other / "dev.tsv").write_text((other / "dev.tsv").read_text().replace("mat.", "rug."))
    assert fingerprint(rte_like) != fingerprint(other)


def test_run_ids_do_not_depend_on_where_the_data_lies(tmp_path, rte_like):
    other = tmp_path / "elsewhere" / "RTE"
    shutil.copytree(rte_like, other)
    a, b = _cfg(tmp_path, rte_like), _cfg(tmp_path, other)
    assert a["task"]["data_dir"] != b["task"]["data_dir"] and run_id(a) == run_id(b)
    (other / "train.tsv").write_text((other / "train.tsv").read_text().replace("sat on", "sat by"))
    assert run_id(_cfg(tmp_path, other)) != run_id(a)   # edited in place: another run


def test_an_edited_training_file_is_fine_tuned_again(tmp_path, rte_like):
    """The bug: a force=true rerun after editing train.tsv loaded the checkpoint trained on the old data."""
    first = run_cfg(tmp_path, "task=rte", f"task.data_dir={rte_like}")
    (rte_like / "train.tsv").write_text((rte_like / "train.tsv").read_text().replace("today", "yesterday"))
    second = run_cfg(tmp_path, "task=rte", f"task.data_dir={rte_like}", "force=true")
    assert not first["finetune"]["cached"] and not second["finetune"]["cached"]
    assert first["finetune"]["checkpoint"] != second["finetune"]["checkpoint"]
    third = run_cfg(tmp_path, "task=rte", f"task.data_dir={rte_like}", "force=true")
    assert third["finetune"]["cached"] and third["finetune"]["checkpoint"] == second["finetune"]["checkpoint"]


def test_the_migration_renames_records_to_content_ids(tmp_path, rte_like, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    rec = run_cfg(tmp_path, "task=rte", f"task.data_dir={rte_like}")
    (path,) = (tmp_path / "runs").glob("*.json")
    data = json.loads(path.read_text())
    data["run_id"] = "0123456789ab"                      # as the old code named it
    old = path.with_name(path.name.replace(rec["run_id"], "0123456789ab"))
    old.write_text(json.dumps(data))
    path.unlink()
    spec = importlib.util.spec_from_file_location(
        "mig", Path(__file__).parents[1] / "scripts" / "migrate_data_fingerprints.py")
    mig = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mig)
    monkeypatch.setattr(sys, "argv", ["mig", "--runs", str(tmp_path / "runs")])
    mig.main()
    (new,) = (tmp_path / "runs").glob("*.json")
    moved = json.loads(new.read_text())
    assert moved["run_id"] == rec["run_id"] and moved["previous_run_ids"] == ["0123456789ab"]
    mig.main()   # idempotent
    assert list((tmp_path / "runs").glob("*.json")) == [new]
