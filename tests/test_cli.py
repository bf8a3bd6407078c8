"""The installed command as a user types it: listings, sweeps, and clear errors for bad input."""
import json
import sys

import pytest

from .helpers import cli, qexp

SMOKE = ["model=tiny_bert", "debug=smoke"]


def test_help_has_worked_examples():
    r = qexp("--help")  # end to end: the installed entry point
    assert r.returncode == 0 and "examples:" in r.stdout and "+recipe=w8a8_ptq" in r.stdout


def test_ls_sites_of_a_classification_model(capsys):
    code, out, err = cli(capsys, "ls", "sites", "model=tiny_bert", "task=rte", "+recipe=w8a8_ptq")
    assert code == 0, err
    assert "# 31 activations sites (31 quantized by recipe w8a8_ptq)" in out
    assert "# 14 inputs sites (0 quantized by recipe w8a8_ptq)" in out
    assert "encoder.layer.1.ffn.residual_sum" in out and "8b asym per_tensor current_minmax()" in out


def test_ls_sites_of_a_decoder(capsys):
    code, out, err = cli(capsys, "ls", "sites", "model=tiny_gpt2", "task=wikitext2", "+recipe=zq_w48a8",
                         "recipe.groups=16")
    assert code == 0, err
    assert "# 9 weights sites (8 quantized by recipe zq_w48a8)" in out
    assert "decoder.layer.1.ffn.c_fc.weight                  4b sym per_group(n_groups=16)" in out
    assert "activations sites" not in out  # a decoder has only linear weight and input sites


@pytest.mark.parametrize("what,expect", [("recipes", "w8a8_ptq"), ("estimators", "running_minmax"),
                                         ("tasks", "text_outliers"), ("models", "minilm_l6"),
                                         ("granularities", "per_embedding_group"), ("kinds", "perplexity"),
                                         ("families", "decoder"), ("backends", "torch_int")])
def test_ls(capsys, what, expect):
    code, out, _ = cli(capsys, "ls", what)
    assert code == 0 and expect in out


def test_ls_recipes_and_help_do_not_import_torch():
    """The listings and the help answer at once: no torch, no transformers (checked in a fresh interpreter)."""
    import subprocess
    import sys

    code = ("import sys; from qexp.cli import main; main(['ls', 'recipes']); main(['--help']); "
            "bad = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("override,message", [
    ("recipe.quant.activations.bits=0", "bit-width 0 is not supported; valid bit-widths are the integers 1 to 16"),
    ("recipe.quant.weights.bits=1", "bit-width 1 is not supported; valid bit-widths are the integers 2 to 16; 1 bit "
                                    "needs an asymmetric grid"),
    ("recipe.quant.weights.bits=17", "bit-width 17 is not supported"),
    ("calibration.activations.name=kl", "unknown range estimator 'kl'; valid choices: current_minmax, mse"),
    ("recipe.quant.activations.granularity=per_token calibration.activations.name=running_minmax",
     "does not fit granularity per_token"),
    ("recipe.quant.activations.granularity=per_row", "unknown granularity 'per_row'; valid choices"),
    ("device=cuda", "CUDA is not available"),
    ("recipe.quant.weights.bits=eight", "recipe.quant.weights: bit-width 'eight' is not supported"),
])
def test_bad_input_gets_a_clear_error(tmp_path, override, message):
    from qexp.cli import compose, execute

    overrides = [*SMOKE, "+recipe=w8a8_ptq", *override.split(), f"results_dir={tmp_path}"]
    with pytest.raises(SystemExit) as e:
        execute(compose(overrides), overrides)  # what `qexp run` does with the composed config
    assert e.value.code == 2 and message in e.value.message   # bad input: exit status 2 (issue 27)
    assert not list(tmp_path.glob("*.json"))


def test_bad_input_exits_cleanly_from_the_command_line(tmp_path, capsys):
    """Through `qexp run`'s own entry (main -> Hydra -> execute), in this process: a traceback would fail the test.
    The unknown-recipe test below checks the installed command end to end."""
    code, out, err = cli(capsys, "run", *SMOKE, "+recipe=w8a8_ptq", "recipe.quant.weights.bits=17",
                         f"results_dir={tmp_path}")
    assert code == 2 and "qexp: error: recipe.quant.weights: bit-width 17 is not supported" in err
    assert "Traceback" not in err and not list(tmp_path.glob("*.json"))


def test_unknown_recipe_lists_the_choices():
    r = qexp("run", "+recipe=w9a9")
    assert r.returncode != 0 and "qexp: error: unknown recipe 'w9a9'" in r.stderr and "w8a8_ptq" in r.stderr
    assert "_qat" not in r.stderr and "_qpt" not in r.stderr   # issue 14 #9: the private partials are no choice
    from qexp.config.compose import check_group_choices

    with pytest.raises(ValueError, match=r"unknown task 'rtee'; did you mean rte"):
        check_group_choices(["-m", "task=mrpc,rtee", "+recipe=fp32"])


def test_a_closed_pipe_is_not_an_error():
    """Issue 14 #9: `qexp ls recipes | head -1` ends quietly."""
    import subprocess
    import sys

    r = subprocess.run(f"'{sys.executable}' -m qexp.cli ls recipes | head -1", shell=True, capture_output=True,
                       text=True, timeout=120)
    assert r.stdout.count("\n") == 1 and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr


@pytest.mark.parametrize("overrides,message", [
    (["model=bert_base", "task=rte"], "model.path=/dir"),            # the hub is unreachable here
    ([*SMOKE, "task=mnli"], "task.data_dir=/path/to/glue/MNLI"),      # no MNLI files anywhere
])
def test_missing_assets_name_the_override(tmp_path, monkeypatch, overrides, message):
    from qexp.cli import compose, execute

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    overrides = [*overrides, f"results_dir={tmp_path}", f"cache_dir={tmp_path / 'cache'}"]
    with pytest.raises(SystemExit) as e:
        execute(compose(overrides), overrides)
    assert e.value.code == 2 and message in e.value.message


def test_multirun_over_seeds_and_recipes_writes_one_record_each(tmp_path, capsys, caplog):
    from .helpers import cli

    code, out, err = cli(capsys, "run", "-m", *SMOKE, "+recipe=fp32,w8a8_ptq", "seed=0,1",
                         f"results_dir={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert code == 0, err[-2000:]
    recs = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert sorted((x["recipe"], x["seed"]) for x in recs) == [("fp32", 0), ("fp32", 1), ("w8a8_ptq", 0),
                                                               ("w8a8_ptq", 1)]
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == \
        ["0_seed0", "1_seed1", "2_seed0", "3_seed1"]
    # an interrupted sweep resumes: a second identical sweep skips every finished job
    caplog.clear()
    code, out, err = cli(capsys, "run", "-m", *SMOKE, "+recipe=fp32,w8a8_ptq", "seed=0,1",
                         f"results_dir={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / 'sweep2'}")
    said = out + err + caplog.text
    assert code == 0 and said.count("skip: a record for this config and seed exists") == 4, said[-2000:]


def test_parallel_launcher_writes_separate_records(tmp_path):
    r = qexp("run", "-m", "hydra/launcher=local_parallel", *SMOKE, "+recipe=w8a8_ptq", "seed=0,1",
             f"results_dir={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert sorted(x["seed"] for x in recs) == [0, 1]


def test_slurm_launcher_config_composes(capsys):
    code, out, err = cli(capsys, "run", "hydra/launcher=slurm", "--cfg", "hydra", "-p", "hydra.launcher")
    assert code == 0, err
    assert "submitit" in out and "gpus_per_node: 1" in out


def test_search_space_prints_the_paper_grids_as_sweeps():
    from qexp.config.search import sweep_commands

    qat = sweep_commands(["+recipe=qat_w8a8", "task=rte"])  # Table 10, RTE: LR {1,3,5}e-5, BS 8, E {3,6}, D {0,0.1}
    assert qat == [["run", "-m", "+recipe=qat_w8a8", "task=rte", "recipe.qat.learning_rate=1e-05,3e-05,5e-05",
                    "recipe.qat.batch_size=8", "recipe.qat.epochs=3,6", "recipe.qat.attn_dropout=0.0,0.1"]]
    est = sweep_commands(["+recipe=estimator_search", "task=mrpc", "seed=0,1,2,3,4", "calibration.batch_size=4"])
    assert len(est) == 2 and all(c[:6] == ["run", "-m", "+recipe=estimator_search", "task=mrpc", "seed=0,1,2,3,4",
                                           "calibration.batch_size=4"] for c in est)
    assert "calibration.activations.name=running_minmax,mse" in est[0] and "calibration.num_batches=1,4,16" in est[0]
    assert "calibration.activations.name=current_minmax" in est[1] and "calibration.num_batches=1" in est[1]
    assert not any(a.startswith("calibration.batch_size=1") for c in est for a in c)  # the user's value wins


@pytest.mark.parametrize("args,message", [
    (["+recipe=w8a8_ptq", "task=rte"], "recipe 'w8a8_ptq' defines no search space"),
    (["+recipe=qat_w8a8", "task=rte,mrpc"], "search-space takes one task"),
    (["+recipe=qat_w8a8"], "no search space for task 'text_outliers'; it has one for: cola"),
    (["+recipe=w9a9", "task=rte"], "unknown recipe 'w9a9' valid: bq23"),
])
def test_search_space_errors_are_clear(capsys, args, message):
    code, _, err = cli(capsys, "search-space", *args)
    assert code != 0 and message in err


def test_search_space_run_executes_and_resumes(tmp_path, capsys, monkeypatch):
    """--run starts one ``python -m qexp.cli run -m ...`` per grid (here run in this process: six interpreter
    start-ups were 20 s of CI) and a second --run resumes: no new record."""
    import subprocess

    from qexp.cli import main

    children = []

    def call(argv):
        assert argv[:3] == [sys.executable, "-m", "qexp.cli"] and argv[3:5] == ["run", "-m"], argv
        children.append(argv)
        try:
            main(argv[3:])
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 1
        return 0

    monkeypatch.setattr(subprocess, "call", call)
    args = ["search-space", "--run", "+recipe=estimator_search", *SMOKE, "task=text_outliers",
            "calibration.batch_size=1", "calibration.num_batches=1", "calibration.weights.name=current_minmax",
            "calibration.activations.name=running_minmax,current_minmax", f"results_dir={tmp_path}"]
    code, out, err = cli(capsys, *args)
    assert code == 0, err[-2000:]
    assert len(children) == 2 and out.count("qexp run -m") == 2   # both grids, printed and run
    assert len(list(tmp_path.glob("*.json"))) == 2  # both grids, their axes pinned by the user: one run each
    code, out, err = cli(capsys, *args)
    assert code == 0 and len(list(tmp_path.glob("*.json"))) == 2 and "skip" in (out + err).lower()


def test_a_sweep_runs_every_valid_job_and_reports_the_failed_ones(tmp_path, capsys):
    """Issue 14 #7: one invalid job (bits=0) neither stops the sweep nor loses the valid job's record."""
    from .helpers import cli

    code, out, err = cli(capsys, "run", "-m", *SMOKE, "+recipe=w8a8_ptq", "recipe.quant.weights.bits=0,8",
                         f"results_dir={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert code != 0
    assert "1 job(s) of the sweep failed" in err and "recipe.quant.weights.bits=0" in err and "bit-width 0" in err
    recs = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert [r["config"]["recipe"]["quant"]["weights"]["bits"] for r in recs] == [8]
    (failed,) = (tmp_path / "runs" / "failed").glob("*.json")
    assert "bit-width 0" in json.loads(failed.read_text())["error"]


def test_a_recipe_sweep_takes_single_valued_recipe_overrides(tmp_path, capsys):
    """`-m +recipe=a,b recipe.k=v`: Hydra composes the sweep's base config without the swept recipe, where a plain
    `recipe.k=v` failed ("Key 'recipe' is not in struct") before any job ran; each job now gets the value."""
    code, out, err = cli(capsys, "run", "-m", *SMOKE, "+recipe=w8a8_ptq,w32a8_ptq", "recipe.quant.activations.bits=6",
                         f"results_dir={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert code == 0, err[-2000:]
    recs = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert sorted((r["recipe"], r["config"]["recipe"]["quant"]["activations"]["bits"]) for r in recs) == \
        [("w32a8_ptq", 6), ("w8a8_ptq", 6)]
    assert all("recipe.quant.activations.bits=6" in r["overrides"] for r in recs)   # as typed, not choice(6)


def test_sweep_safe_rewrites_only_what_the_base_config_cannot_take():
    from qexp.config.compose import sweep_safe

    args = ["-m", "+recipe=a,b", "recipe.bcq.bits=2", "recipe.q=[1,2]", "recipe.w=2,3", "recipe.x=null",
            "recipe.y=${oc.env:HOME}", "~recipe.z", "model.k=3", "seed=0,1", "+recipe.new=5"]
    assert sweep_safe(args) == ["-m", "+recipe=a,b", "recipe.bcq.bits=choice(2)", "recipe.q=choice([1,2])",
                                "recipe.w=2,3", "recipe.x=null", "recipe.y=${oc.env:HOME}", "~recipe.z", "model.k=3",
                                "seed=0,1", "+recipe.new=choice(5)"]
    assert sweep_safe(["-m", "+recipe=a", "recipe.bcq.bits=2", "seed=0,1"]) == \
        ["-m", "+recipe=a", "recipe.bcq.bits=2", "seed=0,1"]   # no group swept: nothing to protect
