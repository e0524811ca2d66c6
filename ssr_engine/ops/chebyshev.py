"""Chebyshev band filtering: all M bands from one recurrence (DESIGN.md §2, §4).

``t_0 = X``, ``t_1 = L̃ X``, ``t_{k+1} = 2 L̃ t_k - t_{k-1}``; band ``b`` is
``Σ_k coeffs[b, k] t_k``. The K products are shared by all M bands.
"""
from __future__ import annotations

import torch

from ..graph.operators import Operator
from .dispatch import resolve_backend

__all__ = ["chebyshev_bands", "chebyshev_bands_reference"]


def chebyshev_bands_reference(op: Operator, X: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Pure-torch reference of :func:`chebyshev_bands` (one SpMM per order)."""
    M, K = coeffs.shape
    c = coeffs.to(X.dtype)
    out = c[:, 0, None, None] * X.unsqueeze(0)
    if K == 1:
        return out
    t_prev, t = X, op @ X
    out += c[:, 1, None, None] * t.unsqueeze(0)
    for k in range(2, K):
        t_next = op @ t
        t_next.mul_(2).sub_(t_prev)
        out += c[:, k, None, None] * t_next.unsqueeze(0)
        t_prev, t = t, t_next
    return out


def chebyshev_bands(op: Operator, X: torch.Tensor, coeffs: torch.Tensor,
                    backend: str = "auto") -> torch.Tensor:
    """Apply M Chebyshev filters sharing one recurrence.

    Args:
        op: symmetric operator with spectrum inside [-1, 1] (e.g. ``graph.scaled_laplacian()``).
        X: ``[N, d]`` signal block, same dtype/device as ``op``.
        coeffs: ``[M, K]`` (damped) Chebyshev coefficients of the M filters.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        ``[M, N, d]`` filtered signals.
    """
    if X.dim() != 2 or X.shape[0] != op.shape[1]:
        raise ValueError(f"X must be [N={op.shape[1]}, d], got {tuple(X.shape)}")
    if coeffs.dim() != 2 or coeffs.shape[1] < 1:
        raise ValueError(f"coeffs must be [M, K] with K >= 1, got {tuple(coeffs.shape)}")
    if resolve_backend(backend, X) == "triton":
        from .chebyshev_triton import chebyshev_bands_triton
        return chebyshev_bands_triton(op, X, coeffs)
    return chebyshev_bands_reference(op, X, coeffs)
