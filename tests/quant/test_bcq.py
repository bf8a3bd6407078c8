"""Importance-weighted binary-coding quantization (Kwon et al. 2021) against an independent float64 NumPy reference
(one group at a time), brute-force enumeration of codes and scales, and hand calculations."""
import itertools

import numpy as np
import pytest
import torch

from qexp.quant.bcq import BCQ, BCQError, Importance, nearest_codes, weighted_error


# -- the reference: plain NumPy, one group at a time --------------------------------------------------------------------
def ref_importance(w, E, C, P):
    a = np.abs(w)
    s = np.sort(a.reshape(-1))
    m = np.ones_like(w)
    if E > 0 or C < 1:
        m = a / a.max()
    if C < 1:
        m = np.minimum(a / s[int(s.size * C)], 1.0)
    if E > 0:
        m = m ** E
    w = w.copy()
    if P > 0:
        pruned = a <= s[int(s.size * P)]
        m[pruned] = 0.0
        w[pruned] = 0.0
    return m, w


def ref_levels_codes(alpha):
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(alpha))))
    return signs @ alpha, signs


def ref_bcq(w, bits, rounds, E=0.0, C=1.0, P=0.0, group=None, solver="exact"):
    m, wp = ref_importance(w, E, C, P)
    g = group or w.shape[1]
    W, M = wp.reshape(-1, g), m.reshape(-1, g)
    out, alphas = np.zeros_like(W), []
    for k in range(W.shape[0]):
        wk, mk = W[k], M[k]
        r, alpha, B = wk.copy(), np.zeros(bits), np.zeros((g, bits))
        for i in range(bits):
            b = np.sign(r)
            alpha[i] = (mk * np.abs(r)).sum() / mk.sum() if mk.sum() > 0 else 0.0
            r = r - alpha[i] * b
            B[:, i] = b
        for _ in range(rounds if bits > 1 else 0):
            A = B.T @ (mk[:, None] * B)
            rhs = B.T @ (mk * wk)
            if solver == "exact":
                x = np.linalg.lstsq(A, rhs, rcond=None)[0]
            else:   # the authors' damped CG, q iterations, warm start
                x = alpha.copy()
                res = rhs - A @ x
                p = res.copy()
                rr_new = res @ res
                for _ in range(bits):
                    rr = rr_new
                    Ap = A @ p
                    step = rr / (p @ Ap + 1e-6)
                    x = x + step * p
                    res = res - step * Ap
                    rr_new = res @ res
                    p = res + rr_new / (rr + 1e-6) * p
            alpha = np.sort(np.abs(x))[::-1]
            levels, signs = ref_levels_codes(alpha)
            order = np.argsort(levels, kind="stable")
            for j in range(g):   # nearest level; exactly between two: the upper one
                d = np.abs(levels[order] - wk[j])
                best = np.flatnonzero(d == d.min())[-1]
                B[j] = signs[order[best]] if mk[j] != 0 else 0.0
        out[k] = B @ alpha
        alphas.append(alpha)
    return out.reshape(w.shape), np.array(alphas)


CASES = [(2, 0, {}), (3, 0, {"E": 1.0}), (3, 1, {}), (2, 15, {}), (3, 15, {"E": 1.0}), (4, 15, {"E": 0.5, "C": 0.99}),
         (3, 15, {"P": 0.1}), (3, 15, {"E": 1.0, "P": 0.05}), (3, 15, {"C": 0.999})]


@pytest.mark.parametrize("bits,rounds,imp", CASES)
@pytest.mark.parametrize("solver", ["exact", "cg"])
@pytest.mark.parametrize("group", [None, 4])
def test_matches_the_float64_reference(bits, rounds, imp, solver, group):
    torch.manual_seed(bits * 100 + rounds)
    w = torch.randn(6, 16, dtype=torch.float64) * torch.linspace(0.2, 2.0, 16, dtype=torch.float64)
    q = BCQ(bits, rounds, group, Importance(**imp), solver)
    got, alpha, codes = q.quantize(w)
    want, want_alpha = ref_bcq(w.numpy(), bits, rounds, group=group, solver=solver, **imp)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-10)
    if (group or 16) > bits:
        np.testing.assert_allclose(alpha.numpy(), want_alpha, rtol=0, atol=1e-10)
    # else: as many scales as weights in a group -- the fit is exact after the first round, several codes reproduce
    # the group's weights exactly, and which one the nearest-level step picks is an ulp-level tie between levels
    # summed in another order (NumPy vs torch): on an Intel Xeon the 4-bit, 4-weight case takes another code in round
    # 2 and ends with other scales (0.0037 apart) that give the same reconstruction (checked above, 1e-10)
    assert codes.shape == (6 * 16 // (group or 16), group or 16, bits)


def test_greedy_by_hand():
    # one row, q = 2: b1 = sign(w), alpha1 = mean|w| = 2; r = [-1, 1, -1, 1] -> alpha2 = 1
    w = torch.tensor([[1.0, 3.0, -1.0, -3.0]])
    w_hat, alpha, _ = BCQ(2, 0).quantize(w)
    assert alpha.tolist() == [[2.0, 1.0]] and w_hat.tolist() == [[1.0, 3.0, -1.0, -3.0]]
    # importance E = 1 (m = |w| / 3): alpha1 = sum m|w| / sum m = (1 + 9 + 1 + 9) / 8 = 2.5
    _, alpha, _ = BCQ(1, 0, importance=Importance(E=1.0)).quantize(w.double())
    assert alpha.item() == pytest.approx(2.5, abs=1e-12)


def test_importance_by_hand():
    w = torch.tensor([[0.5, -1.0, 2.0, -4.0, 0.0, 8.0, 1.5, -3.0]])   # sorted |w|: 0 .5 1 1.5 2 3 4 8
    m, _ = Importance(E=1.0).weights(w)
    assert m.tolist() == [[0.0625, 0.125, 0.25, 0.5, 0.0, 1.0, 0.1875, 0.375]]        # |w| / 8
    m, _ = Importance(C=0.75).weights(w)      # t_C = sorted[6] = 4; E = 0 with C < 1 still uses the magnitude
    assert m.tolist() == [[0.125, 0.25, 0.5, 1.0, 0.0, 1.0, 0.375, 0.75]]
    m, wp = Importance(P=0.25).weights(w)     # t_P = sorted[2] = 1: |w| <= 1 pruned (ties included)
    assert m.tolist() == [[0, 0, 1, 1, 0, 1, 1, 1]] and wp.tolist() == [[0, 0, 2, -4, 0, 8, 1.5, -3]]


def test_pruned_weights_get_zero_codes_and_stay_zero():
    torch.manual_seed(0)
    w = torch.randn(4, 32)
    w_hat, _, codes = BCQ(3, 15, importance=Importance(P=0.2)).quantize(w)
    pruned = w.abs() <= w.abs().reshape(-1).sort().values[int(w.numel() * 0.2)]
    assert pruned.sum() >= 25 and (w_hat[pruned] == 0).all()
    assert (codes.reshape(4, 32, 3)[pruned] == 0).all()


@pytest.mark.parametrize("bits", [2, 3])
def test_codes_are_the_nearest_levels_by_enumeration(bits):
    torch.manual_seed(bits)
    w = torch.randn(3, 10, dtype=torch.float64)
    alpha = torch.rand(3, bits, dtype=torch.float64).sort(1, descending=True).values
    codes = nearest_codes(w, alpha)
    for k in range(3):
        levels = [sum(s * a for s, a in zip(signs, alpha[k].tolist()))
                  for signs in itertools.product((1, -1), repeat=bits)]
        best = np.min(np.abs(np.array(levels)[None, :] - w[k].numpy()[:, None]), axis=1)
        got = np.abs((codes[k] @ alpha[k]).numpy() - w[k].numpy())
        np.testing.assert_allclose(got, best, rtol=0, atol=1e-12)


def test_exact_alpha_step_is_the_weighted_least_squares_optimum_for_its_codes():
    """After the final B-step the scales need not be optimal (the loop ends with codes); one more exact alpha-step
    can only lower the weighted error, and brute-force over a scale grid finds nothing better than that step."""
    torch.manual_seed(3)
    w = torch.randn(1, 8, dtype=torch.float64)
    imp = Importance(E=1.0)
    q = BCQ(2, 4, importance=imp, solver="exact")
    w_hat, alpha, codes = q.quantize(w)
    m, _ = imp.weights(w)
    B = codes[0].numpy()
    a_opt = np.linalg.lstsq(B.T @ (m[0].numpy()[:, None] * B), B.T @ (m[0].numpy() * w[0].numpy()), rcond=None)[0]
    err_opt = (m[0].numpy() * (w[0].numpy() - B @ a_opt) ** 2).sum()
    grid = np.linspace(-2, 2, 81)
    best_grid = min((m[0].numpy() * (w[0].numpy() - B @ np.array([a, b])) ** 2).sum() for a in grid for b in grid)
    assert err_opt <= best_grid + 1e-12
    assert err_opt <= float(weighted_error(w, w_hat, m)[0]) + 1e-12


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_alternating_is_never_worse_than_greedy_on_the_weighted_objective(solver):
    worse = 0
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(8, 24, generator=g, dtype=torch.float64) * (1 + 3 * torch.rand(1, 24, generator=g,
                                                                                         dtype=torch.float64))
        imp = Importance(E=float(seed % 3) / 2, C=(1.0, 0.99)[seed % 2])
        m, _ = imp.weights(w)
        for bits in (2, 3, 4):
            greedy = BCQ(bits, 0, importance=imp, solver=solver).quantize(w)[0]
            alt = BCQ(bits, 15, importance=imp, solver=solver).quantize(w)[0]
            worse += int(weighted_error(w, alt, m).sum() > weighted_error(w, greedy, m).sum() * (1 + 1e-9))
    assert worse == 0


@pytest.mark.parametrize("kwargs,match", [
    ({"bits": 9}, r"bits=9 must be an integer in 1\.\.8"),
    ({"bits": 0}, r"bits=0"),
    ({"rounds": -1}, r"rounds=-1"),
    ({"group_size": 0}, r"group_size=0"),
    ({"solver": "newton"}, r"solver='newton'; valid: cg, exact"),
])
def test_bad_settings_name_the_value(kwargs, match):
    with pytest.raises(BCQError, match=match):
        BCQ(**kwargs)


@pytest.mark.parametrize("kwargs,match", [({"E": -0.5}, "E=-0.5 must be >= 0"), ({"C": 0.0}, r"C=0.0 must lie in \(0, 1\]"),
                                          ({"C": 1.5}, "C=1.5"), ({"P": 1.0}, r"P=1.0 must lie in \[0, 1\)")])
def test_bad_importance_names_the_value(kwargs, match):
    with pytest.raises(BCQError, match=match):
        Importance(**kwargs)


def test_a_group_size_that_does_not_divide_the_row_is_refused():
    with pytest.raises(BCQError, match=r"group_size=5 does not divide the row length 16.*valid group sizes: \[1, 2, 4, 8, 16\]"):
        BCQ(3, group_size=5).quantize(torch.randn(2, 16))


# -- the uniform baseline ---------------------------------------------------------------------------------------------
def test_uniform_minmax_rows_by_hand():
    from qexp.quant.uniform_rows import UniformRows

    # row [-1, 0, 0.4, 2] at 2 bits: s = 3 / 3 = 1, z = 1: levels -1, 0, 1, 2 -> 0.4 rounds to 0
    w = torch.tensor([[-1.0, 0.0, 0.4, 2.0], [0.0, 0.1, 0.2, 0.3]])
    got = UniformRows(2).quantize(w)
    assert got[0].tolist() == [-1.0, 0.0, 0.0, 2.0]
    np.testing.assert_allclose(got[1].numpy(), [0.0, 0.1, 0.2, 0.3], atol=1e-7)   # 4 levels for 4 evenly spaced


def test_uniform_weighted_mse_is_never_worse_than_minmax_on_its_objective():
    from qexp.quant.uniform_rows import UniformRows

    torch.manual_seed(0)
    w = torch.randn(16, 64, dtype=torch.float64) ** 3         # heavy tails: shrinking the range pays
    imp = Importance(E=1.0)
    m, _ = imp.weights(w)
    mm = UniformRows(3, "minmax", importance=imp).quantize(w)
    ms = UniformRows(3, "weighted_mse", importance=imp).quantize(w)
    assert (weighted_error(w, ms, m) <= weighted_error(w, mm, m) + 1e-12).all()   # k = candidates is min-max
    ones = torch.ones_like(w)   # unweighted, heavy tails: clipping the range pays
    plain = UniformRows(3, "weighted_mse").quantize(w)
    assert weighted_error(w, plain, ones).sum() < 0.95 * weighted_error(w, mm, ones).sum()   # measured 0.915
    with pytest.raises(BCQError, match="method='rtn'; valid: minmax, weighted_mse"):
        UniformRows(3, "rtn")


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_the_level_histogram_alpha_step_solves_the_same_normal_equations(bits, solver):
    """Alternating's rounds after the first fit alpha from each level's importance and weighted sum; the normal
    equations must be those of the explicit codes (float64, some weights pruned: importance 0)."""
    from qexp.quant.bcq import alpha_step, alpha_step_levels, nearest_levels, sign_vectors

    g = torch.Generator().manual_seed(bits)
    w = torch.randn(7, 24, generator=g, dtype=torch.float64)
    m = torch.rand(7, 24, generator=g, dtype=torch.float64).masked_fill(torch.rand(7, 24, generator=g) < 0.2, 0.0)
    alpha = torch.rand(7, bits, generator=g, dtype=torch.float64).sort(1, descending=True).values
    idx = nearest_levels(w, alpha)
    codes = sign_vectors(bits, torch.float64)[idx] * (m != 0).unsqueeze(-1)
    torch.testing.assert_close(alpha_step_levels(w, m, idx, alpha, solver), alpha_step(w, m, codes, alpha, solver),
                               rtol=0, atol=1e-12)
    assert torch.equal(sign_vectors(bits, torch.float64)[idx], nearest_codes(w, alpha))
