"""Model families: how a loaded HF model of each family becomes its quantizable wrapper (STYLE 5).

``model.family`` in conf/model/*.yaml names an entry: ``bert`` (BERT-like encoders, :class:`QuantEncoder` with every
activation site of Bondarenko et al. 2021) or ``decoder`` (any HF causal LM, :class:`QuantDecoder`).  A new family is
one registered :class:`Family`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..common.registry import Registry


@dataclass(frozen=True)
class Family:
    name: str
    causal: bool                              # loads as a causal LM (language-model tasks), else as an encoder
    wrapper: Callable[[], type]               # the quantizable wrapper class (imported on first use)
    description: str = ""

    def wrap(self, model: nn.Module) -> nn.Module:
        return self.wrapper()(model)


FAMILIES: Registry[Family] = Registry("model family")


def _register(family: Family) -> None:
    FAMILIES.register(family.name)(family)


def _encoder():
    from .quant_bert import QuantEncoder

    return QuantEncoder


def _decoder():
    from .quant_decoder import QuantDecoder

    return QuantDecoder


_register(Family("bert", False, _encoder, "BERT-like encoders (BERT, RoBERTa, MiniLM): every Bondarenko et al. site"))
_register(Family("decoder", True, _decoder, "HF causal LMs (GPT-2, OPT, Pythia, Llama/SmolLM): linear sites"))


def family_of(model_cfg) -> Family:
    return FAMILIES.get(model_cfg.get("family", "bert"))


def quantizable(model: nn.Module, family: str = "bert") -> nn.Module:
    """The quantizable wrapper of ``model`` for its family (an unknown family lists the valid ones)."""
    return FAMILIES.get(family).wrap(model)
