import time

import pytest
from omegaconf import OmegaConf

from qexp.common import hub
from qexp.cli import compose
from qexp.tasks.glue import DataError, load_split


def task(name):
    return compose([f"task={name}"]).task


def test_tsv_layout_from_a_synthetic_folder(rte_like):
    ds = load_split(task("rte"), "train", str(rte_like))
    assert ds.column_names == ["text_a", "label", "text_b"] or set(ds.column_names) == {"text_a", "text_b", "label"}
    assert len(ds) == 24 and set(ds["label"]) == {0, 1}
    assert ds[1]["label"] == 0  # 'entailment' is class 0, as on the hub


def test_unknown_labels_and_missing_files(rte_like, tmp_path):
    (rte_like / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(DataError, match=r"dev.tsv, line 2: label 'maybe' is not one of \['entailment'"):
        load_split(task("rte"), "validation", str(rte_like))
    with pytest.raises(DataError, match="does not exist"):
        load_split(task("rte"), "train", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="no split 'test'.*validation"):
        load_split(task("rte"), "test", str(rte_like))


@pytest.mark.parametrize("name,folder,split,rows,labels", [
    ("rte", "RTE", "validation", 277, {0, 1}),
    ("cola", "CoLA", "validation", 1043, {0, 1}),
    ("mrpc", "MRPC", "validation", 408, {0, 1}),
    ("sst2", "SST-2", "validation", 872, {0, 1}),
    ("qnli", "QNLI", "validation", 5463, {0, 1}),
])
def test_real_glue_dev_files(glue_dir, name, folder, split, rows, labels):
    ds = load_split(task(name), split, str(glue_dir / folder))
    assert len(ds) == rows and set(ds["label"]) == labels
    assert all(isinstance(t, str) and t for t in ds["text_a"][:50])


def test_real_stsb_is_regression(glue_dir):
    ds = load_split(task("stsb"), "validation", str(glue_dir / "STS-B"))
    assert len(ds) == 1500 and isinstance(ds[0]["label"], float) and 0 <= min(ds["label"]) <= max(ds["label"]) <= 5


def test_missing_hub_dataset_fails_fast_and_names_the_override(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_reachable.cache_clear()
    t0 = time.time()
    with pytest.raises(hub.HubUnavailableError, match=r"nyu-mll/glue/mnli.*task\.data_dir=/path/to/glue/MNLI"):
        load_split(task("mnli"), "matched", None)
    assert time.time() - t0 < 30
    hub.hub_reachable.cache_clear()


def test_every_glue_task_config_is_complete():
    for name in ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"]:
        t = task(name)
        assert t.kind == "glue" and t.finetune.epochs == 3 and t.max_length == 128 and t.pad_to_max_length
        assert set(t.score) <= set(t.metrics) and t.eval_splits
        OmegaConf.to_container(t, resolve=True)


@pytest.mark.parametrize("content,match", [
    ("sentence\tlabel\na fine film\t1\nawful\t2\n", r"dev.tsv, line 3: label '2' is not one of \[0, 1\]"),
    ("sentence\tlabel\na fine film\t1\nawful\tbad\n", r"dev.tsv, line 3: label 'bad' is not one of \[0, 1\]"),
    ("sentence\tlabel\na fine film\t1\nawful\t0.5\n", r"line 3: label '0.5' is not one of"),
    ("sentence\tlabel\na fine film\t1\nawful\t0\textra\n", r"dev.tsv: not a valid GLUE TSV file: .*line 3"),
    ("sentence\tlabel\na fine film\t1\nawful\n", r"dev.tsv, line 3: 1 tab-separated fields, the header has 2 \(sentence, label\)"),
    ("text\tlabel\na fine film\t1\n", r"dev.tsv: no column 'sentence'"),
])
def test_malformed_files_name_the_file_and_line(tmp_path, content, match):
    """Issue 14 #4, #6: SST-2 labels outside {0, 1}, non-integer labels, extra or missing fields."""
    (tmp_path / "dev.tsv").write_text(content)
    with pytest.raises(DataError, match=match):
        load_split(task("sst2"), "validation", str(tmp_path))


def test_a_bad_dev_file_fails_before_fine_tuning(tmp_path, rte_like):
    from tests.helpers import run_cfg

    (rte_like / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tmaybe\n")
    with pytest.raises(DataError, match="line 3: label 'maybe'"):
        run_cfg(tmp_path, "task=rte", f"task.data_dir={rte_like}", "+recipe=w8a8_ptq")
    assert not (tmp_path / "cache").exists()     # no fine-tuning started
