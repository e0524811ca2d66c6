"""Chebyshev-filtered subspace iteration (ChFSI) with locking.

A block ``X`` of ``k + extra`` vectors is pushed through a Chebyshev polynomial of the operator
that is bounded by 1 on the unwanted interval ``[lo, cut]`` (``cut``: the smallest Ritz value
of the block) and grows fast above it, then orthonormalised and rotated by Rayleigh–Ritz.
A degree-``d`` filter shrinks the unwanted part of a Ritz vector at ``θ`` by
``1 / T_d((θ - c) / e)`` (``c, e``: centre and half-width of ``[lo, cut]``), so the degree is
chosen from the gap and the residual still to remove. Converged leading pairs are locked: they
leave the block and the operator is deflated against them, so later filters only work on what
is left. The filter runs the scaled three-term recurrence (every iterate divided by the
polynomial's value at the top of the spectrum), which never overflows, even in float32.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

from .subspace import MatMul, RitzPairs, Threshold, column_norms, orthonormalize, project_out, \
    rayleigh_ritz, start_block

__all__ = ["chebyshev_subspace", "chebyshev_filter"]


def chebyshev_filter(matmul: MatMul, X: torch.Tensor, degree: int, lo: float, cut: float,
                     top: float) -> torch.Tensor:
    """``T_d(s(A)) X / T_d(s(top))`` with ``s`` mapping ``[lo, cut]`` onto ``[-1, 1]``.

    Args:
        matmul: products with the operator.
        X: ``[n, b]`` block.
        degree: polynomial degree ``d >= 1``.
        lo, cut: the interval to damp (``lo < cut``).
        top: a point above ``cut`` (the top of the spectrum), where the result is scaled to 1.

    Returns:
        ``[n, b]`` filtered block.
    """
    e = (cut - lo) / 2
    c = (cut + lo) / 2
    s0 = (top - c) / e
    sigma = 1.0 / s0
    # Y_1 = s(A) X / s0
    Y_prev, Y = X, (matmul(X) - c * X) * (sigma / e)
    for _ in range(1, degree):
        sigma_next = 1.0 / (2 * s0 - sigma)
        Z = matmul(Y)
        Z.sub_(Y, alpha=c).mul_(2 * sigma_next / e).sub_(Y_prev, alpha=sigma * sigma_next)
        Y_prev, Y, sigma = Y, Z, sigma_next
    return Y


def _rotate(X: torch.Tensor, AX: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor,
                                                        torch.Tensor]:
    theta, S = rayleigh_ritz(X.mT @ AX)
    theta, S = theta.flip(0), S.flip(1)
    Sd = S.to(device=X.device, dtype=X.dtype)
    return theta, X @ Sd, AX @ Sd


def chebyshev_subspace(matmul: MatMul, n: int, k: int, *, threshold: Threshold, maxiter: int,
                       dtype: torch.dtype, device: torch.device, bounds: Tuple[float, float],
                       X0: Optional[torch.Tensor] = None, extra: int = 0,
                       max_degree: int = 40, deflate: Optional[torch.Tensor] = None,
                       generator: Optional[torch.Generator] = None,
                       monitor: Optional[Callable[[int], None]] = None) -> RitzPairs:
    """The ``k`` algebraically largest eigenpairs by Chebyshev-filtered subspace iteration.

    Args:
        matmul: ``[n, b] -> [n, b]`` products with the symmetric operator.
        n: operator size.
        k: wanted pairs.
        threshold: Ritz values -> absolute residual norms to reach.
        maxiter: filter iterations allowed.
        dtype, device: of the block.
        bounds: ``(lo, hi)`` enclosing the spectrum.
        X0: ``[n, <=k + extra]`` start vectors (completed at random).
        extra: guard vectors beyond ``k`` (default ``max(8, k // 2)``); they widen the gap
            the filter sees.
        max_degree: largest filter degree per iteration.
        deflate: ``[n, c]`` orthonormal vectors to stay orthogonal to.
        generator: random generator.
        monitor: called with the number of converged pairs after every iteration.

    Returns:
        :class:`RitzPairs` with the ``k`` largest pairs, largest first.
    """
    lo, hi = bounds
    c0 = 0 if deflate is None else deflate.shape[1]
    n_eff = n - c0
    p = min(k + (extra or max(8, k // 2)), n_eff)
    locked_V = torch.empty(n, 0, dtype=dtype, device=device)
    locked_w = torch.empty(0, dtype=torch.float64)
    locked_r = torch.empty(0, dtype=torch.float64)

    def op(Y: torch.Tensor) -> torch.Tensor:
        return project_out(matmul(Y), [deflate, locked_V])

    X = start_block(n, p, X0, dtype, device, generator, deflate)
    theta, X, AX = _rotate(X, op(X))
    it = 0
    converged = False
    while True:
        res = column_norms(AX - X * theta.to(device=device, dtype=dtype)).double().cpu()
        need = k - locked_V.shape[1]
        ok = res[:need] <= threshold(theta[:need])
        nl = int(torch.cumprod(ok.int(), 0).sum()) if need > 0 else 0
        if nl:
            locked_V = torch.cat([locked_V, X[:, :nl]], dim=1)
            locked_w = torch.cat([locked_w, theta[:nl]])
            locked_r = torch.cat([locked_r, res[:nl]])
            X, AX, theta, res = X[:, nl:], AX[:, nl:], theta[nl:], res[nl:]
        if monitor is not None:
            monitor(locked_V.shape[1])
        need = k - locked_V.shape[1]
        if need == 0:
            converged = True
            break
        if it >= maxiter or X.shape[1] == 0:
            break
        cut = float(theta[-1])
        if X.shape[1] <= need or cut <= lo:
            cut = lo + 0.5 * (float(theta[need - 1]) - lo) if X.shape[1] <= need else cut
        width = max(cut - lo, 1e-12 * max(abs(hi), abs(lo), 1.0))
        t = (float(theta[need - 1]) - (cut + lo) / 2) / (width / 2)
        ratio = float((res[:need] / threshold(theta[:need])).max())
        if t > 1.0 + 1e-9:
            degree = math.ceil(math.acosh(max(2.0 * ratio, 1.0)) / math.acosh(t))
        else:
            degree = max_degree
        degree = min(max(degree, 2), max_degree)
        Y = chebyshev_filter(op, X, degree, lo, lo + width, max(hi, float(theta[0])))
        it += 1
        Y = orthonormalize(Y, [deflate, locked_V], fill=True, generator=generator)
        theta, X, AX = _rotate(Y, op(Y))
    need = k - locked_V.shape[1]
    V = torch.cat([locked_V, X[:, :need]], dim=1)
    w = torch.cat([locked_w, theta[:need]])
    r = torch.cat([locked_r, res[:need]])
    order = torch.argsort(w, descending=True)
    return RitzPairs(w[order], V[:, order.to(device)], r[order], it, converged)
