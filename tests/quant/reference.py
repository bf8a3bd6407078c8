"""An independent float64 NumPy reference of Bondarenko et al. 2021, Eq. 1-2 (written from the paper, not from
qexp.quant): used by the quantizer and estimator tests."""
import numpy as np


def np_quantize(x, x_min, x_max, bits, symmetric):
    x = np.asarray(x, dtype=np.float64)
    x_min = np.minimum(np.asarray(x_min, dtype=np.float64), 0.0)
    x_max = np.maximum(np.asarray(x_max, dtype=np.float64), 1e-8)
    if symmetric:
        if np.any(x_min < 0):
            lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        else:
            lo, hi = 0, 2 ** bits - 1
        s = np.maximum(-x_min, x_max) / hi
        z = np.zeros_like(s)
    else:
        lo, hi = 0, 2 ** bits - 1
        s = (x_max - x_min) / hi
        z = np.clip(np.round(-x_min / s), lo, hi)
    s = np.maximum(s, 1e-8)
    q = np.clip(np.round(x / s) + z, lo, hi)
    return s * (q - z)
