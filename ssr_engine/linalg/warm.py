"""Warm starts: Rayleigh–Ritz on a previous solution before any Krylov iteration.

A warm block (the eigenvectors of an earlier, nearby problem) is orthonormalised on the
complement of the deflated vectors and rotated by one Rayleigh–Ritz step (one block product).
When its ``k`` leading Ritz pairs already meet the threshold, a short block Krylov probe on the
complement of those pairs checks that nothing was missed: its Ritz values interlace the
complement's spectrum, so a probe value at or above the ``k``-th Ritz value means a wanted
direction the warm block does not hold (an eigenvalue the update pushed up from below, say),
and the pairs are not accepted. Otherwise the Ritz vectors, best first, are the start block of
the solver that follows: its first block then holds the warm block's best directions, not
merely its first columns (which, for a Laplacian result, begin with the deflated ``λ = 0``
vectors).

How much a warm start can save depends on how close the old subspace is to the new one:
with the vectors nearly converged it replaces the whole solve by one product and the probe;
when the update rotates the wanted subspace far (measured on Amazon Clothing with 10 % new
edges, k = 64: the median new eigenvector lies at distance 0.9 from the old span, only the
first few below 0.3), the Krylov solve that follows costs about as much as a cold one.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .lanczos import block_lanczos
from .subspace import MatMul, RitzPairs, Threshold, column_norms, orthonormalize, project_out, \
    rayleigh_ritz

__all__ = ["warm_ritz"]

# The probe: a block Krylov space of PROBE_BASIS vectors in blocks of PROBE_BLOCK.
PROBE_BLOCK = 4
PROBE_BASIS = 32


def warm_ritz(matmul: MatMul, n: int, k: int, X0: torch.Tensor, *, threshold: Threshold,
              dtype: torch.dtype, device: torch.device,
              deflate: Optional[torch.Tensor] = None,
              generator: Optional[torch.Generator] = None
              ) -> Tuple[Optional[RitzPairs], torch.Tensor]:
    """Rayleigh–Ritz of a symmetric operator on a warm start block (largest end).

    Args:
        matmul: ``[n, b] -> [n, b]`` products with the operator.
        n: operator size.
        k: wanted pairs.
        X0: ``[n, K]`` warm start vectors (any scaling; directions in ``deflate`` and
            linearly dependent ones are dropped).
        threshold: Ritz values -> absolute residual norms to reach.
        dtype, device: of the block.
        deflate: ``[n, c]`` orthonormal vectors to stay orthogonal to (the operator is
            ``(I - C C^T) A (I - C C^T)`` on the complement).
        generator: random generator for the probe.

    Returns:
        ``(pairs, Y)``: ``pairs`` is a :class:`RitzPairs` with the ``k`` largest Ritz pairs
        (largest first, ``iterations = 1``: the one Rayleigh–Ritz step) when all of them meet
        ``threshold`` and the probe finds nothing above them, else ``None``; ``Y``
        ``[n, K']`` (``K' <= K``) are the orthonormal Ritz vectors of the warm block, largest
        Ritz value first, for the solver that takes over.
    """
    defl = [deflate] if deflate is not None else []
    X = orthonormalize(X0.to(device=device, dtype=dtype).reshape(n, -1).clone(), defl,
                       fill=False, generator=generator)
    if X.shape[1] == 0:
        return None, X
    AX = project_out(matmul(X.contiguous()), defl)
    theta, S = rayleigh_ritz(X.mT @ AX)
    theta, S = theta.flip(0), S.flip(1)                  # largest first
    Sd = S.to(device=device, dtype=dtype)
    Y, AY = X @ Sd, AX @ Sd
    if Y.shape[1] < k:
        return None, Y
    res = column_norms(AY[:, :k] - Y[:, :k] * theta[:k].to(device=device, dtype=dtype))
    res = res.double().cpu()
    if not bool((res <= threshold(theta[:k])).all()):
        return None, Y
    # Nothing missed: the largest Ritz value of a short block Krylov run on the complement of
    # the k pairs stays below the k-th of them.
    c = 0 if deflate is None else deflate.shape[1]
    if n - c - k > 0:
        rest = torch.cat(defl + [Y[:, :k]], dim=1)
        probe = block_lanczos(matmul, n, 1, threshold=lambda th: torch.zeros_like(th),
                              maxiter=1, dtype=dtype, device=device, block=PROBE_BLOCK,
                              basis=PROBE_BASIS, deflate=rest, generator=generator)
        if float(probe.values[0]) >= float(theta[k - 1]):
            return None, Y
    return RitzPairs(theta[:k], Y[:, :k].contiguous(), res, 1, True), Y
