"""Subspace tools shared by the eigensolvers: orthonormalisation and Rayleigh–Ritz.

``orthonormalize`` is the one place where blocks of vectors are made orthonormal. It projects
out given orthonormal bases twice (block classical Gram–Schmidt, "twice is enough"), then
runs Cholesky-QR twice (CholQR2: two small Gram matrices and triangular solves, the fast path).
When the block is too ill-conditioned for Cholesky, it falls back to Householder QR, which
survives any rank loss; directions the block does not really span are then dropped or replaced
by random vectors orthogonal to everything (``fill=True``), so callers that need a fixed block
size (Lanczos, filtered subspace iteration) keep it and callers that want only the true span
(LOBPCG) get it.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, NamedTuple, Optional, Sequence, Tuple

import torch

__all__ = ["RitzPairs", "MatMul", "Threshold", "column_norms", "orthonormalize", "project_out",
           "rayleigh_ritz", "random_block", "start_block", "one_thread"]

# y = A x on [n, b] blocks (the solvers' only access to the operator).
MatMul = Callable[[torch.Tensor], torch.Tensor]
# Ritz values (float64, [k]) -> absolute residual norms they must reach ([k]).
Threshold = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block's torch CPU work on one thread: for the solvers' small dense
    factorisations (projected matrices of a few hundred rows). Their LAPACK calls gain little
    from a second thread and lose much when another process holds the core: on the 2-core
    machine beside one other job (2026-12-06) ``eigh`` of a 200 x 200 matrix took 2.1 ms on
    one thread and 65 ms on two, 800 x 800 77 ms and 655 ms."""
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


class RitzPairs(NamedTuple):
    """What a core solver returns: the wanted pairs, best first.

    ``values`` ``[k]`` float64 (largest first), ``vectors`` ``[n, k]`` orthonormal,
    ``residuals`` ``[k]`` float64 absolute residual norms ``||A v - θ v||`` (estimates from
    the solver's own recurrences), ``iterations``, ``converged``.
    """

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    iterations: int
    converged: bool


def random_block(n: int, b: int, dtype: torch.dtype, device: torch.device,
                 generator: Optional[torch.Generator]) -> torch.Tensor:
    """``[n, b]`` standard normal block, drawn on the CPU generator and moved to ``device``.

    Drawing on the CPU makes results independent of the device for a given seed.
    """
    g_dev = generator.device if generator is not None else torch.device("cpu")
    x = torch.randn(n, b, dtype=torch.float64, generator=generator, device=g_dev)
    return x.to(device=device, dtype=dtype)


def column_norms(X: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each column of ``X`` ``[n, b]`` -> ``[b]`` (same dtype and device).

    Not ``X.norm(dim=0)``: on the CPU that reduction over the leading dimension adds the rows
    one after another in the working precision, so in float32 its relative error grows
    about linearly with ``n`` (measured: 2e-4 at n = 1M, 7e-4 at 2M, the size of the
    residuals a float32 solve aims at). ``sum`` reduces in cascades (CPU) or trees (CUDA),
    accurate to a few units of rounding at any ``n``, and is several times faster.

    Example:
        >>> import torch
        >>> from ssr_engine.linalg.subspace import column_norms
        >>> column_norms(torch.tensor([[3.0, 0.0], [4.0, 2.0]]))
        tensor([5., 2.])
    """
    return X.square().sum(dim=0).sqrt()


def project_out(W: torch.Tensor, against: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    """Remove from ``W`` (in place) its components in the spans of the orthonormal blocks
    ``against`` (one classical Gram–Schmidt pass). Returns ``W``."""
    for C in against:
        if C is not None and C.shape[1] and W.shape[1]:
            W.addmm_(C, C.mT @ W, alpha=-1)
    return W


def _cholqr(W: torch.Tensor, max_cond: float) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """One scaled Cholesky-QR pass ``W = Q R``, or None when W is too ill-conditioned.

    The small Gram matrix goes to the CPU (one transfer) so that a GPU run does not pay for
    several tiny solver launches and synchronisations.
    """
    G = (W.mT @ W).double().cpu()
    d = G.diagonal().clamp_min(0).sqrt()
    if not bool(torch.all(d > 0)):
        return None
    with one_thread():
        L, info = torch.linalg.cholesky_ex(G / d[:, None] / d[None, :])
        if int(info) != 0:
            return None
        diag = L.diagonal()
        if float(diag.min()) * max_cond < float(diag.max()):
            return None
        eye = torch.eye(L.shape[0], dtype=L.dtype)
        Linv = torch.linalg.solve_triangular(L, eye, upper=False)
    # W = Q R with R = L^T D, so Q = W D^{-1} L^{-T}.
    Q = W @ (Linv.mT / d[:, None]).to(device=W.device, dtype=W.dtype)
    return Q, L.mT * d[None, :]


def _rank_revealing(W: torch.Tensor, abs_tol: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Householder QR, then the SVD of R: the directions of W with singular value above
    ``abs_tol`` (orthonormal) and those singular values."""
    Qh, R = torch.linalg.qr(W)
    with one_thread():
        U, S, _ = torch.linalg.svd(R.double().cpu())
    keep = S > abs_tol
    return Qh @ U[:, keep].to(device=W.device, dtype=W.dtype), S[keep]


def _orthonormal_span(W: torch.Tensor, abs_tol: float) -> Tuple[torch.Tensor, float]:
    """Orthonormal basis of W's significant span and the smallest singular value kept."""
    eps = torch.finfo(W.dtype).eps
    first = _cholqr(W, max_cond=(10 * eps) ** -0.5)
    if first is not None:
        second = _cholqr(first[0], max_cond=10.0)
        if second is not None:
            with one_thread():
                smin = float(torch.linalg.svdvals(second[1] @ first[1]).min())
            if smin > abs_tol:
                return second[0], smin
    Q, S = _rank_revealing(W, abs_tol)
    if Q.shape[1]:
        second = _cholqr(Q, max_cond=10.0)
        if second is not None:
            Q = second[0]
    return Q, (float(S.min()) if S.numel() else 0.0)


def orthonormalize(W: torch.Tensor, against: Sequence[Optional[torch.Tensor]] = (), *,
                   passes: int = 2, fill: bool = False, ref_norm: Optional[float] = None,
                   drop_tol: Optional[float] = None,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Orthonormal columns spanning the part of ``W`` orthogonal to ``against``.

    Args:
        W: ``[n, b]`` block (overwritten).
        against: blocks ``[n, c_i]`` with orthonormal columns (mutually orthogonal) to
            project out; ``None`` entries are skipped.
        passes: projection passes against ``against`` before orthonormalising (2 unless the
            caller has already projected).
        fill: keep ``b`` columns: directions ``W`` does not span (rank loss) are replaced by
            random unit vectors orthogonal to ``against`` and to the rest. Without ``fill``
            they are dropped and fewer columns come back.
        ref_norm: the size against which a direction counts as lost (default: the largest
            column norm of ``W`` on entry).
        drop_tol: a direction is lost when its singular value is below
            ``drop_tol * ref_norm`` (default ``100 * eps``).
        generator: random generator for ``fill``.

    Returns:
        ``[n, b']`` with orthonormal columns (also orthogonal to ``against``); ``b' = b``
        with ``fill`` (unless ``n`` is too small to hold them), ``b' <= b`` without.
    """
    n, b = W.shape
    if b == 0:
        return W
    eps = torch.finfo(W.dtype).eps
    ref = float(column_norms(W).max()) if ref_norm is None else float(ref_norm)
    abs_tol = (100 * eps if drop_tol is None else drop_tol) * ref
    for _ in range(passes):
        project_out(W, against)
    if ref == 0.0:
        Q = W[:, :0]
    else:
        Q, smin = _orthonormal_span(W, abs_tol)
        # Rounding left in W by the projections is amplified by ref / smin: clean it up.
        if Q.shape[1] and any(C is not None and C.shape[1] for C in against) \
                and ref > 100 * smin:
            Q = project_out(Q, against)
            Q, _ = _orthonormal_span(Q, 0.5)
    if fill and Q.shape[1] < b:
        room = n - sum(C.shape[1] for C in against if C is not None) - Q.shape[1]
        need = min(b - Q.shape[1], room)
        if need > 0:
            Z = random_block(n, need, W.dtype, W.device, generator)
            Z = orthonormalize(Z, list(against) + [Q], fill=False, generator=generator)
            Q = torch.cat([Q, Z], dim=1)
    return Q


def rayleigh_ritz(H: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of a small symmetric projected matrix, in float64 on the CPU.

    Args:
        H: ``[m, m]`` (symmetrised here), on any device.

    Returns:
        ``(theta [m] ascending, S [m, m])``, float64 CPU tensors.
    """
    H = H.double().cpu()
    H = (H + H.mT) / 2
    with one_thread():
        return torch.linalg.eigh(H)


def start_block(n: int, b: int, X0: Optional[torch.Tensor], dtype: torch.dtype,
                device: torch.device, generator: Optional[torch.Generator],
                deflate: Optional[torch.Tensor] = None) -> torch.Tensor:
    """An orthonormal ``[n, b]`` start block: the columns of ``X0`` (if given), completed by
    random vectors, orthogonal to ``deflate``."""
    cols = []
    if X0 is not None:
        cols.append(X0.to(device=device, dtype=dtype).reshape(n, -1)[:, :b])
    have = sum(c.shape[1] for c in cols)
    if have < b:
        cols.append(random_block(n, b - have, dtype, device, generator))
    W = torch.cat(cols, dim=1) if len(cols) > 1 else cols[0].clone()
    return orthonormalize(W, [deflate], fill=True, generator=generator)
