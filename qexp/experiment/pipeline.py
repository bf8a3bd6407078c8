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
from ..config.quant import FP32, effective_calibration, enabled, quant_config
from ..kinds.base import RunContext, kind
from . import records
from .steps import PostWeightSteps, check_group_size
from .summary import memory_footprint, relative_errors, site_summary
from .timer import Timer, pick_device

log = logging.getLogger("qexp")


def backend_name(cfg) -> str:
    """``inference.backend`` (fake quantization unless a config says otherwise)."""
    return str((cfg.get("inference") or {}).get("backend", "fake"))


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


class NoOpRecipeError(ValueError):
    pass


def trains_quantized(recipe) -> bool:
    """Whether the recipe's ``qpt`` block is on: judged by the same parser the pre-training kind uses
    (:func:`~qexp.config.training_quant.training_quant`), so ``qpt.enabled=false`` is off here too (issue 26/27: the
    guard took any ``qpt`` block as quantizing and recorded an FP run under the recipe's name)."""
    from ..config.training_quant import training_quant

    return training_quant(recipe) is not None


def check_recipe_enables_something(recipe, quant: dict) -> None:
    """The static half of :func:`check_quantizes_something`, before anything loads: no group enabled and no site rule
    that enables a site."""
    if recipe.name == FP32["name"] or trains_quantized(recipe):
        return
    from ..quant.sites import GROUPS

    groups_on = any((quant.get(g) or {}).get("enabled") for g in GROUPS)
    rules_on = any(rule.get("enabled") is True for rule in quant.get("sites") or [])
    if not (groups_on or rules_on):
        raise NoOpRecipeError(f"recipe {recipe.name!r} quantizes nothing: recipe.quant.weights, .activations and "
                              f".inputs are all disabled and no site rule enables a site; for a floating-point run "
                              f"use recipe fp32 (or no recipe)")


def check_quantizes_something(recipe, model) -> None:
    """A recipe other than ``fp32`` that leaves every site in floating point (every group disabled, or a rule such
    as ``{match: "*", enabled: false}``) would score as a perfect quantization: refused (issue 14 #2).  Recipes that
    quantize during training (``qpt``) are judged by their training block instead."""
    if recipe.name == FP32["name"] or trains_quantized(recipe):
        return
    from ..quant.sites import quantizers

    if not any(q.spec.enabled for q in quantizers(model)):
        raise NoOpRecipeError(f"recipe {recipe.name!r} quantizes nothing: every site of this model is left in "
                              f"floating point (check recipe.quant.*.enabled and its site rules); for a "
                              f"floating-point run use recipe fp32 (or no recipe)")


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
    """Every check that needs no model, before anything expensive: (context, task, post-weight steps, backend)."""
    writable(Path(cfg.results_dir), "results_dir")
    writable(Path(cfg.cache_dir), "cache_dir")
    where(Path(cwd or Path.cwd()), cfg)
    from ..integer.backends import check_backend

    kind_cls, backend, device = kind(str(cfg.task.kind)), backend_name(cfg), pick_device(str(cfg.device))
    check_backend(backend, device)
    calibration = effective_calibration(cfg)
    rid, timer = records.run_id(resolved), Timer()
    from ..train.reporting import check as check_reporting

    check_reporting(cfg.get("report_to"))
    ctx = RunContext(cfg, quant_config(resolved["recipe"], calibration), calibration, device, timer, rid)
    check_recipe_enables_something(cfg.recipe, ctx.quant)
    steps = PostWeightSteps.from_recipe(cfg.recipe)   # the steps' own values first, then what the task allows
    task = kind_cls(ctx)
    task.check()
    check_group_size(steps.bcq, cfg.model)
    from ..integer.backends import check_recipe

    check_recipe(backend, ctx.quant, str(cfg.recipe.name), steps.bcq is not None)
    if enabled(cfg.recipe, "qat"):
        from ..train.qat import hyperparameters

        hyperparameters(cfg.recipe.qat)
    return ctx, task, steps, backend


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
    check_quantizes_something(ctx.cfg.recipe, model)
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
        if records.readable(path):
            previous = records.read(path)
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
        if cfg.recipe.get("train_objective") and task.searches:
            with timer.stage("train_objective"):
                report["train_objective"] = train_objective(task, model, cfg.recipe.train_objective)
        if enabled(cfg.recipe, "qat"):
            with timer.stage("qat"):
                report["qat"] = task.train(model)
        report["inference"] = attach(model, backend)
        with timer.stage("evaluate"):
            result = task.evaluate(model)
    record = {
        "schema": records.SCHEMA, "run_id": rid, "started": started, "finished": records.now(),
        "model": cfg.model.name, "task": cfg.task.name, "task_version": cfg.task.version,
        "recipe": cfg.recipe.name, "seed": int(cfg.seed),
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
    log.info("%s / %s / %s / seed %s: score %s -> %s", cfg.model.name, cfg.task.name, cfg.recipe.name, cfg.seed,
             score, path)
    return record
