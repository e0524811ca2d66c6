"""Band projection fused with G-HSNO CP fusion (DESIGN.md §3, §4).

The band slots of a batch of nodes are formed on the fly, so the ``[n, S, d]`` slot tensor
never goes to memory:

* **basis slots** from a partial eigenbasis ``U [N, k]`` whose columns are grouped by band
  (``band_ptr``) and per-modality spectral coefficients ``coef [Mb, k, d]`` (``U_bᵀ X_m``, or
  learnable ID parameters): slot ``s = m * B + b`` is ``U[i, band b] @ coef[m, band b]``;
* **row slots** gathered from precomputed band rows ``bands [S_R, N, d]``.

Since ``K_sᵀ (U_b C_s)ᵀ = (U_b (C_s K_s))ᵀ``, the kernels only ever multiply basis rows by the
small ``[k, r]`` maps ``W_s = C_s K_s``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .cp_fusion import (FusionFunction, FusionSources, check_dtypes, check_factors,
                        cp_fusion_reference, fuse_projected, records_grad)
from .dispatch import resolve_backend

__all__ = ["band_cp_fusion", "band_cp_fusion_reference"]

BandPtr = Union[Sequence[int], torch.Tensor]


def _band_edges(band_ptr: BandPtr, k: int) -> list:
    edges = [int(v) for v in (band_ptr.tolist() if isinstance(band_ptr, torch.Tensor)
                              else band_ptr)]
    if len(edges) < 2 or edges[0] < 0 or edges[-1] > k or \
            any(b < a for a, b in zip(edges[:-1], edges[1:])):
        raise ValueError(f"band_ptr must be B + 1 >= 2 non-decreasing column offsets within "
                         f"[0, k={k}], got {edges}")
    return edges


def _validate(K, V, Q, w, index, basis, coef, band_ptr, bands):
    """Shapes of the slot sources; returns ``(n, N, edges, S_A, S_R, d)``."""
    if basis is None and bands is None:
        raise ValueError("give the basis slots (basis, coef, band_ptr), the row slots "
                         "(bands), or both")
    if (basis is None) != (coef is None) or (basis is None) != (band_ptr is None):
        raise ValueError("basis, coef and band_ptr go together: pass all three or none")
    N = None
    d = Q.shape[1] if Q.dim() == 3 else None
    edges, s_a, s_r = [], 0, 0
    if basis is not None:
        if basis.dim() != 2 or coef.dim() != 3 or coef.shape[1] != basis.shape[1]:
            raise ValueError(f"basis must be [N, k] and coef [Mb, k, d] with the same k, got "
                             f"{tuple(basis.shape)} and {tuple(coef.shape)}")
        if basis.requires_grad:
            raise ValueError("basis receives no gradient; pass basis.detach()")
        N, d = basis.shape[0], coef.shape[2]
        edges = _band_edges(band_ptr, basis.shape[1])
        s_a = coef.shape[0] * (len(edges) - 1)
    if bands is not None:
        if bands.dim() != 3 or (N is not None and bands.shape[1] != N) or \
                (basis is not None and bands.shape[2] != d):
            raise ValueError(f"bands must be [S_R, N, d] matching basis [N={N}, k] and "
                             f"coef [.., .., d={d}], got {tuple(bands.shape)}")
        N, d, s_r = bands.shape[1], bands.shape[2], bands.shape[0]
    if index is not None:
        if index.dim() != 1 or index.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"index must be a 1-D int32/int64 tensor, got {index.dtype} of "
                             f"shape {tuple(index.shape)}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= N):
            raise ValueError(f"index values must lie in [0, N={N}), got range "
                             f"[{int(index.min())}, {int(index.max())}]")
    n = N if index is None else index.numel()
    check_factors(s_a + s_r, d, K, V, Q, w)
    return n, N, edges, s_a, s_r, d


def band_cp_fusion_reference(K: torch.Tensor, V: torch.Tensor, Q: torch.Tensor,
                             w: torch.Tensor, *, index: Optional[torch.Tensor] = None,
                             basis: Optional[torch.Tensor] = None,
                             coef: Optional[torch.Tensor] = None,
                             band_ptr: Optional[BandPtr] = None,
                             bands: Optional[torch.Tensor] = None,
                             eps: float = 1e-6) -> torch.Tensor:
    """Pure-torch reference of :func:`band_cp_fusion`: forms the slots, then fuses them."""
    _validate(K, V, Q, w, index, basis, coef, band_ptr, bands)
    slots = []
    if basis is not None:
        edges = _band_edges(band_ptr, basis.shape[1])
        Ui = basis if index is None else basis[index]
        for m in range(coef.shape[0]):
            for lo, hi in zip(edges[:-1], edges[1:]):
                slots.append(Ui[:, lo:hi] @ coef[m, lo:hi])
    if bands is not None:
        rows = bands if index is None else bands[:, index]
        slots.extend(rows.unbind(0))
    return cp_fusion_reference(torch.stack(slots, dim=1), K, V, Q, w, eps)


def _basis_maps(coef: torch.Tensor, K_a: torch.Tensor, n_bands: int) -> torch.Tensor:
    """``W_s = coef[m] K_s`` for every basis slot ``s = m * B + b``: ``[S_A, k, r]``."""
    Mb, k, d = coef.shape
    r = K_a.shape[-1]
    W = torch.einsum("mkd,mbdr->mbkr", coef, K_a.reshape(Mb, n_bands, d, r))
    return W.reshape(Mb * n_bands, k, r)


def band_cp_fusion(K: torch.Tensor, V: torch.Tensor, Q: torch.Tensor, w: torch.Tensor, *,
                   index: Optional[torch.Tensor] = None, basis: Optional[torch.Tensor] = None,
                   coef: Optional[torch.Tensor] = None, band_ptr: Optional[BandPtr] = None,
                   bands: Optional[torch.Tensor] = None, eps: float = 1e-6,
                   backend: str = "auto") -> torch.Tensor:
    """CP fusion of band slots formed on the fly from a partial basis and/or band rows.

    Slots, in this order (``S = S_A + S_R``, the slot axis of ``K`` and ``V``):

    * basis slots ``s = m * B + b`` (``m < Mb`` modalities, ``b < B`` bands), present when
      ``basis`` is given: ``H_s[i] = basis[index[i], band_ptr[b]:band_ptr[b+1]] @
      coef[m, band_ptr[b]:band_ptr[b+1]]``, so ``S_A = Mb * B``;
    * row slots ``s = S_A + j``, present when ``bands`` is given:
      ``H_s[i] = bands[j, index[i]]``, so ``S_R = bands.shape[0]``.

    Then ``h[i] = cp_fusion(H[i], K, V, Q, w, eps)``. Gradients flow to ``coef``, ``K``,
    ``V``, ``Q``, ``w`` and ``bands`` (a dense ``[S_R, N, d]`` gradient, built only when
    ``bands.requires_grad``); ``basis`` and ``index`` are constants. The Triton kernels take
    float32, bfloat16 or float16 inputs (one dtype for all) and accumulate in float32; the
    torch backend multiplies basis rows by ``coef[m, band b] @ K_s`` rather than forming
    ``H``.

    Args:
        K: ``[S, d, r]`` key factors, basis slots first.
        V: ``[O, S, r]`` band-interaction factors.
        Q: ``[O, d, r]`` query factors.
        w: ``[d]`` gate vector.
        index: optional int32/int64 ``[n]`` node ids (rows of ``basis`` / ``bands``);
            default all ``N`` nodes in order.
        basis: ``[N, k]`` partial eigenbasis, columns grouped by band.
        coef: ``[Mb, k, d]`` spectral coefficients per modality (e.g. ``basisᵀ X_m``).
        band_ptr: ``B + 1`` non-decreasing column offsets of the bands in ``basis``
            (a sequence of ints or a 1-D tensor), e.g. ``[0, 64, 128, 192, 256]``.
        bands: ``[S_R, N, d]`` precomputed band rows.
        eps: scale-normalisation epsilon.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        ``[n, d]`` fused node vectors, in the inputs' dtype.

    Shapes:
        ``basis [N, k]``, ``coef [Mb, k, d]``, ``bands [S_R, N, d]``, ``index [n]``,
        ``K [Mb*B + S_R, d, r]``, ``V [O, Mb*B + S_R, r]``, ``Q [O, d, r]``, ``w [d]`` ->
        ``[n, d]``.

    Example:
        >>> import torch
        >>> from ssr_engine.ops import band_cp_fusion
        >>> N, k, d, r, O = 50, 12, 8, 4, 2
        >>> U, coef = torch.randn(N, k), torch.randn(2, k, d)      # 2 modalities
        >>> bands = torch.randn(1, N, d)                          # one residual band
        >>> S = 2 * 3 + 1                                         # 3 bands in the basis
        >>> h = band_cp_fusion(torch.randn(S, d, r), torch.randn(O, S, r),
        ...                    torch.randn(O, d, r), torch.randn(d),
        ...                    index=torch.tensor([3, 7, 7]), basis=U, coef=coef,
        ...                    band_ptr=[0, 4, 8, 12], bands=bands)
        >>> h.shape
        torch.Size([3, 8])
    """
    n, N, edges, s_a, s_r, d = _validate(K, V, Q, w, index, basis, coef, band_ptr, bands)
    check_dtypes(basis, coef, bands, K, V, Q, w)
    n_bands = len(edges) - 1
    tensors = [t for t in (basis, coef, bands, K, V, Q, w) if t is not None]
    if resolve_backend(backend, *tensors) == "triton":
        src = FusionSources(n=n, eps=float(eps), index=index, rows_shape="snd",
                            store_c=records_grad(*tensors))
        W = None
        if basis is not None:
            W = _basis_maps(coef, K[:s_a], n_bands).contiguous()
            bounds = torch.tensor(edges, dtype=torch.int32, device=basis.device)
            src.U = basis.contiguous()
            src.lo = bounds[:-1].repeat(coef.shape[0]).contiguous()
            src.hi = bounds[1:].repeat(coef.shape[0]).contiguous()
        rows = None
        if bands is not None:
            rows = bands.contiguous()
            src.row_stride, src.slot_stride = d, N * d
        if src.index is not None:
            src.index = src.index.contiguous()
        return FusionFunction.apply(rows, K[s_a:].contiguous() if s_r else None, W,
                                    V.contiguous(), Q.contiguous(), w.contiguous(), src)
    P = []
    if basis is not None:
        W = _basis_maps(coef, K[:s_a], n_bands).reshape(coef.shape[0], n_bands, coef.shape[1],
                                                         K.shape[-1])
        Ui = basis if index is None else basis[index]
        per_band = [torch.einsum("nk,mkr->nmr", Ui[:, lo:hi], W[:, b, lo:hi])
                    for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))]
        P.append(torch.stack(per_band, dim=2).reshape(n, s_a, K.shape[-1]))
    if bands is not None:
        rows = bands if index is None else bands[:, index]
        P.append(torch.einsum("snd,sdr->nsr", rows, K[s_a:]))
    return fuse_projected(torch.cat(P, dim=1), V, Q, w, eps)
