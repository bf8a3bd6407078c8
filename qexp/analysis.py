"""Activation statistics, reusable by any task: relative error versus FP32 and outlier statistics.

- relative error of a tensor versus its FP32 counterpart: ||x_q - x||_2 / ||x||_2 over all evaluated elements
  (ZeroQuant, Table G.10);
- kurtosis of one sample: mean((x - mu)^4) / (std^4 + 1e-6), with the unbiased std, over the flattened sample, not
  excess kurtosis (Bondarenko et al. 2023, the authors' code);
- inf-norm of one sample: max |x| over the flattened sample, averaged over samples.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager

import torch
from torch import nn

from .quant.sites import quantizers


def kurtosis(x: torch.Tensor) -> torch.Tensor:
    """Per-sample kurtosis of a (B, ...) tensor."""
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    mu = flat.mean(dim=1, keepdim=True)
    return ((flat - mu) ** 4).mean(dim=1) / (flat.std(dim=1) ** 4 + 1e-6)


def inf_norm(x: torch.Tensor) -> torch.Tensor:
    """Per-sample max |x| of a (B, ...) tensor."""
    return x.reshape(x.shape[0], -1).abs().amax(dim=1).to(torch.float64)


@contextmanager
def record_activations(model: nn.Module):
    """Capture the output of every activation site (after its quantizer) into a dict name -> tensor."""
    store: dict[str, torch.Tensor] = {}
    handles = [q.register_forward_hook(lambda m, i, o, name=q.name: store.__setitem__(name, o.detach()))
               for q in quantizers(model, "activation")]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def full_precision(model: nn.Module):
    """Every quantizer off inside the block; states restored after."""
    saved = [(q, q.state) for q in quantizers(model)]
    for q, _ in saved:
        q.state = "off"
    try:
        yield
    finally:
        for q, s in saved:
            q.state = s


class ErrorAccumulator:
    """Running relative error per name: sqrt(sum ||x_q - x||^2 / sum ||x||^2)."""

    def __init__(self) -> None:
        self.num = defaultdict(float)
        self.den = defaultdict(float)

    def add(self, name: str, x_q: torch.Tensor, x: torch.Tensor) -> None:
        self.num[name] += float(((x_q.double() - x.double()) ** 2).sum())
        self.den[name] += float((x.double() ** 2).sum())

    def result(self) -> dict[str, float]:
        return {k: (self.num[k] / self.den[k]) ** 0.5 if self.den[k] > 0 else 0.0 for k in self.num}


class OutlierAccumulator:
    """Per-site running mean over samples of the per-sample inf-norm and kurtosis."""

    def __init__(self) -> None:
        self.sums = defaultdict(lambda: [0.0, 0.0, 0])

    def add(self, name: str, x: torch.Tensor) -> None:
        s = self.sums[name]
        s[0] += float(inf_norm(x).sum())
        s[1] += float(kurtosis(x).sum())
        s[2] += x.shape[0]

    def inf_norm(self, name: str) -> float:
        s = self.sums[name]
        return s[0] / s[2]

    def kurtosis(self, name: str) -> float:
        s = self.sums[name]
        return s[1] / s[2]
