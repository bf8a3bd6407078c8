"""Relative paths in a config made absolute against the directory the command was started from."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ..tasks.texts import is_named


def absolute(path: str | None, cwd: Path) -> str | None:
    if not path:
        return None
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (cwd / p).resolve())


def absolute_paths(cfg: DictConfig, cwd: Path) -> None:
    """Results, cache, data and model paths made absolute (they enter run ids and fine-tuning cache keys)."""
    cfg.results_dir = absolute(cfg.results_dir, cwd)
    cfg.cache_dir = absolute(cfg.cache_dir, cwd)
    if cfg.task.get("data_dir"):
        cfg.task.data_dir = absolute(cfg.task.data_dir, cwd)
    for entry in (cfg.task.get("heldout") or {}).values():   # pre-training's held-out perplexity texts
        if entry.get("data_dir"):
            entry.data_dir = absolute(entry.data_dir, cwd)
    ds = cfg.task.get("downstream")
    if ds is not None and ds.get("data_dir"):
        ds.data_dir = absolute(ds.data_dir, cwd)
    if cfg.model.get("path"):
        cfg.model.path = absolute(cfg.model.path, cwd)
    value = cfg.task.get("calibration_source")  # a text file path (names of built-in texts stay as they are)
    if value and not is_named(value):
        cfg.task.calibration_source = absolute(value, cwd)
    lkd = cfg.recipe.get("lkd") if cfg.get("recipe") is not None else None
    if lkd is not None and lkd.get("text_file") and not is_named(lkd.text_file):
        lkd.text_file = absolute(lkd.text_file, cwd)
