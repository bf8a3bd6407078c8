"""A *pretrained* language model prepared for continued pre-training with its attention swapped (Bondarenko et al. 2023,
Appendix B.6 / Table 9), saved and loaded again by the continued-pre-training kinds (``task=continue_clm``: a causal
LM; ``task=continue_mlm``: a BERT encoder with a masked-LM head).

The variant comes from ``model/attention`` (absent on a pretrained model's config: ``vanilla``):

- ``vanilla``: the model as it is;
- ``gated_finetune``: :func:`qexp.models.gate_finetune.add_gates` -- a per-head linear gate with the authors'
  fine-tuning form (scaling 1/pi_init, weights N(0, std), bias logit(pi_init)); at its initial value the model computes
  what the pretrained model computed (BERT encoders and Llama-style decoders);
- ``clipped`` (``model/attention=clipped`` or ``clipped_alpha``: gamma = -alpha/T): clipped softmax
  ``clip((zeta - gamma) softmax + gamma, 0, 1)`` in the pretrained BERT attention (qexp's encoder wrapper computes the
  attention itself and reads ``config.qexp_attention``); the decoder wrapper keeps HF's attention, so a decoder
  refuses it.

Gates on a decoder are forward hooks on the attention modules, registered *after* the quantizable wrapper replaced the
linears (the ``o_proj`` pre-hook must sit on the module that runs); on a BERT encoder the wrapper's attention takes the
gate from ``BertSelfAttention.qexp_gate`` when it is built, so the gates come first there.  :func:`load` restores the
HF weights first, then the gates.  A saved folder holds ``config.json`` (with ``qexp_continued_attention``: the variant
it was trained with) and ``model.safetensors`` (HF weights, tied tensors once, plus ``qexp_gates.*``).

A BERT checkpoint without a masked-LM head (MiniLM-L6 ships the bare encoder) gets one from :func:`with_mlm_head`
(HF's initialisation, the decoder tied to the word embeddings), which the kind warms up with the encoder frozen.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .families import family_of
from .gate_finetune import GateConfigError, add_gates
from .scratch import ScratchModelError, load_plain_state, plain_state

VARIANTS = ("vanilla", "gated_finetune", "clipped")
# the pretrained attentions (HF model_type) each variant can enter
SUPPORTED = {"gated_finetune": ("llama", "bert"), "clipped": ("bert",)}


class ContinuedModelError(ValueError):
    pass


def variant_of(model_cfg, seq_length: int | None = None) -> dict:
    """The attention variant of a pretrained model's run: ``{"name": "vanilla"}``, ``{"name": "gated_finetune",
    "pi_init": ..., "std": ...}`` or ``{"name": "clipped", "gamma": ..., "zeta": ...}`` (gamma resolved from alpha and
    the task's sequence length ``seq_length``)."""
    att = model_cfg.get("attention")
    if att is None:
        return {"name": "vanilla"}
    name = str(att.get("name"))
    if str(att.get("softmax", "vanilla")) == "clipped" and str(att.get("gate", "none")) == "none":
        from .attention import AttentionConfigError, AttentionVariant

        try:
            v = AttentionVariant.from_cfg({k: att[k] for k in ("softmax", "gamma", "zeta", "alpha") if k in att},
                                          seq_length)
        except AttentionConfigError as e:
            raise ContinuedModelError(str(e)) from None
        return {"name": "clipped", "gamma": v.gamma, "zeta": v.zeta}
    if name not in VARIANTS:
        raise ContinuedModelError(f"model/attention={name} cannot be put into a pretrained model; valid for continued "
                                  f"pre-training: vanilla, gated_finetune, clipped, clipped_alpha (the from-scratch "
                                  f"gates exist for the scratch models only: task=pretrain_clm | pretrain_mlm)")
    if name == "vanilla":
        return {"name": name}
    pi, std = float(att.get("pi_init", 0.5)), float(att.get("std", 1e-3))
    if not 0 < pi < 1 or std < 0:
        raise ContinuedModelError(f"model.attention: pi_init={pi} must lie in (0, 1) and std={std} be >= 0")
    return {"name": name, "pi_init": pi, "std": std}


def check_type(model_type: str | None, variant: dict) -> None:
    """A variant needs an attention it knows how to enter (:data:`SUPPORTED`)."""
    types = SUPPORTED.get(variant["name"])
    if types is not None and model_type not in types:
        what = "adds gates to" if variant["name"] == "gated_finetune" else "puts clipped softmax into"
        raise ContinuedModelError(f"model/attention={variant['name']} {what} {' and '.join(types)} attention; this "
                                  f"model is {model_type!r} (use model/attention=vanilla"
                                  + (", or a Llama-style decoder or a BERT encoder)" if variant["name"] ==
                                     "gated_finetune" else ", or a BERT encoder such as model=minilm_l6)"))


def attach(hf: nn.Module, model_cfg, variant: dict, seed: int) -> nn.Module:
    """The quantizable wrapper of ``hf`` with the variant (gate parameters: ``hf.qexp_gates``)."""
    model_type = getattr(hf.config, "model_type", None)
    check_type(model_type, variant)
    if variant["name"] == "clipped":   # read by the encoder wrapper's attention when it is built
        hf.config.qexp_attention = {"softmax": "clipped", "gamma": variant["gamma"], "zeta": variant["zeta"]}
    if variant["name"] != "gated_finetune":
        return family_of(model_cfg).wrap(hf)
    try:
        if model_type == "bert":   # the encoder wrapper's attention takes BertSelfAttention.qexp_gate when built
            add_gates(hf, variant["pi_init"], variant["std"], seed)
            wrapper = family_of(model_cfg).wrap(hf)
            # it does not register the HF model (the decoder wrapper does): the gates become its submodule too, so
            # its parameters (what DDP syncs) and state dict (what a Trainer checkpoint resumes) hold them
            wrapper.qexp_gates = hf.qexp_gates
        else:   # the o_proj pre-hook must sit on the linear the decoder wrapper put in place
            wrapper = family_of(model_cfg).wrap(hf)
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


def load_hf(folder: Path, variant: dict, objective: str = "clm") -> tuple[nn.Module, dict]:
    """The HF model of a folder written by :func:`save` (a causal LM, or a masked LM for ``objective="mlm"``) and the
    gate tensors it holds; its variant must be ``variant`` (the run's)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    config = AutoConfig.from_pretrained(str(folder))
    saved = getattr(config, "qexp_continued_attention", None)
    if saved != variant:
        raise ContinuedModelError(f"{folder} was trained with attention {saved}, not this run's {variant}")
    hf = (AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM).from_config(config)
    state = load_file(str(folder / "model.safetensors"))
    gates = {k: v for k, v in state.items() if k.startswith("qexp_gates.")}
    try:
        load_plain_state(hf, {k: v for k, v in state.items() if k not in gates}, folder)
    except ScratchModelError as e:
        raise ContinuedModelError(str(e)) from None
    return hf, gates


def load(folder: Path, model_cfg, variant: dict, seed: int, objective: str = "clm") -> tuple[nn.Module, nn.Module]:
    """``(hf, wrapper)`` of a folder written by :func:`save`; its variant must be ``variant`` (the run's)."""
    hf, gates = load_hf(folder, variant, objective)
    wrapper = attach(hf, model_cfg, variant, seed)
    if variant["name"] == "gated_finetune":
        hf.qexp_gates.load_state_dict({k[len("qexp_gates."):]: v for k, v in gates.items()}, strict=True)
    elif gates:
        raise ContinuedModelError(f"{folder} holds gates but the run's attention is {variant['name']}")
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


def with_mlm_head(encoder: nn.Module, seed: int) -> nn.Module:
    """A ``BertForMaskedLM`` holding a BERT encoder's weights and a new masked-LM head (HF's initialisation, drawn from
    ``seed``; the decoder tied to the word embeddings, a fresh output bias).  A model that has a head already is
    returned as it is.  The pooler, which the masked LM has none of, is dropped."""
    from transformers import BertForMaskedLM

    if getattr(encoder, "cls", None) is not None:
        return encoder
    if getattr(encoder.config, "model_type", None) != "bert":
        raise ContinuedModelError(f"{type(encoder).__name__} ({getattr(encoder.config, 'model_type', None)!r}) is not "
                                  f"a BERT encoder; continue_mlm adds a BERT masked-LM head")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        mlm = BertForMaskedLM(encoder.config)
    base = getattr(encoder, "bert", encoder)
    missing, unexpected = mlm.bert.load_state_dict(base.state_dict(), strict=False)
    unexpected = [k for k in unexpected if not k.startswith("pooler.")]
    if missing or unexpected:
        raise ContinuedModelError(f"{type(encoder).__name__} does not fit BertForMaskedLM: missing {missing}, "
                                  f"unexpected {unexpected}")
    mlm.tie_weights()
    return mlm


def head_parameters(mlm: nn.Module) -> list[str]:
    """The masked-LM head's own parameters (its transform and output bias; the decoder is the tied word embedding),
    the ones a head warm-up trains with the encoder frozen."""
    emb = mlm.get_input_embeddings().weight
    return [n for n, p in mlm.named_parameters() if n.startswith("cls.") and p is not emb]


def ffn_modules(hf: nn.Module, wrapper: nn.Module | None = None) -> list[nn.Module]:
    """Each block's FFN output, which the activation regularization penalizes: a decoder block's ``mlp``; a BERT
    layer's FFN output projection as the encoder wrapper runs it (``wrapper.layers[i].ffn_output``, before dropout
    and the residual sum)."""
    from .quant_decoder import find_blocks

    if getattr(hf.config, "model_type", None) == "bert":
        if wrapper is None or not hasattr(wrapper, "layers"):
            raise ContinuedModelError("the FFN term of a BERT encoder needs its quantizable wrapper (qexp runs the "
                                      "encoder's forward)")
        return [layer.ffn_output for layer in wrapper.layers]
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

    def __init__(self, hf: nn.Module, lam: float, wrapper: nn.Module | None = None):
        if lam < 0:
            raise ContinuedModelError(f"task.train.ffn_l2={lam} must be >= 0 (0: no regularization)")
        self.lam, self.terms = float(lam), []
        self.handles = [m.register_forward_hook(self._hook) for m in ffn_modules(hf, wrapper)] if lam > 0 else []

    def _hook(self, module, _inputs, out):
        if module.training and torch.is_grad_enabled():
            self.terms.append(out.float().pow(2).mean())

    def take(self) -> torch.Tensor | None:
        if not self.terms:
            return None
        term = self.lam * torch.stack(self.terms).sum()
        self.terms = []
        return term
