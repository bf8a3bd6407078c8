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


def test_unreadable_records_are_skipped_with_a_warning_naming_them(tmp_path, caplog):
    """Issue 14 #8: one truncated file, another schema or a record without its keys never stops a table."""
    from qexp.common.provenance import write_atomic
    from qexp.report.tables import build_all

    runs = tmp_path / "runs"
    good = {"schema": 1, "model": "m", "task": "t", "recipe": "fp32", "seed": 0, "config": {}, "metrics": {}}
    write_atomic(runs / "good.json", good)
    (runs / "truncated.json").write_text('{"schema": 1, "model": "m", "tas')
    write_atomic(runs / "old.json", {**good, "schema": 0})
    write_atomic(runs / "partial.json", {k: v for k, v in good.items() if k != "metrics"})
    with caplog.at_level("WARNING", logger="qexp"):
        recs = load_records(runs)
        build_all(runs, tmp_path / "tables")     # and the tables are written
    assert [Path(r["_path"]).name for r in recs] == ["good.json"]
    text = caplog.text
    assert "truncated.json: not a readable JSON record" in text
    assert "old.json: record schema 0" in text and "partial.json: the record lacks metrics" in text
    assert (tmp_path / "tables" / "text_outliers.csv").exists()


def test_records_are_readable_by_others(tmp_path):
    """Issue 14 #9: records follow the umask (mkstemp alone would leave them 0600)."""
    import os

    from qexp.common.provenance import write_atomic

    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


def test_an_unwritable_results_dir_fails_before_the_run(tmp_path, monkeypatch):
    """Issue 14 #5: found before the model loads, not when the record is written after the whole run."""
    import qexp.kinds.label_free as label_free

    (tmp_path / "a_file").write_text("")

    def no_load(self):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(label_free.LabelFree, "load", no_load, raising=False)
    with pytest.raises(ValueError, match=r"results_dir='.*a_file/runs' cannot be created: '.*a_file' is a file"):
        run_cfg(tmp_path, f"results_dir={tmp_path / 'a_file' / 'runs'}")


def test_a_plus_typo_of_a_top_level_key_is_refused(tmp_path):
    """Issue 14 #3: `+seeed=1` names `seed` instead of running under a new run id."""
    with pytest.raises(ValueError, match=r"unknown config key 'seeed'; did you mean 'seed'\? valid top-level keys"):
        run_cfg(tmp_path, "+seeed=1")
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*.json"))


@pytest.mark.parametrize("overrides", [
    ["recipe.quant.weights.enabled=false", "recipe.quant.activations.enabled=false"],            # static
    ["+recipe.quant.sites=[{match: '*', enabled: false}]"],                                        # after load
])
def test_a_recipe_that_quantizes_nothing_is_refused(tmp_path, overrides):
    """Issue 14 #2: it would score as a perfect W8A8 and be pooled with the real runs of that recipe name."""
    with pytest.raises(ValueError, match="recipe 'w8a8_ptq' quantizes nothing"):
        run_cfg(tmp_path, "+recipe=w8a8_ptq", *overrides)
    assert not list((tmp_path / "runs").glob("*.json")) if (tmp_path / "runs").exists() else True


def test_a_run_outside_the_checkout_says_where_it_writes(tmp_path, caplog, monkeypatch):
    """Issue 14 #9: runs started from another directory no longer write results/ and cache/ there silently."""
    from qexp.cli import compose
    from qexp.experiment.pipeline import run

    monkeypatch.chdir(tmp_path)
    cfg = compose(["model=tiny_bert", "debug=smoke", "+recipe=w8a8_ptq"])
    with caplog.at_level("INFO", logger="qexp"):
        run(cfg, [], cwd=tmp_path)
    assert f"records -> {tmp_path / 'results' / 'runs'}" in caplog.text
    assert "running outside the qexp checkout" in caplog.text
