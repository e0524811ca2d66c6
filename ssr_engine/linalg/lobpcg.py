"""LOBPCG (locally optimal block conjugate gradient), without preconditioner, made robust.

Each iteration runs Rayleigh–Ritz on ``S = [X, W, P]``: the current block, the residuals of
its unconverged columns and the previous search directions. Robustness comes from three
habits: converged columns are soft-locked (they stay in ``X`` for Rayleigh–Ritz but add no
residual or direction, so the basis cannot degenerate through them); ``W`` is made orthonormal
against ``X`` explicitly and loses whatever directions it does not really span; and ``P`` and
the basis Gram matrix go through SVQB (scaled eigen-decomposition of the Gram matrix, dropping
directions below ``sqrt(eps)``), so rank loss shrinks the basis instead of breaking Cholesky.
``P`` and ``A P`` are carried as combinations of the basis (Hetmaniuk–Lehoucq), so an
iteration costs one block product on the unconverged columns only.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .subspace import MatMul, RitzPairs, Threshold, column_norms, orthonormalize, project_out, \
    one_thread, rayleigh_ritz, start_block

__all__ = ["lobpcg"]


def _svqb(G: torch.Tensor, eps: float) -> torch.Tensor:
    """``T`` (CPU, float64) with ``T^T G T = I`` on the well-determined directions of the
    Gram ``G``."""
    G = G.double().cpu()
    G = (G + G.mT) / 2
    d = G.diagonal().clamp_min(0).sqrt()
    nz = d > 0
    T = torch.zeros(G.shape[0], 0, dtype=G.dtype, device=G.device)
    if not bool(nz.any()):
        return T
    Gs = G[nz][:, nz] / d[nz][:, None] / d[nz][None, :]
    with one_thread():
        lam, U = torch.linalg.eigh(Gs)
    keep = lam > eps * float(lam.max())
    Tn = U[:, keep] / lam[keep].sqrt() / d[nz][:, None]
    T = torch.zeros(G.shape[0], Tn.shape[1], dtype=G.dtype, device=G.device)
    T[nz] = Tn
    return T


def lobpcg(matmul: MatMul, n: int, k: int, *, threshold: Threshold, maxiter: int,
           dtype: torch.dtype, device: torch.device, X0: Optional[torch.Tensor] = None,
           extra: int = 0, deflate: Optional[torch.Tensor] = None,
           generator: Optional[torch.Generator] = None,
           monitor: Optional[Callable[[int], None]] = None) -> RitzPairs:
    """The ``k`` algebraically largest eigenpairs by LOBPCG with soft locking.

    Args:
        matmul: ``[n, b] -> [n, b]`` products with the symmetric operator.
        n: operator size.
        k: wanted pairs.
        threshold: Ritz values -> absolute residual norms to reach.
        maxiter: iterations allowed.
        dtype, device: of the block.
        X0: ``[n, <=k + extra]`` start vectors (completed at random).
        extra: guard vectors beyond ``k`` (default ``max(2, k // 8)``).
        deflate: ``[n, c]`` orthonormal vectors to stay orthogonal to.
        generator: random generator.
        monitor: called with the number of converged pairs after every iteration.

    Returns:
        :class:`RitzPairs` with the ``k`` largest pairs, largest first.
    """
    c0 = 0 if deflate is None else deflate.shape[1]
    n_eff = n - c0
    p = min(k + (extra or max(2, k // 8)), n_eff)
    defl = [deflate] if deflate is not None else []
    eps = torch.finfo(dtype).eps
    gram_eps = max(eps, 1e-15) ** 0.5 * 1e-1 if dtype == torch.float32 else 1e-13

    def op(Y: torch.Tensor) -> torch.Tensor:
        return project_out(matmul(Y.contiguous()), defl)

    X = start_block(n, p, X0, dtype, device, generator, deflate)
    AX = op(X)
    P = AP = None
    theta = res = None
    it = 0
    while True:
        # Rayleigh–Ritz on [X, W, P] (on X alone in the first pass).
        if it == 0:
            S, AS = X, AX
        else:
            S = torch.cat([X, W] + ([P] if P is not None else []), dim=1)
            AS = torch.cat([AX, AW] + ([AP] if AP is not None else []), dim=1)
        T = _svqb(S.mT @ S, gram_eps)
        Td = T.to(device=device, dtype=dtype)
        Sb, ASb = S @ Td, AS @ Td
        theta_all, C = rayleigh_ritz(Sb.mT @ ASb)
        theta_all, C = theta_all.flip(0), C.flip(1)
        q = min(p, C.shape[1])
        Cx = C[:, :q].to(device=device, dtype=dtype)
        X_new, AX_new = Sb @ Cx, ASb @ Cx
        if it > 0:
            # Directions: the part of the new block outside the old X.
            Cd = (Td @ Cx)[X.shape[1]:]
            P = S[:, X.shape[1]:] @ Cd
            AP = AS[:, X.shape[1]:] @ Cd
        X, AX, theta = X_new, AX_new, theta_all[:q]
        res = column_norms(AX - X * theta.to(device=device, dtype=dtype)).double().cpu()
        kw = min(k, q)
        ok = res[:kw] <= threshold(theta[:kw])
        if monitor is not None:
            monitor(int(ok.sum()))
        if (kw == k and bool(ok.all())) or it >= maxiter:
            break
        it += 1
        # Soft locking: only unconverged columns contribute residuals and directions.
        active = torch.ones(q, dtype=torch.bool)
        active[:kw] = ~ok
        act = active.to(device)
        W = (AX - X * theta.to(device=device, dtype=dtype))[:, act]
        W = orthonormalize(W, defl + [X], fill=False)
        if W.shape[1] == 0:
            break
        AW = op(W)
        if P is not None:
            P, AP = P[:, act], AP[:, act]
            # P orthogonal to [X, W], tracked implicitly in AP.
            basis = torch.cat([X, W], dim=1)
            A_basis = torch.cat([AX, AW], dim=1)
            coef = basis.mT @ P
            P = P - basis @ coef
            AP = AP - A_basis @ coef
            Tp = _svqb(P.mT @ P, gram_eps).to(device=device, dtype=dtype)
            P, AP = P @ Tp, AP @ Tp
            if P.shape[1] == 0:
                P = AP = None
    kw = min(k, q)
    converged = kw == k and bool((res[:kw] <= threshold(theta[:kw])).all())
    return RitzPairs(theta[:kw], X[:, :kw], res[:kw], it, converged)
