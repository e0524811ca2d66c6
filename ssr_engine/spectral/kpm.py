"""Kernel polynomial method: Chebyshev moments of a signal's spectral energy (DESIGN.md §2).

For a symmetric operator ``H`` with spectrum inside ``[−1, 1]`` and a block ``X``, the energy
distribution of ``X`` over ``H``'s spectrum is ``ρ(t) = Σ_j e_j δ(t − t_j)`` with
``e_j = ‖u_jᵀ X‖²``. Its Chebyshev moments are ``μ_k = ⟨X, T_k(H) X⟩_F``; the recurrence
``t_{k+1} = 2 H t_k − t_{k−1}`` and the doubling identities

    μ_{2k} = 2⟨t_k, t_k⟩ − μ_0,    μ_{2k+1} = 2⟨t_{k+1}, t_k⟩ − μ_1

give ``2K`` moments from ``K`` products. With Jackson damping ``g_k`` the smoothed density,
its cumulative (closed form in ``θ = arccos t``) and point masses (atoms) follow from the
moments alone, without eigenvectors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Union

import numpy as np
import torch

from .. import ops
from ..graph.operators import Operator
from .filters import check_signal, jackson_damping

__all__ = ["kpm_moments", "kpm_density", "kpm_cumulative", "kpm_atoms", "Atom",
           "ATOM_MIN_MOMENTS"]

# Below this many moments (resolution π/32 in θ) an unresolved peak of continuous density
# looks like a point mass; automatic atom detection needs at least this many.
ATOM_MIN_MOMENTS = 64

ArrayLike = Union[torch.Tensor, np.ndarray]


def kpm_moments(op: Operator, X: torch.Tensor, K: int, backend: str = "auto") -> torch.Tensor:
    """Chebyshev moments ``μ_k = ⟨X, T_k(op) X⟩_F``, ``k < 2K``, from ``K`` products.

    The recurrence is the shared one of :func:`ssr_engine.ops.chebyshev_moments` (a fused
    Triton pass per product on CUDA, a torch loop with float64 inner products elsewhere);
    this function adds the public-boundary checks.

    Args:
        op: ``[N, N]`` symmetric :class:`~ssr_engine.Operator` with spectrum inside
            ``[−1, 1]`` (e.g. ``graph.scaled_laplacian()``).
        X: ``[N, d]`` block in ``op``'s dtype and on its device.
        K: number of operator products (``K ≥ 1``).
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        ``[2K]`` float64 CPU tensor ``μ_0 … μ_{2K−1}`` (``μ_0 = ‖X‖_F²``).

    Raises:
        ValueError: on a bad ``K``, shapes, dtype/device mismatch or NaN/inf in ``X``.

    Example:
        >>> import torch, ssr_engine
        >>> g = ssr_engine.InteractionGraph([0, 0, 1, 2], [0, 1, 1, 2])
        >>> op = g.scaled_laplacian(dtype=torch.float64)
        >>> X = torch.randn(g.n_nodes, 2, dtype=torch.float64)
        >>> mu = ssr_engine.kpm_moments(op, X, 3)
        >>> mu.shape, bool(abs(mu[0] - X.pow(2).sum()) < 1e-12)
        (torch.Size([6]), True)
    """
    if not isinstance(op, Operator):
        raise TypeError(f"op must be an ssr_engine.Operator, got {type(op).__name__}; wrap a "
                        "matrix with ssr_engine.as_operator(..., symmetric=True)")
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"KPM needs a square symmetric operator, got shape {op.shape}")
    if isinstance(K, bool) or int(K) != K or K < 1:
        raise ValueError(f"K (number of products) must be a positive integer, got {K}")
    check_signal(X, op)
    return ops.chebyshev_moments(op, X, int(K), backend=backend)


def _as_moments(moments: ArrayLike) -> np.ndarray:
    mu = np.asarray(torch.as_tensor(moments, dtype=torch.float64).cpu(), dtype=np.float64)
    if mu.ndim != 1 or mu.size < 1:
        raise ValueError(f"moments must be a non-empty 1-D sequence, got shape {mu.shape}")
    if not np.all(np.isfinite(mu)):
        raise ValueError("moments contain NaN or inf")
    return mu


def _damped(mu: np.ndarray, damping: Optional[str]) -> np.ndarray:
    if damping not in ("jackson", None):
        raise ValueError(f"damping must be 'jackson' or None, got {damping!r}")
    return mu * jackson_damping(mu.size).numpy() if damping == "jackson" else mu.copy()


def kpm_density(moments: ArrayLike, t: ArrayLike, damping: Optional[str] = "jackson") -> torch.Tensor:
    """Smoothed energy density ``ρ(t) = [g_0 μ_0 + 2 Σ_k g_k μ_k T_k(t)] / (π √(1 − t²))``.

    Args:
        moments: ``[n]`` Chebyshev moments (e.g. from :func:`kpm_moments`).
        t: ``[m]`` points strictly inside ``(−1, 1)``.
        damping: ``"jackson"`` or ``None``.

    Returns:
        ``[m]`` float64 density (energy per unit ``t``).

    Example:
        >>> import torch
        >>> from ssr_engine.spectral import kpm_density
        >>> mu = torch.tensor([1.0] + [0.0] * 63)  # the flat Chebyshev measure
        >>> round(float(kpm_density(mu, [0.0])[0]), 6)  # 1/π at t = 0
        0.31831
    """
    gm = _damped(_as_moments(moments), damping)
    x = np.asarray(torch.as_tensor(t, dtype=torch.float64).cpu(), dtype=np.float64).reshape(-1)
    if np.any(np.abs(x) >= 1.0):
        raise ValueError("kpm_density needs points strictly inside (-1, 1)")
    theta = np.arccos(x)
    k = np.arange(1, gm.size)
    s = gm[0] + 2.0 * np.cos(np.outer(theta, k)) @ gm[1:]
    return torch.from_numpy(s / (math.pi * np.sin(theta)))


def kpm_cumulative(moments: ArrayLike, t: ArrayLike, damping: Optional[str] = "jackson") -> torch.Tensor:
    """Cumulative energy ``F(t) = [g_0 μ_0 (π − θ) − 2 Σ_k g_k μ_k sin(kθ)/k] / π``, ``θ = arccos t``.

    Monotone in ``t`` for Jackson damping (the damped density is non-negative);
    ``F(−1) = 0`` and ``F(1) = μ_0``.

    Args:
        moments: ``[n]`` Chebyshev moments.
        t: ``[m]`` points in ``[−1, 1]``.
        damping: ``"jackson"`` or ``None``.

    Returns:
        ``[m]`` float64 cumulative energy.

    Example:
        >>> import torch
        >>> from ssr_engine.spectral import kpm_cumulative
        >>> mu = torch.tensor([2.0] + [0.0] * 31)
        >>> kpm_cumulative(mu, [-1.0, 0.0, 1.0]).tolist()
        [0.0, 1.0, 2.0]
    """
    gm = _damped(_as_moments(moments), damping)
    x = np.asarray(torch.as_tensor(t, dtype=torch.float64).cpu(), dtype=np.float64).reshape(-1)
    if np.any(np.abs(x) > 1.0):
        raise ValueError("kpm_cumulative needs points in [-1, 1]")
    theta = np.arccos(x)
    theta[x <= -1.0] = math.pi
    k = np.arange(1, gm.size)
    F = gm[0] * (math.pi - theta) - 2.0 * (np.sin(np.outer(theta, k)) / k) @ gm[1:]
    F[x <= -1.0] = 0.0
    return torch.from_numpy(F / math.pi)


@dataclass(frozen=True)
class Atom:
    """A point mass of energy: ``mass`` at ``t`` (Chebyshev interval) / ``lam`` (Laplacian).

    ``fraction`` is ``mass`` over the total energy. ``lam`` is ``None`` where no map from the
    Chebyshev interval to the Laplacian's ``[0, 2]`` is known.
    """

    t: float
    mass: float
    fraction: float
    lam: Optional[float] = None


def _point_mass(gm: np.ndarray, theta: np.ndarray) -> np.ndarray:
    # Mass estimate at θ: the damped series against T_k(t) over the kernel's own height;
    # exact for an isolated point mass, biased by O(density / n) for continuous spectrum.
    w = np.full(gm.size, 2.0)
    w[0] = 1.0
    C = np.cos(np.outer(theta, np.arange(gm.size)))
    g = jackson_damping(gm.size).numpy()
    return (C @ (w * gm)) / ((C * C) @ (w * g))


def kpm_atoms(moments: ArrayLike, min_fraction: float = 0.02, at: Optional[ArrayLike] = None,
              grid: int = 4096) -> List[Atom]:
    """Point masses of energy detected from Chebyshev moments alone.

    At a point ``t = cos θ`` the damped series divided by the Jackson kernel's height,
    ``m_n(θ) = Σ_k w_k g_k μ_k T_k(t) / Σ_k w_k g_k T_k(t)²`` (``w_0 = 1``, ``w_k = 2``), equals
    the mass of a point at ``t`` plus a continuous-spectrum bias that shrinks like ``1/n``.
    Two series lengths (``n`` and ``n/2``) separate the two: the Richardson estimate
    ``2 m_n − m_{n/2}`` removes the bias, and a point counts as an atom when that estimate
    holds at least ``min_fraction`` of ``μ_0`` and ``m_n`` keeps most of ``m_{n/2}`` (a
    point mass does not shrink with resolution; continuous density halves).

    Args:
        moments: ``[n]`` Chebyshev moments (``n ≥ 16``).
        min_fraction: smallest reported mass as a fraction of the total energy ``μ_0``.
        at: optional ``[m]`` candidate points ``t`` (e.g. ``[0.0]``, the ``λ = 1`` atom of
            bipartite graphs); by default local maxima on a ``grid`` uniform in ``θ``.
        grid: number of ``θ`` points scanned when ``at`` is not given.

    Returns:
        Atoms sorted by ``t`` (``lam`` unset).

    Example:
        >>> import numpy as np, torch
        >>> from ssr_engine.spectral import kpm_atoms
        >>> t = np.concatenate([np.zeros(50), np.linspace(-0.9, 0.9, 200)])  # atom at 0
        >>> mu = torch.tensor([np.cos(k * np.arccos(t)).sum() for k in range(256)])
        >>> [(round(a.t, 3), round(a.fraction, 2)) for a in kpm_atoms(mu)]
        [(0.0, 0.2)]
    """
    mu = _as_moments(moments)
    if mu.size < 16:
        raise ValueError(f"atom detection needs at least 16 moments, got {mu.size}")
    if not 0.0 < min_fraction < 1.0:
        raise ValueError(f"min_fraction must lie in (0, 1), got {min_fraction}")
    total = mu[0]
    if total <= 0:
        return []
    n = mu.size
    half = n // 2
    full_g = mu * jackson_damping(n).numpy()
    half_g = mu[:half] * jackson_damping(half).numpy()
    if at is None:
        theta = np.linspace(0.0, math.pi, int(grid))
        m_full = _point_mass(full_g, theta)
        peak = np.r_[False, (m_full[1:-1] >= m_full[:-2]) & (m_full[1:-1] > m_full[2:]), False]
        peak |= np.r_[m_full[0] > m_full[1], np.zeros(theta.size - 2, bool),
                      m_full[-1] > m_full[-2]]
        theta = theta[peak & (m_full >= min_fraction * total)]
        # Refine each peak on a fine local grid (± one grid step).
        step = math.pi / (int(grid) - 1)
        local = np.linspace(-step, step, 129)
        theta = np.array([th + local[np.argmax(_point_mass(full_g, np.clip(th + local, 0.0,
                                                                          math.pi)))]
                          for th in theta])
    else:
        x = np.asarray(torch.as_tensor(at, dtype=torch.float64).cpu()).reshape(-1)
        theta = np.arccos(np.clip(x, -1.0, 1.0))
    if theta.size == 0:
        return []
    m_full = _point_mass(full_g, theta)
    m_half = _point_mass(half_g, theta)
    mass = 2.0 * m_full - m_half
    keep = (mass >= min_fraction * total) & (m_full >= 0.75 * m_half)
    atoms = [Atom(t=float(np.cos(th)), mass=float(m), fraction=float(m / total))
             for th, m in zip(theta[keep], mass[keep])]
    return sorted(atoms, key=lambda a: a.t)
