"""Energy-balanced band edges from Chebyshev moments or from an exact spectrum (DESIGN.md §2).

Two criteria place the ``M − 1`` interior edges:

* ``balance="filter"`` (default): balance the energy of the filters actually applied. For a
  damped band filter ``h_b(t) = Σ_{k<K} a_k T_k(t)`` the output energy is a quadratic form in
  the moments, ``‖h_b(H) X‖² = Σ_{j,k} a_j a_k (μ_{j+k} + μ_{|j−k|}) / 2`` (from
  ``T_j T_k = (T_{j+k} + T_{|j−k|}) / 2``), so moments up to ``2K − 2`` give every candidate
  band's energy exactly. A dynamic programme over a grid uniform in ``θ = arccos t`` picks
  the edges minimising ``Σ_b log²(E_b / Ē)`` (``Ē`` the mean band energy), with every band at
  least ``min_width`` wide in ``θ`` (about ``π/K``: narrower bands cannot be resolved) and no
  edge within ``min_width`` of an atom (a point mass no edge can split).
* ``balance="quantile"``: edges at the quantiles ``F(ε_b) = b μ_0 / M`` of the Jackson-damped
  cumulative energy, with detected atoms taken out of the moments and put back as steps
  (an edge whose quantile falls inside an atom's jump sits on the atom).

For exact spectra (eigenvalues with energies ``e_j``) the same programme balances ideal
(indicator) bands; eigenvalue clusters are never split.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .filters import _step_series, jackson_damping
from .kpm import ATOM_MIN_MOMENTS, Atom, _as_moments, kpm_atoms, kpm_cumulative

__all__ = ["band_edges", "band_energies", "spectrum_edges", "default_min_width"]

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[float]]
_TINY = 1e-300


def default_min_width(order: int) -> float:
    """The narrowest band (in ``θ``) a Jackson-damped filter with ``order`` terms resolves: ``π/K``."""
    return math.pi / int(order)


def _gram(mu: np.ndarray, order: int) -> np.ndarray:
    # ⟨T_j X, T_k X⟩ = (μ_{j+k} + μ_{|j−k|}) / 2 for j, k < order.
    j = np.arange(order)
    return 0.5 * (mu[j[:, None] + j[None, :]] + mu[np.abs(j[:, None] - j[None, :])])


def _check_order(mu: np.ndarray, order: Optional[int]) -> int:
    K = (mu.size + 1) // 2 if order is None else order
    if int(K) != K or K < 1:
        raise ValueError(f"order must be a positive integer, got {order}")
    if mu.size < 2 * K - 1:
        raise ValueError(f"filters with order={K} need {2 * K - 1} moments, got {mu.size}; "
                         f"compute kpm_moments(op, X, {K}) or lower the order")
    return int(K)


def band_energies(moments: ArrayLike, coeffs: torch.Tensor) -> torch.Tensor:
    """Output energies ``‖h_b(H) X‖²`` of Chebyshev filters, from the moments of ``X`` alone.

    Exact (up to rounding) for the filters ``h_b = Σ_k coeffs[b, k] T_k``: no eigenvectors and
    no further products are needed.

    Args:
        moments: ``[n]`` moments ``μ_k = ⟨X, T_k(H) X⟩_F`` with ``n ≥ 2K − 1``.
        coeffs: ``[M, K]`` (or ``[K]``) Chebyshev coefficients.

    Returns:
        ``[M]`` (or scalar) float64 energies.

    Example:
        >>> import torch, ssr_engine
        >>> from ssr_engine.spectral import band_coefficients, band_energies
        >>> g = ssr_engine.InteractionGraph([0, 0, 1, 2], [0, 1, 1, 2])
        >>> op = g.scaled_laplacian(dtype=torch.float64)
        >>> X = torch.randn(g.n_nodes, 2, dtype=torch.float64)
        >>> c = band_coefficients([-1.0, 0.0, 1.0], 8)
        >>> Y = ssr_engine.chebyshev_filter(op, X, c)
        >>> E = band_energies(ssr_engine.kpm_moments(op, X, 8), c)
        >>> bool(torch.allclose(E, Y.pow(2).sum((1, 2))))
        True
    """
    mu = _as_moments(moments)
    c = torch.as_tensor(coeffs).to(torch.float64).cpu().numpy()
    single = c.ndim == 1
    c = np.atleast_2d(c)
    K = _check_order(mu, c.shape[1])
    E = np.einsum("bj,jk,bk->b", c, _gram(mu, K), c)
    out = torch.from_numpy(E)
    return out[0] if single else out


# -- the balancing programme -------------------------------------------------------------

def _partition(C: np.ndarray, n_bands: int, allowed: np.ndarray) -> Tuple[float, List[int]]:
    """Cuts ``0 = c_0 < … < c_M = G−1`` minimising ``Σ_b C[c_{b−1}, c_b]``.

    ``C[i, j]`` is the cost of a band between grid points ``i < j`` (``inf`` where not
    allowed); interior cuts must be ``allowed``. Returns ``(cost, cuts)``, ``(inf, [])``
    when infeasible.
    """
    G = C.shape[0]
    D = C[0].copy()                               # one band: from 0 to j
    back = np.zeros((n_bands, G), dtype=np.int64)
    for b in range(1, n_bands):
        tot = D[:, None] + C                      # previous cut i, this cut j
        tot[~allowed, :] = np.inf
        back[b] = np.argmin(tot, axis=0)
        D = tot[back[b], np.arange(G)]
    cost = float(D[G - 1])
    if not np.isfinite(cost):
        return math.inf, []
    cuts = [G - 1]
    for b in range(n_bands - 1, 0, -1):
        cuts.append(int(back[b][cuts[-1]]))
    cuts.append(0)
    return cost, cuts[::-1]


def _balance(E: np.ndarray, n_bands: int, min_sep: int, allowed: np.ndarray,
             total: float) -> List[int]:
    """Cuts minimising ``Σ_b log²(E_b / Ē)``, ``E[i, j]`` the energy of a band ``i < j``.

    The target ``Ē`` starts at ``total / M`` and is moved to the mean band energy of the
    previous solution (a few fixed-point steps); the solution closest to balance around its
    own mean wins.
    """
    G = E.shape[0]
    i, j = np.triu_indices(G, min_sep)
    logE = np.full((G, G), np.inf)
    logE[i, j] = np.log(np.maximum(E[i, j], _TINY))
    logE[:, ~allowed] = np.inf
    target, best = total / n_bands, (math.inf, [])
    for _ in range(6):
        _, cuts = _partition((logE - math.log(target)) ** 2, n_bands, allowed)
        if not cuts:
            return []
        band = np.array([E[a, b] for a, b in zip(cuts[:-1], cuts[1:])])
        mean = float(band.mean())
        spread = float(np.sum(np.log(np.maximum(band, _TINY) / mean) ** 2))
        if spread < best[0]:
            best = (spread, cuts)
        if abs(mean - target) <= 1e-6 * target:
            break
        target = mean
    return best[1]


def _grid_size(order: int, grid: Optional[int]) -> int:
    return int(grid) if grid is not None else int(min(2048, max(512, 8 * order)))


def band_edges(moments: ArrayLike, n_bands: int, order: Optional[int] = None,
               balance: str = "filter", min_width: Optional[float] = None,
               atoms: Union[str, Sequence[Atom], None] = "auto", atom_min: float = 0.02,
               grid: Optional[int] = None, fold: Sequence[Atom] = ()) -> torch.Tensor:
    """Energy-balanced band edges on the Chebyshev interval ``[−1, 1]``.

    Args:
        moments: ``[n]`` moments ``μ_k = ⟨X, T_k(H) X⟩_F`` (:func:`kpm_moments`), of the
            signal whose energy the bands should share (trivial component removed).
        n_bands: number of bands ``M ≥ 1``.
        order: number of terms ``K`` of the filters that will be applied (default
            ``(n + 1) // 2``, the most the moments support: ``K`` for the ``2K`` moments of
            ``kpm_moments(op, X, K)``); ``balance="filter"`` needs ``n ≥ 2K − 1``.
        balance: ``"filter"`` (balance the damped filters' output energies) or
            ``"quantile"`` (quantiles of the damped cumulative energy, atoms as steps).
        min_width: smallest band width in ``θ`` (default ``π/K``; ``"filter"`` only).
        atoms: ``"auto"`` (detect with :func:`kpm_atoms` when there are at least
            ``ATOM_MIN_MOMENTS`` moments), ``None`` (ignore) or a list of :class:`Atom` to
            respect.
        atom_min: smallest atom (fraction of energy) detected with ``"auto"``.
        grid: number of candidate edge positions, uniform in ``θ`` (default
            ``clip(8K, 512, 2048)``).
        fold: atoms whose energy does not count in the balance (``balance="filter"``): each
            band's energy ``‖h_b X‖²`` loses the atom's part ``mass · h_b(t)²``, so the bands
            share the energy off the atoms and an atom lies inside whichever band covers it,
            instead of claiming a band of its own.

    Returns:
        ``[M + 1]`` float64 ascending edges, ``edges[0] = −1`` and ``edges[-1] = 1``.

    Raises:
        ValueError: on bad arguments, a signal without energy, or when ``M`` bands of width
            ``min_width`` do not fit (raise the order or lower ``n_bands``).

    Example:
        >>> import torch, ssr_engine
        >>> g = ssr_engine.InteractionGraph([0, 0, 1, 1, 2, 3], [0, 1, 1, 2, 2, 3])
        >>> op = g.scaled_laplacian(dtype=torch.float64)
        >>> X = torch.randn(g.n_nodes, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> edges = ssr_engine.band_edges(ssr_engine.kpm_moments(op, X, 8), 2)
        >>> edges.shape, float(edges[0]), float(edges[-1])
        (torch.Size([3]), -1.0, 1.0)
    """
    mu = _as_moments(moments)
    if int(n_bands) != n_bands or n_bands < 1:
        raise ValueError(f"n_bands must be a positive integer, got {n_bands}")
    M = int(n_bands)
    if balance not in ("filter", "quantile"):
        raise ValueError(f"balance must be 'filter' or 'quantile', got {balance!r}")
    if not mu[0] > 0:
        raise ValueError(f"the signal has no energy (μ_0 = {mu[0]:g}); edges cannot be "
                         "balanced — use uniform edges")
    if M == 1:
        return torch.tensor([-1.0, 1.0], dtype=torch.float64)
    if atoms == "auto":
        found = kpm_atoms(mu, min_fraction=atom_min) if mu.size >= ATOM_MIN_MOMENTS else []
    elif atoms is None:
        found = []
    else:
        found = list(atoms)
    if balance == "quantile":
        if fold:
            raise ValueError("fold needs balance='filter'")
        return _quantile_edges(mu, M, found)
    K = _check_order(mu, order)
    width = default_min_width(K) if min_width is None else float(min_width)
    if not width >= 0:
        raise ValueError(f"min_width must be >= 0, got {min_width}")
    if M * width > math.pi:
        raise ValueError(f"{M} bands of minimum width {width:.4f} (θ) do not fit in π; "
                         f"raise the order (now {K}) or lower n_bands")
    G = _grid_size(K, grid)
    theta = np.linspace(math.pi, 0.0, G)
    S = _step_series(theta, K) * jackson_damping(K).numpy()
    P = S @ _gram(mu, K) @ S.T
    q = np.diag(P)
    E = q[:, None] + q[None, :] - 2.0 * P                # band energy between θ_i > θ_j
    total = float(mu[0])
    for a in fold:                                       # the atom's part: mass · (s_i − s_j)²
        s = S @ np.cos(np.arange(K) * math.acos(max(-1.0, min(1.0, a.t))))
        E = E - a.mass * (s[:, None] - s[None, :]) ** 2
        total -= a.mass
    if fold:
        E = np.maximum(E, _TINY)
        if not total > 0:
            raise ValueError("the folded atoms hold all the energy; no band can be balanced")
    step = math.pi / (G - 1)
    min_sep = max(1, int(math.ceil(width / step - 1e-9)))
    allowed = np.ones(G, dtype=bool)
    for a in found:
        th = math.acos(max(-1.0, min(1.0, a.t)))
        allowed &= np.abs(theta - th) >= width
    allowed[[0, G - 1]] = True
    cuts = _balance(E, M, min_sep, allowed, total)
    if not cuts and not allowed.all():
        cuts = _balance(E, M, min_sep, np.ones(G, dtype=bool), total)
    if not cuts:
        raise ValueError(f"no placement of {M} bands of width >= {width:.4f} (θ) carries "
                         "energy in every band; raise the order or lower n_bands")
    edges = np.cos(theta[cuts])
    edges[0], edges[-1] = -1.0, 1.0
    return torch.from_numpy(edges)


def _quantile_edges(mu: np.ndarray, M: int, atoms: Sequence[Atom]) -> torch.Tensor:
    k = np.arange(mu.size)
    cont = mu.copy()
    for a in atoms:
        cont -= a.mass * np.cos(k * math.acos(max(-1.0, min(1.0, a.t))))
    theta = np.linspace(math.pi, 0.0, 8193)
    t = np.cos(theta)
    t[0], t[-1] = -1.0, 1.0
    F = kpm_cumulative(cont, t).numpy()
    for a in atoms:
        F += a.mass * (t >= a.t)
    F = np.maximum.accumulate(F)
    edges = [-1.0]
    for b in range(1, M):
        level = b * mu[0] / M
        i = int(np.searchsorted(F, level))
        i = min(max(i, 1), t.size - 1)
        # linear interpolation inside the bracketing cell (a jump lands on its atom)
        lo, hi = F[i - 1], F[i]
        x = t[i] if hi <= lo else t[i - 1] + (level - lo) / (hi - lo) * (t[i] - t[i - 1])
        for a in atoms:
            if F[i - 1] < level <= F[i] and t[i - 1] < a.t <= t[i]:
                x = a.t
        edges.append(float(x))
    edges.append(1.0)
    e = np.maximum.accumulate(np.asarray(edges))
    return torch.from_numpy(e)


# -- exact spectra --------------------------------------------------------------------------

def _clusters(lam: np.ndarray, tol: float) -> np.ndarray:
    # Index of the first eigenvalue of each cluster of (sorted) eigenvalues within tol.
    gaps = np.diff(lam) > tol
    return np.flatnonzero(np.r_[True, gaps])


def spectrum_edges(eigenvalues: ArrayLike, energies: ArrayLike, n_bands: int,
                   lo: float = 0.0, hi: float = 2.0, min_width: float = 0.0,
                   cluster_tol: float = 1e-8, grid: int = 2048) -> torch.Tensor:
    """Balanced edges for ideal bands on an exact spectrum.

    Eigenvalues within ``cluster_tol`` of each other form one cluster that no edge splits
    (e.g. the ``λ = 1`` atom of a bipartite graph); edges sit halfway between clusters.
    The same programme as :func:`band_edges` minimises ``Σ_b log²(E_b / Ē)``.

    Args:
        eigenvalues: ``[n]`` eigenvalues (any order) inside ``[lo, hi]``.
        energies: ``[n]`` energies ``e_j = ‖u_jᵀ X‖²`` (non-negative).
        n_bands: number of bands ``M ≥ 1``.
        lo: first edge.
        hi: last edge.
        min_width: smallest band width (same units as the eigenvalues).
        cluster_tol: eigenvalues closer than this are one cluster.
        grid: at most this many candidate edges (chosen at equal steps of energy).

    Returns:
        ``[M + 1]`` float64 edges from ``lo`` to ``hi``; band ``b`` holds
        ``edges[b] ≤ λ < edges[b + 1]`` (the last band includes ``hi``).

    Example:
        >>> from ssr_engine.spectral import spectrum_edges
        >>> spectrum_edges([0.1, 0.5, 1.0, 1.0, 1.5], [1.0, 1.0, 1.0, 1.0, 2.0], 3).tolist()
        [0.0, 0.75, 1.25, 2.0]
    """
    lam = np.asarray(torch.as_tensor(eigenvalues, dtype=torch.float64).cpu()).reshape(-1)
    e = np.asarray(torch.as_tensor(energies, dtype=torch.float64).cpu()).reshape(-1)
    if lam.shape != e.shape or lam.size == 0:
        raise ValueError(f"eigenvalues and energies must be non-empty and of equal length, "
                         f"got {lam.size} and {e.size}")
    if not (np.all(np.isfinite(lam)) and np.all(np.isfinite(e))) or np.any(e < 0):
        raise ValueError("eigenvalues must be finite and energies finite and non-negative")
    if int(n_bands) != n_bands or n_bands < 1:
        raise ValueError(f"n_bands must be a positive integer, got {n_bands}")
    M = int(n_bands)
    order = np.argsort(lam, kind="stable")
    lam, e = lam[order], e[order]
    if lam[0] < lo - cluster_tol or lam[-1] > hi + cluster_tol:
        raise ValueError(f"eigenvalues span [{lam[0]:g}, {lam[-1]:g}], outside [{lo}, {hi}]")
    total = float(e.sum())
    if M == 1:
        return torch.tensor([lo, hi], dtype=torch.float64)
    if not total > 0:
        raise ValueError("the signal has no energy on this spectrum; edges cannot be balanced")
    first = _clusters(lam, cluster_tol)
    if first.size < M:
        raise ValueError(f"{M} bands need at least {M} distinct eigenvalues, found {first.size}")
    mass = np.add.reduceat(e, first)
    cum = np.r_[0.0, np.cumsum(mass)]                     # energy below cluster c: cum[c]
    # Candidate cuts: before cluster c (c = 1 … C−1), thinned at equal energy steps.
    C = first.size
    cand = np.arange(1, C)
    if cand.size > grid - 2:
        level = np.floor(cum[cand] / total * (grid - 2))
        keep = np.r_[True, np.diff(level) > 0]
        keep |= mass[cand] >= total / grid                # always keep both sides of big clusters
        keep |= mass[cand - 1] >= total / grid
        cand = cand[keep]
    pos = np.r_[0, cand, C]                               # cut positions in cluster index
    F = cum[pos]
    E = F[None, :] - F[:, None]
    where = np.r_[lo, 0.5 * (lam[first[cand] - 1] + lam[first[cand]]), hi]
    G = pos.size
    allowed = np.ones(G, dtype=bool)
    if min_width > 0:
        # Minimum width in eigenvalue units: forbid pairs closer than min_width.
        close = np.abs(where[None, :] - where[:, None]) < min_width
        E = np.where(close, 0.0, E)
    cuts = _balance(np.where(np.triu(np.ones((G, G), bool), 1), E, 0.0), M, 1, allowed, total)
    if not cuts:
        raise ValueError(f"no placement of {M} non-empty bands exists on this spectrum")
    edges = where[cuts]
    edges[0], edges[-1] = lo, hi
    return torch.from_numpy(edges)
