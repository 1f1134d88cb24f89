"""Choosing the rank: by count, by retained energy, by parameter budget, by VBMF, and a
global allocator that spreads one parameter budget across layers.

* energy (the fraction of ||W||_F^2 kept):  r = min{ r : sum_{i<=r} s_i^2 >= e sum_i s_i^2 }.
* budget:  the largest r with (m + n) r <= budget (the folded factorisation's size).
* VBMF:   the rank that empirical variational Bayesian matrix factorisation keeps, by the
  analytic global solution of Nakajima et al. (2013), as Kim et al. (2016) use to pick
  Tucker ranks; it needs no hyperparameter (the noise variance is estimated too).
* global allocation:  every layer starts at rank 1; the remaining budget goes, one rank
  at a time, to the layer whose next rank removes the most (relative) squared error per
  parameter it costs, i.e. the largest s_{r+1}^2 / (||W||_F^2 (m + n)).  Because each
  layer's gains s_{r+1}^2 decrease with r, this greedy choice is the optimum of the
  budget-constrained sum of relative Eckart-Young errors up to the last, partly-fitting step.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from .._validation import check_array, check_float, check_int
from ..errors import ArgumentError, DTypeError

__all__ = ["rank_by_energy", "rank_by_budget", "evbmf", "rank_by_vbmf", "select_rank",
           "allocate_ranks"]


def _singular_values(weight, name="weight"):
    w = check_array(weight, name, ndim=2, finite=True)
    if w.dtype.kind != "f":
        raise DTypeError(f"{name}: expected a float array, got dtype {w.dtype.name}")
    return np.linalg.svd(w.astype(np.float64), compute_uv=False)


def rank_by_energy(singular_values, energy: float, *, eps: float | None = None) -> int:
    """Smallest r keeping a fraction ``energy`` in (0, 1] of sum s_i^2 (>= 1), for s in
    descending order.  ``energy`` = 1 keeps the numerical rank: every s_i above
    s_1 * k * eps (k singular values; NumPy's ``matrix_rank`` rule with k for max(m, n)),
    so an exactly low-rank float32 weight keeps its rank and not its rounding noise, while
    a float64 tail such as [1, 1e-7] is kept.  ``eps``: the relative precision of the matrix
    the values come from (default: machine epsilon of their dtype; :func:`select_rank`
    passes the weight's, since it takes the SVD in float64)."""
    s = check_array(singular_values, "singular_values", ndim=1, finite=True)
    e = check_float(energy, "energy", min_value=0.0, max_value=1.0, min_inclusive=False)
    if s.size == 0:
        raise ArgumentError("singular_values: expected at least one value, got none")
    if e == 1.0:
        # Not through the cumulative sum: the rounding allowance below (1e-12 of the
        # energy) would drop a tail such as [1, 1e-7], whose share is 1e-14.
        if eps is None:
            given = getattr(singular_values, "dtype", None)  # (check_array may have widened it)
            eps = np.finfo(given if given is not None and given.kind == "f" else np.float64).eps
        eps = check_float(eps, "eps", min_value=0.0)
        above = np.flatnonzero(np.abs(s) > np.abs(s).max() * s.size * eps)
        return int(above[-1]) + 1 if above.size else 1
    sq = np.square(s.astype(np.float64))
    total = sq.sum()
    if total == 0.0:
        return 1
    cum = np.cumsum(sq) / total
    # Rounding in the cumulative sum can leave the last entry a hair below 1.
    cum[-1] = 1.0
    return int(np.searchsorted(cum, e - 1e-12 * e, side="left")) + 1


def rank_by_budget(m: int, n: int, budget: int) -> int:
    """Largest r in [1, min(m, n)] with (m + n) r <= budget; refuses budget < m + n."""
    m = check_int(m, "m", min_value=1)
    n = check_int(n, "n", min_value=1)
    budget = check_int(budget, "budget", min_value=m + n)
    return min(budget // (m + n), m, n)


# ---- EVBMF (Nakajima, Sugiyama, Babacan & Tomioka 2013) -------------------------------------


def _tau_bar(alpha: float) -> float:
    """The zero in (sqrt(alpha), inf) of log(t + 1) + alpha log(t / alpha + 1) - t (the
    constant that 2.5129 sqrt(alpha) approximates; exact for alpha = 1), by bisection."""
    f = lambda t: math.log1p(t) + alpha * math.log1p(t / alpha) - t  # noqa: E731
    lo, hi = math.sqrt(alpha), 1.0 + math.sqrt(alpha)
    while f(hi) > 0:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


def _tau(x, alpha):
    return 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))


def _evb_objective(sigma2, L, M, s, xubar):
    """Free energy of EVBMF as a function of the noise variance, up to a constant.

    Nakajima et al. (2013, JMLR 14, the EVB noise-variance objective; their EVBsigma2),
    with x_h = s_h^2 / (M sigma^2), alpha = L / M, H = len(s) = L (so no residual term):

        2F(sigma^2) = sum_{x_h <= xubar} (x_h - log x_h)
                    + sum_{x_h > xubar} (x_h - tau_h + log((tau_h + 1) / x_h) + alpha log(tau_h / alpha + 1))

    Every h contributes -log x_h = -log s_h^2 + log(M sigma^2), in either sum.  The
    -log s_h^2 parts add to -sum_h log s_h^2, a constant in sigma^2 (it does not depend on
    which sum h falls in), so they are dropped:

        2F = sum_{x_h <= xubar} x_h + sum_{x_h > xubar} (x_h - tau_h + log(tau_h + 1)
             + alpha log(tau_h / alpha + 1)) + H log(M sigma^2) + const.

    The minimiser is the same, and a singular value that is exactly 0 (a dead row or
    column) now adds 0 + log(M sigma^2) like any tiny one instead of +inf for every sigma^2
    (which left the minimiser an arbitrary point of the scan).
    """
    alpha = L / M
    x = s ** 2 / (M * sigma2)
    z1 = x[x > xubar]
    z2 = x[x <= xubar]
    t1 = _tau(z1, alpha)
    return (np.sum(z2) + np.sum(z1 - t1) + np.sum(np.log(t1 + 1))
            + alpha * np.sum(np.log(t1 / alpha + 1)) + s.size * math.log(M * sigma2))


def _minimise_bounded(f, lo, hi):
    """Minimise a 1-D function on [lo, hi]: a log-spaced scan, then golden-section search
    in the bracket around the best scan point (the objective can have flat kinks where
    singular values cross the threshold, so a scan comes first)."""
    grid = np.geomspace(lo, hi, 241)
    vals = np.array([f(g) for g in grid])
    i = int(np.argmin(vals))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(100):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    best = 0.5 * (a + b)
    return best if f(best) <= vals[i] else grid[i]


def evbmf(y, sigma2=None):
    """Analytic empirical VBMF of a matrix ``y`` [L, M] (Nakajima et al. 2013, Theorem).

    With alpha = L / M (L <= M; ``y`` is transposed otherwise) and tau_bar the zero of
    log(t + 1) + alpha log(t / alpha + 1) - t, a singular value s_h survives iff

        s_h > sqrt(M sigma^2 (1 + tau_bar)(1 + alpha / tau_bar)),

    and its VB estimate is  d_h = s_h / 2 (1 - (L + M) sigma^2 / s_h^2
                                 + sqrt((1 - (L + M) sigma^2 / s_h^2)^2 - 4 L M sigma^4 / s_h^4)).
    The noise variance sigma^2, when not given, minimises the free energy over the
    paper's bracket.  Returns (rank, sigma2, d) with d the surviving estimates.
    """
    y = check_array(y, "y", ndim=2, finite=True)
    if y.dtype.kind != "f":
        raise DTypeError(f"y: expected a float array, got dtype {y.dtype.name}")
    if y.shape[0] > y.shape[1]:
        y = y.T
    L, M = y.shape
    if L < 1:
        raise ArgumentError(f"y: expected a non-empty matrix, got shape {y.shape}")
    s = np.linalg.svd(y.astype(np.float64), compute_uv=False)
    alpha = L / M
    tau_bar = _tau_bar(alpha)
    xubar = (1 + tau_bar) * (1 + alpha / tau_bar)
    if sigma2 is None:
        if not np.any(s > 0):
            return 0, 0.0, np.zeros(0)
        e_ub = min(math.ceil(L / (1 + alpha)) - 1, L) - 1
        upper = np.sum(s ** 2) / (L * M)
        tail = s[e_ub + 1:] if e_ub + 1 < L else s[-1:]
        lower = max(tail[0] ** 2 / (M * xubar), np.mean(tail ** 2) / M)
        lower = max(lower, upper * 1e-12)
        sigma2 = upper if lower >= upper else _minimise_bounded(
            lambda v: _evb_objective(v, L, M, s, xubar), lower, upper)
    else:
        sigma2 = check_float(sigma2, "sigma2", min_value=0.0, min_inclusive=False)
    threshold = math.sqrt(M * sigma2 * xubar)
    keep = s[s > threshold]
    q = (L + M) * sigma2 / keep ** 2
    d = keep / 2 * (1 - q + np.sqrt(np.maximum((1 - q) ** 2 - 4 * L * M * sigma2 ** 2 / keep ** 4, 0)))
    return int(keep.size), float(sigma2), d


def rank_by_vbmf(weight) -> int:
    """The EVBMF rank of ``weight`` [m, n], at least 1 (a layer cannot have rank 0)."""
    rank, _, _ = evbmf(weight)
    return max(rank, 1)


def select_rank(weight, *, rank=None, energy=None, budget=None, vbmf: bool = False) -> int:
    """One rank for ``weight`` [m, n] from exactly one criterion: ``rank`` (a count, refused
    outside [1, min(m, n)]), ``energy`` in (0, 1], ``budget`` (parameters) or ``vbmf=True``."""
    w = check_array(weight, "weight", ndim=2)
    given = [k for k, v in (("rank", rank), ("energy", energy), ("budget", budget)) if v is not None]
    if vbmf:
        given.append("vbmf")
    if len(given) != 1:
        raise ArgumentError(
            f"rank, energy, budget, vbmf: expected exactly one criterion, got {given or 'none'}")
    m, n = w.shape
    if rank is not None:
        return check_int(rank, "rank", min_value=1, max_value=min(m, n))
    if energy is not None:
        return rank_by_energy(_singular_values(w), energy,
                              eps=float(np.finfo(w.dtype if w.dtype.kind == "f" else np.float64).eps))
    if budget is not None:
        return rank_by_budget(m, n, budget)
    return rank_by_vbmf(w)


def allocate_ranks(weights, budget: int, *, relative: bool = True) -> dict:
    """Spread ``budget`` parameters over the layers ``weights`` (name -> W [m, n]).

    Greedy by marginal error: start every layer at rank 1, then repeatedly give one more
    rank to the layer with the largest s_{r+1}^2 / (m + n) (divided by ||W||_F^2 when
    ``relative``, so that layers of different scale compete on relative error), among the
    layers whose next rank still fits.  Returns name -> rank; the total (m + n) r is
    <= budget.  Refuses a budget below the rank-1 total.
    """
    if not hasattr(weights, "items") or not weights:
        raise ArgumentError("weights: expected a non-empty mapping name -> 2-D weight")
    spectra, costs = {}, {}
    for name, w in weights.items():
        s = _singular_values(w, f"weights[{name!r}]")
        scale = float(np.sum(s ** 2)) if relative else 1.0
        spectra[name] = s ** 2 / (scale if scale > 0 else 1.0)
        costs[name] = int(sum(np.shape(w)))
    floor = sum(costs.values())
    budget = check_int(budget, "budget", min_value=floor)
    ranks = {name: 1 for name in weights}
    left = budget - floor
    heap = [(-spectra[k][1] / costs[k], i, k) for i, k in enumerate(weights) if spectra[k].size > 1]
    heapq.heapify(heap)
    while heap:
        gain, i, k = heapq.heappop(heap)
        if costs[k] > left:
            continue  # this layer's next rank no longer fits; smaller layers may
        ranks[k] += 1
        left -= costs[k]
        r = ranks[k]
        if r < spectra[k].size:
            heapq.heappush(heap, (-spectra[k][r] / costs[k], i, k))
    return ranks
