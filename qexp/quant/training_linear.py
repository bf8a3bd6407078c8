"""A linear layer quantized for training: weights, inputs and output gradients (Chitsaz et al. 2024, Sec. 3.1, 4.3).

    forward:   Y  = Q_a(X) Q_w(W)^T + b
    backward:  dW = Q_g(dY)^T Q_a(X)          (the weight-gradient GEMM takes the quantized output gradient)
               dX = dY Q_w(W)                 (the input-gradient GEMM takes the real one)
               db = sum of dY over tokens

One :class:`torch.autograd.Function`; the formats are :class:`~.dynamic.TensorFormat` value objects (max-scaled, so
the straight-through estimator is the identity: nothing is ever clipped).  Two switches record what the paper leaves
to its code:

- ``grad_path``: which GEMM takes ``Q_g(dY)``: ``weight`` (the paper), ``input`` (the authors' ``activation_grad_flag``,
  which *moves* the quantization to the dX path), ``both`` (Figure 10's unstable run: dX = Q_g(dY) Q_w(W) too);
- ``saved``: ``quantized`` (the paper's formulas above) or ``original`` (the authors' code saves the unquantized X
  and W for the backward: dX = dY W, dW = Q_g(dY)^T X).

:class:`LinearQuant` is the per-layer value object; :func:`attach` sets it on the :class:`~.modules.QLinear` layers
whose site names match, so one forward -- HF's own -- trains with quantization.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .dynamic import TensorFormat
from .sites import matching

GRAD_PATHS = ("weight", "input", "both")
SAVED = ("quantized", "original")


class TrainingQuantError(ValueError):
    pass


@dataclass(frozen=True)
class LinearQuant:
    weights: TensorFormat | None = None
    activations: TensorFormat | None = None
    gradients: TensorFormat | None = None
    grad_path: str = "weight"
    saved: str = "quantized"

    def __post_init__(self) -> None:
        if self.grad_path not in GRAD_PATHS:
            raise TrainingQuantError(f"grad_path={self.grad_path!r}; valid: {', '.join(GRAD_PATHS)}")
        if self.saved not in SAVED:
            raise TrainingQuantError(f"saved={self.saved!r}; valid: {', '.join(SAVED)}")

    @property
    def active(self) -> bool:
        return any(f is not None for f in (self.weights, self.activations, self.gradients))

    def __call__(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return _QuantLinear.apply(x, w, b, self)

    def describe(self) -> dict:
        return {"weights": str(self.weights) if self.weights else None,
                "activations": str(self.activations) if self.activations else None,
                "gradients": str(self.gradients) if self.gradients else None,
                "grad_path": self.grad_path, "saved": self.saved}


def _q(fmt: TensorFormat | None, t: torch.Tensor) -> torch.Tensor:
    return t if fmt is None else fmt.fake_quantize(t)


class _QuantLinear(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, w, b, spec: LinearQuant):
        xq, wq = _q(spec.activations, x), _q(spec.weights, w)
        if spec.saved == "quantized":
            ctx.save_for_backward(xq, wq)
        else:
            ctx.save_for_backward(x, w)
        ctx.spec, ctx.has_bias = spec, b is not None
        return F.linear(xq, wq, b)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        spec = ctx.spec
        g = spec.gradients
        dy_q = _q(g, dy) if g is not None else dy
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = (dy_q if spec.grad_path in ("input", "both") else dy) @ w.to(dy.dtype)
        if ctx.needs_input_grad[1]:
            d_w = dy_q if spec.grad_path in ("weight", "both") else dy
            dw = d_w.reshape(-1, d_w.shape[-1]).t() @ x.reshape(-1, x.shape[-1]).to(dy.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.reshape(-1, dy.shape[-1]).sum(0)
        return dx, dw, db, None


def attach(model: nn.Module, spec: LinearQuant | None, sites: list[str], exclude: list[str]) -> list[str]:
    """Set ``spec`` on every :class:`~.modules.QLinear` whose weight site matches a glob of ``sites`` and none of
    ``exclude`` (``None`` detaches); returns the layer names (without ``.weight``).  A glob that matches nothing is an
    error (a typo)."""
    from .modules import QLinear

    layers = {m.weight_quantizer.name: m for m in model.modules() if isinstance(m, QLinear)}
    for pattern in (*sites, *exclude):
        if not matching(layers, [pattern]):
            raise TrainingQuantError(f"training-quantization glob {pattern!r} matches no linear weight site; the "
                                     f"sites are: {', '.join(sorted(layers)[:8])}{' ...' if len(layers) > 8 else ''}")
    dropped = set(matching(layers, exclude))
    chosen = [n for n in matching(layers, sites) if n not in dropped]
    if spec is not None and not chosen:   # issue 27 #2: `exclude=[*]` recorded an FP run under a qpt recipe's name
        raise TrainingQuantError(f"sites {list(sites)} minus exclude_sites {list(exclude)} leaves no linear layer: "
                                 f"the recipe would quantize nothing (for a floating-point run use recipe fp32)")
    for name in chosen:
        layers[name].training_quant = spec
    return sorted(n.removesuffix(".weight") for n in chosen)
