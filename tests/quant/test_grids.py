"""The two quantization grids (issue 14 #10, #11), against float64 implementations of their formulas on inputs built so
that no value lies near a rounding boundary (exact comparisons): qexp's own grid, chosen per slot, and the ZeroQuant
authors' (DeepSpeed ``compression/utils.py``: SymQuantizer, AsymQuantizer)."""
import numpy as np
import pytest
import torch

from qexp.quant.affine import fake_quantize, qparams
from qexp.quant.quantizer import Quantizer, QuantSpec


def ds_sym(x: np.ndarray, bits: int) -> np.ndarray:
    """DeepSpeed SymQuantizer per row: s = 2 max|x| / 2^b, clamp(round(x / s), -2^(b-1), 2^(b-1) - 1) * s."""
    s = 2 * np.abs(x).max(-1, keepdims=True) / 2 ** bits
    return np.clip(np.round(x / s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * s


def ds_asym(x: np.ndarray, bits: int) -> np.ndarray:
    """DeepSpeed AsymQuantizer per row: s = (max - min) / 2^b, z = round(min / s) * s, clamp(round((x - z) / s), 0,
    2^b - 1) * s + z."""
    lo, hi = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
    s = (hi - lo) / 2 ** bits
    z = np.round(lo / s) * s
    return np.clip(np.round((x - z) / s), 0, 2 ** bits - 1) * s + z


def qexp_sym_row(x: np.ndarray, bits: int) -> np.ndarray:
    """qexp's symmetric grid for one row by itself: signed (max|x| -> 2^(b-1) - 1) if it has a negative value, else
    unsigned (max -> 2^b - 1)."""
    if (x < 0).any():
        s = np.abs(x).max() / (2 ** (bits - 1) - 1)
        return np.clip(np.round(x / s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * s
    s = x.max() / (2 ** bits - 1)
    return np.clip(np.round(x / s), 0, 2 ** bits - 1) * s


def tokens(step: float, lo_code: int, hi_code: int, n: int, seed: int, offset: float = 0.0) -> np.ndarray:
    """n values (k + u) * step + offset with integer k in [lo_code, hi_code) and u in [0.1, 0.4] or [0.6, 0.9]: never
    near a rounding boundary of that step."""
    rng = np.random.default_rng(seed)
    k = rng.integers(lo_code, hi_code, n)
    u = rng.uniform(0.1, 0.4, n) + rng.integers(0, 2, n) * 0.5
    return (k + u) * step + offset


def per_token_quantizer(grid: str, symmetric: bool, bits: int = 8) -> Quantizer:
    q = Quantizer("t", QuantSpec(bits=bits, symmetric=symmetric, granularity="per_token", grid=grid))
    q.set_state("fixed")
    return q


@pytest.mark.parametrize("bits", [4, 8])
def test_deepspeed_symmetric_per_token_matches_its_formula(bits):
    half = 2 ** (bits - 1)
    rows = []
    for i, m in enumerate([2.0, 0.5, 4.0]):          # max|x| = m exactly: s = m / 2^(b-1) is exact in binary
        body = tokens(m / half, -half, half - 1, 30, seed=i)
        rows.append(np.concatenate([body, [m if i != 1 else -m]]))   # the extreme, positive or negative
    x = np.stack(rows)
    got = per_token_quantizer("deepspeed", True, bits)(torch.tensor(x, dtype=torch.float32))
    want = ds_sym(x, bits)
    assert np.array_equal(got.double().numpy(), want)
    assert got[0, -1] == 2.0 * (half - 1) / half      # +max maps to 2^(b-1) and is clipped one step down
    assert got[1, -1] == -0.5                          # -max is on the grid


def test_deepspeed_asymmetric_per_token_matches_its_formula():
    # min -1, max 3: s = 4 / 256 = 1/64, z = round(-64) / 64 exactly; another row min 0.5 (no widening to hold 0)
    a = np.concatenate([tokens(1 / 64, -64, 191, 40, seed=3), [-1.0, 3.0]])
    b = np.concatenate([tokens(1 / 128, 0, 255, 40, seed=4, offset=0.5), [0.5, 2.5]])
    x = np.stack([a, b])
    got = per_token_quantizer("deepspeed", False)(torch.tensor(x, dtype=torch.float32)).double().numpy()
    assert np.array_equal(got, ds_asym(x, 8))
    assert got[1].min() == 0.5 and got[0].max() == 3.0 - 1 / 64   # the top clipped by one step


def test_qexp_grid_chooses_per_token_so_neighbours_do_not_matter():
    """Issue 14 #11: a non-negative token quantized alone and beside a token with negatives gives the same values
    (before the fix the batch's grid was signed, doubling its step)."""
    pos = np.concatenate([tokens(1 / 255, 0, 254, 30, seed=5), [1.0]])        # max 1: unsigned step 1/255
    neg = np.concatenate([tokens(2 / 127, -127, 126, 30, seed=6), [2.0]])     # max|x| 2: signed step 2/127
    q = per_token_quantizer("qexp", True)
    alone = q(torch.tensor(pos[None], dtype=torch.float32))[0]
    both = q(torch.tensor(np.stack([pos, neg]), dtype=torch.float32))
    assert torch.equal(both[0], alone)
    for row, out in zip((pos, neg), both):
        assert np.allclose(out.double().numpy(), qexp_sym_row(row, 8), rtol=0, atol=1e-6)


def test_qexp_grid_is_unchanged_where_every_slot_has_the_same_sign():
    """The committed records' numbers: an all-signed or all-unsigned range gives the old integer grid (zero point 0)."""
    p = qparams(torch.tensor([-1.0, -0.5]), torch.tensor([1.0, 2.0]), 8, True)
    assert (p.q_min, p.q_max) == (-128, 127) and torch.equal(p.zero_point, torch.zeros(2))
    p = qparams(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2.0]), 8, True)
    assert (p.q_min, p.q_max) == (0, 255) and torch.allclose(p.scale, torch.tensor([1 / 255, 2 / 255]))
    x = torch.tensor([[0.3, 0.7], [0.2, 1.9]])
    mixed = qparams(torch.tensor([[-1.0], [0.0]]), torch.tensor([[1.0], [2.0]]), 8, True)
    assert (mixed.q_min, mixed.q_max) == (0, 255)
    assert torch.allclose(fake_quantize(x, mixed)[0], torch.round(x[0] * 127) / 127)
    assert torch.allclose(fake_quantize(x, mixed)[1], torch.round(x[1] / (2 / 255)) * (2 / 255))


def test_zeroquant_recipes_use_the_authors_grid_and_qexp_grid_is_an_option():
    from omegaconf import OmegaConf

    from qexp.cli import compose
    from qexp.config.quant import effective_calibration, quant_config
    from qexp.experiment.records import run_id
    from qexp.quant.sites import resolve_specs

    def specs(*over):
        cfg = compose(["model=tiny_bert", "+recipe=zq_w8a8", *over])
        q = quant_config(OmegaConf.to_container(cfg.recipe, resolve=True), effective_calibration(cfg))
        names = [(f"encoder.layer.0.{m}.{k}", g) for m in ("attn.query", "ffn.intermediate")
                 for k, g in (("weight", "weights"), ("input", "inputs"))]
        return resolve_specs(names, q), run_id(OmegaConf.to_container(cfg, resolve=True))

    ds, rid_ds = specs()
    own, rid_own = specs("recipe.quant.grid=qexp")
    assert {s.grid for s in ds.values()} == {"deepspeed"} and {s.grid for s in own.values()} == {"qexp"}
    assert rid_ds != rid_own
    with pytest.raises(ValueError, match="grid='int4' is not a quantization grid"):
        specs("recipe.quant.grid=int4")


@pytest.mark.parametrize("grid", ["qexp", "deepspeed"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_token", "per_channel"])
@pytest.mark.parametrize("bits", [4, 8])
def test_the_inference_fast_path_gives_the_training_path_values(grid, symmetric, granularity, bits):
    """Issue 14 (speed): under no_grad the quantizer takes the in-place path; its values equal the autograd path's
    exactly (the codes included), for every grid, granularity and sign mix."""
    from qexp.quant.affine import quantize_int

    g = torch.Generator().manual_seed(bits)
    x = torch.randn(6, 5, 32, generator=g) * torch.tensor([1.0, 3.0, 0.1, 1.0, 2.0]).reshape(1, 5, 1)
    x[1] = x[1].abs()                                        # a non-negative token row: mixed signs per token
    spec = QuantSpec(bits=bits, symmetric=symmetric, granularity=granularity, grid=grid)
    q = Quantizer("t", spec)
    q.set_state("estimating")
    q(x)
    q.compute_encodings()
    q.set_state("fixed")
    xg = x.clone().requires_grad_(True)
    slow = q(xg)
    with torch.no_grad():
        fast = q(x)
    assert torch.equal(fast, slow.detach())
    p = q.grid(x)
    assert torch.equal(quantize_int(fast, p), quantize_int(slow.detach(), p))
