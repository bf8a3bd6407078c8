"""A *pretrained* causal LM prepared for continued pre-training with its attention swapped (Bondarenko et al. 2023,
Appendix B.6 / Table 9), saved and loaded again by the continued-pre-training kind (``task=continue_clm``).

The variant comes from ``model/attention`` (absent on a pretrained model's config: ``vanilla``):

- ``vanilla``: the model as it is;
- ``gated_finetune``: :func:`qexp.models.gate_finetune.add_gates` -- a per-head linear gate with the authors'
  fine-tuning form (scaling 1/pi_init, weights N(0, std), bias logit(pi_init)); at its initial value the model computes
  what the pretrained model computed.

Gates are forward hooks on the attention modules, registered *after* the quantizable wrapper replaced the linears
(the ``o_proj`` pre-hook must sit on the module that runs), so :func:`attach` wraps first and gates second, and
:func:`load` restores the HF weights first, then the gates.  A saved folder holds ``config.json`` (with
``qexp_continued_attention``: the variant it was trained with) and ``model.safetensors`` (HF weights, tied tensors
once, plus ``qexp_gates.*``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .families import family_of
from .gate_finetune import GateConfigError, add_gates
from .scratch import ScratchModelError, load_plain_state, plain_state

VARIANTS = ("vanilla", "gated_finetune")
GATED_TYPES = ("llama",)   # the decoder families add_gates supports (its BERT path is for the encoder kind)


class ContinuedModelError(ValueError):
    pass


def variant_of(model_cfg) -> dict:
    """The attention variant of a pretrained model's run: ``{"name": ..., "pi_init": ..., "std": ...}``."""
    att = model_cfg.get("attention")
    if att is None:
        return {"name": "vanilla"}
    name = str(att.get("name"))
    if name not in VARIANTS:
        raise ContinuedModelError(f"model/attention={name} cannot be put into a pretrained model; valid for continued "
                                  f"pre-training: {', '.join(VARIANTS)} (clipped softmax and the from-scratch gates "
                                  f"exist for the scratch models only: task=pretrain_clm)")
    if name == "vanilla":
        return {"name": name}
    pi, std = float(att.get("pi_init", 0.5)), float(att.get("std", 1e-3))
    if not 0 < pi < 1 or std < 0:
        raise ContinuedModelError(f"model.attention: pi_init={pi} must lie in (0, 1) and std={std} be >= 0")
    return {"name": name, "pi_init": pi, "std": std}


def check_type(model_type: str | None, variant: dict) -> None:
    """A gated variant needs an attention the gates know (Llama-style decoders)."""
    if variant["name"] != "vanilla" and model_type not in GATED_TYPES:
        raise ContinuedModelError(f"model/attention={variant['name']} adds gates to {', '.join(GATED_TYPES)} "
                                  f"attention; this model is {model_type!r} (use model/attention=vanilla, or a "
                                  f"Llama-style model such as model=smollm2_135m)")


def attach(hf: nn.Module, model_cfg, variant: dict, seed: int) -> nn.Module:
    """The quantizable wrapper of ``hf`` with the variant's gates (their parameters: ``hf.qexp_gates``)."""
    check_type(getattr(hf.config, "model_type", None), variant)
    wrapper = family_of(model_cfg).wrap(hf)
    if variant["name"] == "gated_finetune":
        try:
            add_gates(hf, variant["pi_init"], variant["std"], seed)
        except GateConfigError as e:
            raise ContinuedModelError(str(e)) from None
    return wrapper


def save(hf: nn.Module, folder: Path, variant: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    hf.config.qexp_continued_attention = variant
    hf.config.save_pretrained(str(folder))
    save_file(plain_state(hf), str(folder / "model.safetensors"), metadata={"format": "pt"})


def load(folder: Path, model_cfg, variant: dict, seed: int) -> tuple[nn.Module, nn.Module]:
    """``(hf, wrapper)`` of a folder written by :func:`save`; its variant must be ``variant`` (the run's)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder))
    saved = getattr(config, "qexp_continued_attention", None)
    if saved != variant:
        raise ContinuedModelError(f"{folder} was trained with attention {saved}, not this run's {variant}")
    hf = AutoModelForCausalLM.from_config(config)
    state = load_file(str(folder / "model.safetensors"))
    gates = {k: v for k, v in state.items() if k.startswith("qexp_gates.")}
    try:
        load_plain_state(hf, {k: v for k, v in state.items() if k not in gates}, folder)
    except ScratchModelError as e:
        raise ContinuedModelError(str(e)) from None
    wrapper = attach(hf, model_cfg, variant, seed)
    if variant["name"] != "vanilla":
        hf.qexp_gates.load_state_dict({k[len("qexp_gates."):]: v for k, v in gates.items()}, strict=True)
    elif gates:
        raise ContinuedModelError(f"{folder} holds gates but the run's attention is vanilla")
    return hf, wrapper


def gate_groups(groups: list[dict], gates: nn.Module, lr: float) -> list[dict]:
    """The AdamW groups with the gates' parameters moved into groups of their own at peak learning rate ``lr`` (the
    scheduler scales every group's rate alike); each gate parameter keeps its group's weight decay."""
    ids = {id(p) for p in gates.parameters()}
    out = []
    for g in groups:
        rest = [p for p in g["params"] if id(p) not in ids]
        mine = [p for p in g["params"] if id(p) in ids]
        if rest:
            out.append({**g, "params": rest})
        if mine:
            out.append({**g, "params": mine, "lr": lr})
    return out


def ffn_modules(hf: nn.Module) -> list[nn.Module]:
    """Each decoder block's FFN (``mlp``), whose output the activation regularization penalizes."""
    from .quant_decoder import find_blocks

    _, blocks = find_blocks(hf)
    found = [getattr(b, "mlp", None) for b in blocks]
    if any(m is None for m in found):
        raise ContinuedModelError(f"{type(hf).__name__}: no `mlp` module in its decoder blocks")
    return found


class FFNPenalty:
    """The 2023 paper's "small activation regularization term at the output of each FFN" (Appendix B.6; its
    coefficient is not given and the authors' released scripts have no such term): ``lam`` x the sum over blocks of
    the mean squared FFN output (mean over batch, tokens and features), collected by forward hooks while the model
    trains (evaluation passes add nothing).  :meth:`take` returns the term of the last forward and clears it."""

    def __init__(self, hf: nn.Module, lam: float):
        if lam < 0:
            raise ContinuedModelError(f"task.train.ffn_l2={lam} must be >= 0 (0: no regularization)")
        self.lam, self.terms = float(lam), []
        self.handles = [m.register_forward_hook(self._hook) for m in ffn_modules(hf)] if lam > 0 else []

    def _hook(self, module, _inputs, out):
        if module.training and torch.is_grad_enabled():
            self.terms.append(out.float().pow(2).mean())

    def take(self) -> torch.Tensor | None:
        if not self.terms:
            return None
        term = self.lam * torch.stack(self.terms).sum()
        self.terms = []
        return term
