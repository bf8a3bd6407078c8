"""Issue 32 #4: training curves where researchers look -- the HF Trainer reports to TensorBoard (default) into
``<tb_dir>/<the training's name>``; the event file holds the same curves as the record; ``report_to`` changes no run
id; an unknown or uninstalled target is refused before anything loads."""
import pytest

from qexp.experiment.records import run_id

from .helpers import run_cfg, write_corpus

TINY = ["task=pretrain_clm", "model=opt_cpu", "model.dropout=0.0", "model.architecture.num_hidden_layers=1",
        "model.architecture.hidden_size=32", "model.architecture.num_attention_heads=2",
        "model.architecture.intermediate_size=64", "task.tokenizer.vocab_size=300", "task.seq_length=32",
        "task.train.max_steps=4", "task.train.batch_size=4", "task.train.warmup_steps=1", "task.train.eval_steps=2",
        "task.train.save_steps=2", "task.train.logging_steps=1", "task.train.eval_batches=1", "task.eval.batch_size=4",
        "task.eval.blocks=8", "calibration.batch_size=2", "calibration.num_batches=1"]


def scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_pretraining_writes_a_tensorboard_event_file_with_the_records_curves(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", 300, 60)
    rec = run_cfg(tmp_path, *TINY, f"task.data_dir={corpus}", f"tb_dir={tmp_path / 'tb'}")
    folders = [p for p in (tmp_path / "tb").iterdir()]
    name = rec["pretrain"]["folder"].rsplit("/", 1)[-1]
    assert [p.name for p in folders] == [name]               # one folder, named after the cached model
    assert list(folders[0].glob("events.out.tfevents.*"))
    tb = scalars(folders[0])
    train = [(x["step"], x["loss"]) for x in rec["pretrain"]["train_loss"]]
    assert [s for s, _ in tb["train/loss"]] == [s for s, _ in train] == [1, 2, 3, 4]
    assert [v for _, v in tb["train/loss"]] == pytest.approx([v for _, v in train], rel=1e-6)
    evals = {c["step"]: c["loss"] for c in rec["pretrain"]["curves"]}
    assert {s: pytest.approx(v, rel=1e-6) for s, v in tb["eval/loss"]} == evals and set(evals) == {0, 2, 4}


def test_report_to_none_writes_nothing_and_changes_no_run_id(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", 300, 60)
    rec = run_cfg(tmp_path, *TINY, f"task.data_dir={corpus}", f"tb_dir={tmp_path / 'tb'}", "report_to=none")
    assert not (tmp_path / "tb").exists()
    other = run_cfg(tmp_path, *TINY, f"task.data_dir={corpus}", f"tb_dir={tmp_path / 'tb2'}")
    assert other["skipped"] and rec["run_id"] in other["path"]   # the same run: report_to and tb_dir are not hashed
    assert run_id({"a": 1, "report_to": ["tensorboard"]}) == run_id({"a": 1, "report_to": []})


@pytest.mark.parametrize("value, message", [
    ("tensorbored", r"report_to='tensorbored' is not a reporting target; valid: tensorboard, wandb, mlflow, none"),
    ("[wandb]", r"report_to='wandb' needs the 'wandb' package"),
])
def test_a_bad_reporting_target_is_refused_before_loading(tmp_path, value, message, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    with pytest.raises(ValueError, match=message):
        run_cfg(tmp_path, "task=rte", "task.data_dir=/nonexistent", f"report_to={value}")
