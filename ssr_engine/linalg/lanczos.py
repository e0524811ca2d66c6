"""Block Lanczos with thick restart and full reorthogonalisation.

The Krylov basis ``Q`` grows one block at a time: ``W = A Q_j`` is orthogonalised against the
whole basis twice (the coefficients are the new column of the projected matrix
``H = Q^T A Q``), and its orthonormalised remainder is the next block, coupled to the basis by
``B = Q_{new}^T W``. With ``A Q = Q H + Q_{new} B E^T`` the residual of a Ritz pair
``(θ_i, Q s_i)`` is ``||B E^T s_i||``, read off the small matrices without touching ``A``.
When the basis is full, the best Ritz vectors are kept (thick restart): the new basis is
``[Q S_keep, Q_new]`` with ``H = [[Θ, (B E^T S_keep)^T], [B E^T S_keep, ·]]``, so no
information about the wanted end is lost and no product is repeated. Rank loss of a block
(an invariant subspace, or the space running out) is met by random directions orthogonal to
everything, which keeps the block size and the relation exact.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .subspace import MatMul, RitzPairs, Threshold, column_norms, orthonormalize, project_out, \
    rayleigh_ritz, start_block

__all__ = ["block_lanczos"]


def block_lanczos(matmul: MatMul, n: int, k: int, *, threshold: Threshold, maxiter: int,
                  dtype: torch.dtype, device: torch.device,
                  X0: Optional[torch.Tensor] = None, block: int = 8, basis: int = 0,
                  keep: int = 0, deflate: Optional[torch.Tensor] = None,
                  generator: Optional[torch.Generator] = None,
                  monitor: Optional[Callable[[int], None]] = None) -> RitzPairs:
    """The ``k`` algebraically largest eigenpairs of a symmetric operator.

    Args:
        matmul: ``[n, b] -> [n, b]`` products with the operator.
        n: operator size.
        k: wanted pairs.
        threshold: Ritz values -> absolute residual norms to reach.
        maxiter: restart cycles allowed.
        dtype, device: of the basis.
        X0: ``[n, <=block]`` start vectors (completed at random).
        block: block size ``b``.
        basis: vectors in a full basis before a restart (default ``max(3k, k + 4b)``).
        keep: Ritz vectors kept at a restart (default about ``k + (basis - k) / 2``).
        deflate: ``[n, c]`` orthonormal vectors the search stays orthogonal to (the operator
            is then ``(I - C C^T) A (I - C C^T)`` on the complement).
        generator: random generator for start and fill vectors.
        monitor: called with the number of converged pairs after every cycle.

    Returns:
        :class:`RitzPairs` with the ``k`` largest Ritz pairs, largest first.
    """
    c = 0 if deflate is None else deflate.shape[1]
    n_eff = n - c
    b = max(1, min(block, n_eff))
    m = min(max(basis or max(3 * k, k + 4 * b), k + b), n_eff)
    kk = min(max(keep or (k + (m - k) // 2), k), max(m - b, k))
    # A cycle expands until at least m vectors are in H: up to m + b, plus the new block.
    Q = torch.empty(n, m + 2 * b, dtype=dtype, device=device)
    Q_next = torch.empty_like(Q)
    H = torch.zeros(m + 2 * b, m + 2 * b, dtype=torch.float64)
    defl = [deflate] if deflate is not None else []

    V = start_block(n, b, X0, dtype, device, generator, deflate)
    nq = V.shape[1]
    Q[:, :nq] = V
    j = 0                    # vectors whose products are in H
    lo = 0                   # start of the vectors the next block is coupled to
    cycle = 0
    while True:
        # -- expand the basis to m vectors ---------------------------------------------------
        while j < nq and j < m:
            X = Q[:, j:nq]
            W = matmul(X.contiguous())
            ref = float(column_norms(W).max())
            project_out(W, defl)
            basis_now = Q[:, :nq]
            # Two Gram-Schmidt passes: the first only against the vectors W couples to in
            # exact arithmetic (the previous and current block, and after a restart the
            # kept Ritz vectors), which removes the large components; the second against
            # the whole basis removes the rest (rounding, loss of orthogonality).
            near = Q[:, lo:nq]
            coef_near = near.mT @ W
            W.addmm_(near, coef_near, alpha=-1)
            coef = basis_now.mT @ W
            W.addmm_(basis_now, coef, alpha=-1)
            coef[lo:] += coef_near
            # Q's own rounding along the deflated directions spreads through coef: clean up.
            project_out(W, defl)
            coef = coef.double().cpu()
            H[:nq, j:nq] = coef
            H[j:nq, :nq] = coef.mT
            room = min(b, n_eff - nq)
            if room <= 0:
                j = nq
                break
            # passes=0: W is already projected, and orthonormalize leaves it untouched.
            new = orthonormalize(W, [basis_now] + defl, passes=0, fill=True, ref_norm=ref,
                                 generator=generator)[:, :room]
            B = (new.mT @ W).double().cpu()
            bn = new.shape[1]
            Q[:, nq:nq + bn] = new
            H[nq:nq + bn, j:nq] = B
            H[j:nq, nq:nq + bn] = B.mT
            lo, j, nq = j, nq, nq + bn
        # -- Rayleigh–Ritz on the expanded basis ---------------------------------------------
        theta, S = rayleigh_ritz(H[:j, :j])
        theta, S = theta.flip(0), S.flip(1)          # largest first
        coupling = H[j:nq, :j]
        res = (coupling @ S).norm(dim=0) if nq > j else torch.zeros_like(theta)
        kw = min(k, j)
        ok = res[:kw] <= threshold(theta[:kw])
        cycle += 1
        if monitor is not None:
            monitor(int(ok.sum()))
        if bool(ok.all()) and kw == k or nq == j or cycle >= maxiter:
            break
        # -- thick restart: keep the best kk Ritz vectors and the unexpanded block ------------
        kr = min(kk, j)
        Sk = S[:, :kr].to(device=device, dtype=dtype)
        Q_next[:, :kr] = Q[:, :j] @ Sk
        r = nq - j
        Q_next[:, kr:kr + r] = Q[:, j:nq]
        cpl = coupling @ S[:, :kr]
        H.zero_()
        H[:kr, :kr] = torch.diag(theta[:kr])
        H[kr:kr + r, :kr] = cpl
        H[:kr, kr:kr + r] = cpl.mT
        Q, Q_next = Q_next, Q
        lo, j, nq = 0, kr, kr + r
    kw = min(k, j)
    Y = Q[:, :j] @ S[:, :kw].to(device=device, dtype=dtype)
    converged = kw == k and bool((res[:kw] <= threshold(theta[:kw])).all())
    return RitzPairs(theta[:kw], Y, res[:kw], cycle, converged)
