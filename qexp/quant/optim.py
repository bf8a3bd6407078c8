"""AdamW with quantized first and/or second moments (Chitsaz et al. 2024, Sec. 4.4; Figures 11-12).

:class:`QuantizedAdamW` *is* ``torch.optim.AdamW`` (same update, same foreach/fused kernels, same state dict): with
both formats off it computes bit for bit what AdamW computes (tested).  With a format on, that moment is quantized
with a dynamic max-scaled :class:`~.dynamic.TensorFormat`, each moment on its own:

- ``timing="after_update"`` (the paper: "stored quantized between steps"): right after every update the moment is
  replaced by its quantized value, so the next update reads exactly what a code + scale store would hold;
- ``timing="on_read"`` (the authors' code): the stored moment is quantized when the next step reads it, so step 1 is
  exactly AdamW.

Storage stays float32 (fake quantization: the values are the quantized ones; the memory a real code + scale store
would save is what :mod:`qexp.train.memory`'s analytic model reports).  ``per_channel`` is one range per output row of
a 2-D parameter's state (axis 0); a 1-D state (biases, norms) under ``per_channel`` gets one range per tensor, since a
range per element would be lossless.
"""
from __future__ import annotations

import torch

from .dynamic import TensorFormat
from .granularity import PerChannel, PerTensor

TIMINGS = ("after_update", "on_read")
_STATE = {"m1": "exp_avg", "m2": "exp_avg_sq"}


class OptimizerConfigError(ValueError):
    pass


def _format_for(fmt: TensorFormat, t: torch.Tensor) -> TensorFormat:
    if isinstance(fmt.granularity, PerChannel) and t.dim() < 2:
        return TensorFormat(fmt.bits, PerTensor(), fmt.symmetric, fmt.min_range, fmt.levels)
    return fmt


class QuantizedAdamW(torch.optim.AdamW):
    def __init__(self, params, *, m1: TensorFormat | None = None, m2: TensorFormat | None = None,
                 timing: str = "after_update", **kwargs):
        if timing not in TIMINGS:
            raise OptimizerConfigError(f"optimizer timing={timing!r}; valid: {', '.join(TIMINGS)}")
        super().__init__(params, **kwargs)
        self.formats = {k: f for k, f in (("m1", m1), ("m2", m2)) if f is not None}
        self.timing = timing

    @torch.no_grad()
    def quantize_states(self) -> None:
        """Replace every quantized moment in the state by its quantized value (in place)."""
        for group in self.param_groups:
            if not group.get("quantize", True):   # the authors' scope: only groups flagged for quantization
                continue
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                for which, fmt in self.formats.items():
                    t = state[_STATE[which]]
                    t.copy_(_format_for(fmt, t).fake_quantize(t))

    def step(self, closure=None):
        if self.formats and self.timing == "on_read":
            self.quantize_states()
        loss = super().step(closure)
        if self.formats and self.timing == "after_update":
            self.quantize_states()
        return loss

    def describe(self) -> dict:
        return {"m1": str(self.formats["m1"]) if "m1" in self.formats else None,
                "m2": str(self.formats["m2"]) if "m2" in self.formats else None, "timing": self.timing}
