"""The quantizer: holds a site's spec and ranges and does the quantize-dequantize math (STYLE 4).

States:
- ``off``: identity (the FP32 model);
- ``estimating``: the estimator observes the input, the forward passes it through unchanged;
- ``measuring``: the PEG permutation pass records per-dimension ranges, the forward passes through;
- ``fixed``: static ranges from calibration are applied;
- ``learned``: like ``fixed`` but the ranges are trainable parameters (QAT).
Dynamic granularities (per-token) need no calibration: in ``fixed`` and ``learned`` they compute the range from
the current tensor in every forward; while estimating or measuring they pass through like every other site.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as nn_module

from .affine import (GRIDS, QParams, check_bits, fake_quantize, fake_quantize_inplace, fake_quantize_rounded,
                     qparams)
from .estimators import CalibrationError, make_estimator
from .granularity import Granularity, GranularityError, PerTensor, make_granularity, range_permutation

STATES = ("off", "estimating", "measuring", "fixed", "learned")
_GENERATIONS = itertools.count()


@dataclass(frozen=True)
class QuantSpec:
    """What to do at one quantization site.  Built from config by :func:`QuantSpec.from_config`."""

    bits: int = 8
    symmetric: bool = False
    granularity: Granularity = field(default_factory=PerTensor)
    estimator: Any = "current_minmax"  # registry name or {name: ..., **kwargs}
    enabled: bool = True
    grid: str = "qexp"      # "qexp" | "deepspeed" (the ZeroQuant authors' scale and zero point: affine.qparams)

    def __post_init__(self) -> None:
        check_bits(self.bits, bool(self.symmetric))
        if self.grid not in GRIDS:
            raise ValueError(f"grid={self.grid!r} is not a quantization grid; valid: {', '.join(GRIDS)}")
        object.__setattr__(self, "granularity", make_granularity(self.granularity))
        est = make_estimator(self.estimator)  # validates the name and arguments
        if self.granularity.dynamic and not est.supports_dynamic:
            raise GranularityError(
                f"estimator {est.name!r} does not fit granularity {self.granularity}: its ranges are recomputed in "
                f"every forward, which only 'current_minmax' supports")

    @classmethod
    def from_config(cls, cfg) -> "QuantSpec":
        cfg = dict(cfg)
        unknown = set(cfg) - {"bits", "symmetric", "granularity", "estimator", "enabled", "grid"}
        if unknown:
            raise ValueError(f"unknown quantizer option(s) {sorted(unknown)}; valid: bits, symmetric, granularity, "
                             f"estimator, enabled, grid")
        if "estimator" in cfg and not isinstance(cfg["estimator"], str):
            cfg["estimator"] = dict(cfg["estimator"])
        if "granularity" in cfg and not isinstance(cfg["granularity"], str):
            cfg["granularity"] = dict(cfg["granularity"])
        return cls(**cfg)

    def updated(self, **changes) -> "QuantSpec":
        return replace(self, **changes)

    def describe(self) -> str:
        if not self.enabled:
            return "fp"
        est = make_estimator(self.estimator)
        grid = "" if self.grid == "qexp" else f" {self.grid} grid"
        return f"{self.bits}b {'sym' if self.symmetric else 'asym'} {self.granularity} {est!r}{grid}"


class Quantizer(nn.Module):
    kind = "activation"      # "activation" (calibrated from data) or "weight" (from itself)
    fast_inference = True    # the in-place no-grad path (qexp bench fakequant turns it off to time the old path)
    group = "activations"    # the default spec it takes from a quant config (sites.GROUPS)
    # Whether the caller hands over a tensor it made for this site and reads no more (an operation's output: a linear's,
    # a LayerNorm's, a sum's, the attention scores), so inference may write the result into it instead of a new tensor
    # (issue 31 #5: one allocation and one pass fewer per site).  Never for a linear's input (ZeroQuant: q, k and v read
    # the same tensor).  Only under no_grad and while nothing observes the site (a forward hook reads its input).
    owns_input = False

    def __init__(self, name: str, spec: QuantSpec):
        super().__init__()
        self.name = name
        self.spec = spec
        self.state = "off"
        self.estimator = make_estimator(spec.estimator)
        self.estimator.expect(spec.bits, spec.symmetric)
        self.register_buffer("x_min", None)
        self.register_buffer("x_max", None)
        self.register_buffer("perm", None)
        self.register_buffer("rounding", None)  # AdaRound's learned up/down decisions (0/1), weights only
        self.register_buffer("values", None)    # a non-uniform quantizer's dequantized weight (BCQ), weights only
        self._dim_min = self._dim_max = None

    # what a cached quantized weight depends on: any assignment to these bumps ``generation`` (modules.QLinear's cache).
    # Not ``state``: the cache is read only in the "fixed" state, and every way into it that changes the ranges assigns
    # them (calibration, QAT's learned ranges back to buffers); toggling a site off and on again keeps its weight.
    _CACHE_INPUTS = frozenset({"values", "x_min", "x_max", "rounding", "perm", "spec"})

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if name in Quantizer._CACHE_INPUTS:
            object.__setattr__(self, "generation", next(_GENERATIONS))   # unique across every quantizer

    # -- state ------------------------------------------------------------------------------------------------
    def set_state(self, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"unknown quantizer state {state!r}; valid: {STATES}")
        if not self.spec.enabled:
            state = "off"
        if state in ("fixed", "learned") and self.x_min is None and not self.spec.granularity.dynamic:
            raise CalibrationError(f"quantizer {self.name!r} has no range: calibrate before enabling it")
        learnable = self.spec.enabled and not self.spec.granularity.dynamic
        if state == "learned" and learnable and not isinstance(self.x_min, nn.Parameter):
            # the ranges become parameters, initialised from calibration (QAT with learnable ranges)
            x_min, x_max = self.x_min.detach().clone(), self.x_max.detach().clone()
            del self.x_min, self.x_max
            self.x_min, self.x_max = nn.Parameter(x_min), nn.Parameter(x_max)
        elif state != "learned" and isinstance(self.x_min, nn.Parameter):
            # back to buffers holding the learned values: fixed ranges for evaluation and export
            x_min, x_max = self.x_min.detach().clone(), self.x_max.detach().clone()
            del self.x_min, self.x_max
            self.register_buffer("x_min", x_min)
            self.register_buffer("x_max", x_max)
        self.state = state

    @property
    def needs_permutation(self) -> bool:
        return self.spec.enabled and self.spec.granularity.permutes

    # -- layout -----------------------------------------------------------------------------------------------
    def slots(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as this site's slot view ``(n_slots, n_elements)`` (what estimators observe)."""
        return self.spec.granularity.slots(x, self.perm)

    def expand(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-slot values ``p`` broadcast back to ``x``'s layout."""
        return self.spec.granularity.expand(p, x, self.perm)

    # -- calibration ------------------------------------------------------------------------------------------
    def finish_measuring(self) -> None:
        if self._dim_min is None:
            raise CalibrationError(f"quantizer {self.name!r}: no data reached it in the permutation pass")
        self.perm = range_permutation(self._dim_max - self._dim_min)
        self._dim_min = self._dim_max = None

    def compute_encodings(self) -> None:
        """Solve the estimator for this site's range and store it."""
        if not self.spec.enabled or self.spec.granularity.dynamic:
            return
        if self.estimator.n_observed == 0:
            raise CalibrationError(f"quantizer {self.name!r}: no calibration data reached this site")
        x_min, x_max = self.estimator.compute_range(self.spec.bits, self.spec.symmetric)
        self.x_min, self.x_max = x_min.to(torch.float32), x_max.to(torch.float32)
        self.estimator.reset()

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self.state
        if state == "off":
            return x
        if state == "estimating":
            try:
                self.estimator.observe(self.slots(x))
            except CalibrationError as e:
                raise CalibrationError(f"quantizer {self.name!r}: {e}") from None
            return x
        if state == "measuring":
            flat = x.detach().reshape(-1, x.shape[-1])
            lo, hi = flat.amin(0), flat.amax(0)
            # the range of each embedding dimension over all permutation-pass batches
            self._dim_min = lo if self._dim_min is None else torch.minimum(self._dim_min, lo)
            self._dim_max = hi if self._dim_max is None else torch.maximum(self._dim_max, hi)
            return x
        if self.values is not None:   # binary-coding quantization (qexp.quant.bcq_step): the weight as BCQ left it
            if self.values.shape != x.shape:
                raise ValueError(f"quantizer {self.name!r}: BCQ values of shape {tuple(self.values.shape)} do not "
                                 f"fit the weight's shape {tuple(x.shape)}")
            return self.values.to(x.dtype)
        if self.spec.granularity.dynamic:
            slots = self.slots(x)
            return self._quantize(x, slots.amin(dim=1), slots.amax(dim=1))
        return self._quantize(x, self.x_min, self.x_max, static=True)

    def _static_qparams(self, x: torch.Tensor) -> QParams:
        """The fixed range's grid broadcast to ``x`` at inference, computed once per range and input shape (issue 31
        #5: ten small tensor operations per site and forward).  Keyed by everything it reads: the generation (a new
        range, permutation or spec), the ranges' in-place versions (``load_state_dict``), and x's shape and dtype."""
        key = (self.generation, self.x_min._version, self.x_max._version, tuple(x.shape), x.dtype, x.device)
        if getattr(self, "_qp_key", None) != key:
            self._qp, self._qp_key = self.qparams_for(x), key
        return self._qp

    def grid(self, x: torch.Tensor | None = None) -> QParams:
        """This site's integer grid: scale, zero point, q_min, q_max -- the one place QAT, AdaRound, the integer
        backends and the kernels' callers take it from.  Without ``x``: one entry per slot, from the static range.
        With ``x``: broadcast to ``x``; a dynamic (per-token) site takes its ranges from ``x`` itself."""
        if x is None:
            return qparams(self.x_min, self.x_max, self.spec.bits, self.spec.symmetric, self.spec.grid)
        if self.spec.granularity.dynamic:
            slots = self.slots(x)
            return self.qparams_for(x, slots.amin(dim=1), slots.amax(dim=1))
        return self.qparams_for(x)

    def qparams_for(self, x: torch.Tensor, x_min: torch.Tensor | None = None,
                    x_max: torch.Tensor | None = None) -> QParams:
        """Scale and zero point broadcast to ``x``, from the given ranges or else this site's static ones."""
        x_min = self.x_min if x_min is None else x_min
        x_max = self.x_max if x_max is None else x_max
        lo, hi = self.expand(x_min, x).to(x.dtype), self.expand(x_max, x).to(x.dtype)
        return qparams(lo, hi, self.spec.bits, self.spec.symmetric, self.spec.grid)

    def _quantize(self, x: torch.Tensor, x_min: torch.Tensor, x_max: torch.Tensor,
                  static: bool = False) -> torch.Tensor:
        if static and self.state == "fixed" and not torch.is_grad_enabled():
            p = self._static_qparams(x)
        else:
            p = self.qparams_for(x, x_min, x_max)
        if self.rounding is not None:  # AdaRound: floor plus the learned decision instead of round-to-nearest
            if self.rounding.shape != x.shape:
                raise ValueError(f"quantizer {self.name!r}: AdaRound decisions of shape {tuple(self.rounding.shape)} "
                                 f"do not fit the weight's shape {tuple(x.shape)}")
            return fake_quantize_rounded(x, p, self.rounding).to(x.dtype)
        if Quantizer.fast_inference and not (torch.is_grad_enabled() and (x.requires_grad or p.scale.requires_grad)):
            # inference (evaluation, calibration passes): the same values without the autograd path
            zero = self.spec.symmetric and p.q_min < 0   # a signed symmetric grid: zero point 0
            overwrite = self.owns_input and not torch.is_grad_enabled() and not self.observed
            return fake_quantize_inplace(x, p, zero_point_is_zero=zero, overwrite=overwrite).to(x.dtype)
        return fake_quantize(x, p).to(x.dtype)

    @property
    def observed(self) -> bool:
        """Whether a forward hook (this module's or a global one) may read this site's input after the call."""
        return bool(self._forward_hooks or self._forward_pre_hooks or nn_module._global_forward_hooks
                    or nn_module._global_forward_pre_hooks)

    def extra_repr(self) -> str:
        return f"{self.name}: {self.spec.describe()}, state={self.state}"
