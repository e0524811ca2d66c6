"""Chebyshev band filters: Jackson damping, band coefficients, responses (DESIGN.md §2).

A band covering ``t ∈ [t_a, t_b]`` of the Chebyshev interval (``θ = arccos t``, so
``θ_a > θ_b``) is the indicator ``1[t_a ≤ t ≤ t_b]``, whose Chebyshev coefficients are

    c_0 = (θ_a − θ_b) / π,    c_k = 2 (sin kθ_a − sin kθ_b) / (kπ).

Bands whose edges run from ``t = −1`` to ``t = 1`` telescope: ``Σ_b c_{b,k} = [1, 0, 0, …]``,
so the filters sum to the identity for any order ``K`` — damped or not — and the band signals
always sum back to the input. The filtering itself is one shared recurrence,
:func:`ssr_engine.ops.chebyshev_bands`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .. import ops
from ..graph.operators import Operator

__all__ = ["jackson_damping", "band_coefficients", "filter_response", "chebyshev_filter",
           "edge_angles"]

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[float]]


def jackson_damping(order: int, dtype: torch.dtype = torch.float64,
                    device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """Jackson kernel factors ``g_k`` for a Chebyshev series with ``order`` terms.

    ``g_k = [(K − k + 1) cos(πk/(K+1)) + sin(πk/(K+1)) cot(π/(K+1))] / (K + 1)`` with
    ``K = order``; ``g_0 = 1``. Damping suppresses Gibbs oscillations: a damped step response
    stays within [0, 1] and rises over a width of about ``π/K`` in ``θ``.

    Args:
        order: number of terms ``K ≥ 1`` (the series uses ``T_0 … T_{K−1}``).
        dtype: result dtype.
        device: result device.

    Returns:
        ``[order]`` tensor of damping factors.

    Example:
        >>> from ssr_engine.spectral import jackson_damping
        >>> g = jackson_damping(4)
        >>> round(float(g[0]), 12), bool((g[1:] < 1).all())
        (1.0, True)
    """
    if int(order) != order or order < 1:
        raise ValueError(f"order must be a positive integer, got {order}")
    K = int(order)
    k = np.arange(K, dtype=np.float64)
    a = math.pi / (K + 1)
    g = ((K - k + 1) * np.cos(a * k) + np.sin(a * k) / math.tan(a)) / (K + 1)
    return torch.from_numpy(g).to(dtype=dtype, device=device)


def edge_angles(edges: ArrayLike) -> np.ndarray:
    """``θ = arccos t`` of band edges, exact at the interval ends (``θ(−1) = π``, ``θ(1) = 0``)."""
    t = np.asarray(torch.as_tensor(edges, dtype=torch.float64).cpu(), dtype=np.float64)
    theta = np.arccos(np.clip(t, -1.0, 1.0))
    theta[t <= -1.0] = math.pi
    theta[t >= 1.0] = 0.0
    return theta


def _step_series(theta: np.ndarray, order: int) -> np.ndarray:
    # Coefficients of 1[t ≥ cos θ] up to the constant: s_0 = θ/π, s_k = 2 sin(kθ)/(kπ);
    # exactly [1, 0, …] at θ = π and 0 at θ = 0 so that bands tile [−1, 1] to rounding.
    k = np.arange(1, order, dtype=np.float64)
    s = np.empty((theta.size, order), dtype=np.float64)
    s[:, 0] = theta / math.pi
    s[:, 1:] = 2.0 * np.sin(np.outer(theta, k)) / (k * math.pi)
    s[theta == math.pi, 1:] = 0.0
    s[theta == 0.0, :] = 0.0
    return s


def band_coefficients(edges: ArrayLike, order: int, damping: Optional[str] = "jackson",
                      dtype: torch.dtype = torch.float64,
                      device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """Damped Chebyshev coefficients of the bands between consecutive edges.

    Band ``b`` is ``1[edges[b] ≤ t ≤ edges[b+1]]`` on the Chebyshev interval; its
    coefficients are those of DESIGN.md §2, times the damping factors ``g_k``. With
    ``edges[0] = −1`` and ``edges[-1] = 1`` the bands tile the interval and
    ``Σ_b coeffs[b] = [1, 0, 0, …]`` (to rounding) for any ``order`` and damping.

    Args:
        edges: ``[M + 1]`` ascending edges in ``[−1, 1]``.
        order: number of terms ``K ≥ 1``.
        damping: ``"jackson"`` or ``None`` (plain truncation).
        dtype: result dtype (float64 recommended; cast when filtering).
        device: result device.

    Returns:
        ``[M, K]`` coefficients ``g_k c_{b,k}``.

    Example:
        >>> import torch
        >>> from ssr_engine.spectral import band_coefficients
        >>> c = band_coefficients([-1.0, -0.2, 0.3, 1.0], order=16)
        >>> c.shape, round(float(c.sum(0)[0]), 12), float(c.sum(0)[1:].abs().max()) < 1e-12
        (torch.Size([3, 16]), 1.0, True)
    """
    e = np.asarray(torch.as_tensor(edges, dtype=torch.float64).cpu(), dtype=np.float64)
    if e.ndim != 1 or e.size < 2:
        raise ValueError(f"edges must be a 1-D sequence of at least 2 values, got shape {e.shape}")
    if not np.all(np.isfinite(e)) or e[0] < -1.0 or e[-1] > 1.0 or np.any(np.diff(e) <= 0):
        raise ValueError(f"edges must be strictly ascending within [-1, 1], got {e.tolist()}")
    if int(order) != order or order < 1:
        raise ValueError(f"order must be a positive integer, got {order}")
    if damping not in ("jackson", None):
        raise ValueError(f"damping must be 'jackson' or None, got {damping!r}")
    s = _step_series(edge_angles(e), int(order))
    c = s[:-1] - s[1:]
    if damping == "jackson":
        c *= jackson_damping(int(order)).numpy()
    return torch.from_numpy(c).to(dtype=dtype, device=device)


def filter_response(coeffs: torch.Tensor, t: ArrayLike) -> torch.Tensor:
    """Evaluate Chebyshev series ``Σ_k coeffs[..., k] T_k(t)`` at points ``t ∈ [−1, 1]``.

    Applied to an operator's exact eigenvalues (scaled into ``[−1, 1]``), this is the exact
    response of the filters that :func:`chebyshev_filter` applies.

    Args:
        coeffs: ``[K]`` or ``[M, K]`` coefficients.
        t: ``[n]`` points in ``[−1, 1]``.

    Returns:
        ``[n]`` or ``[M, n]`` float64 responses (on ``coeffs``' device).

    Example:
        >>> import torch
        >>> from ssr_engine.spectral import filter_response
        >>> filter_response(torch.tensor([0.0, 0.0, 1.0]), [0.0, 1.0]).tolist()  # T_2
        [-1.0, 1.0]
    """
    c = torch.as_tensor(coeffs).to(torch.float64)
    x = torch.as_tensor(t, dtype=torch.float64, device=c.device).reshape(-1)
    if c.dim() not in (1, 2) or c.shape[-1] < 1:
        raise ValueError(f"coeffs must be [K] or [M, K], got shape {tuple(c.shape)}")
    if x.numel() and (x.abs().max() > 1.0 + 1e-12):
        raise ValueError(f"t must lie in [-1, 1], got values up to {float(x.abs().max())}")
    K = c.shape[-1]
    T = torch.empty(K, x.numel(), dtype=torch.float64, device=c.device)
    T[0] = 1.0
    if K > 1:
        T[1] = x
    for k in range(2, K):
        T[k] = 2.0 * x * T[k - 1] - T[k - 2]
    return c @ T


def chebyshev_filter(op: Operator, X: torch.Tensor, coeffs: torch.Tensor,
                     backend: str = "auto") -> torch.Tensor:
    """Apply one or M Chebyshev filters to a signal block with one shared recurrence.

    ``Y_b = Σ_k coeffs[b, k] T_k(op) X``; ``op`` must be symmetric with spectrum inside
    ``[−1, 1]`` (e.g. ``graph.scaled_laplacian()``). The K−1 products are shared by all
    filters (:func:`ssr_engine.ops.chebyshev_bands`).

    Args:
        op: ``[N, N]`` symmetric :class:`~ssr_engine.Operator`.
        X: ``[N, d]`` signal block in ``op``'s dtype and on its device.
        coeffs: ``[K]`` (one filter) or ``[M, K]`` coefficients, e.g. from
            :func:`band_coefficients`.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        ``[N, d]`` for ``[K]`` coefficients, ``[M, N, d]`` for ``[M, K]``.

    Raises:
        ValueError: on shape, dtype or device mismatches, or NaN/inf in ``X`` or ``coeffs``.

    Example:
        >>> import torch, ssr_engine
        >>> from ssr_engine.spectral import band_coefficients, chebyshev_filter
        >>> g = ssr_engine.InteractionGraph([0, 0, 1, 2], [0, 1, 1, 2])
        >>> op = g.scaled_laplacian(dtype=torch.float64)
        >>> X = torch.randn(g.n_nodes, 3, dtype=torch.float64)
        >>> Y = chebyshev_filter(op, X, band_coefficients([-1.0, 0.0, 1.0], 12))
        >>> Y.shape, bool(torch.allclose(Y.sum(0), X))
        (torch.Size([2, 6, 3]), True)
    """
    if not isinstance(op, Operator):
        raise TypeError(f"op must be an ssr_engine.Operator, got {type(op).__name__}; wrap a "
                        "matrix with ssr_engine.as_operator(..., symmetric=True)")
    check_signal(X, op)
    c = torch.as_tensor(coeffs)
    if c.dim() not in (1, 2) or c.shape[-1] < 1 or c.numel() == 0:
        raise ValueError(f"coeffs must be [K] or [M, K] with K >= 1, got shape {tuple(c.shape)}")
    if not torch.isfinite(c).all():
        raise ValueError("coeffs contain NaN or inf")
    single = c.dim() == 1
    out = ops.chebyshev_bands(op, X, c.reshape(-1, c.shape[-1]).to(X.device), backend=backend)
    return out[0] if single else out


def check_signal(X: torch.Tensor, op: Operator) -> None:
    """Validate an ``[N, d]`` signal block against a square operator (public-boundary checks)."""
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"X must be a torch tensor, got {type(X).__name__}")
    if X.dim() != 2 or X.shape[0] != op.shape[1]:
        raise ValueError(f"X must be [N={op.shape[1]}, d], got {tuple(X.shape)}")
    if X.dtype != op.dtype:
        raise ValueError(f"X is {X.dtype} but the operator is {op.dtype}; cast X or build the "
                         "operator in X's dtype")
    if X.device != op.device:
        raise ValueError(f"X is on {X.device} but the operator on {op.device}; move one")
    if X.numel() and not torch.isfinite(X).all():
        bad = (~torch.isfinite(X)).nonzero()[0].tolist()
        raise ValueError(f"X contains NaN or inf (first at row {bad[0]}, column {bad[1]})")
