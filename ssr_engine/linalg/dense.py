"""The dense reference eigensolver: the whole matrix and ``torch.linalg.eigh``.

Exact up to rounding and the yardstick the iterative methods are tested against; it builds
an ``[n, n]`` matrix, so it refuses sizes above :data:`DENSE_MAX_N`.
"""
from __future__ import annotations

import torch

from .subspace import MatMul, RitzPairs, column_norms

__all__ = ["DENSE_MAX_N", "dense_matrix", "dense_eigs"]

# Largest operator the dense reference will form ([n, n] float64 is 0.5 GB at n = 8192, and
# eigh costs about 10 n^3 flops).
DENSE_MAX_N = 8192


def dense_matrix(matmul: MatMul, n: int, dtype: torch.dtype, device: torch.device,
                 chunk: int = 1024) -> torch.Tensor:
    """``[n, n]`` matrix of an operator, built from products with identity columns."""
    A = torch.empty(n, n, dtype=dtype, device=device)
    for s in range(0, n, chunk):
        e = torch.zeros(n, min(chunk, n - s), dtype=dtype, device=device)
        e[torch.arange(s, s + e.shape[1], device=device),
          torch.arange(e.shape[1], device=device)] = 1
        A[:, s:s + e.shape[1]] = matmul(e)
    return A


def dense_eigs(matmul: MatMul, n: int, k: int, *, largest: bool, dtype: torch.dtype,
               device: torch.device) -> RitzPairs:
    """The ``k`` largest (or smallest) eigenpairs from a full ``eigh`` in float64.

    Args:
        matmul: ``[n, b] -> [n, b]`` products with the symmetric operator.
        n: operator size (at most :data:`DENSE_MAX_N`; the caller checks).
        k: wanted pairs.
        largest: largest (True) or smallest (False) end.
        dtype, device: of the returned vectors.

    Returns:
        :class:`RitzPairs`, best first, with residual norms computed from the matrix.
    """
    A = dense_matrix(matmul, n, torch.float64, device) if dtype == torch.float64 \
        else dense_matrix(matmul, n, dtype, device).double()
    A = (A + A.mT) / 2
    w, V = torch.linalg.eigh(A)
    idx = torch.arange(n - 1, n - 1 - k, -1) if largest else torch.arange(k)
    w, V = w[idx.to(w.device)], V[:, idx.to(V.device)]
    res = column_norms(A @ V - V * w)
    return RitzPairs(w.cpu(), V.to(dtype), res.cpu(), 1, True)
