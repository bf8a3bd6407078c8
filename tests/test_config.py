"""Config composition: the users' `+recipe=` spelling, merge order, and every config of every group."""
import functools
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException

from qexp.cli import compose, conf_dir

RECIPES = sorted(p.stem for p in (conf_dir() / "recipe").glob("*.yaml") if not p.stem.startswith("_"))  # "_" = shared partials
TASKS = sorted(p.stem for p in (conf_dir() / "task").glob("*.yaml") if not p.stem.startswith("_"))
MODELS = sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))


def test_users_spelling_composes_and_keeps_per_task_settings():
    cfg = compose(["+recipe=w8a8_ptq", "task=mnli"])
    assert cfg.recipe.name == "w8a8_ptq"
    assert cfg.task.name == "mnli"
    assert cfg.task.finetune.learning_rate == 2e-5 and cfg.task.finetune.batch_size == 16  # Table 8, not defaults
    assert [s.name for s in cfg.task.eval_splits] == ["matched", "mismatched"]
    rte = compose(["+recipe=w8a8_ptq", "task=rte"])
    assert rte.task.finetune.learning_rate == 3e-5 and rte.task.finetune.batch_size == 8


def test_info_defaults_puts_the_recipe_last():
    out = subprocess.run([sys.executable, "-m", "qexp.cli", "run", "+recipe=w8a8_ptq", "task=mnli", "--info",
                          "defaults"], capture_output=True, text=True, timeout=120, check=True).stdout
    rows = [line.strip("| ").split("|")[0].strip() for line in out.splitlines() if line.startswith("| ")]
    order = [r for r in rows if not r.startswith("hydra")]
    assert order.index("recipe/w8a8_ptq") > order.index("task/mnli") > order.index("model/minilm_l6")
    assert order.index("recipe/w8a8_ptq") > order.index("calibration/default")
    assert order[-1] == "recipe/w8a8_ptq"  # appended after the primary config: nothing can override it silently


@functools.lru_cache(maxsize=None)
def _plain(task):
    return compose([f"task={task}"])


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_with_every_task_kind(recipe):
    """A recipe lands under ``recipe`` (no ``@package`` directive can lift it to the top level) and its defaults list
    names only other recipe files (no ``/group`` entry, no ``override``), so it cannot rewrite task or calibration
    settings of any task; composed with a GLUE task and a pre-training task, the task and calibration stay what the
    task alone gives.  (Every recipe x one task of every kind was 870 compositions, a fifth of the suite's time, for a
    property the defaults list already decides.)"""
    import yaml

    text = (conf_dir() / "recipe" / f"{recipe}.yaml").read_text()
    assert "@package" not in text
    first = text.splitlines()[0]
    # the header names its paper table and row (or, for runs the paper shows only as a curve, its figure)
    assert first.startswith("# ") and ("Table" in first or "Figure" in first)
    for entry in (yaml.safe_load(text) or {}).get("defaults") or []:
        assert isinstance(entry, str) and "/" not in entry and "override" not in entry, entry
        assert entry == "_self_" or (conf_dir() / "recipe" / f"{entry}.yaml").is_file(), entry
    for task in ("rte", "pretrain_clm"):
        cfg = compose([f"+recipe={recipe}", f"task={task}"])
        assert cfg.recipe.name == recipe
        plain = _plain(task)
        assert cfg.task == plain.task and cfg.calibration == plain.calibration


@pytest.mark.parametrize("task", TASKS)
def test_every_task_composes_with_a_recipe(task):
    cfg = compose(["+recipe=w8a8_ptq", f"task={task}"])
    assert cfg.task == _plain(task).task and cfg.calibration == _plain(task).calibration


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config(model):
    cfg = compose([f"model={model}"])
    assert cfg.model.name == model and cfg.model.source in ("hub", "package", "random", "scratch")
    if cfg.model.source == "scratch":   # from-scratch models default to vanilla attention (model/attention=...)
        from qexp.models import scratch

        assert scratch.check_arch(cfg.model) in ("bert", "opt") and cfg.model.attention.name == "vanilla"


def test_unknown_group_options_list_the_choices():
    from qexp.config.compose import UnknownKeyError

    with pytest.raises(UnknownKeyError, match=r"unknown recipe 'w9a9' valid: .*fp32.*w8a8_ptq"):
        compose(["+recipe=w9a9"])
    with pytest.raises(UnknownKeyError, match=r"unknown model 'gpt5'; did you mean gpt2.* valid: .*minilm_l6"):
        compose(["model=gpt5"])


def _prepared(overrides):
    from qexp.experiment.pipeline import prepare

    return prepare(compose(overrides), Path.cwd(), overrides)


def test_smoke_debug_and_seed_override():
    cfg = _prepared(["debug=smoke", "seed=3", "task=rte"])
    assert cfg.seed == 3 and cfg.task.limit.train == 16 and cfg.calibration.num_batches == 1


@pytest.mark.parametrize("task, key, smoke_value, full_value", [
    ("rte", "finetune.max_steps", 2, -1),
    ("pretrain_clm", "train.max_steps", 4, 800),          # was 800 under the old debug=smoke
    ("pretrain_mlm_paper", "train.max_steps", 4, None),
    ("qpt_clm", "heldout_limit.windows", 2, None),
    ("continue_clm", "train.max_steps", 4, 240),
    ("wikitext2", "limit.windows", 2, None),
    ("zeroshot_local", "limit.docs", 4, None),
    ("text_outliers", "eval_windows", 4, 64),
])
def test_debug_smoke_is_each_kinds_own_and_leaves_no_trace_otherwise(task, key, smoke_value, full_value):
    """Issue 26 #3: debug=smoke takes the task's own smoke values (pre-training: a few steps, not 800) and writes no
    other kind's keys; without it the block leaves the config (so no run id or record carries it)."""
    from omegaconf import OmegaConf

    smoke = _prepared(["debug=smoke", f"task={task}"])
    assert OmegaConf.select(smoke, f"task.{key}") == smoke_value and "smoke" not in smoke.task
    plain = _prepared([f"task={task}"])
    assert "smoke" not in plain.task and "debug" not in plain
    if full_value is not None:
        assert OmegaConf.select(plain, f"task.{key}") == full_value
    if task != "rte":
        assert "finetune" not in smoke.task          # no GLUE key written into another kind's task
    if not task.startswith(("wikitext", "zeroshot", "rte")):
        assert "limit" not in smoke.task or task == "qpt_clm" and "windows" not in smoke.task.limit


def test_a_key_set_on_the_command_line_wins_over_the_smoke_value():
    cfg = _prepared(["debug=smoke", "task=pretrain_clm", "task.train.max_steps=6"])
    assert cfg.task.train.max_steps == 6 and cfg.task.train.eval_steps == 2   # the rest of the block still applies
    cfg = _prepared(["debug=smoke", "task=rte", "task.limit.train=19"])
    assert cfg.task.limit.train == 19 and cfg.task.limit.eval == 16


def test_launcher_configs_exist():
    for name in ("local_parallel", "slurm"):
        assert (Path(conf_dir()) / "hydra" / "launcher" / f"{name}.yaml").exists()


def test_no_recipe_is_the_fp32_recipe():
    from omegaconf import OmegaConf

    from qexp.config.quant import FP32

    assert OmegaConf.to_container(compose(["+recipe=fp32"]).recipe) == FP32


@pytest.mark.parametrize("task", TASKS)
def test_every_task_composes_with_its_default_calibration(task):
    """Its conf/calibration/per_task file where it has one (every GLUE task does: Table 9's winners), else
    calibration/default (issue 26 #3: a new task needs no calibration file)."""
    cfg = compose([f"task={task}"])
    own = (conf_dir() / "calibration" / "per_task" / f"{task}.yaml").exists()
    assert own or cfg.task.kind != "glue"
    if not own:
        default = compose([f"task={task}", "calibration=default"]).calibration
        assert OmegaConf.to_container(cfg.calibration) == OmegaConf.to_container(default)


def test_per_task_calibration_is_table9_and_the_command_line_wins():
    rte = compose(["task=rte", "+recipe=w8a8_ptq"]).calibration
    assert rte.weights.name == "mse" and rte.activations.name == "current_minmax" and rte.batch_size == 1
    sst2 = compose(["task=sst2"]).calibration
    assert (sst2.weights.name, sst2.activations.name, sst2.batch_size, sst2.num_batches) == \
        ("mse", "running_minmax", 4, 16)
    assert compose(["task=rte", "calibration=default"]).calibration.weights.name == "current_minmax"
    assert compose(["task=rte", "calibration.batch_size=4"]).calibration.batch_size == 4


def test_mp_and_peg_recipes_calibrate_as_section_5():
    """Issue 14 #12: Bondarenko et al. 2021 Sec. 5 sets activation ranges from the min and max of one input sequence,
    with the task's best weight estimator (Table 9); plain W8A8 PTQ keeps Table 9's activation setting."""
    from qexp.cli import compose
    from qexp.config.quant import effective_calibration

    recipes = ["mp_ptq_r16", "mp_ptq_r16_io16", "mp_ptq_r16_io16_out16", "peg_embd", "peg_embd_ffn", "peg_k3_ffn",
               "peg_k3p_ffn", "peg_k6_ffn", "peg_ptq"]
    for task, names in (("mrpc", recipes), ("sst2", ["peg_ptq"]), ("cola", ["mp_ptq_r16"])):
        table9 = compose([f"task={task}", "+recipe=w8a8_ptq"])
        plain = effective_calibration(table9)
        assert (plain.activations, plain.batch_size, plain.num_batches) == (
            table9.calibration.activations, table9.calibration.batch_size, table9.calibration.num_batches)
        assert (plain.batch_size, plain.num_batches) != (1, 1)   # these tasks' Table 9 setting is not Sec. 5's
        for recipe in names:
            cal = effective_calibration(compose([f"task={task}", f"+recipe={recipe}"]))
            assert (cal.activations.name, cal.batch_size, cal.num_batches) == ("current_minmax", 1, 1), recipe
            assert cal.weights == table9.calibration.weights, recipe


def test_a_parsed_config_file_follows_its_content(tmp_path):
    """compose parses each config file once per content version: an edit (new size, or same size and a new
    modification time) is read again, and a caller changing what it got never changes the cached copy."""
    import os

    from qexp.config.compose import read_yaml

    p = tmp_path / "a.yaml"
    p.write_text("x: 1\n")
    got = read_yaml(p)
    assert got == {"x": 1}
    got["x"] = 5
    assert read_yaml(p) == {"x": 1}
    p.write_text("x: 22\n")
    assert read_yaml(p) == {"x": 22}
    st = p.stat()
    p.write_text("x: 33\n")                      # same size
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert read_yaml(p) == {"x": 33}
