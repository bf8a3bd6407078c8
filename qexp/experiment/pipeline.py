"""``qexp run``: one experiment, the same pipeline for every task kind.

    validate (before anything loads) -> load (+ wrap, configure once; GLUE fine-tunes, cached) -> calibrate weights
    -> post-weight steps (AdaRound, LKD) -> calibrate activations -> QAT -> attach the inference backend
    -> evaluate -> one atomic record

What differs between kinds (data, model family, metrics) lives in :mod:`qexp.kinds`; this module knows none of them.
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..config.paths import absolute_paths
from ..config.quant import FP32
from ..kinds.base import RunContext, kind
from . import records
from .spec import NoOpRecipeError, RunSpec, backend_name  # noqa: F401  (NoOpRecipeError, backend_name: re-exported)
from .steps import check_group_size
from .summary import memory_footprint, relative_errors, site_summary
from .timer import Timer, pick_device

log = logging.getLogger("qexp")


class SeedError(ValueError):
    pass


def prepare(cfg: DictConfig, cwd: Path, overrides: list[str] | None = None) -> DictConfig:
    """No recipe means FP32; relative paths become absolute (they enter run ids and cache keys); an unknown top-level
    key (a ``+`` typo) is refused; ``debug=smoke`` takes the task's own smoke values (keys in ``overrides`` win)."""
    from ..config import smoke
    from ..config.compose import check_top_level

    check_top_level(cfg)
    smoke.apply(cfg, overrides)
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.get("seed"), bool):
        raise SeedError(f"seed={cfg.get('seed')!r} must be an integer (seeds name fine-tuning and calibration "
                        f"streams: seed=0, seed=0,1,2 in a sweep)")
    if cfg.get("recipe") is None:
        OmegaConf.set_struct(cfg, False)
        cfg.recipe = FP32
        OmegaConf.set_struct(cfg, True)
    absolute_paths(cfg, cwd)
    return cfg


from ..common.outdirs import OutputDirError, writable  # noqa: E402,F401  (re-exported: the run's checks)


def where(cwd: Path, cfg) -> None:
    """Say where this run writes: relative paths follow the directory the command started in, which outside the qexp
    checkout is a new results/ and cache/ tree (issue 14 #9: no longer silent)."""
    from ..common.provenance import REPO

    log.info("records -> %s ; cache -> %s", cfg.results_dir, cfg.cache_dir)
    try:
        inside = cwd.resolve().is_relative_to(Path(REPO).resolve())
    except OSError:
        inside = True
    if not inside and not Path(cfg.results_dir).resolve().is_relative_to(Path(REPO).resolve()):
        log.warning("running outside the qexp checkout (%s): records and caches go under %s, not %s/results; pass "
                    "results_dir=/path and cache_dir=/path to choose", cwd, cwd, REPO)


def train_objective(task, model, options) -> dict:
    """The quantized model's loss and task metric on ``options.samples`` training examples (Kwon et al. 2021, Tables
    1/15: training loss and accuracy; the same data and measure as the BCQ search's objective)."""
    return {**task.objective(model, task.objective_data(int(options.get("samples", 256)))),
            "weight_mse": weight_mse(model)}


def weight_mse(model) -> float | None:
    """Mean over the quantized linear weights of each weight's mean squared quantization error (uniform or BCQ: what
    the forward uses minus the float weight): Tables 1/15's MSE column, the same measure for every method."""
    import torch

    from ..quant.modules import QLinear

    errs = []
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, QLinear) and m.weight_quantizer.spec.enabled:
                w = m.inner.weight.detach()
                errs.append(float(((m.weight_quantizer(w).float() - w.float()) ** 2).mean()))
    return sum(errs) / len(errs) if errs else None


def validated(cfg: DictConfig, resolved: dict, cwd: Path | None = None):
    """Every check that needs no model, before anything expensive: (context, task, post-weight steps, backend).  The
    recipe is interpreted once, into the context's :class:`~qexp.experiment.spec.RunSpec`; the kind checks what it
    allows from that spec."""
    writable(Path(cfg.results_dir), "results_dir")
    writable(Path(cfg.cache_dir), "cache_dir")
    where(Path(cwd or Path.cwd()), cfg)
    from ..integer.backends import check_backend

    kind_cls, device = kind(str(cfg.task.kind)), pick_device(str(cfg.device))
    check_backend(backend_name(cfg), device)
    from ..train.reporting import check as check_reporting

    check_reporting(cfg.get("report_to"))
    spec = RunSpec.parse(cfg, resolved)
    ctx = RunContext(cfg, spec, device, Timer(), records.run_id(resolved))
    task = kind_cls(ctx)
    task.check()
    check_group_size(spec.steps.bcq, cfg.model)
    return ctx, task, spec.steps, spec.backend


class DistributedError(ValueError):
    pass


def check_distributed(task, steps, cfg) -> None:
    """Under torchrun / accelerate launch / a multi-task SLURM job, only what runs identically there may start (issue
    30 #3): pre-training (FP and quantized), GLUE fine-tuning, QAT and LKD train data-parallel; calibration and evaluation then run on every rank
    with the same data (same numbers) and only the main process writes.  The rest is refused before loading."""
    from ..common import dist

    if not dist.distributed():
        return
    launcher = "torchrun / accelerate launch / srun"
    if not getattr(task, "distributed", False):
        raise DistributedError(f"task {cfg.task.name!r} ({task.name}) does not run under {launcher} yet (world size "
                               f"{dist.world_size()}): launch it as one process; the pre-training tasks "
                               f"(pretrain_mlm, pretrain_clm, qpt_clm and their paper presets), continue_clm, "
                               f"continue_mlm, the GLUE tasks (fine-tuning, QAT, LKD) and perplexity (LKD) run "
                               f"distributed")
    if getattr(steps, "lkd", None) is not None:
        from ..train.lkd import check_batch

        check_batch(steps.lkd.batch_size)   # LKD runs data-parallel on equal shares of each batch
    for name in ("adaround", "bcq"):
        if getattr(steps, name, None) is not None:
            raise DistributedError(f"the recipe's {name} step does not run under {launcher} yet; launch it as one "
                                   f"process (the pre-trained model is cached: a later one-process run reuses it)")


def load_and_calibrate(ctx: RunContext, task, steps: PostWeightSteps, report: dict):
    """Load (GLUE: fine-tune once, cached), then calibrate with the post-weight steps; the relative errors and the
    steps' reports go into ``report``.  Returns the task's loaded model."""
    from ..quant.calibrate import calibrate

    with ctx.timer.stage("load"):
        loaded = task.load()
    model = loaded.model
    ctx.spec.check_quantizes(model)
    with ctx.timer.stage("calibrate"):
        batches = task.calibration_batches()
        calibrate(model, batches, int(ctx.calibration.num_batches), progress=ctx.progress,
                  after_weights=steps.hook(task))
        report.update(steps.reports)
        report.update(relative_errors(model, next(iter(batches()))))
    return loaded


def run(cfg: DictConfig, overrides: list[str] | None = None, cwd: Path | None = None) -> dict:
    cfg = prepare(cfg, Path(cwd or Path.cwd()), overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    path = records.record_path(Path(cfg.results_dir), resolved)
    previous = None
    if path.exists() and not cfg.force:
        previous = records.read_done(path)
        if previous is not None:
            if not records.evaluates_more(previous, resolved):
                log.info("skip: a record for this config and seed exists: %s (force=true re-runs it)", path)
                return {"skipped": True, "path": str(path)}
            log.info("re-evaluating %s: it lacks the requested %s; the record is replaced (its earlier evaluation "
                     "kept under previous_evaluations)", path, ", ".join(records.evaluation_settings(resolved)))
        else:
            aside = records.set_aside(path)   # truncated or hand-broken: not done (issue 27 #5); kept for inspection
            log.warning("the record %s is unreadable; moved it to %s and running again", path, aside)

    from ..common import dist

    dist.init()
    ctx, task, steps, backend = validated(cfg, resolved, cwd)
    check_distributed(task, steps, cfg)
    timer, rid = ctx.timer, ctx.run_id
    started, git = records.now(), records.git_state()  # the code that runs, before anything can change it

    from ..integer.backends import attach

    report = {}
    with timer.stage("total"):
        loaded = load_and_calibrate(ctx, task, steps, report)
        model = loaded.model
        if ctx.spec.train_objective and task.searches:
            with timer.stage("train_objective"):
                report["train_objective"] = train_objective(task, model, ctx.spec.train_objective)
        if ctx.spec.qat is not None:
            with timer.stage("qat"):
                report["qat"] = task.train(model)
        report["inference"] = attach(model, backend)
        with timer.stage("evaluate"):
            result = task.evaluate(model)
    record = {
        "schema": records.SCHEMA, "run_id": rid, "started": started, "finished": records.now(),
        "model": cfg.model.name, "task": cfg.task.name, "task_version": cfg.task.version,
        "recipe": ctx.spec.recipe, "seed": int(cfg.seed),
        "metrics": result.metrics, "score": result.score, "data_source": result.data_source,
        "model_identity": loaded.identity, **loaded.record,
        "sites": site_summary(model), "memory": memory_footprint(model), **report,
        "config": resolved, "overrides": list(overrides or []), "git": git,
        "versions": records.versions(), "device": records.device_info(ctx.device), "timings": timer.stages,
    }
    from ..common import dist

    record["launch"] = dist.describe()   # recorded, not hashed: a 2-process run resumes or skips like a 1-process run
    if previous is not None:
        record = records.replacing(record, previous)
    if dist.is_main():
        records.write_atomic(path, records.portable(record))
    dist.barrier()
    score = "none (diverged)" if record["score"] is None else f"{record['score']:.2f}"
    log.info("%s / %s / %s / seed %s: score %s -> %s", cfg.model.name, cfg.task.name, ctx.spec.recipe, cfg.seed,
             score, path)
    return record
