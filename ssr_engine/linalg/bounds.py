"""Cheap bounds on the spectrum of a symmetric operator from a short Lanczos run.

A few single-vector Lanczos steps (fully reorthogonalised) find both ends of the spectrum
quickly. The extreme Ritz values ``θ_min, θ_max`` widened by the norms of their residuals give
the interval the Chebyshev filter damps, and ``max(|lo|, |hi|)`` is the operator norm estimate
that relative residuals are measured against.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .subspace import MatMul, orthonormalize, project_out, rayleigh_ritz, start_block

__all__ = ["spectral_bounds"]


def spectral_bounds(matmul: MatMul, n: int, *, dtype: torch.dtype, device: torch.device,
                    steps: int = 24, deflate: Optional[torch.Tensor] = None,
                    generator: Optional[torch.Generator] = None) -> Tuple[float, float]:
    """Estimate an interval ``[lo, hi]`` containing the spectrum.

    Args:
        matmul: ``[n, b] -> [n, b]`` products with the symmetric operator.
        n: operator size.
        dtype, device: of the work vectors.
        steps: Lanczos steps (capped at the space's dimension).
        deflate: ``[n, c]`` orthonormal vectors to stay orthogonal to.
        generator: random generator for the start vector.

    Returns:
        ``(lo, hi)``: the extreme Ritz values widened by their residual norms.
    """
    c = 0 if deflate is None else deflate.shape[1]
    m = max(1, min(steps, n - c))
    defl = [deflate] if deflate is not None else []
    Q = torch.empty(n, m + 1, dtype=dtype, device=device)
    Q[:, :1] = start_block(n, 1, None, dtype, device, generator, deflate)
    T = torch.zeros(m + 1, m + 1, dtype=torch.float64)
    j = 0
    while j < m:
        w = matmul(Q[:, j:j + 1].contiguous())
        ref = float(w.norm())
        project_out(w, defl)
        total = torch.zeros(j + 1, dtype=torch.float64)
        for _ in range(2):
            coef = Q[:, :j + 1].mT @ w
            w.sub_(Q[:, :j + 1] @ coef)
            total += coef[:, 0].double().cpu()
        T[:j + 1, j] = total
        project_out(w, defl)
        T[j, :j + 1] = total
        if j + 1 == m:
            T[j + 1, j] = float(w.norm())
            j += 1
            break
        q = orthonormalize(w.clone(), [Q[:, :j + 1]] + defl, passes=0, fill=True,
                           ref_norm=max(ref, 1e-300), generator=generator)
        if q.shape[1] == 0:
            j += 1
            break
        Q[:, j + 1:j + 2] = q
        beta = float((q.mT @ w).squeeze())
        T[j + 1, j] = T[j, j + 1] = beta
        j += 1
    theta, S = rayleigh_ritz(T[:j, :j])
    res = (T[j, j - 1] * S[j - 1, :]).abs()
    lo = float(theta[0] - res[0])
    hi = float(theta[-1] + res[-1])
    return lo, hi
