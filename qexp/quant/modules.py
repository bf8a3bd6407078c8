"""Quantized building blocks that wrap the original HF modules' parameters (no copies).

Each block owns one weight quantizer (``<site>.weight``) and, where the site has one, one activation quantizer on
its output (``<site>``).  Fake-quantized weights are cached (outside autograd) while the weight quantizer is ``fixed`` and
the weight is unchanged, so evaluation does not re-quantize a 30k-row embedding table in every batch."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .quantizer import QuantSpec, Quantizer

_OFF = QuantSpec(enabled=False)


def act_quantizer(name: str, group: str = "activations", owns_input: bool = True) -> Quantizer:
    """An activation site.  ``owns_input``: the caller passes a tensor made for this site alone (an operation's output)
    that it reads no more, so inference may quantize it in place (:attr:`Quantizer.owns_input`)."""
    q = Quantizer(name, _OFF)
    q.kind, q.group, q.owns_input = "activation", group, owns_input
    return q


def input_quantizer(name: str) -> Quantizer:
    """The input of a linear layer (``<linear>.input``), configured from the ``inputs`` default (ZeroQuant's sites).
    It never owns its input: the layer input is read again (the residual; q, k and v read the same tensor)."""
    return act_quantizer(name, "inputs", owns_input=False)


def weight_quantizer(name: str) -> Quantizer:
    q = Quantizer(name, _OFF)
    q.kind, q.group = "weight", "weights"
    return q


class _WeightQuantMixin:
    def quantized_weight(self) -> torch.Tensor:
        w, q = self.inner.weight, self.weight_quantizer
        if q.state != "fixed" or torch.is_grad_enabled():
            return q(w)
        # the weight's version and storage, and the quantizer's generation (a new one with every range, AdaRound
        # decision or BCQ value assigned: ids of freed tensors can be reused, a global counter cannot)
        key = (w._version, w.data_ptr(), q.generation)
        if getattr(self, "_wq_key", None) != key:
            with torch.no_grad():
                self._wq_cache, self._wq_key = q(w), key
        return self._wq_cache


class QLinear(_WeightQuantMixin, nn.Module):
    """``act(q_in(x) W^T + b)`` with a quantized weight (``<name>.weight``), a quantized input (``<name>.input``, only
    the linear's own copy of ``x``) and (optionally) a quantized output (``<name>``)."""

    def __init__(self, inner: nn.Linear, name: str, act: Callable | None = None, quantize_output: bool = True):
        super().__init__()
        self.inner, self.act = inner, act
        self.input_quantizer = input_quantizer(f"{name}.input")
        self.weight_quantizer = weight_quantizer(f"{name}.weight")
        self.output_quantizer = act_quantizer(name) if quantize_output else None
        self.integer = None  # an integer backend's execution of this layer (qexp.integer.backends.attach), else fake quant
        self.training_quant = None  # quantized training's forward/backward (qexp.quant.training_linear.attach)

    @property
    def weight(self) -> torch.Tensor:  # HF code reads ``.weight`` of its linears (dtype checks, tied embeddings)
        return self.inner.weight

    def __setattr__(self, name: str, value) -> None:
        if name == "weight":  # HF's tie_weights() assigns the input embedding's weight to the output linear
            self.inner.weight = value
            return
        super().__setattr__(name, value)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.inner.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.integer is not None and self.weight_quantizer.state == self.input_quantizer.state == "fixed":
            y = self.integer(x, self.inner.bias)  # quantizers switched off (an FP reference pass) fall through
        elif self.training_quant is not None:
            y = self.training_quant(x, self.inner.weight, self.inner.bias)
        else:
            y = F.linear(self.input_quantizer(x), self.quantized_weight(), self.inner.bias)
        if self.act is not None:
            y = self.act(y)
        return self.output_quantizer(y) if self.output_quantizer is not None else y


class QLayerNorm(_WeightQuantMixin, nn.Module):
    """LayerNorm with a quantized gain (the authors' code quantizes it; the bias is never quantized)."""

    def __init__(self, inner: nn.LayerNorm, name: str, weight_name: str):
        super().__init__()
        self.inner = inner
        self.weight_quantizer = weight_quantizer(f"{weight_name}.weight")
        self.output_quantizer = act_quantizer(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ln = self.inner
        return self.output_quantizer(F.layer_norm(x, ln.normalized_shape, self.quantized_weight(), ln.bias, ln.eps))


class QEmbedding(_WeightQuantMixin, nn.Module):
    """An embedding table with quantized weights; its lookup has no activation quantizer of its own."""

    def __init__(self, inner: nn.Embedding, name: str):
        super().__init__()
        self.inner = inner
        self.weight_quantizer = weight_quantizer(f"{name}.weight")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.quantized_weight(), self.inner.padding_idx)
