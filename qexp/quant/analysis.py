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

from .sites import quantizers


def kurtosis(x: torch.Tensor) -> torch.Tensor:
    """Per-sample kurtosis of a (B, ...) tensor."""
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    mu = flat.mean(dim=1, keepdim=True)
    return ((flat - mu) ** 4).mean(dim=1) / (flat.std(dim=1) ** 4 + 1e-6)


def inf_norm(x: torch.Tensor) -> torch.Tensor:
    """Per-sample max |x| of a (B, ...) tensor."""
    return x.reshape(x.shape[0], -1).abs().amax(dim=1).to(torch.float64)


@contextmanager
def record_activations(model: nn.Module, group: str | None = "activations"):
    """Capture the output of every activation site (after its quantizer) into a dict name -> tensor.

    By default only the operation outputs (group "activations"); the linear-input sites (group "inputs") repeat an
    earlier output and are recorded only when ``group`` is "inputs" or None (every data site)."""
    store: dict[str, torch.Tensor] = {}
    handles = [q.register_forward_hook(lambda m, i, o, name=q.name: store.__setitem__(name, o.detach()))
               for q in quantizers(model, "activation", group=group)]
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


def mean_relative_error(x_q: torch.Tensor, x: torch.Tensor, eps: float = 1e-8) -> float:
    """ZeroQuant Eq. 3: Average(|A_q - A| / (|A| + 1e-8)) over all elements, in float64."""
    x64 = x.detach().double()
    return float(((x_q.detach().double() - x64).abs() / (x64.abs() + eps)).mean())


@torch.no_grad()
def quantization_errors(model: nn.Module, batch: dict) -> dict:
    """ZeroQuant Table G.10's metric for every enabled site: the Eq. 3 error of each quantized weight versus the FP
    weight, and of each activation/input quantizer's output versus its own input during one forward of the quantized
    model on ``batch``; with the mean over sites per kind and bit-width (``{"weight": {"8": ..}, "activation": ..}``)."""
    per_site: dict[str, dict] = {}
    for m in model.modules():
        q, inner = getattr(m, "weight_quantizer", None), getattr(m, "inner", None)
        if q is not None and inner is not None and q.spec.enabled and q.state in ("fixed", "learned"):
            per_site[q.name] = {"kind": "weight", "bits": q.spec.bits,
                                "error": mean_relative_error(q(inner.weight), inner.weight)}
    acts = [q for q in quantizers(model, "activation") if q.spec.enabled and q.state in ("fixed", "learned")]

    def hook(q, args, out):
        e = per_site.setdefault(q.name, {"kind": "activation", "bits": q.spec.bits, "num": 0.0, "n": 0})
        x = args[0]
        e["num"] += mean_relative_error(out, x) * x.numel()
        e["n"] += x.numel()

    handles = [q.register_forward_hook(hook) for q in acts]
    was_training = model.training
    model.eval()
    try:
        model(**batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for e in per_site.values():
        if "num" in e:
            e["error"] = e.pop("num") / max(e.pop("n"), 1)
    summary: dict[str, dict[str, float]] = {}
    for kind in ("weight", "activation"):
        by_bits = defaultdict(list)
        for e in per_site.values():
            if e["kind"] == kind:
                by_bits[str(e["bits"])].append(e["error"])
        summary[kind] = {b: sum(v) / len(v) for b, v in sorted(by_bits.items())}
    return {**summary, "sites": {k: v["error"] for k, v in per_site.items()}}
