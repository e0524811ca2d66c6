"""Fusing band slots into one vector per node: G-HSNO (CP form), with a skip path, or a sum.

Every fusion takes the slots ``H [n, S, d]`` and optional per-slot scales ``a [S]`` (band
reliability times band mask), with ``fusion(H, a) == fusion(H * a[:, None])``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from .. import ops

__all__ = ["CPFusion", "SkipCPFusion", "SumFusion"]


class CPFusion(nn.Module):
    """Graph Hyper-Spectral Neural Operator fusion with a rank-``r`` CP band-interaction tensor.

    For each node with slots ``H [S, d]`` (slot = (modality, band)) and each output band
    ``o``: ``P_s = K_sᵀ H_s``, ``C_o = Σ_s V_{o,s} ⊙ P_s``, ``Z_o = Q_o C_o``; node-dependent
    gates ``g = softmax_o(w · Z_o)`` and scale normalisation give
    ``h = Σ_o g_o Z_o / sqrt(mean(Z_o²) + eps)`` (DESIGN.md §2, the paper's form). The full
    interaction tensor ``W[o, s] = Q_o diag(V_{o,s}) K_sᵀ`` (``[d, d]`` per output band and
    slot) is never formed: parameters grow as ``O((S + O)·d·r)``. The paper's form is
    computed by :func:`ssr_engine.ops.cp_fusion` (torch reference on the CPU, the Triton
    kernel on CUDA); the variants below by plain torch.

    **Variants** (each judged on validation, see the README's ablations):

    * ``gates=False``: no gates, ``h = Σ_o Z_o`` (with ``normalise``: ``Σ_o Z_o / ρ_o``);
      gates without normalisation give ``h = O · Σ_o g_o Z_o`` (``= Σ_o Z_o`` while ``w = 0``).
    * ``normalise=False``: no scale normalisation, so the output keeps the slots' magnitude
      (item popularity, user activity), which the sum fusion keeps too.
    * ``init="identity"`` (needs ``rank ≥ dim`` and ``band_of_slot``): ``K_s = Q_o = [I_d, 0]``
      and ``V_{o,s} = 1`` on the first ``d`` ranks where output ``o`` is slot ``s``'s band
      (band ``b`` of ``M`` goes to output ``⌊b·O/M⌋``, so ``O ≤ M``), else 0. Every
      ``W[o, s]`` is then ``I_d`` or 0: without normalisation the fusion starts as the plain
      sum of the slots, and training moves it away only as far as the loss asks.

    **Fusion regularisation** (:meth:`penalty`): ``R = Σ_{o,s} ‖W[o,s] − W⁰[o,s]‖_F² / (S·d)``,
    the squared distance of the band-interaction tensor from its anchor ``W⁰`` — the identity
    band map for ``init="identity"`` (so a strong penalty pins the fusion to the sum, a weak one
    lets it learn band interactions), ``0`` otherwise (then ``R`` bounds the operator's scale,
    which the scale normalisation would otherwise leave free to grow). It is computed from the
    factors without forming ``W``: ``‖W[o,s]‖² = V_{o,s}ᵀ (Q_oᵀQ_o ⊙ K_sᵀK_s) V_{o,s}`` and
    ``⟨W, W⁰⟩[o,s] = V_{o,s}ᵀ (Q_oᵀQ⁰_o ⊙ K_sᵀK⁰_s) V⁰_{o,s}``, in ``O((S + O)·d·r² + O·S·r²)``.
    ``S·d = ‖W⁰‖²`` for the identity anchor, so ``R = 1`` means a deviation as large as the map.

    Args:
        n_slots: ``S``.
        dim: ``d``.
        rank: ``r``.
        n_out: output bands ``O`` (default: ``n_slots``).
        eps: scale-normalisation epsilon.
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (see :mod:`ssr_engine.ops`; the
            variants always run on torch).
        gates: use the softmax gates.
        normalise: use the scale normalisation.
        init: ``"random"`` (the paper's) or ``"identity"``.
        band_of_slot: ``[S]`` band index of each slot (``init="identity"``), bands
            ``0 … M−1``.

    Shapes:
        input ``[n, S, d]`` (and optional slot scales ``[S]``, folded into the key factors:
        ``K_sᵀ (a_s H_s) = (a_s K_s)ᵀ H_s``) -> output ``[n, d]``.

    Example:
        >>> import torch
        >>> from ssr_engine.nn import CPFusion
        >>> f = CPFusion(n_slots=6, dim=16, rank=4, n_out=3)
        >>> f(torch.randn(10, 6, 16)).shape
        torch.Size([10, 16])
        >>> g = CPFusion(4, 8, 8, n_out=2, normalise=False, init="identity",
        ...              band_of_slot=[0, 1, 0, 1])
        >>> H = torch.randn(3, 4, 8)
        >>> torch.allclose(g(H), H.sum(1), atol=1e-6), float(g.penalty())
        (True, 0.0)
    """

    def __init__(self, n_slots: int, dim: int, rank: int = 16, n_out: int = None,
                 eps: float = 1e-6, backend: str = "auto", *, gates: bool = True,
                 normalise: bool = True, init: str = "random",
                 band_of_slot: Optional[Sequence[int]] = None):
        super().__init__()
        n_out = n_slots if n_out is None else n_out
        if min(n_slots, dim, rank, n_out) < 1:
            raise ValueError(f"n_slots, dim, rank and n_out must be >= 1, got {n_slots}, "
                             f"{dim}, {rank}, {n_out}")
        if init not in ("random", "identity"):
            raise ValueError(f"init must be 'random' or 'identity', got {init!r}")
        self.n_slots, self.dim, self.rank, self.n_out = n_slots, dim, rank, n_out
        self.eps, self.backend = float(eps), backend
        self.gates, self.normalise, self.init = bool(gates), bool(normalise), init
        if init == "random":
            # P_s has unit scale for unit-scale H; C_o starts as a mean over slots, plus
            # noise that lets output bands differ.
            K = torch.randn(n_slots, dim, rank) / math.sqrt(dim)
            V = 1.0 / n_slots + torch.randn(n_out, n_slots, rank) / n_slots
            Q = torch.randn(n_out, dim, rank) / math.sqrt(rank)
            anchor = None
        else:
            K, V, Q = self._identity(n_slots, dim, rank, n_out, band_of_slot)
            anchor = (K.clone(), V.clone(), Q.clone())
        self.K, self.V, self.Q = nn.Parameter(K), nn.Parameter(V), nn.Parameter(Q)
        self.w = nn.Parameter(torch.zeros(dim))
        for name, t in zip(("K0", "V0", "Q0"), anchor or (None, None, None)):
            self.register_buffer(name, t)

    @staticmethod
    def _identity(S: int, d: int, r: int, O: int, band_of_slot):
        if r < d:
            raise ValueError(f"init='identity' needs rank >= dim (a rank-r map cannot be the "
                             f"identity of R^d), got rank={r}, dim={d}")
        if band_of_slot is None or len(band_of_slot) != S:
            raise ValueError(f"init='identity' needs band_of_slot, one band index per slot "
                             f"({S}), got {band_of_slot!r}")
        bands = torch.as_tensor(list(band_of_slot), dtype=torch.long)
        if bands.min() < 0:
            raise ValueError(f"band_of_slot must be >= 0, got {band_of_slot!r}")
        M = int(bands.max()) + 1
        if O > M:
            raise ValueError(f"init='identity' maps the {M} input bands onto the output bands; "
                             f"n_out={O} > {M} would leave output bands without a slot")
        out = bands * O // M                                      # output band of each slot
        eye = torch.zeros(d, r)
        eye[:, :d] = torch.eye(d)
        K = eye.expand(S, d, r).clone()
        Q = eye.expand(O, d, r).clone()
        V = torch.zeros(O, S, r)
        V[out, torch.arange(S), :d] = 1.0
        return K, V, Q

    def extra_repr(self) -> str:
        return (f"n_slots={self.n_slots}, dim={self.dim}, rank={self.rank}, "
                f"n_out={self.n_out}, gates={self.gates}, normalise={self.normalise}, "
                f"init={self.init!r}")

    @property
    def paper_form(self) -> bool:
        """Gates and scale normalisation both on: the form the fused kernels compute."""
        return self.gates and self.normalise

    def band_outputs(self, P: torch.Tensor) -> torch.Tensor:
        """Output bands ``Z_o = Q_o Σ_s V_{o,s} ⊙ P_s`` of keyed slots ``P [n, S, r]``:
        ``[n, O, d]``."""
        return torch.einsum("odr,osr,nsr->nod", self.Q.to(P.dtype), self.V.to(P.dtype), P)

    def output_weights(self, Z: torch.Tensor) -> torch.Tensor:
        """Per-node weights ``[n, O]`` of the output bands ``Z [n, O, d]``: ``h = Σ_o c_o Z_o``."""
        c = torch.ones(Z.shape[:2], dtype=Z.dtype, device=Z.device)
        if self.gates:
            c = torch.softmax(Z @ self.w.to(Z.dtype), dim=1)
            if not self.normalise:
                c = c * self.n_out
        if self.normalise:
            c = c * torch.rsqrt(Z.pow(2).mean(dim=-1) + self.eps)
        return c

    def forward(self, H: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        if H.dim() != 3 or H.shape[1:] != (self.n_slots, self.dim):
            raise ValueError(f"expected H of shape [n, {self.n_slots}, {self.dim}], got "
                             f"{tuple(H.shape)}")
        K = self.K if scale is None else self.K * scale.to(self.K.dtype)[:, None, None]
        if self.paper_form:
            return ops.cp_fusion(H, K, self.V, self.Q, self.w, self.eps, self.backend)
        Z = self.band_outputs(torch.einsum("nsd,sdr->nsr", H, K))
        return torch.einsum("no,nod->nd", self.output_weights(Z), Z)

    def penalty(self) -> torch.Tensor:
        """The fusion regularisation ``Σ_{o,s} ‖W[o,s] − W⁰[o,s]‖_F² / (S·d)`` (a scalar).

        Computed in float64 (the expansion ``‖W‖² − 2⟨W, W⁰⟩ + ‖W⁰‖²`` cancels) and returned
        in the factors' dtype, never below 0.
        """
        K, V, Q = self.K.double(), self.V.double(), self.Q.double()
        sq = self._sq(K, V, Q, K, V, Q)
        if self.K0 is not None:
            K0, V0, Q0 = self.K0.double(), self.V0.double(), self.Q0.double()
            sq = sq - 2 * self._sq(K, V, Q, K0, V0, Q0) + self._sq(K0, V0, Q0, K0, V0, Q0)
        return (sq.clamp_min(0.0) / (self.n_slots * self.dim)).to(self.K.dtype)

    @staticmethod
    def _sq(K, V, Q, K2, V2, Q2) -> torch.Tensor:
        """``Σ_{o,s} ⟨W[o,s], W2[o,s]⟩_F`` of two CP tensors, from their factors."""
        GQ = Q.transpose(1, 2) @ Q2                                  # [O, r, r2]
        GK = K.transpose(1, 2) @ K2                                  # [S, r, r2]
        return torch.einsum("osa,oab,sab,osb->", V, GQ, GK, V2)


class SkipCPFusion(nn.Module):
    """G-HSNO on a linear skip path: ``h = Σ_s H_s + γ · CPFusion(H)``.

    Neural operators pair their learned operator with a pointwise linear path (e.g.
    FNO's ``W x + K x``). Here the skip path is the plain sum of the (modulated) slots; it
    carries magnitude — item popularity, a user's activity — which the scale-normalised
    G-HSNO output cannot, while G-HSNO adds the band interactions. ``γ`` starts at 0, so
    training starts from the sum and brings the operator in as it helps.

    Args:
        n_slots, dim, rank, n_out, eps, backend: as :class:`CPFusion`.
        variant: ``gates``, ``normalise``, ``init``, ``band_of_slot`` of :class:`CPFusion`.

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
                 eps: float = 1e-6, backend: str = "auto", **variant):
        super().__init__()
        self.cp = CPFusion(n_slots, dim, rank, n_out, eps, backend, **variant)
        self.gamma = nn.Parameter(torch.zeros(()))

    def penalty(self) -> torch.Tensor:
        """The G-HSNO part's fusion regularisation (:meth:`CPFusion.penalty`)."""
        return self.cp.penalty()

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
