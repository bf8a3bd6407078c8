"""One entry point from a loaded HF model to its quantizable wrapper, by model family."""
from __future__ import annotations

from torch import nn


def quantizable(model: nn.Module, family: str = "bert") -> nn.Module:
    """``QuantEncoder`` for ``family: bert``, ``QuantDecoder`` (linears replaced in place) for ``family: decoder``."""
    if family == "decoder":
        from .quant_decoder import QuantDecoder

        return QuantDecoder(model)
    if family == "bert":
        from .quant_bert import QuantEncoder

        return QuantEncoder(model)
    raise ValueError(f"unknown model family {family!r}; valid choices: bert, decoder")
