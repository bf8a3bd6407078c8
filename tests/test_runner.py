import json
from pathlib import Path

import pytest

from qexp.quant.estimators import CalibrationError
from qexp.quant.sites import SiteError
from qexp.experiment.records import load_records

from .helpers import run_cfg


def only_record(tmp_path):
    files = list((tmp_path / "runs").glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_record_is_self_describing(tmp_path, rte_like):
    run_cfg(tmp_path, "+recipe=w8a8_ptq", "task=rte", f"task.data_dir={rte_like}", "seed=3")
    rec = only_record(tmp_path)
    assert (rec["model"], rec["task"], rec["recipe"], rec["seed"]) == ("tiny_bert", "rte", "w8a8_ptq", 3)
    assert rec["config"]["task"]["finetune"]["learning_rate"] == 3e-5
    assert rec["overrides"] == ["+recipe=w8a8_ptq", "task=rte", f"task.data_dir={rte_like}", "seed=3"]
    assert set(rec["git"]) == {"commit", "dirty"}
    assert rec["versions"]["torch"] and rec["versions"]["transformers"] and rec["versions"]["qexp"]
    assert rec["device"]["type"] == "cpu"
    assert {"load", "finetune", "calibrate", "evaluate", "total"} <= set(rec["timings"])
    assert rec["sites"]["activation"] == {"sites": 31, "quantized": 31, "bits": {"8": 31}}  # 3 + 13*2 + 2
    assert rec["task_version"] == 1 and rec["data_source"] == f"tsv:{rte_like}"


def test_rerun_skips_and_force_reruns(tmp_path):
    run_cfg(tmp_path, "+recipe=w8a8_ptq")
    path = next((tmp_path / "runs").glob("*.json"))
    before = path.stat().st_mtime_ns
    assert run_cfg(tmp_path, "+recipe=w8a8_ptq")["skipped"]
    assert path.stat().st_mtime_ns == before
    run_cfg(tmp_path, "+recipe=w8a8_ptq", "force=true")
    assert path.stat().st_mtime_ns != before and len(list((tmp_path / "runs").glob("*.json"))) == 1
    run_cfg(tmp_path, "+recipe=w8a8_ptq", "seed=1")  # another seed is another record
    assert len(load_records(tmp_path / "runs")) == 2


def test_finetuned_checkpoint_is_cached_across_recipes(tmp_path, rte_like):
    a = run_cfg(tmp_path, "task=rte", f"task.data_dir={rte_like}")
    b = run_cfg(tmp_path, "+recipe=w8a32_ptq", "task=rte", f"task.data_dir={rte_like}")
    assert not a["finetune"]["cached"] and b["finetune"]["cached"]
    assert a["finetune"]["checkpoint"] == b["finetune"]["checkpoint"]
    assert "finetune" not in b["timings"]
    c = run_cfg(tmp_path, "task=rte", f"task.data_dir={rte_like}", "task.finetune.learning_rate=1e-4")
    assert not c["finetune"]["cached"]  # other hyper-parameters: another checkpoint


def test_interrupted_finetuning_leaves_no_checkpoint(tmp_path, rte_like, monkeypatch):
    import transformers

    def boom(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.Trainer, "train", boom)
    with pytest.raises(KeyboardInterrupt):
        run_cfg(tmp_path, "task=rte", f"task.data_dir={rte_like}")
    ft = tmp_path / "cache" / "finetune"
    assert not list(ft.iterdir()) if ft.exists() else True
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_nan_in_calibration_is_a_clear_error_and_leaves_no_record(tmp_path, monkeypatch):
    from qexp.models import quant_bert

    orig = quant_bert.QEmbeddings.forward

    def nan_embeddings(self, *a, **k):
        x = orig(self, *a, **k)
        return x * float("nan")

    monkeypatch.setattr(quant_bert.QEmbeddings, "forward", nan_embeddings)
    with pytest.raises(CalibrationError, match=r"quantizer 'encoder.layer.0.attn.query'.*NaN"):
        run_cfg(tmp_path, "+recipe=w8a8_ptq")
    runs = tmp_path / "runs"
    assert not runs.exists() or not list(runs.iterdir())  # no record, no temporary file


def test_site_rule_typo_fails_before_any_work(tmp_path):
    with pytest.raises(SiteError, match="ffn.ouput"):
        run_cfg(tmp_path, "+recipe=w8a8_ptq", "recipe.quant.sites=[{match: '*.ffn.ouput', bits: 16}]")


def test_records_are_written_atomically(tmp_path, monkeypatch):
    import os

    from qexp.experiment import records

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        records.write_atomic(tmp_path / "r.json", {"a": 1})
    assert list(Path(tmp_path).iterdir()) == []
