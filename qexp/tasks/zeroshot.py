"""Zero-shot evaluation through the EleutherAI lm-evaluation-harness (``lm_eval`` 0.4.x), on the model in memory.

The quantized model is handed to lm-eval's ``HFLM`` as an already-built ``PreTrainedModel`` (the decoder wrapper has
replaced its linears in place), so nothing is saved and reloaded and fake quantization stays on.  Tasks are lm-eval
task names (the ZeroQuant Table I.1 list is conf/task/zeroshot_zeroquant.yaml) or the local task YAMLs shipped in
qexp/tasks/lm_eval_tasks/ (``qexp_*``), which read local files: qexp copies them to a temporary folder with
``{data_dir}`` replaced by ``task.data_dir``, so the same path runs offline.
"""
from __future__ import annotations

import functools
import logging
import tempfile
from pathlib import Path

LOCAL_TASKS = Path(__file__).parent / "lm_eval_tasks"


class ZeroShotError(ValueError):
    pass


def local_task_names() -> list[str]:
    return sorted(p.stem for p in LOCAL_TASKS.glob("*.yaml"))


def _write_local_tasks(folder: Path, data_dir: str | None, names: list[str]) -> None:
    for name in names:
        text = (LOCAL_TASKS / f"{name}.yaml").read_text()
        if "{data_dir}" in text:
            if not data_dir:
                raise ZeroShotError(f"local lm-eval task {name!r} reads files from task.data_dir; set "
                                    f"task.data_dir=DIR (see {LOCAL_TASKS / (name + '.yaml')})")
            text = text.replace("{data_dir}", str(Path(data_dir).resolve()))
        (folder / f"{name}.yaml").write_text(text)


def flatten(results: dict) -> dict[str, dict[str, float]]:
    """lm-eval's ``results`` -> {task: {metric: value}} with the ``,none`` filter suffix dropped and stderr left out."""
    out = {}
    for task, vals in results.items():
        row = {}
        for key, v in vals.items():
            metric, _, filt = key.partition(",")
            if metric.endswith("_stderr") or metric == "alias" or not isinstance(v, (int, float)):
                continue
            row[metric if filt in ("", "none") else f"{metric},{filt}"] = float(v)
        out[task] = row
    return out


@functools.lru_cache(maxsize=1)
def _builtin_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager()


def evaluate(hf_model, tokenizer, task, device: str, progress: bool = False) -> dict[str, dict[str, float]]:
    """Run ``task.tasks`` (zero-shot) on ``hf_model``; ``task.limit.docs`` caps the documents per task (smoke runs)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    names = list(task.tasks)
    local = [n for n in names if n in local_task_names()]
    unknown_local = [n for n in names if n.startswith("qexp_") and n not in local]
    if unknown_local:
        raise ZeroShotError(f"unknown local lm-eval task(s) {unknown_local}; valid: {local_task_names()}")
    logging.getLogger("lm_eval").setLevel(logging.WARNING if not progress else logging.INFO)
    with tempfile.TemporaryDirectory(prefix="qexp-lm-eval-") as tmp:
        _write_local_tasks(Path(tmp), task.get("data_dir"), local)
        # lm-eval's own index (14k task files, ~10 s to scan) only when a task is not one of qexp's local tasks;
        # the built-in-only manager is kept for the process (a sweep evaluates many jobs in one process)
        builtin = any(n not in local for n in names)
        manager = (TaskManager(include_path=tmp, include_defaults=builtin) if local else _builtin_manager())
        missing = [n for n in names if n not in manager.all_tasks]
        if missing:
            raise ZeroShotError(f"lm-eval does not know task(s) {missing}; see `lm_eval --tasks list`, or the local "
                                f"tasks {local_task_names()}")
        lm = HFLM(pretrained=hf_model, tokenizer=tokenizer, batch_size=int(task.batch_size),
                  max_length=task.get("max_length"))
        out = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=int(task.num_fewshot),
                                      limit=(task.get("limit") or {}).get("docs"), task_manager=manager, bootstrap_iters=0,
                                      log_samples=False, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                      fewshot_random_seed=0)
    return flatten(out["results"])


def score(metrics: dict[str, dict[str, float]], task) -> float:
    """The record's headline number: the mean over tasks of each task's ``task.metric`` (x100 for accuracies)."""
    vals = []
    for name in task.tasks:
        m = metrics.get(name, {})
        key = task.metric if task.metric in m else next((k for k in ("acc", "acc_norm", "exact_match", "em") if k in m),
                                                        None)
        if key is None:
            raise ZeroShotError(f"lm-eval returned no accuracy-like metric for {name!r}: {sorted(m)}")
        vals.append(100.0 * m[key])
    return sum(vals) / len(vals)
