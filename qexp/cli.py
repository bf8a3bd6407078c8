"""The ``qexp`` command: ``run`` (the Hydra app), ``ls``, ``tables`` and ``bench``.

The configs live in the checkout's ``conf/`` (qexp is installed from its repository with ``pip install -e .``, so
results, caches and configs sit side by side); ``QEXP_CONF=/dir`` points at another config tree.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HELP = """usage: qexp <command> [args]

commands:
  run [overrides]        run one experiment (Hydra app; -m for a sweep, --help / --info for Hydra's help)
  ls <what> [overrides]  list models | tasks | recipes | calibrations | estimators | granularities | metrics |
                         kinds | families | backends,
                         or `ls sites [model=...] [+recipe=...] [task=...]` for a model's quantization sites
  search-space [--run] [overrides]
                         print (or --run) the Hydra sweeps of a recipe's paper search space: the Table 9
                         estimator search (+recipe=estimator_search) or a QAT recipe's Tables 10/11 grid
  analyze outliers [--layers 10,11] [--sequences 10] [--top 5] [--out DIR] [overrides]
                         Figure 2 of Bondarenko et al. 2021 for any model/task: per-token FFN input/output
                         ranges and the >6-std outlier map per layer (PNG), top outlier dimensions (CSV)
  tables [--runs DIR] [--out DIR] [--show NAME]
                         rebuild every paper table as CSV (+ Markdown) from the run records
  bench gemm [--shapes g8|extra|all|ffn|small] [--impl NAME] [--device auto|cuda|cpu]
                         INT8 GEMM throughput (ZeroQuant Table G.8 layout): FP16 cuBLAS, INT8 cuBLASLt, our
                         CuPy kernels; on the CPU FP32 vs oneDNN INT8 (cpu_int8); writes results/bench/
                         (`make tables` -> zeroquant_tableG8.csv)
  bench layer [--bsz 64] [--seq 128] [--device cuda|cpu] [--backend cupy_int8|cpu_int8|torch_int]
                         BERT-base encoder-layer latency, float vs ZeroQuant W8A8 on an integer backend
  bench pretrain [--model bert_cpu|opt_cpu] [--batch 16] [--seq 128] [--threads N]
                         training-step time of clipped softmax / gated attention vs vanilla, side by side
  bench ddp [--procs 2] [--model opt_cpu] [--batch 16] [--rounds 3]
                         training-step time of 1 process x 1 thread, 1 x N threads, N processes x 1 (torchrun), side by side
  bench qpt [--recipe qpt_w8a8 ...] [--model gpt2_cpu] [--threads N]
                         training-step time of quantized pre-training recipes vs the FP step, side by side
  bench fakequant [--model minilm_l6] [--recipe w8a8_ptq] [--threads N]
                         W8A8 fake-quantized forward vs the FP32 forward (ratio), one quantizer vs torch's fused op
  bench eval [--backend cpu_int8 ...] [--repeats 2] [--threads N] OVERRIDES
                         one experiment's evaluation (same load and calibration as `qexp run OVERRIDES`) timed
                         in FP32 and on each inference backend, interleaved in one process; scores compared
  bench memory [--model gpt2_cpu] [--batch 16] [--seq 128] [--device cpu|cuda]
                         training memory by component, measured vs analytic; the GPT-2 grid of Figures 14/15

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
    from .config.compose import ConfigTreeError, conf_dir as find

    try:
        return find()
    except ConfigTreeError as e:
        fail(str(e))


def execute(cfg, overrides: list[str]) -> dict:
    """One ``qexp run`` job on a composed config; a user error exits with ``qexp: error: ...`` and no traceback."""
    from .experiment.pipeline import run  # torch and transformers load only when something runs

    try:
        return run(cfg, overrides)
    except _user_errors() as e:
        raise UserError(str(e)) from None


class UserError(SystemExit):
    """Bad input found by a run: one line, exit status 2 (a sweep records it as that job's failure instead)."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message


def _run(argv: list[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
    def app(cfg: DictConfig) -> None:
        hc = HydraConfig.get()
        overrides = list(hc.overrides.task)
        if hc.mode != RunMode.MULTIRUN:
            try:
                execute(cfg, overrides)
            except UserError as e:
                print(f"qexp: error: {e.message}", file=sys.stderr)
                raise
            return
        try:   # a sweep runs every valid job: a failed one is recorded and the sweep goes on (issue 14 #7)
            execute(cfg, overrides)
        except UserError as e:
            _record_failure(cfg, overrides, e.message)
        except SystemExit as e:
            _record_failure(cfg, overrides, str(e.code).removeprefix("qexp: error: "))
        except Exception as e:  # noqa: BLE001 - anything else a job raises is that job's failure, not the sweep's
            _record_failure(cfg, overrides, f"{type(e).__name__}: {e}")

    from .config.compose import (UnknownKeyError, check_added_keys, check_group_choices, sweep_safe,
                                 with_default_calibration)

    try:
        check_group_choices([a for a in argv if not a.startswith("-")])
        check_added_keys([a for a in argv if a.startswith("+")])
        argv = with_default_calibration(argv)
    except UnknownKeyError as e:
        fail(str(e))
    if "-m" in argv or "--multirun" in argv:
        argv = sweep_safe(argv)
    sys.argv = [f"{Path(sys.argv[0]).name} run", *argv]
    import tempfile

    with tempfile.TemporaryDirectory(prefix="qexp-sweep-") as failures:
        os.environ["QEXP_SWEEP_FAILURES"] = failures   # shared with the launcher's worker processes
        try:
            app()
        finally:
            os.environ.pop("QEXP_SWEEP_FAILURES", None)
        failed = [json.loads(p.read_text()) for p in sorted(Path(failures).glob("*.json"))]
    if failed:
        lines = [f"  {' '.join(f['overrides'])}: {f['error']}" for f in failed]
        sys.exit(f"qexp: error: {len(failed)} job(s) of the sweep failed (the others ran; each failure is recorded "
                 f"in <results_dir>/failed/):\n" + "\n".join(lines))


def _record_failure(cfg, overrides: list[str], error: str) -> None:
    """One failed sweep job: a JSON file (config overrides, error, time) in ``<results_dir>/failed/`` and in the
    sweep's summary folder; the message goes to stderr at once."""
    import hashlib
    import time

    print(f"qexp: error in sweep job [{' '.join(overrides)}]: {error}", file=sys.stderr, flush=True)
    entry = {"overrides": overrides, "error": error, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    name = hashlib.sha1(" ".join(overrides).encode()).hexdigest()[:12] + ".json"
    targets = [Path(os.environ["QEXP_SWEEP_FAILURES"])] if os.environ.get("QEXP_SWEEP_FAILURES") else []
    if cfg.get("results_dir"):
        targets.append(Path(str(cfg.results_dir)) / "failed")
    for folder in targets:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(json.dumps(entry, indent=1))
        except OSError:
            pass   # an unwritable results_dir is itself the failure; the summary folder still has it


def compose(overrides: list[str]):
    from .config.compose import compose as hcompose

    conf_dir()  # a missing config tree exits with its message
    return hcompose(overrides)


def _ls(argv: list[str]) -> None:
    what = argv[0] if argv else ""
    groups = {"models": "model", "tasks": "task", "recipes": "recipe", "calibrations": "calibration"}
    if what in groups:
        from .config.compose import group_options

        for name in group_options(groups[what]):
            first = (conf_dir() / groups[what] / f"{name}.yaml").read_text().splitlines()[0]
            print(f"{name:20s} {first.lstrip('# ') if first.startswith('#') else ''}")
    elif what == "estimators":
        from .quant.estimators import ESTIMATORS

        print("\n".join(ESTIMATORS.names()))
    elif what == "granularities":
        from .quant.granularity import GRANULARITIES

        print("\n".join(GRANULARITIES.names()))
    elif what == "metrics":
        from .tasks.metrics import METRICS

        print("\n".join(METRICS.names()))
    elif what == "kinds":
        from .kinds.base import load_kinds

        for name, cls in load_kinds().items():
            print(f"{name:20s} {(cls.__doc__ or sys.modules[cls.__module__].__doc__ or '').strip().splitlines()[0]}")
    elif what == "families":
        from .models.families import FAMILIES

        for name, fam in FAMILIES.items():
            print(f"{name:20s} {fam.description}")
    elif what == "backends":
        from .integer.backends import BACKENDS

        print("\n".join(BACKENDS.names()))
    elif what == "sites":
        _ls_sites(argv[1:])
    else:
        valid = [*groups, "estimators", "granularities", "metrics", "kinds", "families", "backends", "sites"]
        sys.exit(f"qexp: error: unknown listing {what!r}; valid: {', '.join(valid)}")


def _ls_sites(overrides: list[str]) -> None:
    from omegaconf import OmegaConf

    from .config.quant import FP32, quant_config
    from .models.families import family_of
    from .models.loading import load_model
    from .quant.sites import GROUPS, configure, quantizers

    cfg = compose(overrides)
    family = family_of(cfg.model)
    labels = int(cfg.task.num_labels) if cfg.task.get("num_labels") and not family.causal else None
    model = family.wrap(load_model(cfg.model, num_labels=labels).model)
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


def _search_space(argv: list[str]) -> None:
    import shlex
    import subprocess

    from hydra.errors import HydraException

    run_them = "--run" in argv
    overrides = [a for a in argv if a != "--run"]
    from .config.search import sweep_commands

    try:
        cmds = sweep_commands(overrides)
    except (*_user_errors(), HydraException) as e:
        fail(str(e))
    for cmd in cmds:
        line = shlex.join(["qexp", *cmd])
        print(line, flush=True)
        if run_them:
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

    from .report.outliers import analyze, summary

    try:
        cfg = compose(overrides)
        out = Path(a.out or Path("results/analysis/outliers") / f"{cfg.model.name}__{cfg.task.name}")
        rep = analyze(cfg, layers, a.sequences, a.top, out)
    except (*_user_errors(), HydraException) as e:
        fail(str(e))
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
    from .report.tables import TablesError

    try:
        written = build_all(Path(a.runs), Path(a.out))
    except TablesError as e:
        fail(str(e))
    for name, path in written.items():
        print(f"wrote {path}")
    if a.show:
        md = Path(a.out) / f"{a.show}.md"
        if not md.exists():
            sys.exit(f"qexp: error: no table {a.show!r}; valid: {', '.join(sorted(p.stem for p in Path(a.out).glob('*.md')))}")
        print(md.read_text())


def fail(message: str, code: int = 2) -> None:
    """Bad input: one line on stderr naming the value, exit status 2 (argparse's convention), no traceback."""
    print(f"qexp: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _user_errors():
    from omegaconf.errors import OmegaConfBaseException

    from .common.hub import HubUnavailableError
    from .models.loading import ModelLoadError
    from .quant.affine import BitWidthError
    from .quant.estimators import CalibrationError
    from .quant.granularity import GranularityError
    from .quant.sites import SiteError
    from .common.registry import UnknownChoiceError
    from .tasks.glue import DataError

    return (HubUnavailableError, ModelLoadError, BitWidthError, CalibrationError, GranularityError, SiteError,
            UnknownChoiceError, DataError, FloatingPointError, OmegaConfBaseException, ValueError)


class _ReaderMayLeave:
    """``sys.stdout`` for commands that keep working after printing (issue 27 #16): ``qexp run ... | head -1`` killed
    the run with a BrokenPipeError from the Trainer's log print and wrote no record.  When the reader leaves, later
    output goes to /dev/null and the run finishes; everything else is the real stream's."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()

    def _gone(self):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> None:
    try:
        _main(argv)
    except BrokenPipeError:   # `qexp ls recipes | head`: the reader left; not an error (Python's documented recipe)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
    except KeyboardInterrupt:   # Ctrl-C: one line and the shell's status 130, not a 90-line traceback (issue 27 #16)
        print("qexp: interrupted (nothing half-written is left: records and checkpoints are atomic; rerun the same "
              "command to resume)", file=sys.stderr)
        raise SystemExit(130) from None


def _main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(HELP)
        return
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        from .common.provenance import git_state

        git_state()   # the commit this process runs, read before any job of a sweep starts
        if not isinstance(sys.stdout, _ReaderMayLeave):
            sys.stdout = _ReaderMayLeave(sys.stdout)
        _run(rest)
    elif cmd == "ls":
        if rest[:1] == ["sites"]:
            try:
                _ls_sites(rest[1:])
            except _user_errors() as e:
                fail(str(e))
        else:
            _ls(rest)
    elif cmd == "analyze":
        _analyze(rest)
    elif cmd == "search-space":
        _search_space(rest)
    elif cmd == "tables":
        _tables(rest)
    elif cmd == "bench":
        from .bench.cli import BenchError, main as bench_main
        from .integer.kernels import KernelError

        try:
            bench_main(rest)
        except (BenchError, KernelError, *_user_errors()) as e:   # IntegerBackendError and BenchEvalError: ValueErrors
            fail(str(e))
    else:
        sys.exit(f"qexp: error: unknown command {cmd!r}; valid: run, ls, search-space, analyze, tables, bench "
                 f"(qexp --help)")


if __name__ == "__main__":
    main()
