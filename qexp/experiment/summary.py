"""What a quantized model looks like, for the record: sites per group, model size, per-site relative errors."""
from __future__ import annotations

from collections import Counter

from ..quant.analysis import quantization_errors
from ..quant.sites import quantizers


def site_summary(model) -> dict:
    out = {}
    for key, group in (("activation", "activations"), ("weight", "weights"), ("input", "inputs")):
        qs = [q for q in quantizers(model) if q.group == group]
        bits = Counter(str(q.spec.bits) for q in qs if q.spec.enabled)
        out[key] = {"sites": len(qs), "quantized": sum(bits.values()), "bits": dict(sorted(bits.items()))}
    return out


def memory_footprint(model) -> dict:
    """Model size from the actual bit-widths: every quantized weight at its bits, every other parameter (biases,
    unquantized weights) at 32; the reduction is relative to all-FP32 (Bondarenko et al. 2021, Table 7)."""
    bits = total = 0
    for m in model.modules():
        inner, q = getattr(m, "inner", None), getattr(m, "weight_quantizer", None)
        if inner is None or q is None:
            continue
        for name, p in inner.named_parameters(recurse=False):
            b = q.spec.bits if (name == "weight" and q.spec.enabled) else 32
            bits += b * p.numel()
            total += p.numel()
    return {"parameters": total, "bits": bits, "reduction": round(32 * total / bits, 4) if bits else None}


def relative_errors(qmodel, batch: dict) -> dict:
    """ZeroQuant's relative error (Table G.10) of every quantized site on one calibration batch ({} if none is)."""
    if not any(q.spec.enabled for q in quantizers(qmodel)):
        return {}
    return {"relative_error": quantization_errors(qmodel, batch)}
