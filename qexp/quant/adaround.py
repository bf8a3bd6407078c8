"""AdaRound: learned rounding of weights, layer by layer (Nagel et al. 2020; Bondarenko et al. 2021, Tables 7 and 12).

For each quantized linear layer in forward order, with the scale from the weight's range estimator fixed:

    W~ = s * (clamp(floor(W / s) + h(V) + z, q_min, q_max) - z),     h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)

    minimise  E_batch[ || W x_fp - W~ x_q ||^2 ]  +  lambda * sum(1 - |2 h(V) - 1|^beta)

with x_fp the layer's input in the FP model (the target side) and x_q its input in the quantized model with the
already-rounded earlier layers (asymmetric reconstruction, as in the authors' code).  V starts where h(V) equals the
fractional part of W / s (so the first iterate is the un-rounded weight); beta anneals from 20 to 2 (cosine) after a
warm-up of 20 % of the iterations with the regulariser off; Adam at lr 1e-3; lambda = 0.01; zeta = 1.1, gamma = -0.1
(the paper's defaults).  The final decision is h(V) >= 0.5, stored in the weight quantizer's ``rounding`` buffer.

Only linear layers are optimised: for an embedding table the "layer output" is the table itself, whose best rounding
is round-to-nearest, and LayerNorm gains are a vector (README, Deviations).  The loss is the sum of squared errors per
sequence, averaged over the batch, padding positions included (the authors' convention).

Written by hand: no maintained library implements AdaRound for arbitrary PyTorch modules without pulling a whole
toolkit (AIMET) in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .analysis import full_precision
from .modules import QLinear
from .sites import matching, site_globs


@dataclass(frozen=True)
class AdaRoundConfig:
    num_samples: int = 1024      # calibration sequences
    iterations: int = 10_000     # per layer
    batch_size: int = 32         # sequences per iteration
    lr: float = 1e-3
    reg_weight: float = 0.01     # lambda
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2          # fraction of iterations without the rounding regulariser
    zeta: float = 1.1
    gamma: float = -0.1
    sites: tuple = ("*",)        # weight site globs (quant.sites' dialect), e.g. ["encoder.layer.*.ffn.*.weight"]

    @classmethod
    def from_config(cls, cfg) -> "AdaRoundConfig":
        cfg = dict(cfg or {})
        cfg.pop("enabled", None)
        if "layers" in cfg:   # issue 26 #4: one selector dialect
            site_globs(None, "recipe.adaround.sites", "recipe.adaround.layers", cfg["layers"])
        if "sites" in cfg:
            cfg["sites"] = site_globs(cfg["sites"], "recipe.adaround.sites")
        valid = {f.name for f in fields(cls)}
        unknown = set(cfg) - valid
        if unknown:
            raise ValueError(f"unknown adaround option(s) {sorted(unknown)}; valid: {sorted(valid)}")
        out = cls(**cfg)
        for k in ("num_samples", "iterations", "batch_size"):
            if int(getattr(out, k)) < 1:
                raise ValueError(f"adaround.{k}={getattr(out, k)!r} must be >= 1")
        if not 0.0 <= out.warmup < 1.0:
            raise ValueError(f"adaround.warmup={out.warmup!r} must be in [0, 1)")
        return out


def rectified_sigmoid(v: torch.Tensor, zeta: float, gamma: float) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (zeta - gamma) + gamma, 0.0, 1.0)


def init_v(frac: torch.Tensor, zeta: float, gamma: float) -> torch.Tensor:
    """V such that h(V) = frac (the inverse of the rectified sigmoid on (0, 1))."""
    p = ((frac - gamma) / (zeta - gamma)).clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


def beta_at(it: int, cfg: AdaRoundConfig) -> float | None:
    """The regulariser's beta at iteration ``it``; None during warm-up (regulariser off)."""
    start = int(cfg.warmup * cfg.iterations)
    if it < start:
        return None
    t = (it - start) / max(cfg.iterations - start, 1)
    return cfg.beta_end + 0.5 * (cfg.beta_start - cfg.beta_end) * (1 + math.cos(math.pi * t))


def reconstruction_error(weight_q: torch.Tensor, bias, x_q: torch.Tensor, y_fp: torch.Tensor,
                         chunk: int = 64) -> float:
    """Sum of squared errors per sequence, averaged over sequences, for a fixed quantized weight."""
    total = 0.0
    with torch.no_grad():
        for i in range(0, x_q.shape[0], chunk):
            err = F.linear(x_q[i:i + chunk], weight_q, bias) - y_fp[i:i + chunk]
            total += float(err.double().pow(2).sum())
    return total / x_q.shape[0]


def adaround_layer(layer: QLinear, x_q: torch.Tensor, y_fp: torch.Tensor, cfg: AdaRoundConfig,
                   generator: torch.Generator, progress: bool = False) -> dict:
    """Learn the rounding of one layer's weight; stores the decisions in its weight quantizer."""
    q = layer.weight_quantizer
    w = layer.inner.weight.detach()
    bias = layer.inner.bias.detach() if layer.inner.bias is not None else None
    q.rounding = None
    p = q.grid(w)
    w_rtn = q(w).detach()
    err_rtn = reconstruction_error(w_rtn, bias, x_q, y_fp)
    w_floor = torch.floor(w / p.scale)
    v = nn.Parameter(init_v(w / p.scale - w_floor, cfg.zeta, cfg.gamma))
    opt = torch.optim.Adam([v], lr=cfg.lr)
    n = x_q.shape[0]
    for it in tqdm(range(cfg.iterations), desc=f"adaround {q.name}", disable=not progress, leave=False):
        idx = torch.randint(n, (min(cfg.batch_size, n),), generator=generator).to(x_q.device)
        h = rectified_sigmoid(v, cfg.zeta, cfg.gamma)
        w_soft = (torch.clamp(w_floor + h + p.zero_point, p.q_min, p.q_max) - p.zero_point) * p.scale
        err = F.linear(x_q[idx], w_soft, bias) - y_fp[idx]
        loss = err.pow(2).flatten(1).sum(1).mean()
        beta = beta_at(it, cfg)
        if beta is not None:
            loss = loss + cfg.reg_weight * (1 - (2 * h - 1).abs().pow(beta)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        up = (rectified_sigmoid(v, cfg.zeta, cfg.gamma) >= 0.5).to(w.dtype)
    q.rounding = up
    w_ada = q(w).detach()
    err_ada = reconstruction_error(w_ada, bias, x_q, y_fp)
    rtn_up = (w / p.scale - w_floor >= 0.5).to(w.dtype)
    return {"site": q.name, "error_rtn": err_rtn, "error_adaround": err_ada,
            "flipped_vs_rtn": float((up != rtn_up).float().mean())}


def _capture_input(model: nn.Module, layer: nn.Module, batches: Iterable[dict]) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    try:
        with torch.no_grad():
            for b in batches:
                model(**b)
    finally:
        handle.remove()
    return torch.cat(seen)


def apply_adaround(model: nn.Module, batches: Callable[[], Iterable[dict]], cfg: AdaRoundConfig, seed: int,
                   progress: bool = True) -> list[dict]:
    """AdaRound every selected linear layer (weights calibrated and ``fixed``) of ``model``, in forward order."""
    candidates = [m for m in model.modules() if isinstance(m, QLinear) and m.weight_quantizer.spec.enabled
                  and m.weight_quantizer.state == "fixed"]
    picked = set(matching((m.weight_quantizer.name for m in candidates), cfg.sites))
    layers = [m for m in candidates if m.weight_quantizer.name in picked]
    if not layers:
        raise ValueError(f"recipe.adaround.sites={list(cfg.sites)} selects no quantized linear weight; "
                         f"list the sites with `qexp ls sites model=...`")
    gen = torch.Generator().manual_seed(int(seed))
    was_training = model.training
    model.eval()
    report = []
    for layer in tqdm(layers, desc="adaround", disable=not progress):
        x_q = _capture_input(model, layer, batches())
        with full_precision(model):
            x_fp = _capture_input(model, layer, batches())
        with torch.no_grad():
            y_fp = F.linear(x_fp, layer.inner.weight, layer.inner.bias)
        del x_fp
        report.append(adaround_layer(layer, x_q, y_fp, cfg, gen))
        del x_q, y_fp
    model.train(was_training)
    return report
