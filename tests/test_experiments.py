"""Issue 32 #3: each paper's campaign is an experiment config (conf/experiment/<paper>/<name>.yaml, the sweep in
``hydra.sweeper.params``).  Every job of every experiment composes; the experiments reproduce the run ids of the
committed campaign records (so a rerun skips them); the Makefile names only experiments that exist."""
import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from qexp.cli import compose
from qexp.experiment import records
from qexp.experiment.pipeline import prepare

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "conf" / "experiment"
EXPERIMENTS = sorted(str(p.relative_to(ROOT).with_suffix("")) for p in ROOT.rglob("*.yaml"))


def values(spec, key: str = "x") -> list[str]:
    """The values a sweep spec expands to, by Hydra's own override parser (ranges, and dict values such as
    ``{gamma:0.0,zeta:1.003},{...}`` whose commas are not separators)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    o = OverridesParser.create().parse_overrides([f"{key}={spec}"])[0]
    return list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]


def params(name: str) -> dict:
    return yaml.safe_load((ROOT / f"{name}.yaml").read_text())["hydra"]["sweeper"]["params"]


def first_job(name: str) -> list[str]:
    return [f"{k}={values(spec, k)[0]}" for k, spec in params(name).items()]


def run_path(overrides: list[str]) -> Path:
    cfg = prepare(compose(overrides), REPO)
    return records.record_path(Path(cfg.results_dir), OmegaConf.to_container(cfg, resolve=True))


def test_there_are_experiments_for_every_paper():
    papers = {e.split("/")[0] for e in EXPERIMENTS}
    assert papers == {"bondarenko2021", "bondarenko2023", "chitsaz2024", "kwon2021", "zeroquant"}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_sweeps_only_existing_choices(name):
    """Its first job composes (every key it sets exists); every value of a swept group is a config file of that group
    (each recipe, task and model is composed by tests/test_recipes.py and the kind tests; composing the whole product
    here would cost CI minutes)."""
    text = (ROOT / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n") and f"+experiment={name}" in text   # says how to run it
    cfg = compose([f"+experiment={name}", *first_job(name)])
    assert cfg.task.name and cfg.model.name and (cfg.get("recipe") is None or cfg.recipe.name)
    for key, spec in params(name).items():
        if key.lstrip("+") in ("recipe", "task", "model", "model/attention"):
            group = REPO / "conf" / key.lstrip("+")
            missing = [v for v in values(spec, key) if not (group / f"{v}.yaml").is_file()]
            assert not missing, f"{name}: {key} sweeps {missing}, which {group.relative_to(REPO)} lacks"


# (experiment, one of its jobs) -> the committed record that job is: the campaigns the shell drivers ran
COMMITTED = [
    ("bondarenko2021/table1", ["+recipe=w8a8_ptq", "task=rte", "seed=0"]),
    ("bondarenko2021/loo", ["+recipe=loo_softmax_input", "task=rte", "seed=3"]),
    ("bondarenko2021/mp_peg", ["+recipe=peg_k3p_ffn", "task=rte", "seed=3"]),
    ("bondarenko2021/low_bit", ["+recipe=w8a32_emb2_ptq", "task=rte", "seed=3"]),
    ("zeroquant/glue", ["+recipe=zq_w8a8_tq", "task=rte", "seed=3"]),
    ("zeroquant/rte_backends", ["+recipe=zq_w8a8", "inference.backend=cpu_int8", "seed=0"]),
    ("zeroquant/smollm2", ["+recipe=zq_w48a8", "recipe.groups=64"]),
    ("zeroquant/smollm2_ptq", ["+recipe=zq_ptq_w8a8_asym"]),
    ("zeroquant/smollm2_lkd", ["+recipe=zq_lkd_w48a8", "recipe.groups=64", "recipe.lkd.steps=10",
                               "recipe.lkd.batch_size=4"]),
    ("zeroquant/smollm2_backends", ["+recipe=zq_w8a8", "recipe.groups=64", "inference.backend=torch_int",
                                    "task.limit.windows=8"]),
    ("bondarenko2023/table2_clm", ["model/attention=gated_linear", "seed=0"]),
    ("bondarenko2023/table2_mlm_w8a8", ["model/attention=clipped", "+recipe=bq23_w8a8", "seed=1", "calibration.seed=2"]),
    ("bondarenko2023/table10_mlm", ["model/attention=vanilla", "+recipe=bq23_w6a8", "seed=0"]),
    ("chitsaz2024/cpu", ["+recipe=qpt_w8a8", "seed=0"]),
    ("kwon2021/minilm_basic", ["+recipe=pwq_greedy", "task=mrpc", "recipe.quant.weights.bits=3"]),
    ("kwon2021/minilm_manual", ["+recipe=pwq_manual", "task=rte", "recipe.bcq.set=16", "recipe.quant.weights.bits=2"]),
    ("kwon2021/minilm_schemes", ["+recipe=pwq_uniform_mse", "task=mrpc", "recipe.bcq.search.mode=model",
                                 "recipe.bcq.search.trials=30", "recipe.bcq.search.objective=metric"]),
    ("kwon2021/gpt2cpu_fp32", ["+recipe=fp32"]),
    ("kwon2021/gpt2cpu_bo", ["+recipe=pwq_bo_layer", "recipe.quant.weights.bits=2"]),
    ("kwon2021/smollm2_manual", ["+recipe=pwq_manual", "recipe.bcq.set=16", "recipe.quant.weights.bits=3",
                                "recipe.train_objective.samples=16", "recipe.bcq.search.samples=16"]),
]


@pytest.mark.parametrize("name, job", COMMITTED, ids=[c[0] for c in COMMITTED])
def test_an_experiment_job_is_the_committed_record_of_that_campaign(name, job):
    path = run_path([f"+experiment={name}", *job])
    assert path.exists(), f"{name} {job} -> {path.name}: no such committed record (the experiment changed the config)"


def test_the_makefile_and_docs_name_only_existing_experiments_and_no_shell_driver():
    texts = {p: p.read_text() for p in [REPO / "Makefile", REPO / "README.md", *(REPO / "docs").glob("*.md")]}
    named, globs = set(), set()
    for p, text in texts.items():
        for name, star in re.findall(r"\+experiment=([\w/]+)(\*?)", text):
            if name != name.upper():   # NAME: a placeholder
                (globs if star else named).add(name)
        named |= {n for n in re.findall(r"\b((?:bondarenko2021|bondarenko2023|chitsaz2024|kwon2021|zeroquant)/\w+)\b", text)
                  if p.name == "Makefile"}
        assert not re.findall(r"scripts/\w+\.sh", text), f"{p.name} names a shell driver"
    assert named and named <= set(EXPERIMENTS), sorted(named - set(EXPERIMENTS))
    assert all(any(e.startswith(g) for e in EXPERIMENTS) for g in globs), globs
    assert not list((REPO / "scripts").glob("*.sh"))


@pytest.mark.parametrize("name", ["bondarenko2023/table1_mlm", "bondarenko2023/table1_mlm_w8a8"])
def test_table1_experiment_runs_the_papers_gamma_zeta_rows(name):
    """The (gamma, zeta) values are swept as pairs (dict values merged into model/attention=clipped), not as a product:
    the jobs are exactly the paper's Table 1 rows but (0, 1), which is vanilla softmax (bondarenko2023/table2_mlm)."""
    import pandas as pd

    from qexp.report.bondarenko2023 import REFERENCE

    paper = {(round(g, 6), round(z, 6)) for g, z in
             pd.read_csv(REFERENCE / "bondarenko2023_table1.csv")[["gamma", "zeta"]].itertuples(index=False)}
    got = set()
    for pair in values(params(name)["model.attention"], "model.attention"):
        att = compose([f"+experiment={name}", "seed=0", f"model.attention={pair}"]).model.attention
        assert att.softmax == "clipped" and att.gate == "none"
        got.add((round(float(att.gamma), 6), round(float(att.zeta), 6)))
    assert got == paper - {(0.0, 1.0)}
