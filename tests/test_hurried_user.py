"""Issue 27: defects found by trying qexp the way a hurried user does, one test each (each fails on the code before
the fix).  The table-builder ones live in tests/report/test_tables.py, the pre-training resume ones in
tests/test_pretrain.py, the record migration in tests/test_migrate_run_ids.py."""
import json

import pytest

from qexp.experiment.records import load_records

from .helpers import cli, run_cfg


def test_a_truncated_record_is_not_done_the_run_reruns(tmp_path, caplog):
    """#5: a truncated record made every rerun print "skip" while `qexp tables` skipped it: the experiment vanished."""
    run_cfg(tmp_path, "+recipe=w8a8_ptq")
    path = next((tmp_path / "runs").glob("*.json"))
    good = json.loads(path.read_text())
    path.write_text(path.read_text()[:200])          # a bad merge / a full disk
    with caplog.at_level("WARNING"):
        rec = run_cfg(tmp_path, "+recipe=w8a8_ptq")
    assert not rec.get("skipped") and "is unreadable; moved it to" in caplog.text
    assert [r["score"] for r in load_records(tmp_path / "runs")] == [good["score"]]
    assert len(list((tmp_path / "runs" / "unreadable").iterdir())) == 1   # kept for inspection, out of the way


def test_a_string_score_in_a_record_does_not_count_as_done(tmp_path):
    run_cfg(tmp_path, "+recipe=w8a8_ptq")
    path = next((tmp_path / "runs").glob("*.json"))
    rec = json.loads(path.read_text())
    rec["score"] = "55.1"
    path.write_text(json.dumps(rec))
    assert not run_cfg(tmp_path, "+recipe=w8a8_ptq").get("skipped")


@pytest.mark.parametrize("seed", ["1.5", "true", "abc"])
def test_a_seed_that_is_not_an_integer_is_refused(tmp_path, seed):
    """#7: `seed=1.5` ran and was recorded as `...seed1.5...`."""
    with pytest.raises(ValueError, match=rf"seed={seed!r}|seed=1.5|seed=True|seed='abc'"):
        run_cfg(tmp_path, f"seed={seed}")
    assert not (tmp_path / "runs").exists()


def test_an_added_key_that_no_config_defines_is_refused_before_hydra(capsys, tmp_path):
    """#7: `++task.dat_dir=DIR` (a typo) ran under a new run id and read nothing."""
    code, _, err = cli(capsys, "run", f"results_dir={tmp_path}", "++task.dat_dir=/x")
    assert code != 0 and "no config of 'task' has a key 'task.dat_dir'; did you mean task.data_dir?" in err
    code, _, err = cli(capsys, "run", f"results_dir={tmp_path}", "model=bert_cpu", "+model.attention.alpah=2")
    assert code != 0 and "did you mean model.attention.alpha?" in err


def test_a_dangling_symlink_results_dir_is_refused_before_the_run(tmp_path, monkeypatch):
    """#13: an unmounted scratch disk: the run executed, then FileExistsError at the record write (result lost)."""
    import qexp.kinds.label_free as label_free

    (tmp_path / "scratch").symlink_to(tmp_path / "unmounted" / "disk")
    monkeypatch.setattr(label_free.LabelFree, "load", lambda self: pytest.fail("the model was loaded"), raising=False)
    with pytest.raises(ValueError, match=r"is a symlink to '.*unmounted/disk', which does not exist"):
        run_cfg(tmp_path, f"results_dir={tmp_path / 'scratch' / 'runs'}")


def test_an_output_dir_where_no_file_can_be_created_is_refused(tmp_path, monkeypatch):
    """#13: under /proc as root `os.access` says writable; the probe file says otherwise."""
    import tempfile

    real = tempfile.mkstemp

    def refuse(*a, dir=None, **k):
        if dir is not None and str(dir).startswith(str(tmp_path / "ro")):
            raise PermissionError(13, "Operation not permitted")
        return real(*a, dir=dir, **k)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(ValueError, match=r"is not writable \(creating a file in '.*ro' failed: Operation not "):
        run_cfg(tmp_path, f"results_dir={tmp_path / 'ro' / 'runs'}")


def test_ctrl_c_is_one_line_and_status_130(capsys, monkeypatch):
    """#16: Ctrl-C during calibration printed a ~90-line traceback and exited 1."""
    import qexp.cli as qcli

    monkeypatch.setattr(qcli, "_run", lambda argv: (_ for _ in ()).throw(KeyboardInterrupt()))
    code, _, err = cli(capsys, "run")
    assert code == 130 and err.count("\n") == 1 and err.startswith("qexp: interrupted")


def test_a_reader_that_leaves_does_not_kill_the_run(capsys):
    """#16: `qexp run ... | head -1` killed the run with a BrokenPipeError (from the Trainer's log print)."""
    import io

    from qexp.cli import _ReaderMayLeave

    class Closed(io.StringIO):
        def write(self, s):
            raise BrokenPipeError

        def fileno(self):
            return fd

    import os
    import tempfile

    fd, name = tempfile.mkstemp()
    try:
        out = _ReaderMayLeave(Closed())
        assert out.write("a line the reader will never see\n") == 33   # swallowed, the run goes on
        out.flush()
    finally:
        os.close(fd)
        os.unlink(name)


def test_a_calibration_batch_larger_than_the_data_is_refused_before_loading(tmp_path, rte_like, monkeypatch):
    """#10: `calibration.batch_size=100000` grew to 23.7 GB and was OOM-killed."""
    import qexp.kinds.glue as glue

    monkeypatch.setattr(glue.Glue, "load", lambda self: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match=r"calibration.batch_size=100000 is larger than the training data \(16 "
                                         r"examples in .*train.tsv, task.limit.train=16\); choose at most 16"):
        run_cfg(tmp_path, "+recipe=w8a8_ptq", "task=rte", f"task.data_dir={rte_like}", "calibration.batch_size=100000")


def test_a_header_only_train_file_is_named(tmp_path, rte_like, monkeypatch):
    """#19: a header-only train.tsv gave "num_samples should be a positive integer value" without the file."""
    import qexp.kinds.glue as glue

    train = rte_like / "train.tsv"
    train.write_text(train.read_text().splitlines()[0] + "\n")
    monkeypatch.setattr(glue.Glue, "load", lambda self: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match=r".*train.tsv has no training example \(a header only\?\)"):
        run_cfg(tmp_path, "+recipe=w8a8_ptq", "task=rte", f"task.data_dir={rte_like}")


@pytest.mark.parametrize("args, message", [
    (["gemm", "--device", "tpu"], "argument --device: 'tpu' is not a device here; valid: auto, cuda, cpu"),
    (["gemm", "--repeats", "0"], "argument --repeats: 0 must be a positive integer"),
    (["gemm", "--repeats", "-3"], "argument --repeats: -3 must be a positive integer"),
    (["gemm", "--inner", "0"], "argument --inner: 0 must be a positive integer"),
    (["layer", "--bsz", "0"], "argument --bsz: 0 must be a positive integer"),
    (["layer", "--backend", "nope"], "argument --backend: invalid choice: 'nope'"),
    (["pretrain", "--threads", "0"], "argument --threads: 0 must be a positive integer"),
    (["pretrain", "--batch", "0"], "argument --batch: 0 must be a positive integer"),
    (["memory", "--batch", "-1"], "argument --batch: -1 must be a positive integer"),
    (["memory", "--model", "nope"], "unknown model 'nope'"),
    (["fakequant", "--model", "nope"], "unknown model 'nope'"),
    (["fakequant", "--recipe", "nope"], "unknown recipe 'nope'"),
    (["eval", "seeed=1"], "unknown config key 'seeed'; did you mean 'seed'?"),
    (["ddp", "--procs", "0"], "argument --procs: 0 must be a positive integer"),
    (["ddp", "--batch", "5"], "--batch 5 must be a multiple of --procs 2"),
    (["ddp", "--model", "nope"], "argument --model: invalid choice: 'nope'"),
])
def test_bad_bench_input_is_one_line_and_exit_2(capsys, args, message):
    """#11/#15: accepted and recorded, or a traceback after the benchmark ran."""
    code, _, err = cli(capsys, "bench", *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_bench_out_folder_under_a_file_is_refused_before_the_benchmark(capsys, tmp_path, monkeypatch):
    import qexp.bench.gemm as bench

    monkeypatch.setattr(bench, "bench_gemm", lambda *a, **k: pytest.fail("the benchmark ran"))
    (tmp_path / "f").write_text("")
    code, _, err = cli(capsys, "bench", "gemm", "--out", str(tmp_path / "f" / "bench"))
    assert code == 2 and "is a file, not a folder" in err


def test_ls_sites_with_an_unknown_model_lists_the_models(capsys):
    code, _, err = cli(capsys, "ls", "sites", "model=nope")
    assert code == 2 and "unknown model 'nope'" in err and "minilm_l6" in err and "attention/" not in err


@pytest.mark.parametrize("recipe, message", [
    ("w8a8_ptq", "recipe 'w8a8_ptq' quantizes no linear inputs"),
    ("pwq_alternating", r"uses binary-coding \(BCQ\) weights"),
])
def test_an_integer_backend_refuses_an_incompatible_recipe_before_loading(tmp_path, monkeypatch, recipe, message):
    """#18: refused only after fine-tuning and calibration, with a list of 100+ sites."""
    import qexp.kinds.label_free as label_free

    monkeypatch.setattr(label_free.LabelFree, "load", lambda self: pytest.fail("the model was loaded"), raising=False)
    with pytest.raises(ValueError, match=message):
        run_cfg(tmp_path, f"+recipe={recipe}", "inference.backend=torch_int")


def test_an_integer_backend_runs_a_zeroquant_recipe(tmp_path):
    rec = run_cfg(tmp_path, "+recipe=zq_w8a8", "inference.backend=torch_int")
    assert rec["inference"]["backend"] == "torch_int" and rec["inference"]["integer_linears"] > 0


@pytest.mark.parametrize("overrides, message", [
    (["task.limit.train=abc"], r"task.limit.train='abc' must be a positive integer or null"),
    (["task.limit.eval=0"], r"task.limit.eval=0 must be a positive integer or null"),
])
def test_bad_glue_limits_name_the_key(tmp_path, rte_like, overrides, message):
    """#14: `task.limit.train=abc` gave a TypeError."""
    with pytest.raises(ValueError, match=message):
        run_cfg(tmp_path, "task=rte", f"task.data_dir={rte_like}", *overrides)


def _corpus(tmp_path, train: bytes):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "train.txt").write_bytes(train)
    (d / "valid.txt").write_text("a valid line.\n")
    return d


@pytest.mark.parametrize("train, overrides, message", [
    ("caf\xe9 au lait\n".encode("latin1") * 3, [], r"train.txt is not UTF-8 text \(byte 3, line 1: b'\\xe9 au'\)"),
    (b"", [], r"train.txt \(task.files.train\) is empty"),
    (b"some text.\n", ["task.seq_length=0"], r"task.seq_length=0 must be an integer >= 2"),
    (b"some text.\n", ["task.train.precision=fp16"], r"task.train.precision=fp16 needs a CUDA device"),
    (b"some text.\n", ["model/attention=clipped_alpha", "model.attention.alpha=abc"],
     r"model.attention.alpha='abc' must be a number"),
])
def test_bad_pretraining_input_names_the_file_or_key(tmp_path, train, overrides, message):
    """#14 / #19: non-UTF-8 text failed inside the BPE trainer without naming the file; seq_length=0 divided by zero
    after tokenizing; alpha=abc "could not convert string to float" without the key; an empty file was "missing"."""
    corpus = _corpus(tmp_path, train)
    with pytest.raises(ValueError, match=message):
        run_cfg(tmp_path, "task=pretrain_clm", "model=opt_cpu", f"task.data_dir={corpus}", *overrides)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.safetensors"))


def test_a_recipe_whose_distinguishing_rules_match_nothing_is_refused(tmp_path):
    """Issue 29: mp_ptq_r16_io16_out16 on the label-free task (a bare encoder: no pooler, no classifier) equalled
    mp_ptq_r16_io16 to the last digit under its own name.  On a model with a head it runs (tiny_bert on RTE)."""
    with pytest.raises(ValueError, match=r"set this recipe apart from another row \(pooler, classifier\) match no"):
        run_cfg(tmp_path, "+recipe=mp_ptq_r16_io16_out16")


def test_the_distinct_marker_does_not_change_run_ids():
    from qexp.cli import compose
    from qexp.experiment.records import run_id
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose(["+recipe=mp_ptq_r16_io16_out16", "task=rte"]), resolve=True)
    stripped = json.loads(json.dumps(cfg))
    for r in stripped["recipe"]["quant"]["sites"]:
        r.pop("distinct", None)
    assert run_id(cfg) == run_id(stripped)
