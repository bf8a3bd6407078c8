"""Integer inference for quantized linear layers: ``inference.backend`` = fake | torch_int | cupy_int8 | cpu_int8.

``fake`` (default) is fake quantization.  The two integer backends execute every quantized linear (weight and input
quantizer both enabled) as an INT8 GEMM of integer codes with a fused dequantization epilogue:

    y[m, n] = float(acc[m, n] - zx[m] * wsum[n]) * (sx[m] * sw[n]) + b[n],   acc = sum_k a[m, k] * w[n, k] (int32)

``torch_int`` emulates that arithmetic exactly in torch (the accumulator through float64, which holds every int32 sum
exactly; the epilogue in fp32 in the kernel's order) on any device: it is the oracle of the CuPy kernels and their CPU
fallback.  ``cupy_int8`` runs the kernels of ``kernels/`` (``qexp.integer.kernels``) on an NVIDIA GPU; ``cpu_int8``
runs PyTorch's oneDNN INT8 GEMMs on x86 CPUs (``qexp.integer.cpu_int8``).

Supported, and checked when the backend is attached (anything else is an error that names the site):
- weights: symmetric on the signed grid, 2-8 bits (INT4 codes run on the INT8 GEMM), one scale per output row
  (per-tensor, per-channel, or ZeroQuant groups of whole rows), AdaRound decisions included;
- inputs: per-token (dynamic) or per-tensor (static) scales, 2-8 bits, symmetric or asymmetric.  Codes on an unsigned
  grid (asymmetric, or symmetric over non-negative data) are stored shifted by -128 so they fit int8; the shift joins
  the zero point, which the epilogue folds in through ``wsum`` (``cupy_int8``: per-token symmetric or static inputs).
"""
from __future__ import annotations

import torch
from torch import nn

from ..common.registry import Registry
from ..quant.modules import QLinear
from .operands import (INT32_MAX, K_ALIGN, Int8Activation, Int8Weight, IntegerBackendError,  # noqa: F401  (re-exported)
                       activation_operand, check_input_spec, padded, reference_gemm, to_int8, weight_operand)

BACKENDS: Registry = Registry("inference backend")  # name -> backend factory (``fake``: None, fake quantization)
BACKENDS.register("fake")(None)


@BACKENDS.register("torch_int")
class TorchIntBackend:
    name = "torch_int"

    def prepare(self, w: Int8Weight, device) -> Int8Weight:
        return w.to(device)

    def quantize(self, q, x2d: torch.Tensor) -> Int8Activation:
        return activation_operand(q, x2d)

    def gemm(self, a, w, bias, out_dtype):
        return reference_gemm(a, w, bias, out_dtype=out_dtype)


@BACKENDS.register("cupy_int8")
class CupyInt8Backend:
    name = "cupy_int8"

    def __init__(self):
        from . import kernels

        kernels.require()
        self.kernels = kernels

    def prepare(self, w: Int8Weight, device) -> Int8Weight:
        if torch.device(device).type != "cuda":
            raise IntegerBackendError(f"inference.backend=cupy_int8 runs on a CUDA device; the model is on {device} "
                                      f"(set device=cuda, or use inference.backend=torch_int)")
        return w.to(device)

    def quantize(self, q, x2d: torch.Tensor) -> Int8Activation:
        k = self.kernels
        if q.spec.granularity.dynamic:
            codes, scale, zp = k.quantize_per_token(x2d, bits=q.spec.bits, ldq=padded(x2d.shape[1]))
            return Int8Activation(codes, scale, zp)
        p = q.grid(x2d[:1].float())  # static: the site's own range
        s, z = float(p.scale.reshape(-1)[0]), float(p.zero_point.reshape(-1)[0])
        shift = 128 if p.q_min >= 0 and p.q_max > 127 else 0
        codes = k.quantize_static(x2d, s, z, p.q_min, p.q_max, shift, ldq=padded(x2d.shape[1]))
        zp = torch.full((x2d.shape[0],), round(z) - shift, dtype=torch.int32, device=x2d.device)
        return Int8Activation(codes, torch.full((x2d.shape[0],), s, dtype=torch.float32, device=x2d.device), zp)

    def gemm(self, a, w, bias, out_dtype):
        zero = not bool((a.zero_point != 0).any())
        return self.kernels.gemm(a.codes, w.codes, a.scale, w.scale, zx=None if zero else a.zero_point,
                                 wsum=None if zero else w.wsum, bias=bias, out_dtype=out_dtype)


@BACKENDS.register("cpu_int8")
def _cpu_int8():
    """oneDNN's INT8 GEMMs on x86 CPUs (qexp.integer.cpu_int8; imported on first use)."""
    from .cpu_int8 import CpuInt8Backend

    return CpuInt8Backend()


DEVICES = {"cupy_int8": "cuda", "cpu_int8": "cpu"}  # backends bound to one device type (the others run anywhere)


def check_backend(name: str, device: str) -> None:
    """What can be checked before any model loads: the name (an unknown one lists the valid ones) and the device the
    backend runs on, so a mismatch fails before fine-tuning and calibration, not at attach time."""
    BACKENDS.get(name)
    want = DEVICES.get(name)
    if want is not None and torch.device(device).type != want:
        other = "cpu_int8 or torch_int" if want == "cuda" else "cupy_int8 (CUDA) or torch_int"
        raise IntegerBackendError(f"inference.backend={name} runs on device type {want!r}, but the run uses "
                                  f"device={device!r}; set device={want}, or use inference.backend={other}")


def make_backend(name: str):
    cls = BACKENDS.get(name)  # an unknown name lists the valid ones
    if cls is None:
        raise IntegerBackendError(f"inference backend {name!r} is fake quantization: it has no integer GEMM")
    return cls()


class IntegerLinear:
    """The integer execution of one QLinear: quantize the input, INT8 GEMM with the weight codes, fused epilogue.
    A plain object, not a module: the QLinear's quantizers stay registered once, and state dicts do not change."""

    def __init__(self, layer: QLinear, backend):
        self.backend, self.input_quantizer = backend, layer.input_quantizer
        w = layer.inner.weight
        self.weight = backend.prepare(weight_operand(layer.weight_quantizer, w), w.device)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x2d = x.reshape(-1, x.shape[-1])
        y = self.backend.gemm(self.backend.quantize(self.input_quantizer, x2d), self.weight, bias, x.dtype)
        return y.reshape(*x.shape[:-1], y.shape[-1])


def check_recipe(backend_name: str, quant: dict, recipe_name: str, bcq: bool) -> None:
    """Before anything loads (issue 27 #18: ``w8a8_ptq`` on ``cpu_int8`` was refused only after fine-tuning and
    calibration, with 100+ site names): an integer backend runs linears whose weight *and input* are quantized, with
    uniform weights.  The recipe's groups say whether that can hold; site rules are still checked at :func:`attach`."""
    if backend_name == "fake":
        return
    rules = [r for r in quant.get("sites") or [] if r.get("enabled") is True]
    on = {g: bool((quant.get(g) or {}).get("enabled")) or any(str(r.get("match")).endswith(suffix) for r in rules)
          for g, suffix in (("weights", ".weight"), ("inputs", ".input"))}
    if bcq:
        raise IntegerBackendError(f"inference.backend={backend_name}: recipe {recipe_name!r} uses binary-coding (BCQ) "
                                  f"weights, which are non-uniform and have no INT8 GEMM here; use inference.backend=fake")
    if not on["weights"] or not on["inputs"]:
        missing = " and ".join(k for k, v in (("weights", on["weights"]), ("linear inputs", on["inputs"])) if not v)
        raise IntegerBackendError(f"inference.backend={backend_name} runs linears whose weight and input are both "
                                  f"quantized; recipe {recipe_name!r} quantizes no {missing} (its activations are "
                                  f"layer outputs, not GEMM inputs); recipes that work: zq_w8a8, zq_ptq_w8a8, "
                                  f"zq_w8a8_gq, zq_w8a8_tq, zq_ptq_w8a8_asym, zq_w48a8, bq23_* on decoders")


def attach(model: nn.Module, backend_name: str) -> dict:
    """Run every quantized linear of ``model`` on ``backend_name``; the other layers stay as they are.  Returns a
    summary for the run record.  ``fake`` detaches.  Call after calibration (weight ranges fixed)."""
    BACKENDS.get(backend_name)  # an unknown name lists the valid ones
    layers = [m for m in model.modules() if isinstance(m, QLinear)]
    for m in layers:
        m.integer = None
    if backend_name == "fake":
        return {"backend": "fake", "integer_linears": 0}
    half = [f"{m.weight_quantizer.name} ({'weight' if m.weight_quantizer.spec.enabled else 'input'} only)"
            for m in layers if m.weight_quantizer.spec.enabled != m.input_quantizer.spec.enabled]
    if half:
        raise IntegerBackendError(f"inference.backend={backend_name} runs linears whose weight and input are both "
                                  f"quantized (W8A8-style recipes); these quantize only one: {half[:6]}"
                                  f"{' ...' if len(half) > 6 else ''}")
    chosen = [m for m in layers if m.weight_quantizer.spec.enabled]
    if not chosen:
        raise IntegerBackendError(f"inference.backend={backend_name}: the recipe quantizes no linear layer's weight "
                                  f"and input; use a W8A8-style recipe (e.g. +recipe=zq_w8a8)")
    bcq = [m.weight_quantizer.name for m in chosen if m.weight_quantizer.values is not None]
    if bcq:
        raise IntegerBackendError(f"inference.backend={backend_name}: binary-coding (BCQ) weights are non-uniform and "
                                  f"have no INT8 GEMM here: {bcq[:4]}; use inference.backend=fake")
    for m in chosen:
        check_input_spec(m.input_quantizer, backend_name)
    backend = make_backend(backend_name)
    for m in chosen:
        m.integer = IntegerLinear(m, backend)
    return {"backend": backend_name, "integer_linears": len(chosen),
            "float_linears": len(layers) - len(chosen), **(backend.describe() if hasattr(backend, "describe") else {})}
