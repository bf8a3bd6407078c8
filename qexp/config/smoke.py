"""``debug=smoke``: each task kind's own one-batch values (issue 26 #3).

Every task YAML carries a ``smoke`` block with the few keys *its* kind reads (GLUE: examples and fine-tuning steps;
perplexity: windows and context; pre-training: a few steps and evaluation blocks).  ``debug=smoke`` sets
``debug: smoke``; :func:`apply` then writes the task's block over its values -- except a key the user set on the command
line (``debug=smoke task.train.max_steps=6`` keeps 6) -- and the block leaves the config in every run, so it never
enters a run id, a cache key or a record.  The old ``debug=smoke`` wrote nine GLUE and LM keys into every task and left
pre-training at 800 steps.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict


def _leaves(node: dict, prefix: str = ""):
    for k, v in node.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _set_by_user(key: str, overrides: list[str]) -> bool:
    """``task.<key>`` or a node above it (``task.train={...}``) given on the command line; ``task=rte`` (the group
    choice) is not."""
    full = f"task.{key}"
    for o in overrides:
        k = o.lstrip("+~").partition("=")[0]
        if k.startswith("task.") and (full == k or full.startswith(k + ".")):
            return True
    return False


def apply(cfg: DictConfig, overrides: list[str] | None = None) -> DictConfig:
    """The task's ``smoke`` values over its own when ``debug: smoke`` (keys set by the user win); the block removed."""
    task = cfg.get("task")
    if task is None or "smoke" not in task:
        return cfg
    block = OmegaConf.to_container(task.smoke, resolve=True) or {}
    with open_dict(cfg):
        del cfg.task["smoke"]
        if cfg.get("debug") == "smoke":
            for key, value in _leaves(block):
                if not _set_by_user(key, list(overrides or [])):
                    OmegaConf.update(cfg.task, key, value, merge=False, force_add=True)
    return cfg
