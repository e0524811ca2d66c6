"""Fusing band slots into one vector per node: G-HSNO (CP form), with a skip path, or a sum.

Every fusion takes the slots ``H [n, S, d]`` and optional per-slot scales ``a [S]`` (band
reliability times band mask), with ``fusion(H, a) == fusion(H * a[:, None])``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .. import ops

__all__ = ["CPFusion", "SkipCPFusion", "SumFusion"]


class CPFusion(nn.Module):
    """Graph Hyper-Spectral Neural Operator fusion with a rank-``r`` CP band-interaction tensor.

    For each node with slots ``H [S, d]`` (slot = (modality, band)) and each output band
    ``o``: ``P_s = K_sᵀ H_s``, ``C_o = Σ_s V_{o,s} ⊙ P_s``, ``Z_o = Q_o C_o``; node-dependent
    gates ``g = softmax_o(w · Z_o)`` and scale normalisation give
    ``h = Σ_o g_o Z_o / sqrt(mean(Z_o²) + eps)`` (DESIGN.md §2). The full interaction tensor
    ``W[o, s] = Q_o diag(V_{o,s}) K_sᵀ`` is never formed: parameters grow as
    ``O((S + O)·d·r)``. Computed by :func:`ssr_engine.ops.cp_fusion` (torch reference on the
    CPU, the Triton kernel on CUDA).

    Args:
        n_slots: ``S``.
        dim: ``d``.
        rank: ``r``.
        n_out: output bands ``O`` (default: ``n_slots``).
        eps: scale-normalisation epsilon.
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (see :mod:`ssr_engine.ops`).

    Shapes:
        input ``[n, S, d]`` (and optional slot scales ``[S]``, folded into the key factors:
        ``K_sᵀ (a_s H_s) = (a_s K_s)ᵀ H_s``) -> output ``[n, d]``.

    Example:
        >>> import torch
        >>> from ssr_engine.nn import CPFusion
        >>> f = CPFusion(n_slots=6, dim=16, rank=4, n_out=3)
        >>> f(torch.randn(10, 6, 16)).shape
        torch.Size([10, 16])
    """

    def __init__(self, n_slots: int, dim: int, rank: int = 16, n_out: int = None,
                 eps: float = 1e-6, backend: str = "auto"):
        super().__init__()
        n_out = n_slots if n_out is None else n_out
        if min(n_slots, dim, rank, n_out) < 1:
            raise ValueError(f"n_slots, dim, rank and n_out must be >= 1, got {n_slots}, "
                             f"{dim}, {rank}, {n_out}")
        self.n_slots, self.dim, self.rank, self.n_out = n_slots, dim, rank, n_out
        self.eps, self.backend = float(eps), backend
        # P_s has unit scale for unit-scale H; C_o starts as a mean over slots, plus noise
        # that lets output bands differ.
        self.K = nn.Parameter(torch.randn(n_slots, dim, rank) / math.sqrt(dim))
        self.V = nn.Parameter(1.0 / n_slots + torch.randn(n_out, n_slots, rank) / n_slots)
        self.Q = nn.Parameter(torch.randn(n_out, dim, rank) / math.sqrt(rank))
        self.w = nn.Parameter(torch.zeros(dim))

    def extra_repr(self) -> str:
        return f"n_slots={self.n_slots}, dim={self.dim}, rank={self.rank}, n_out={self.n_out}"

    def forward(self, H: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        if H.dim() != 3 or H.shape[1:] != (self.n_slots, self.dim):
            raise ValueError(f"expected H of shape [n, {self.n_slots}, {self.dim}], got "
                             f"{tuple(H.shape)}")
        K = self.K if scale is None else self.K * scale.to(self.K.dtype)[:, None, None]
        return ops.cp_fusion(H, K, self.V, self.Q, self.w, self.eps, self.backend)


class SkipCPFusion(nn.Module):
    """G-HSNO on a linear skip path: ``h = Σ_s H_s + γ · CPFusion(H)``.

    Neural operators pair their learned operator with a pointwise linear path (e.g.
    FNO's ``W x + K x``). Here the skip path is the plain sum of the (modulated) slots; it
    carries magnitude — item popularity, a user's activity — which the scale-normalised
    G-HSNO output cannot, while G-HSNO adds the band interactions. ``γ`` starts at 0, so
    training starts from the sum and brings the operator in as it helps.

    Args:
        n_slots, dim, rank, n_out, eps, backend: as :class:`CPFusion`.

    Shapes:
        input ``[n, S, d]`` (and optional slot scales ``[S]``) -> output ``[n, d]``.

    Example:
        >>> import torch
        >>> from ssr_engine.nn import SkipCPFusion
        >>> f = SkipCPFusion(n_slots=4, dim=8, rank=2)
        >>> H = torch.randn(3, 4, 8)
        >>> torch.allclose(f(H), H.sum(1))  # gamma = 0 at initialisation
        True
    """

    def __init__(self, n_slots: int, dim: int, rank: int = 16, n_out: int = None,
                 eps: float = 1e-6, backend: str = "auto"):
        super().__init__()
        self.cp = CPFusion(n_slots, dim, rank, n_out, eps, backend)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, H: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        skip = H.sum(1) if scale is None else torch.einsum("nsd,s->nd", H, scale.to(H.dtype))
        return skip + self.gamma * self.cp(H, scale)


class SumFusion(nn.Module):
    """Ablation of :class:`CPFusion`: the plain sum of the slots, ``h = Σ_s a_s H_s``.

    Shapes:
        input ``[n, S, d]`` (and optional slot scales ``[S]``) -> output ``[n, d]``.

    Example:
        >>> import torch
        >>> from ssr_engine.nn import SumFusion
        >>> SumFusion()(torch.ones(2, 3, 4))[0, 0].item()
        3.0
    """

    def forward(self, H: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        if H.dim() != 3:
            raise ValueError(f"expected H of shape [n, S, d], got {tuple(H.shape)}")
        if scale is None:
            return H.sum(dim=1)
        return torch.einsum("nsd,s->nd", H, scale.to(H.dtype))
