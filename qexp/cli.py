"""The ``qexp`` command: ``run`` (the Hydra app), ``ls``, ``tables`` and ``bench``.

The configs live in the checkout's ``conf/`` (qexp is installed from its repository with ``pip install -e .``, so
results, caches and configs sit side by side); ``QEXP_CONF=/dir`` points at another config tree.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

HELP = """usage: qexp <command> [args]

commands:
  run [overrides]        run one experiment (Hydra app; -m for a sweep, --help / --info for Hydra's help)
  ls <what> [overrides]  list models | tasks | recipes | calibrations | estimators | granularities | metrics,
                         or `ls sites [model=...] [+recipe=...] [task=...]` for a model's quantization sites
  search-space [--run] [overrides]
                         print (or --run) the Hydra sweeps of a recipe's paper search space: the Table 9
                         estimator search (+recipe=estimator_search) or a QAT recipe's Tables 10/11 grid
  analyze outliers [--layers 10,11] [--sequences 10] [--top 5] [--out DIR] [overrides]
                         Figure 2 of Bondarenko et al. 2021 for any model/task: per-token FFN input/output
                         ranges and the >6-std outlier map per layer (PNG), top outlier dimensions (CSV)
  tables [--runs DIR] [--out DIR] [--show NAME]
                         rebuild every paper table as CSV (+ Markdown) from the run records
  bench gemm [--shapes g8|extra|all|small] [--impl NAME] [--device auto|cuda|cpu]
                         INT8 GEMM throughput (ZeroQuant Table G.8 layout): FP16 cuBLAS, INT8 cuBLASLt, our
                         CuPy kernels; writes results/bench/ (`make tables` -> zeroquant_tableG8.csv)
  bench layer [--bsz 64] [--seq 128]
                         BERT-base encoder-layer latency, FP16 vs ZeroQuant W8A8 on inference.backend=cupy_int8

examples:
  qexp run                                          # label-free default: real MiniLM-L6, FP32
  qexp run +recipe=w8a8_ptq                         # ... W8A8 PTQ: relative errors and outlier statistics
  qexp run +recipe=w8a8_ptq task=rte model=minilm_l6 task.data_dir=../shared/data/glue/RTE
  qexp run -m +recipe=fp32,w8a8_ptq,w32a8_ptq,w8a32_ptq task=rte seed=0,1,2 task.data_dir=...
  qexp run -m hydra/launcher=local_parallel seed=0,1,2 +recipe=w8a8_ptq
  qexp run +recipe=w8a8_ptq task=rte --info defaults   # show the config merge order
  qexp ls sites model=bert_base
  qexp search-space +recipe=qat_w8a8 task=rte       # the paper's QAT grid for RTE as `qexp run -m` lines
  qexp search-space --run +recipe=estimator_search task=rte model=minilm_l6 seed=0,1,2,3,4 task.data_dir=...
  qexp analyze outliers model=minilm_l6 task=rte task.data_dir=../shared/data/glue/RTE --layers 4,5
  qexp tables
  qexp run +recipe=zq_w8a8 model=gpt2 task=wikitext2 device=cuda inference.backend=cupy_int8   # real INT8 GEMMs
  qexp bench gemm && qexp bench layer && qexp tables
"""


def conf_dir() -> Path:
    d = Path(os.environ.get("QEXP_CONF") or Path(__file__).resolve().parents[1] / "conf")
    if not (d / "config.yaml").exists():
        sys.exit(f"qexp: error: no config tree at {d} (qexp runs from its repository checkout: pip install -e .; "
                 f"or set QEXP_CONF=/path/to/conf)")
    return d


def _run(argv: list[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from .runner import run

    @hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
    def app(cfg: DictConfig) -> None:
        overrides = list(HydraConfig.get().overrides.task)
        try:
            run(cfg, overrides)
        except _user_errors() as e:
            raise SystemExit(f"qexp: error: {e}") from None

    sys.argv = [f"{Path(sys.argv[0]).name} run", *argv]
    app()


def compose(overrides: list[str]):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
        return hcompose("config", overrides=overrides)


def _group_options(group: str) -> list[str]:
    root = conf_dir() / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml") if not p.stem.startswith("_"))


def _ls(argv: list[str]) -> None:
    what = argv[0] if argv else ""
    groups = {"models": "model", "tasks": "task", "recipes": "recipe", "calibrations": "calibration"}
    if what in groups:
        for name in _group_options(groups[what]):
            first = (conf_dir() / groups[what] / f"{name}.yaml").read_text().splitlines()[0]
            print(f"{name:20s} {first.lstrip('# ') if first.startswith('#') else ''}")
    elif what == "estimators":
        from .quant.estimators import ESTIMATORS

        print("\n".join(ESTIMATORS.names()))
    elif what == "granularities":
        from .quant.granularity import GRANULARITIES

        print("\n".join(sorted(GRANULARITIES)))
    elif what == "metrics":
        from .tasks.metrics import METRICS

        print("\n".join(METRICS.names()))
    elif what == "sites":
        _ls_sites(argv[1:])
    else:
        sys.exit(f"qexp: error: unknown listing {what!r}; valid: {', '.join([*groups, 'estimators', 'granularities', 'metrics', 'sites'])}")


def _ls_sites(overrides: list[str]) -> None:
    from omegaconf import OmegaConf

    from .models.loading import load_model
    from .models.quantizable import quantizable
    from .quant.sites import GROUPS, configure, quantizers
    from .runner import FP32, quant_config

    cfg = compose(overrides)
    family = cfg.model.get("family", "bert")
    labels = int(cfg.task.num_labels) if cfg.task.kind == "glue" and family == "bert" else None
    model = quantizable(load_model(cfg.model, num_labels=labels).model, family)
    recipe = OmegaConf.to_container(cfg.recipe, resolve=True) if cfg.get("recipe") else FP32
    specs = configure(model, quant_config(recipe, cfg.calibration))
    for group in GROUPS:
        qs = list(quantizers(model, group=group))
        if not qs:
            continue
        print(f"# {len(qs)} {group} sites ({sum(specs[q.name].enabled for q in qs)} quantized by recipe "
              f"{recipe['name']})")
        for q in qs:
            print(f"{q.name:48s} {specs[q.name].describe()}")


def search_grids(cfg) -> list[dict[str, list]]:
    """A recipe's paper search space as Hydra sweep grids (override key -> values), for the composed task."""
    from omegaconf import OmegaConf

    recipe = cfg.get("recipe")
    if recipe is None:
        raise ValueError("search-space needs a recipe (+recipe=estimator_search, +recipe=qat_w8a8, ...)")
    if recipe.get("search_grids"):
        return [dict(g) for g in OmegaConf.to_container(recipe.search_grids, resolve=True)]
    qat = recipe.get("qat")
    if qat is not None and qat.get("search"):
        grid = qat.search.get(cfg.task.name)
        if grid is None:
            raise ValueError(f"recipe {recipe.name!r} has no search space for task {cfg.task.name!r}; it has one for: "
                             f"{', '.join(qat.search)}")
        return [{f"recipe.qat.{k}": list(v) for k, v in OmegaConf.to_container(grid, resolve=True).items()}]
    raise ValueError(f"recipe {recipe.name!r} defines no search space (recipes with one: estimator_search, qat_*)")


def sweep_commands(overrides: list[str]) -> list[list[str]]:
    """``qexp run -m`` argument lists, one per grid; the user's overrides win over the grid's keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    single = []  # compose with the first value of any sweep the user gave (e.g. seed=0,1,2); the grid is per task
    for text, o in zip(overrides, OverridesParser.create().parse_overrides(overrides)):
        if o.is_sweep_override():
            if o.key_or_group == "task":
                raise ValueError(f"search-space takes one task (its grid is per task), got {text!r}")
            text = f"{text.split('=', 1)[0]}={next(iter(o.sweep_string_iterator()))}"
        single.append(text)
    grids = search_grids(compose(single))
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}

    def fmt(v) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)

    return [["run", "-m", *overrides, *(f"{k}={','.join(fmt(v) for v in vs)}" for k, vs in g.items() if k not in given)]
            for g in grids]


def _search_space(argv: list[str]) -> None:
    import shlex
    import subprocess

    from hydra.errors import HydraException

    execute = "--run" in argv
    overrides = [a for a in argv if a != "--run"]
    try:
        cmds = sweep_commands(overrides)
    except (*_user_errors(), HydraException) as e:
        sys.exit(f"qexp: error: {e}")
    for cmd in cmds:
        line = shlex.join(["qexp", *cmd])
        print(line, flush=True)
        if execute:
            rc = subprocess.call([sys.executable, "-m", "qexp.cli", *cmd])
            if rc:
                sys.exit(f"qexp: error: sweep failed (exit {rc}): {line}; re-run to resume (finished runs are skipped)")


def _analyze(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="qexp analyze outliers")
    ap.add_argument("what", choices=["outliers"])
    ap.add_argument("--layers", default=None, help="comma-separated layer indices (default: all)")
    ap.add_argument("--sequences", type=int, default=10, help="sequences in the outlier map (the paper: 10)")
    ap.add_argument("--top", type=int, default=5, help="outlier dimensions per layer and tensor in the CSV")
    ap.add_argument("--out", default=None, help="output folder (default results/analysis/outliers/<model>__<task>)")
    a, overrides = ap.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        ap.error(f"unknown option(s) {bad}; valid: --layers, --sequences, --top, --out, and Hydra overrides key=value")
    try:
        layers = None if a.layers is None else [int(v) for v in a.layers.split(",")]
    except ValueError:
        sys.exit(f"qexp: error: --layers={a.layers!r} must be comma-separated integers, e.g. --layers 10,11")
    if a.sequences < 1 or a.top < 1:
        sys.exit(f"qexp: error: --sequences ({a.sequences}) and --top ({a.top}) must be >= 1")
    from hydra.errors import HydraException

    from .outliers import analyze, summary

    try:
        cfg = compose(overrides)
        out = Path(a.out or Path("results/analysis/outliers") / f"{cfg.model.name}__{cfg.task.name}")
        rep = analyze(cfg, layers, a.sequences, a.top, out)
    except (*_user_errors(), HydraException) as e:
        sys.exit(f"qexp: error: {e}")
    print(f"# {rep['model']} on {rep['data']}; weights: {rep['weights']}")
    print("# top outlier dimensions (tokens beyond 6 std, max |x|):")
    print(summary(rep["dims"]))
    print(f"wrote {len(rep['files'])} files to {out}")


def _tables(argv: list[str]) -> None:
    import argparse

    from .report.tables import build_all

    ap = argparse.ArgumentParser(prog="qexp tables")
    ap.add_argument("--runs", default="results/runs")
    ap.add_argument("--out", default="results/tables")
    ap.add_argument("--show", default=None, help="print this table (by file stem) as Markdown")
    a = ap.parse_args(argv)
    written = build_all(Path(a.runs), Path(a.out))
    for name, path in written.items():
        print(f"wrote {path}")
    if a.show:
        md = Path(a.out) / f"{a.show}.md"
        if not md.exists():
            sys.exit(f"qexp: error: no table {a.show!r}; valid: {', '.join(sorted(p.stem for p in Path(a.out).glob('*.md')))}")
        print(md.read_text())


def _user_errors():
    from omegaconf.errors import OmegaConfBaseException

    from .hub import HubUnavailableError
    from .models.loading import ModelLoadError
    from .quant.affine import BitWidthError
    from .quant.estimators import CalibrationError
    from .quant.granularity import GranularityError
    from .quant.sites import SiteError
    from .registry import UnknownChoiceError
    from .tasks.glue import DataError

    return (HubUnavailableError, ModelLoadError, BitWidthError, CalibrationError, GranularityError, SiteError,
            UnknownChoiceError, DataError, FloatingPointError, OmegaConfBaseException, ValueError)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(HELP)
        return
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        _run(rest)
    elif cmd == "ls":
        if rest[:1] == ["sites"]:
            try:
                _ls_sites(rest[1:])
            except _user_errors() as e:
                sys.exit(f"qexp: error: {e}")
        else:
            _ls(rest)
    elif cmd == "analyze":
        _analyze(rest)
    elif cmd == "search-space":
        _search_space(rest)
    elif cmd == "tables":
        _tables(rest)
    elif cmd == "bench":
        from .bench import BenchError, main as bench_main
        from .kernels import KernelError

        try:
            bench_main(rest)
        except (BenchError, KernelError) as e:
            sys.exit(f"qexp: error: {e}")
    else:
        sys.exit(f"qexp: error: unknown command {cmd!r}; valid: run, ls, search-space, analyze, tables, bench "
                 f"(qexp --help)")


if __name__ == "__main__":
    main()
