"""The result object every eigensolver returns, and the exception for non-convergence."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import torch

__all__ = ["EigResult", "NoConvergence"]


@dataclass
class EigResult:
    """Eigenpairs of a symmetric operator.

    Attributes:
        eigenvalues: ``[k]`` ascending.
        eigenvectors: ``[N, k]`` orthonormal columns; ``eigenvectors[:, i]`` belongs to
            ``eigenvalues[i]``.
        residuals: ``[k]`` float64 relative residual norms, recomputed from the returned
            vectors: ``||A v - λ v|| / max(||A||_est, |λ|)`` for :func:`ssr_engine.eigsh`
            (``||A||_est`` from a short Lanczos bound, exact for ``method="dense"``), and
            ``||L v - λ v|| / ||L||`` with ``||L|| = 2`` for :func:`ssr_engine.graph_eigs`.
        iterations: iterations (or restarts) taken.
        converged: whether every requested pair met the tolerance.
        method: the method that produced it.
        n_users: for :func:`ssr_engine.graph_eigs`, the number of users (the first rows of
            the eigenvectors), so that the result can warm-start a solve on a grown graph
            (``graph_eigs(..., v0=result)``); ``None`` otherwise.

    Unpacks as ``w, V = result``.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    iterations: int
    converged: bool
    method: str
    n_users: Optional[int] = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield self.eigenvalues
        yield self.eigenvectors

    def __repr__(self) -> str:
        k = self.eigenvalues.numel()
        res = float(self.residuals.max()) if self.residuals.numel() else 0.0
        return (f"EigResult(k={k}, method={self.method!r}, converged={self.converged}, "
                f"iterations={self.iterations}, max_residual={res:.2e})")


class NoConvergence(RuntimeError):
    """Raised when a solver does not reach the tolerance; ``.result`` holds the partial
    :class:`EigResult` (best pairs found, with their residuals)."""

    def __init__(self, message: str, result: EigResult):
        super().__init__(message)
        self.result = result
