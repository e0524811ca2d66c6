"""``eigsh``: a few eigenpairs at the ends of the spectrum of a symmetric operator.

One public function in the vocabulary of :func:`scipy.sparse.linalg.eigsh` (``k``, ``which``,
``tol``, ``maxiter``, ``v0``), four methods implemented here in torch (CPU and CUDA, float32
and float64), and one result object. The core solvers look for the largest eigenvalues;
``which="SA"`` runs them on ``-A`` and ``which="BE"`` runs the top half, then the bottom half
deflated against it.

**Residuals.** ``EigResult.residuals[i] = ||A v_i - λ_i v_i|| / max(||A||_est, |λ_i|)``,
recomputed with one product after the solver has finished, where ``||A||_est`` is
``max(|lo|, |hi|)`` of a short Lanczos bound on the spectrum (the exact norm for
``method="dense"``). A pair has converged when its residual is at most ``tol``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import numpy as np
import torch

from ..graph.operators import Operator, as_operator
from .bounds import spectral_bounds
from .chebyshev import chebyshev_subspace
from .dense import DENSE_MAX_N, dense_eigs
from .lanczos import block_lanczos
from .lobpcg import lobpcg
from .result import EigResult, NoConvergence
from .subspace import MatMul, RitzPairs, column_norms, random_block
from .warm import warm_ritz

__all__ = ["eigsh", "METHODS", "WHICH", "default_tol"]

METHODS = ("auto", "lanczos", "lobpcg", "chebyshev", "dense")
WHICH = ("SA", "LA", "BE")
# Below this size "auto" takes the dense reference: a full eigh is then cheaper than any
# iteration.
AUTO_DENSE_N = 512
# The solvers aim a little below tol, so that the residuals recomputed at the end (one
# product, in working precision) stay below it.
_AIM = 0.7


def default_tol(dtype: torch.dtype) -> float:
    """The default relative residual: ``1e-8`` in float64, ``1e-4`` in float32."""
    return 1e-8 if dtype == torch.float64 else 1e-4


def _check_common(k, tol, maxiter, method, n: int, dtype: torch.dtype) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {k!r}")
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= N = {n}, got k = {k}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if tol is not None and not (isinstance(tol, (int, float)) and math.isfinite(tol)
                                and tol > 0):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    if tol is not None and tol < 10 * torch.finfo(dtype).eps:
        raise ValueError(f"tol = {tol:g} is below what {dtype} can reach "
                         f"(10 * eps = {10 * torch.finfo(dtype).eps:.1e}); use float64 "
                         "or a larger tol")
    if maxiter is not None and (isinstance(maxiter, bool)
                                or not isinstance(maxiter, (int, np.integer)) or maxiter < 1):
        raise ValueError(f"maxiter must be a positive integer, got {maxiter!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"eigensolvers work in float32 or float64, got {dtype}")


def _check_v0(v0, n: int, dtype: torch.dtype, device: torch.device) -> Optional[torch.Tensor]:
    if v0 is None:
        return None
    v = torch.from_numpy(np.asarray(v0)) if not isinstance(v0, torch.Tensor) else v0
    if v.dim() not in (1, 2) or v.shape[0] != n:
        raise ValueError(f"v0 must have shape [N] or [N, b] with N = {n}, "
                         f"got {tuple(v.shape)}")
    v = v.reshape(n, -1).to(device=device, dtype=dtype)
    if not bool(torch.isfinite(v).all()):
        bad = int((~torch.isfinite(v)).sum())
        raise ValueError(f"v0 holds {bad} NaN/inf entries; pass finite start vectors "
                         "or v0=None")
    if float(v.norm()) == 0.0:
        raise ValueError("v0 is zero; pass a nonzero start vector or v0=None")
    return v


def _check_symmetric(op: Operator, generator: Optional[torch.Generator]) -> None:
    n = op.shape[0]
    xy = random_block(n, 2, op.dtype, op.device, generator)
    Axy = op @ xy
    x, y = xy[:, 0], xy[:, 1]
    a, b = float(y @ Axy[:, 0]), float(x @ Axy[:, 1])
    scale = float(Axy[:, 0].norm() * y.norm() + Axy[:, 1].norm() * x.norm())
    if abs(a - b) > math.sqrt(torch.finfo(op.dtype).eps) * max(scale, 1e-300):
        raise ValueError(f"the operator is not symmetric: y^T A x = {a:.6g} but "
                         f"x^T A y = {b:.6g} for random x, y; eigsh needs a symmetric "
                         "matrix (use (A + A.T) / 2 if that is what you mean)")


def _solve_largest(method: str, matmul: MatMul, n: int, k: int, *, threshold, maxiter,
                   dtype, device, X0, deflate, generator, bounds, monitor) -> RitzPairs:
    """The k largest eigenpairs of ``matmul`` (restricted to the complement of deflate)."""
    if method == "lanczos":
        if X0 is not None:
            # A warm block: one Rayleigh–Ritz step first; it may already hold the answer, and
            # otherwise its best Ritz vectors form Lanczos's first block.
            done, X0 = warm_ritz(matmul, n, k, X0, threshold=threshold, dtype=dtype,
                                 device=device, deflate=deflate, generator=generator)
            if done is not None:
                if monitor is not None:
                    monitor(k)
                return done
        return block_lanczos(matmul, n, k, threshold=threshold, maxiter=maxiter or 1000,
                             dtype=dtype, device=device, X0=X0,
                             block=lanczos_block(n, device), deflate=deflate,
                             generator=generator, monitor=monitor)
    if method == "lobpcg":
        return lobpcg(matmul, n, k, threshold=threshold, maxiter=maxiter or 5000, dtype=dtype,
                      device=device, X0=X0, deflate=deflate, generator=generator,
                      monitor=monitor)
    if method == "chebyshev":
        return chebyshev_subspace(matmul, n, k, threshold=threshold, maxiter=maxiter or 1000,
                                  dtype=dtype, device=device, bounds=bounds(), X0=X0,
                                  deflate=deflate, generator=generator, monitor=monitor)
    raise AssertionError(method)


def lanczos_block(n: int, device: torch.device) -> int:
    """Lanczos block size: small blocks need the fewest products, larger ones make each
    sparse product cheaper per column (and mean fewer synchronisations on a GPU)."""
    if device.type == "cuda":
        return 32
    return 8 if n < 100_000 else 16


def _negated(matmul: MatMul) -> MatMul:
    return lambda X: matmul(X).neg_()


def eigsh(A, k: int, which: str = "SA", method: str = "auto", tol: Optional[float] = None,
          maxiter: Optional[int] = None, v0=None,
          generator: Optional[torch.Generator] = None, *,
          progress: bool = False) -> EigResult:
    """``k`` eigenpairs at one or both ends of the spectrum of a symmetric operator.

    Args:
        A: symmetric ``[N, N]`` operator: anything :func:`ssr_engine.as_operator` accepts (an
            :class:`~ssr_engine.Operator`, torch sparse or dense tensor, scipy sparse matrix,
            numpy array). Its dtype (float32 or float64) and device are used throughout.
        k: number of eigenpairs, ``1 <= k <= N``.
        which: ``"SA"`` smallest algebraic, ``"LA"`` largest algebraic, ``"BE"`` both ends
            (``ceil(k/2)`` from the top, the rest from the bottom).
        method: ``"lanczos"`` (block Lanczos, thick restart, full reorthogonalisation),
            ``"lobpcg"`` (soft locking, SVQB), ``"chebyshev"`` (Chebyshev-filtered subspace
            iteration with locking), ``"dense"`` (full ``eigh``; ``N <= 8192``) or
            ``"auto"`` (dense for ``N <= 512`` or ``k > N / 4`` when dense is allowed,
            Lanczos otherwise).
        tol: relative residual every pair must reach (see the module docstring); default
            ``1e-8`` in float64, ``1e-4`` in float32.
        maxiter: outer iterations (Lanczos restart cycles, LOBPCG or filter iterations);
            default generous.
        v0: ``[N]`` or ``[N, b]`` start vector(s); default random.
        generator: ``torch.Generator`` for the random vectors; default a fixed seed, so
            results are reproducible.
        progress: show a tqdm bar of converged pairs.

    Returns:
        :class:`~ssr_engine.EigResult` with ascending eigenvalues ``[k]``, eigenvectors
        ``[N, k]``, relative residuals ``[k]``; unpacks as ``w, V = result``.

    Raises:
        ValueError: on a non-square or non-symmetric operator, ``k`` outside ``[1, N]``,
            unknown ``which``/``method``, a bad ``tol``/``maxiter``, NaN in ``v0``, or
            ``method="dense"`` with ``N > 8192``.
        NoConvergence: when some pair misses ``tol`` within ``maxiter``; ``.result`` holds
            the best pairs found and their residuals.

    Shapes:
        ``A``: ``[N, N]``; eigenvalues ``[k]``; eigenvectors ``[N, k]``.

    Example:
        >>> import scipy.sparse as sp, torch, ssr_engine
        >>> n = 200
        >>> path = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n), format="csr")
        >>> w, V = ssr_engine.eigsh(path, k=3, which="SA", method="lanczos")
        >>> [round(float(x), 6) for x in w]   # 2 - 2 cos(j pi / (n + 1))
        [0.000244, 0.000977, 0.002198]
    """
    op = as_operator(A)
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"eigsh needs a square operator, got shape {op.shape}")
    n, dtype, device = op.shape[0], op.dtype, op.device
    _check_common(k, tol, maxiter, method, n, dtype)
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    X0 = _check_v0(v0, n, dtype, device)
    if method == "dense" and n > DENSE_MAX_N:
        raise ValueError(f"method='dense' forms the full [N, N] matrix and is limited to "
                         f"N <= {DENSE_MAX_N}; this operator has N = {n}. Use "
                         "method='lanczos' (or 'auto') instead")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    _check_symmetric(op, gen)
    tol = default_tol(dtype) if tol is None else float(tol)
    if method == "auto":
        dense_ok = n <= DENSE_MAX_N
        method = "dense" if dense_ok and (n <= AUTO_DENSE_N or 4 * k > n) else "lanczos"
    matmul: MatMul = op.matmul
    bar = _progress_bar(k, progress)

    if method == "dense":
        full = dense_eigs(matmul, n, n, largest=True, dtype=dtype, device=device)
        norm = float(full.values.abs().max())
        w_all, V_all = full.values.flip(0), full.vectors.flip(1)  # ascending
        if which == "SA":
            idx = torch.arange(k)
        elif which == "LA":
            idx = torch.arange(n - k, n)
        else:
            k_hi = (k + 1) // 2
            idx = torch.cat([torch.arange(k - k_hi), torch.arange(n - k_hi, n)])
        w, V, iters = w_all[idx], V_all[:, idx.to(device)], 1
    else:
        lo_hi: Optional[Tuple[float, float]] = None

        def bounds() -> Tuple[float, float]:
            nonlocal lo_hi
            if lo_hi is None:
                lo_hi = spectral_bounds(matmul, n, dtype=dtype, device=device, generator=gen)
            return lo_hi

        lo, hi = bounds()
        norm = max(abs(lo), abs(hi), torch.finfo(dtype).tiny)
        thr: Callable[[torch.Tensor], torch.Tensor] = \
            lambda th: _AIM * tol * th.abs().clamp_min(norm)
        parts, iters = [], 0
        plan = {"LA": [(k, False)], "SA": [(k, True)],
                "BE": [((k + 1) // 2, False), (k - (k + 1) // 2, True)]}[which]
        found = None
        done = 0
        for kk, negate in plan:
            if kk == 0:
                continue
            f = _negated(matmul) if negate else matmul
            neg_bounds = (lambda: (-bounds()[1], -bounds()[0])) if negate else bounds
            monitor = (lambda c, base=done: bar.update(base + c - bar.n)) if bar else None
            r = _solve_largest(method, f, n, kk, threshold=thr, maxiter=maxiter, dtype=dtype,
                               device=device, X0=X0 if found is None else None,
                               deflate=found, generator=gen, bounds=neg_bounds,
                               monitor=monitor)
            vals = -r.values if negate else r.values
            parts.append((vals, r.vectors))
            found = r.vectors if found is None else torch.cat([found, r.vectors], dim=1)
            iters += r.iterations
            done += kk
        w = torch.cat([p[0] for p in parts])
        V = torch.cat([p[1] for p in parts], dim=1)
        order = torch.argsort(w)
        w, V = w[order], V[:, order.to(device)]
    if bar:
        bar.close()
    return _finish(op, w, V, norm, tol, iters, method)


def _finish(op: Operator, w: torch.Tensor, V: torch.Tensor, norm: float, tol: float,
            iters: int, method: str) -> EigResult:
    """Recompute the residuals with one product and wrap up (raising on non-convergence)."""
    w = w.to(torch.float64)
    AV = op @ V
    res = column_norms(AV - V * w.to(device=V.device, dtype=V.dtype)).double().cpu()
    rel = res / w.abs().clamp_min(norm)
    converged = bool((rel <= tol).all())
    result = EigResult(eigenvalues=w.to(V.dtype).to(V.device), eigenvectors=V, residuals=rel,
                       iterations=iters, converged=converged, method=method)
    if not converged:
        worst = int(rel.argmax())
        raise NoConvergence(
            f"{method}: {int((rel > tol).sum())} of {w.numel()} eigenpairs missed tol = "
            f"{tol:g} (worst relative residual {float(rel[worst]):.2e} at eigenvalue "
            f"{float(w[worst]):.6g}) after {iters} iterations; raise maxiter, loosen tol or "
            "try another method. The partial result is in .result", result)
    return result


def _progress_bar(k: int, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=k, desc="eigenpairs", unit="pair")
