"""G-HSNO CP fusion of band slots (DESIGN.md §2).

For each node with slots ``H [S, d]``: ``P_s = K_s^T H_s``, ``C_o = Σ_s V_{o,s} ⊙ P_s``,
``Z_o = Q_o C_o``, gates ``g = softmax_o(w · Z_o)``, and
``h = Σ_o g_o · Z_o / sqrt(mean(Z_o²) + eps)``.
"""
from __future__ import annotations

import torch

from .dispatch import resolve_backend

__all__ = ["cp_fusion", "cp_fusion_reference"]


def cp_fusion_reference(H: torch.Tensor, K: torch.Tensor, V: torch.Tensor, Q: torch.Tensor,
                        w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Pure-torch reference of :func:`cp_fusion` (differentiable by autograd)."""
    P = torch.einsum("nsd,sdr->nsr", H, K)
    C = torch.einsum("osr,nsr->nor", V, P)
    Z = torch.einsum("odr,nor->nod", Q, C)
    g = torch.softmax(Z @ w, dim=1)
    Zn = Z * torch.rsqrt(Z.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (g.unsqueeze(-1) * Zn).sum(dim=1)


def cp_fusion(H: torch.Tensor, K: torch.Tensor, V: torch.Tensor, Q: torch.Tensor,
              w: torch.Tensor, eps: float = 1e-6, backend: str = "auto") -> torch.Tensor:
    """Fuse S band slots into one vector per node with a rank-r CP operator.

    Args:
        H: ``[n, S, d]`` band slots per node.
        K: ``[S, d, r]`` key factors.
        V: ``[O, S, r]`` band-interaction factors.
        Q: ``[O, d, r]`` query factors.
        w: ``[d]`` gate vector.
        eps: scale-normalisation epsilon.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        ``[n, d]`` fused node vectors.

    Example:
        >>> import torch
        >>> from ssr_engine.ops import cp_fusion
        >>> n, S, d, r, O = 5, 3, 8, 4, 2
        >>> h = cp_fusion(torch.randn(n, S, d), torch.randn(S, d, r), torch.randn(O, S, r),
        ...               torch.randn(O, d, r), torch.randn(d))
        >>> h.shape
        torch.Size([5, 8])
    """
    n, S, d = H.shape
    r = K.shape[-1]
    O = V.shape[0]
    if K.shape != (S, d, r) or V.shape != (O, S, r) or Q.shape != (O, d, r) or w.shape != (d,):
        raise ValueError(f"shape mismatch: H {tuple(H.shape)}, K {tuple(K.shape)}, V "
                         f"{tuple(V.shape)}, Q {tuple(Q.shape)}, w {tuple(w.shape)}; expected "
                         f"K [S, d, r], V [O, S, r], Q [O, d, r], w [d]")
    if resolve_backend(backend, H, K, V, Q, w) == "triton":
        from .cp_fusion_triton import cp_fusion_triton
        return cp_fusion_triton(H, K, V, Q, w, eps)
    return cp_fusion_reference(H, K, V, Q, w, eps)
