"""Chebyshev band filtering: all M bands from one recurrence (DESIGN.md §2, §4).

``t_0 = X``, ``t_1 = L̃ X``, ``t_{k+1} = 2 L̃ t_k - t_{k-1}``; band ``b`` is
``Σ_k coeffs[b, k] t_k``. The K products are shared by all M bands.

Three paths: the plain reference (one SpMM and a band update per order), a leaner torch path
(the CPU default: the recurrence as one ``addmm`` per order, rank-one band updates in place,
and ``last band = X - Σ others`` when the coefficients tile the spectrum) and the fused Triton
kernel (``kernels/chebyshev.py``: one pass per order over the CSR rows, band accumulators
updated while the rows are in registers).
"""
from __future__ import annotations

import numpy as np
import torch

from ..graph.operators import Operator
from .dispatch import resolve_backend

__all__ = ["chebyshev_bands", "chebyshev_bands_reference", "chebyshev_moments", "tiles_unity"]


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


def tiles_unity(coeffs: torch.Tensor) -> bool:
    """Whether the M >= 2 filters sum to the identity: ``Σ_b coeffs[b] = [1, 0, 0, …]``.

    True to float32 rounding (8 ulp of the largest coefficient), as for energy bands that
    tile the Chebyshev interval (DESIGN.md §2); then the last band is ``X - Σ others``.
    """
    c = coeffs.detach().to("cpu", torch.float64).numpy()
    if c.shape[0] < 2:
        return False
    target = np.zeros(c.shape[1])
    target[0] = 1.0
    gap = np.abs(c.sum(axis=0) - target).max()
    return bool(gap <= 8 * np.finfo(np.float32).eps * max(1.0, np.abs(c).max()))


def _chebyshev_bands_torch(op: Operator, X: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """The lean torch path (no autograd): the recurrence in place in a ``[2, N, d]`` pair
    buffer, and one ``[M, 2] x [2, N*d]`` GEMM per two orders into the band accumulators
    (half the accumulator traffic of one rank-one update per order)."""
    M, K = coeffs.shape
    N, d = X.shape
    work = torch.float32 if X.dtype in (torch.bfloat16, torch.float16) else X.dtype
    x = X.to(work).contiguous()
    A = op.matrix.to(work) if op.dtype != work else op.matrix
    c = coeffs.to(device=X.device, dtype=work)
    unity = tiles_unity(coeffs)
    m_acc = M - 1 if unity else M
    out = torch.empty(M, N, d, dtype=work, device=X.device)
    acc = out[:m_acc].view(m_acc, N * d)
    W = torch.empty(2, N, d, dtype=work, device=X.device)  # (t_{k-1}, t_k) or (t_k, t_{k+1})
    flat = W.view(2, N * d)
    s, h = op.scale, op.shift
    W[0].copy_(x)
    torch.mm(A, x, out=W[1])  # t_1 = s A x + h x
    if s != 1.0:
        W[1].mul_(s)
    if h != 0.0:
        W[1].add_(x, alpha=h)
    torch.mm(c[:m_acc, 0:2], flat, out=acc)
    k = 2
    while k < K:
        # slot 0 <- t_k = 2 L̃ t_{k-1} - t_{k-2}; slot 1 <- t_{k+1} = 2 L̃ t_k - t_{k-1}
        pairs = ((0, 1), (1, 0)) if k + 1 < K else ((0, 1),)
        for dst, src in pairs:
            W[dst].addmm_(A, W[src], beta=-1.0, alpha=2.0 * s)
            if h != 0.0:
                W[dst].add_(W[src], alpha=2.0 * h)
        n = len(pairs)
        acc.addmm_(c[:m_acc, k:k + n], flat[:n])
        k += 2
    if unity:
        torch.sub(x, out[:m_acc].sum(dim=0), out=out[M - 1])
    return out.to(X.dtype)


def _chebyshev_bands_triton(op: Operator, X: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    from ssr_engine.kernels.chebyshev import chebyshev_bands_fused
    out = chebyshev_bands_fused(op.matrix, op.scale, op.shift, X.contiguous(), coeffs,
                                unity=tiles_unity(coeffs))
    return out.to(X.dtype)


def chebyshev_bands(op: Operator, X: torch.Tensor, coeffs: torch.Tensor,
                    backend: str = "auto") -> torch.Tensor:
    """Apply M Chebyshev filters sharing one recurrence.

    ``out[b] = Σ_k coeffs[b, k] T_k(op) X``. On CUDA (``backend="triton"``/``"auto"``) each
    order is one fused pass over the CSR rows that also updates the M band accumulators;
    elsewhere (and for dense operators) a lean torch loop. Both accumulate in float32 for bfloat16/float16 inputs. When
    the filters sum to the identity (:func:`tiles_unity`), the last band is computed as
    ``X - Σ others``. Neither fast path records autograd history: when ``X`` or ``coeffs``
    requires grad (and grad mode is on), ``"auto"`` runs the differentiable reference and
    ``"triton"`` raises.

    Args:
        op: square symmetric operator with spectrum inside [-1, 1] (e.g.
            ``graph.scaled_laplacian()``); CSR or dense. Any other object with ``op @ t``
            (e.g. a :class:`~ssr_engine.PartitionedOperator` on a local row block) runs the
            reference recurrence.
        X: ``[N, d]`` signal block, on ``op``'s device.
        coeffs: ``[M, K]`` (damped) Chebyshev coefficients of the M filters.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        ``[M, N, d]`` filtered signals in ``X``'s dtype.

    Shapes:
        ``X [N, d]``, ``coeffs [M, K]`` -> ``[M, N, d]``.

    Example:
        >>> import torch, ssr_engine
        >>> from ssr_engine.ops import chebyshev_bands
        >>> g = ssr_engine.InteractionGraph([0, 1, 1, 2], [0, 0, 1, 1])
        >>> L = g.scaled_laplacian()
        >>> coeffs = torch.tensor([[0.5, -0.6, 0.0], [0.5, 0.6, 0.0]])  # low/high halves
        >>> bands = chebyshev_bands(L, torch.randn(5, 2), coeffs)
        >>> bands.shape
        torch.Size([2, 5, 2])
    """
    if not isinstance(op, Operator):
        # Any other operator with ``op @ t`` (e.g. a row-partitioned PartitionedOperator,
        # whose products exchange halos): the reference recurrence, which only multiplies.
        return chebyshev_bands_reference(op, X, coeffs)
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"Chebyshev filters need a square operator, got shape {op.shape}")
    if X.dim() != 2 or X.shape[0] != op.shape[1]:
        raise ValueError(f"X must be [N={op.shape[1]}, d], got {tuple(X.shape)}")
    if coeffs.dim() != 2 or coeffs.shape[0] < 1 or coeffs.shape[1] < 1:
        raise ValueError(f"coeffs must be [M, K] with M, K >= 1, got {tuple(coeffs.shape)}")
    if X.device != op.device:
        raise ValueError(f"X is on {X.device} but the operator on {op.device}; move one")
    grads = torch.is_grad_enabled() and (X.requires_grad or coeffs.requires_grad)
    vals = op.matrix.values() if op.is_sparse else op.matrix
    choice = resolve_backend(backend, X, vals)
    if grads:
        if backend == "triton":
            raise ValueError("the Triton Chebyshev kernel has no backward; use "
                             "backend='torch' (or torch.no_grad()) when X or coeffs need "
                             "gradients")
        return chebyshev_bands_reference(op, X, coeffs)
    if coeffs.shape[1] == 1 or X.numel() == 0:
        return coeffs[:, 0, None, None].to(X) * X.unsqueeze(0)
    if choice == "triton" and op.is_sparse:
        return _chebyshev_bands_triton(op, X, coeffs)
    return _chebyshev_bands_torch(op, X, coeffs)


def chebyshev_moments(op: Operator, X: torch.Tensor, K: int, backend: str = "auto") -> torch.Tensor:
    """KPM moments ``μ_k = ⟨X, T_k(op) X⟩_F`` for ``k < 2K`` from ``K`` operator products.

    Doubling identities give two moments per product: ``μ_{2k} = 2⟨t_k, t_k⟩ - μ_0`` and
    ``μ_{2k+1} = 2⟨t_{k+1}, t_k⟩ - μ_1`` (DESIGN.md §2). On CUDA each product is one fused
    pass that also forms the two inner products (float32 partial sums per tile of rows, added
    in float64); elsewhere a torch loop with float64 inner products.

    Args:
        op: square symmetric operator with spectrum inside [-1, 1]; CSR or dense.
        X: ``[N, d]`` block on ``op``'s device.
        K: number of operator products, ``K >= 1``.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        float64 CPU tensor ``[2K]`` (``μ_0 = ‖X‖_F²``).

    Shapes:
        ``X [N, d]`` -> ``[2K]``.

    Example:
        >>> import torch, ssr_engine
        >>> from ssr_engine.ops import chebyshev_moments
        >>> g = ssr_engine.InteractionGraph([0, 0, 1, 2], [0, 1, 1, 2])
        >>> X = torch.randn(g.n_nodes, 2, dtype=torch.float64)
        >>> mu = chebyshev_moments(g.scaled_laplacian(dtype=torch.float64), X, 3)
        >>> mu.shape, bool(abs(mu[0] - X.pow(2).sum()) < 1e-12)
        (torch.Size([6]), True)
    """
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"Chebyshev moments need a square operator, got shape {op.shape}")
    if X.dim() != 2 or X.shape[0] != op.shape[1]:
        raise ValueError(f"X must be [N={op.shape[1]}, d], got {tuple(X.shape)}")
    if int(K) != K or K < 1:
        raise ValueError(f"K (number of products) must be a positive integer, got {K}")
    vals = op.matrix.values() if op.is_sparse else op.matrix
    if resolve_backend(backend, X, vals) == "triton" and op.is_sparse and X.numel():
        from ssr_engine.kernels.chebyshev import chebyshev_moments_fused
        return chebyshev_moments_fused(op.matrix, op.scale, op.shift, X.contiguous(), int(K))
    dot = lambda a, b: float(torch.dot(a.reshape(-1).double(), b.reshape(-1).double()))
    work = torch.float32 if X.dtype in (torch.bfloat16, torch.float16) else X.dtype
    A = Operator(op.matrix.to(work), op.scale, op.shift, symmetric=True)
    prev, cur = X.to(work), A @ X.to(work)
    mu = [dot(prev, prev), dot(prev, cur)]
    for _ in range(1, int(K)):
        nxt = (A @ cur).mul_(2.0).sub_(prev)
        mu += [2.0 * dot(cur, cur) - mu[0], 2.0 * dot(nxt, cur) - mu[1]]
        prev, cur = cur, nxt
    return torch.tensor(mu, dtype=torch.float64)
