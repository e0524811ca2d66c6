"""G-HSNO CP fusion of band slots (DESIGN.md §2).

For each node with slots ``H [S, d]``: ``P_s = K_s^T H_s``, ``C_o = Σ_s V_{o,s} ⊙ P_s``,
``Z_o = Q_o C_o``, gates ``g = softmax_o(w · Z_o)``, and
``h = Σ_o g_o · Z_o / sqrt(mean(Z_o²) + eps)``.

The Triton path (``kernels/cp_fusion.py``) keeps everything after the slot rows on chip and
writes only ``h``; its backward recomputes the forward per tile of nodes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .dispatch import resolve_backend

__all__ = ["cp_fusion", "cp_fusion_reference"]


def fuse_projected(P: torch.Tensor, V: torch.Tensor, Q: torch.Tensor, w: torch.Tensor,
                   eps: float) -> torch.Tensor:
    """The fusion after the key maps: ``P [n, S, r]`` -> ``h [n, d]`` (plain torch)."""
    C = torch.einsum("osr,nsr->nor", V, P)
    Z = torch.einsum("odr,nor->nod", Q, C)
    g = torch.softmax(Z @ w, dim=1)
    Zn = Z * torch.rsqrt(Z.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (g.unsqueeze(-1) * Zn).sum(dim=1)


def cp_fusion_reference(H: torch.Tensor, K: torch.Tensor, V: torch.Tensor, Q: torch.Tensor,
                        w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Pure-torch reference of :func:`cp_fusion` (differentiable by autograd)."""
    P = torch.einsum("nsd,sdr->nsr", H, K)
    return fuse_projected(P, V, Q, w, eps)


@dataclass
class FusionSources:
    """Where the Triton fusion reads its slots (everything but the differentiable tensors).

    Attributes:
        n: number of output nodes.
        eps: norm epsilon.
        index: optional ``[n]`` node ids into ``U`` / the rows.
        U: optional basis ``[N, k]`` of the basis slots.
        lo, hi: int32 ``[S_A]`` column ranges of the basis slots.
        row_stride, slot_stride: element strides of the row slots (node, slot).
        rows_shape: ``"nsd"`` (``H [n, S, d]``) or ``"snd"`` (``bands [S, N, d]``).
        store_c: keep what the backward needs (set when the call records autograd history).
    """
    n: int
    eps: float
    index: Optional[torch.Tensor] = None
    U: Optional[torch.Tensor] = None
    lo: Optional[torch.Tensor] = None
    hi: Optional[torch.Tensor] = None
    row_stride: int = 0
    slot_stride: int = 0
    rows_shape: str = "nsd"
    store_c: bool = True

    def kernel_args(self) -> dict:
        return dict(index=self.index, U=self.U, lo=self.lo, hi=self.hi,
                    row_stride=self.row_stride, slot_stride=self.slot_stride)


class FusionFunction(torch.autograd.Function):
    """Autograd wrapper of the Triton fusion kernels.

    Inputs ``(rows, K, W, V, Q, w, src)``: ``rows`` and ``K`` are the row slots and their key
    factors (or ``None``), ``W [S_A, k, r]`` the basis-slot maps ``C_s K_s`` (or ``None``).
    """

    @staticmethod
    def forward(ctx, rows, K, W, V, Q, w, src: FusionSources):
        from ssr_engine.kernels.cp_fusion import fusion_forward
        h, C = fusion_forward(src.n, V, Q, w, src.eps, W=W, rows=rows, K=K,
                              store_c=src.store_c, **src.kernel_args())
        ctx.src = src
        ctx.save_for_backward(rows, K, W, V, Q, w, C)
        return h

    @staticmethod
    def backward(ctx, grad_out):
        from ssr_engine.kernels.cp_fusion import fusion_backward
        rows, K, W, V, Q, w, C = ctx.saved_tensors
        src = ctx.src
        want_rows = rows is not None and ctx.needs_input_grad[0]
        g = fusion_backward(src.n, grad_out.contiguous(), C, V, Q, w, src.eps, W=W, rows=rows,
                            K=K, want_drows=want_rows, **src.kernel_args())
        d_rows = None
        if want_rows:
            d_rows = g["rows"]
            if src.rows_shape == "snd":
                d_rows = d_rows.transpose(0, 1)                      # [S_R, n, d]
                if src.index is not None:
                    d_rows = torch.zeros_like(rows).index_add_(1, src.index, d_rows)
                else:
                    d_rows = d_rows.contiguous()
        cast = lambda grad, t: None if t is None else grad.to(t.dtype)
        return (d_rows, cast(g["K"], K), cast(g["W"], W), cast(g["V"], V), cast(g["Q"], Q),
                cast(g["w"], w), None)


def check_factors(S: int, d: int, K: torch.Tensor, V: torch.Tensor, Q: torch.Tensor,
                  w: torch.Tensor) -> None:
    """Raise ``ValueError`` unless K, V, Q, w fit ``S`` slots of width ``d``."""
    if K.dim() != 3 or V.dim() != 3 or Q.dim() != 3:
        raise ValueError(f"K, V, Q must be 3-D ([S, d, r], [O, S, r], [O, d, r]); got "
                         f"{tuple(K.shape)}, {tuple(V.shape)}, {tuple(Q.shape)}")
    r, O = K.shape[-1], V.shape[0]
    if K.shape != (S, d, r) or V.shape != (O, S, r) or Q.shape != (O, d, r) or w.shape != (d,):
        raise ValueError(f"shape mismatch for S={S} slots of width d={d}: K {tuple(K.shape)}, "
                         f"V {tuple(V.shape)}, Q {tuple(Q.shape)}, w {tuple(w.shape)}; "
                         f"expected K [S, d, r], V [O, S, r], Q [O, d, r], w [d]")
    if O < 1 or r < 1:
        raise ValueError(f"need at least one output band and rank >= 1, got O={O}, r={r}")


def records_grad(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether an op on these tensors records autograd history."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def check_dtypes(*tensors: Optional[torch.Tensor]) -> None:
    """Raise ``TypeError`` unless the given floating tensors share one dtype and device."""
    ts = [t for t in tensors if t is not None]
    dtypes = {t.dtype for t in ts}
    devices = {t.device for t in ts}
    if len(dtypes) > 1 or len(devices) > 1:
        raise TypeError(f"all inputs must share one dtype and device, got dtypes "
                        f"{sorted(map(str, dtypes))} on {sorted(map(str, devices))}")


def cp_fusion(H: torch.Tensor, K: torch.Tensor, V: torch.Tensor, Q: torch.Tensor,
              w: torch.Tensor, eps: float = 1e-6, backend: str = "auto") -> torch.Tensor:
    """Fuse S band slots into one vector per node with a rank-r CP operator.

    Differentiable for every input (H, K, V, Q, w) on both backends. The Triton kernels take
    float32, bfloat16 or float16 inputs and accumulate in float32.

    Args:
        H: ``[n, S, d]`` band slots per node.
        K: ``[S, d, r]`` key factors.
        V: ``[O, S, r]`` band-interaction factors.
        Q: ``[O, d, r]`` query factors.
        w: ``[d]`` gate vector.
        eps: scale-normalisation epsilon.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        ``[n, d]`` fused node vectors, in the inputs' dtype.

    Shapes:
        ``H [n, S, d]``, ``K [S, d, r]``, ``V [O, S, r]``, ``Q [O, d, r]``, ``w [d]`` ->
        ``[n, d]``.

    Example:
        >>> import torch
        >>> from ssr_engine.ops import cp_fusion
        >>> n, S, d, r, O = 5, 3, 8, 4, 2
        >>> h = cp_fusion(torch.randn(n, S, d), torch.randn(S, d, r), torch.randn(O, S, r),
        ...               torch.randn(O, d, r), torch.randn(d))
        >>> h.shape
        torch.Size([5, 8])
    """
    if H.dim() != 3:
        raise ValueError(f"H must be [n, S, d], got shape {tuple(H.shape)}")
    n, S, d = H.shape
    check_factors(S, d, K, V, Q, w)
    check_dtypes(H, K, V, Q, w)
    if resolve_backend(backend, H, K, V, Q, w) == "triton" and S > 0:
        H = H.contiguous()
        src = FusionSources(n=n, eps=float(eps), row_stride=S * d, slot_stride=d,
                            rows_shape="nsd", store_c=records_grad(H, K, V, Q, w))
        return FusionFunction.apply(H, K.contiguous(), None, V.contiguous(), Q.contiguous(),
                                    w.contiguous(), src)
    return cp_fusion_reference(H, K, V, Q, w, eps)
