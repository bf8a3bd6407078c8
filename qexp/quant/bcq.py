"""Binary-coding quantization (BCQ) with importance weights (Kwon et al. 2021): w ~ sum_i alpha_i b_i per group.

A group (one output row by default, or ``group_size`` consecutive weights of a row) is approximated by q scales
alpha_1 >= ... >= alpha_q >= 0 and q sign vectors b_i in {-1, +1}^g, i.e. by the nearest of 2^q non-uniform levels.
The fit minimises the importance-weighted error sum_j m_j (w_j - sum_i alpha_i b_ij)^2 with

    m_j = 0                                  if |w_j| <= t_P      (the weight is pruned: set to 0, codes 0)
    m_j = min(|w_j| / t_C, 1) ** E           otherwise            (t_C: the C-quantile of |w|; C = 1: max |w|)

quantiles taken over the whole tensor (``../shared/research/pwq-bcq-and-quantized-pretraining.md`` 1.4, as the
authors' ``lut-gemm/examples/bcq.py`` computes it, including its quirk: E = 0 with C < 1 still uses the clipped
magnitude, i.e. behaves as E = 1; E = 0, C = 1, P = 0 is plain unweighted BCQ).

Algorithms (:class:`BCQ`, ``rounds``): 0 = Greedy (b_i = sign(r), alpha_i = weighted mean of |r|, r -= alpha_i b_i;
sign(0) = 0 as in the code), 1 = refined Greedy, >= 2 = Alternating: each round an alpha-step (the weighted normal
equations (B^T M B) alpha = B^T M w; ``solver="cg"``: the authors' q-iteration batched conjugate gradient with 1e-6
damping, warm-started, then |alpha| sorted descending; ``"exact"``: the minimum-norm least-squares solve) and a B-step (every weight
to its nearest level; ties go up; pruned weights keep zero codes).  Everything is vectorised over all groups of a
tensor at once.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SOLVERS = ("cg", "exact")


class BCQError(ValueError):
    pass


@dataclass(frozen=True)
class Importance:
    """The E, C, P knobs of the importance metric (defaults: uniform importance, plain BCQ)."""
    E: float = 0.0
    C: float = 1.0
    P: float = 0.0

    def __post_init__(self) -> None:
        for name, v in (("E", self.E), ("C", self.C), ("P", self.P)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise BCQError(f"importance {name}={v!r} must be a number")
        if self.E < 0:
            raise BCQError(f"importance E={self.E} must be >= 0 (0: uniform importance)")
        if not 0 < self.C <= 1:
            raise BCQError(f"importance C={self.C} must lie in (0, 1] (1: no clipping)")
        if not 0 <= self.P < 1:
            raise BCQError(f"importance P={self.P} must lie in [0, 1) (0: no pruning)")

    @property
    def uniform(self) -> bool:
        return self.E == 0 and self.C == 1 and self.P == 0

    def weights(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, w with pruned entries zeroed), both shaped like ``w``; quantiles over the whole tensor."""
        a = w.abs()
        m = torch.ones_like(w)
        if self.uniform:
            return m, w
        flat = a.reshape(-1)

        def quantile(f: float) -> torch.Tensor:   # sorted(|w|)[int(n f)] over the whole tensor, without the sort
            return flat.kthvalue(int(flat.numel() * f) + 1).values

        if self.E > 0 or self.C < 1:
            m = a / a.max().clamp_min(torch.finfo(w.dtype).tiny)
        if self.C < 1:
            t_c = quantile(self.C).clamp_min(torch.finfo(w.dtype).tiny)
            m = (a / t_c).clamp(max=1.0)
        if self.E > 0:
            m = m ** self.E
        if self.P > 0:
            pruned = a <= quantile(self.P)
            m = m.masked_fill(pruned, 0.0)
            w = w.masked_fill(pruned, 0.0)
        return m, w


@dataclass(frozen=True)
class BCQ:
    bits: int = 3
    rounds: int = 15
    group_size: int | None = None
    importance: Importance = Importance()
    solver: str = "cg"

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise BCQError(f"BCQ bits={self.bits!r} must be an integer in 1..8")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 0:
            raise BCQError(f"BCQ rounds={self.rounds!r} must be an integer >= 0 (0 Greedy, 1 refined, >= 2 "
                           f"Alternating)")
        if self.group_size is not None and (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                                            or self.group_size < 1):
            raise BCQError(f"BCQ group_size={self.group_size!r} must be a positive integer (or null: one row)")
        if self.solver not in SOLVERS:
            raise BCQError(f"BCQ solver={self.solver!r}; valid: {', '.join(SOLVERS)}")

    @property
    def method(self) -> str:
        return {0: "greedy", 1: "refined_greedy"}.get(self.rounds, "alternating")

    def groups(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` (out, in) as (groups, group_size) rows."""
        if w.dim() != 2:
            raise BCQError(f"BCQ quantizes 2-D weights (out, in); got shape {tuple(w.shape)}")
        g = self.group_size or w.shape[1]
        if w.shape[1] % g:
            fits = [k for k in range(1, w.shape[1] + 1) if w.shape[1] % k == 0]
            raise BCQError(f"BCQ group_size={g} does not divide the row length {w.shape[1]} of a weight of shape "
                           f"{tuple(w.shape)}; valid group sizes: {fits}")
        return w.reshape(-1, g)

    def quantize(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(w_hat shaped like w, alpha (groups, q), codes (groups, group_size, q) in {-1, 0, +1})."""
        m, wp = self.importance.weights(w)
        wg, mg = self.groups(wp), self.groups(m)
        alpha, codes = greedy(wg, mg, self.bits)
        if self.bits > 1 and self.rounds:
            # the first alpha-step fits Greedy's codes (which hold sign(0) = 0); after it every code is a level's index,
            # and the alpha-step needs only each level's importance and importance-weighted sum (alpha_step_levels:
            # O(g) per group instead of O(g q^2), the same normal equations)
            alpha = alpha_step(wg, mg, codes, alpha, self.solver)
            idx = nearest_levels(wg, alpha)
            for _ in range(self.rounds - 1):
                alpha = alpha_step_levels(wg, mg, idx, alpha, self.solver)
                idx = nearest_levels(wg, alpha)
            codes = F.embedding(idx, sign_vectors(self.bits, w.dtype).to(w.device))
            if not bool((mg != 0).all()):   # pruned weights keep zero codes (their importance is 0: no fit sees them)
                codes = codes * (mg != 0).unsqueeze(-1).to(w.dtype)
        w_hat = torch.einsum("gjq,gq->gj", codes, alpha).reshape(w.shape)
        return w_hat, alpha, codes


def greedy(w: torch.Tensor, m: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted Greedy on (groups, g): b_i = sign(r), alpha_i = sum m |r| / sum m (0 for an all-zero-importance group)."""
    r = w.clone()
    alphas, codes = [], []
    msum = m.sum(1, keepdim=True)
    for _ in range(bits):
        b = torch.sign(r)
        a = torch.where(msum > 0, (m * r.abs()).sum(1, keepdim=True) / msum.clamp_min(torch.finfo(w.dtype).tiny),
                        torch.zeros_like(msum))
        r = r - a * b
        alphas.append(a[:, 0])
        codes.append(b)
    return torch.stack(alphas, 1), torch.stack(codes, -1)


def alpha_step(w: torch.Tensor, m: torch.Tensor, codes: torch.Tensor, alpha: torch.Tensor, solver: str) -> torch.Tensor:
    """Solve (B^T M B) alpha = B^T M w per group; returns |alpha| sorted descending."""
    bt = codes.transpose(1, 2) * m.unsqueeze(1)          # (G, q, g)
    A = bt @ codes                                        # (G, q, q)
    b = (bt @ w.unsqueeze(-1))[..., 0]                    # (G, q)
    return _solve(A, b, alpha, solver)


def alpha_step_levels(w: torch.Tensor, m: torch.Tensor, idx: torch.Tensor, alpha: torch.Tensor,
                      solver: str) -> torch.Tensor:
    """:func:`alpha_step` for codes given as level indices ``idx`` (G, g) into :func:`sign_vectors`: with S the
    (2^q, q) sign matrix, h_k = sum of m_j and t_k = sum of m_j w_j over the weights at level k, B^T M B = S^T diag(h) S
    and B^T M w = S^T t."""
    signs = sign_vectors(alpha.shape[1], w.dtype).to(w.device)
    h = torch.zeros(w.shape[0], signs.shape[0], dtype=w.dtype, device=w.device).scatter_add_(1, idx, m)
    t = torch.zeros_like(h).scatter_add_(1, idx, m * w)
    A = (signs.t() * h.unsqueeze(1)) @ signs              # (G, q, 2^q) @ (2^q, q)
    return _solve(A, t @ signs, alpha, solver)


def _solve(A: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor, solver: str) -> torch.Tensor:
    if solver == "cg":
        x = _batch_cg(A, b, alpha)
    else:
        # the minimum-norm solution (SVD; codes of a small group can be rank-deficient), as NumPy's lstsq; CUDA's
        # only driver (gels) assumes full rank, so rank-deficient groups are solved on the CPU
        x = torch.linalg.lstsq(A.cpu(), b.unsqueeze(-1).cpu(), driver="gelsd").solution[..., 0].to(A.device)
    return x.abs().sort(dim=1, descending=True).values


def _batch_cg(A: torch.Tensor, b: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """q iterations of conjugate gradient per group, warm-started at ``x0``, 1e-6 added to both denominators (the
    authors' damped solver: not an exact solve, and scale-dependent)."""
    x = x0.clone().unsqueeze(-1)
    rhs = b.unsqueeze(-1)
    r = rhs - A @ x
    rr_new = (r * r).sum(1, keepdim=True)
    p = r.clone()
    for _ in range(A.shape[-1]):
        rr = rr_new
        Ap = A @ p
        step = rr / ((p * Ap).sum(1, keepdim=True) + 1e-6)
        x = x + step * p
        r = r - step * Ap
        rr_new = (r * r).sum(1, keepdim=True)
        p = r + rr_new / (rr + 1e-6) * p
    return x[..., 0]


def sign_vectors(bits: int, dtype=torch.float32) -> torch.Tensor:
    """All 2^q vectors in {+1, -1}^q, (2^q, q)."""
    return torch.tensor(list(itertools.product((1.0, -1.0), repeat=bits)), dtype=dtype)


def nearest_codes(w: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Each weight's code of its nearest level sum_i alpha_i s_i (a weight exactly between two levels takes the upper
    one), (G, g, q)."""
    return F.embedding(nearest_levels(w, alpha), sign_vectors(alpha.shape[1], w.dtype).to(w.device))


def nearest_levels(w: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """:func:`nearest_codes` as indices (G, g) into :func:`sign_vectors`."""
    signs = sign_vectors(alpha.shape[1], w.dtype).to(w.device)
    levels = alpha @ signs.t()                                  # (G, 2^q)
    sorted_levels, order = levels.sort(dim=1)
    mids = (sorted_levels[:, 1:] + sorted_levels[:, :-1]) / 2   # (G, 2^q - 1)
    if mids.shape[1] <= 15:   # up to 4 bits: counting comparisons, one midpoint at a time (4.6x a binary search and
        # 5x one (G, g, 2^q - 1) comparison on the CPU, measured at 3 bits on a 1536 x 384 weight)
        pos = (w >= mids[:, :1]).to(torch.uint8)
        for k in range(1, mids.shape[1]):
            pos.add_(w >= mids[:, k:k + 1])
        pos = pos.long()
    else:
        pos = torch.searchsorted(mids.contiguous(), w.contiguous(), right=True)   # how many midpoints are <= w
    return order.gather(1, pos)


def weighted_error(w: torch.Tensor, w_hat: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """sum_j m_j (w_j - w_hat_j)^2 per row of the group view (the objective BCQ minimises)."""
    return (m * (w - w_hat) ** 2).sum(-1)
