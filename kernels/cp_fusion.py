"""G-HSNO CP fusion kernels, with the band slots read as rows or formed from a partial basis.

Per node (DESIGN.md §2): ``P_s = K_sᵀ H_s``, ``C_o = Σ_s V_{o,s} ⊙ P_s``, ``Z_o = Q_o C_o``,
``g = softmax_o(w · Z_o)``, ``h = Σ_o g_o Z_o / sqrt(mean(Z_o²) + eps)``. Slots come from two
sources, in this order:

* basis slots ``s < S_A``: ``P_s = U[i, lo_s:hi_s] @ W_s[lo_s:hi_s]`` with ``W_s = C_s K_s``
  (``H_s = U_b C_s`` is never formed);
* row slots ``S_A + j``: ``H = rows[i * row_stride + j * slot_stride + :d]`` (``[n, S, d]``
  band slots, or ``[S, N, d]`` precomputed bands gathered by node index).

All products accumulate in float32 (``tf32x3`` tensor-core products for float32 inputs, so
float32 accuracy). With ``store_c`` the forward also writes the small ``C [n, O_PAD * R_PAD]``
(band-major ``C_o``); the backward runs a gate kernel (``C -> dC``, ``dQ``, ``dw``) and a slot kernel
(``dC -> dV``, ``dK`` / ``dW``, ``dH``), each over a persistent grid that keeps its weight
gradients as per-program partial sums (reduced by the caller).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

__all__ = ["fusion_forward", "fusion_backward"]

BLOCK_N = 64          # nodes per tile (forward)
GATE_BLOCK_N = 32     # nodes per tile in the gate backward
BLOCK_K = 32          # basis columns per step
SLOT_BLOCK_N = 32     # nodes per tile in the slot backward
SLOT_GROUP = 2        # tiles per group there (key gradients summed in registers over a group)


@triton.jit
def _fusion_fwd_kernel(idx_ptr, u_ptr, w_ptr, lo_ptr, hi_ptr, order_ptr, h_ptr, k_ptr, v_ptr,
                       q_ptr, gw_ptr, out_ptr, c_ptr, n, KB, S_A, S_R, row_stride, slot_stride,
                       eps, DIM: tl.constexpr, RANK: tl.constexpr, O: tl.constexpr,
                       D_PAD: tl.constexpr, R_PAD: tl.constexpr, O_PAD: tl.constexpr,
                       BN: tl.constexpr, BK: tl.constexpr, HAS_INDEX: tl.constexpr,
                       HAS_BASIS: tl.constexpr, HAS_ROWS: tl.constexpr, STORE_C: tl.constexpr,
                       PREC: tl.constexpr):
    pid = tl.program_id(0)
    nodes = pid * BN + tl.arange(0, BN)
    nm = nodes < n
    nodes64 = nodes.to(tl.int64)
    if HAS_INDEX:
        src = tl.load(idx_ptr + nodes, mask=nm, other=0).to(tl.int64)
    else:
        src = nodes64
    S = S_A + S_R
    d_i = tl.arange(0, D_PAD)
    r_i = tl.arange(0, R_PAD)
    o_i = tl.arange(0, O_PAD)
    k_i = tl.arange(0, BK)
    dm = d_i < DIM
    rm = r_i < RANK
    vm = (o_i[:, None] < O) & rm[None, :]                             # [O, R]
    c3 = tl.zeros([BN, O_PAD, R_PAD], dtype=tl.float32)
    if HAS_BASIS:
        for i in range(0, S_A):
            s = tl.load(order_ptr + i)
            lo = tl.load(lo_ptr + s)
            hi = tl.load(hi_ptr + s)
            p = tl.zeros([BN, R_PAD], dtype=tl.float32)
            for j in range(lo, hi, BK):
                cols = j + k_i                                        # [BK]
                cm = cols < hi
                ut = tl.load(u_ptr + src[:, None] * KB + cols[None, :],
                             mask=nm[:, None] & cm[None, :], other=0.0).to(tl.float32)
                wt = tl.load(w_ptr + (s * KB + cols[:, None]) * RANK + r_i[None, :],
                             mask=cm[:, None] & rm[None, :], other=0.0).to(tl.float32)
                p = tl.dot(ut, wt, p, input_precision=PREC)           # [BN, R]
            vs = tl.load(v_ptr + (o_i[:, None] * S + s) * RANK + r_i[None, :],
                         mask=vm, other=0.0).to(tl.float32)           # [O, R]
            c3 += p[:, None, :] * vs[None, :, :]
    if HAS_ROWS:
        h_ptrs = h_ptr + src[:, None] * row_stride + d_i[None, :]      # [BN, D], slot 0
        for s in range(0, S_R):
            hs = tl.load(h_ptrs, mask=nm[:, None] & dm[None, :], other=0.0).to(tl.float32)
            h_ptrs += slot_stride
            ks = tl.load(k_ptr + (s * DIM + d_i[:, None]) * RANK + r_i[None, :],
                         mask=dm[:, None] & rm[None, :], other=0.0).to(tl.float32)
            p = tl.dot(hs, ks, input_precision=PREC)                  # [BN, R]
            vs = tl.load(v_ptr + (o_i[:, None] * S + S_A + s) * RANK + r_i[None, :],
                         mask=vm, other=0.0).to(tl.float32)
            c3 += p[:, None, :] * vs[None, :, :]
    if STORE_C:                                                       # C: [n, O_PAD * R_PAD]
        tl.store(c_ptr + nodes64[:, None, None] * (O_PAD * R_PAD) + o_i[None, :, None] * R_PAD
                 + r_i[None, None, :], c3, mask=nm[:, None, None])
    qm = rm[:, None] & dm[None, :]                                    # [R, D]
    gw = tl.load(gw_ptr + d_i, mask=dm, other=0.0).to(tl.float32)
    m_i = tl.full([BN], float("-inf"), tl.float32)
    l_i = tl.zeros([BN], dtype=tl.float32)
    acc = tl.zeros([BN, D_PAD], dtype=tl.float32)
    for o in range(0, O):
        co = tl.sum(tl.where((o_i == o)[None, :, None], c3, 0.0), axis=1)        # [BN, R]
        qt = tl.load(q_ptr + (o * DIM + d_i[None, :]) * RANK + r_i[:, None],
                     mask=qm, other=0.0).to(tl.float32)                        # [R, D] = Q_oᵀ
        z = tl.dot(co, qt, input_precision=PREC)                              # [BN, D]
        lg = tl.sum(z * gw[None, :], axis=1)
        nr = tl.rsqrt(tl.sum(z * z, axis=1) / DIM + eps)
        m_new = tl.maximum(m_i, lg)
        alpha = tl.exp(m_i - m_new)
        pe = tl.exp(lg - m_new)
        acc = acc * alpha[:, None] + (pe * nr)[:, None] * z
        l_i = l_i * alpha + pe
        m_i = m_new
    h = acc / l_i[:, None]
    tl.store(out_ptr + nodes64[:, None] * DIM + d_i[None, :], h, mask=nm[:, None] & dm[None, :])


@triton.jit
def _fusion_bwd_gate_kernel(c_ptr, q_ptr, m_ptr, wq_ptr, dout_ptr, dc_ptr, t1p_ptr, bp_ptr,
                            ap_ptr, n, eps, n_tiles, n_progs,
                            DIM: tl.constexpr, RANK: tl.constexpr, O: tl.constexpr,
                            D_PAD: tl.constexpr, R_PAD: tl.constexpr, O_PAD: tl.constexpr,
                            BN: tl.constexpr, PREC: tl.constexpr):
    # z_o = Q_o c_o is never formed: with M_o = Q_oᵀQ_o and wq_o = Q_oᵀw,
    # w·z = wq·c, |z|² = c M c, G·z = (G Q_o)·c, Q_oᵀ dz = a1 G Q_o - a2 c M_o + a3 wq.
    pid = tl.program_id(0)
    pid64 = pid.to(tl.int64)
    d_i = tl.arange(0, D_PAD)
    r_i = tl.arange(0, R_PAD)
    r2_i = tl.arange(0, R_PAD)
    o_i = tl.arange(0, O_PAD)
    dm = d_i < DIM
    rm = r_i < RANK
    drm = dm[:, None] & rm[None, :]                                   # [D, R]
    rrm = rm[:, None] & (r2_i < RANK)[None, :]                        # [R, R]
    for tile in range(pid, n_tiles, n_progs):
        nodes = tile * BN + tl.arange(0, BN)
        nm = nodes < n
        nodes64 = nodes.to(tl.int64)
        c_rows = nodes64[:, None] * (O_PAD * R_PAD) + r_i[None, :]   # [BN, R], band 0
        g_out = tl.load(dout_ptr + nodes64[:, None] * DIM + d_i[None, :],
                        mask=nm[:, None] & dm[None, :], other=0.0).to(tl.float32)   # [BN, D]
        lgs = tl.full([BN, O_PAD], float("-inf"), tl.float32)         # gate logits
        nrs = tl.zeros([BN, O_PAD], dtype=tl.float32)                 # 1 / rms(z_o)
        gzs = tl.zeros([BN, O_PAD], dtype=tl.float32)                 # G · z_o
        for o in range(0, O):
            sel = (o_i == o)[None, :]
            co = tl.load(c_ptr + c_rows + o * R_PAD, mask=nm[:, None], other=0.0)   # [BN, R]
            qo = tl.load(q_ptr + (o * DIM + d_i[:, None]) * RANK + r_i[None, :],
                         mask=drm, other=0.0).to(tl.float32)          # [D, R]
            mo = tl.load(m_ptr + (o * RANK + r_i[:, None]) * RANK + r2_i[None, :],
                         mask=rrm, other=0.0)                         # [R, R]
            wqo = tl.load(wq_ptr + o * RANK + r_i, mask=rm, other=0.0)
            gq = tl.dot(g_out, qo, input_precision=PREC)              # [BN, R]
            cm = tl.dot(co, mo, input_precision=PREC)                 # [BN, R]
            lg = tl.sum(co * wqo[None, :], axis=1)
            nr = tl.rsqrt(tl.sum(cm * co, axis=1) / DIM + eps)
            gz = tl.sum(gq * co, axis=1)
            lgs = tl.where(sel, lg[:, None], lgs)
            nrs = tl.where(sel, nr[:, None], nrs)
            gzs = tl.where(sel, gz[:, None], gzs)
        ex = tl.exp(lgs - tl.max(lgs, axis=1)[:, None])
        gate = ex / tl.sum(ex, axis=1)[:, None]                       # [BN, O]
        dgs = nrs * gzs                                               # d(loss)/d(gate)
        a1s = gate * nrs                                              # dz = a1 G - a2 z + a3 w
        a2s = gate * gzs * nrs * nrs * nrs / DIM
        a3s = gate * (dgs - tl.sum(gate * dgs, axis=1)[:, None])
        for o in range(0, O):
            sel = (o_i == o)[None, :]
            co = tl.load(c_ptr + c_rows + o * R_PAD, mask=nm[:, None], other=0.0)   # [BN, R]
            qo = tl.load(q_ptr + (o * DIM + d_i[:, None]) * RANK + r_i[None, :],
                         mask=drm, other=0.0).to(tl.float32)          # [D, R]
            mo = tl.load(m_ptr + (o * RANK + r_i[:, None]) * RANK + r2_i[None, :],
                         mask=rrm, other=0.0)                         # [R, R]
            wqo = tl.load(wq_ptr + o * RANK + r_i, mask=rm, other=0.0)
            gq = tl.dot(g_out, qo, input_precision=PREC)              # [BN, R]
            cm = tl.dot(co, mo, input_precision=PREC)                 # [BN, R]
            a1 = tl.sum(tl.where(sel, a1s, 0.0), axis=1)[:, None]
            a2 = tl.sum(tl.where(sel, a2s, 0.0), axis=1)[:, None]
            a3 = tl.sum(tl.where(sel, a3s, 0.0), axis=1)[:, None]
            tl.store(dc_ptr + c_rows + o * R_PAD, a1 * gq - a2 * cm + a3 * wqo[None, :],
                     mask=nm[:, None])
            # dQ_o = Σ_n a1 G ⊗ c - Q_o Σ_n a2 c ⊗ c + w ⊗ Σ_n a3 c, the last two finished outside
            t1 = tl.dot(tl.trans(g_out), a1 * co, input_precision=PREC)   # [D, R]
            t1_ptrs = t1p_ptr + ((pid64 * O + o) * DIM + d_i[:, None]) * RANK + r_i[None, :]
            tl.store(t1_ptrs, tl.load(t1_ptrs, mask=drm, other=0.0) + t1, mask=drm)
            bo = tl.dot(tl.trans(a2 * co), co, input_precision=PREC)      # [R, R]
            b_ptrs = bp_ptr + ((pid64 * O + o) * RANK + r_i[:, None]) * RANK + r2_i[None, :]
            tl.store(b_ptrs, tl.load(b_ptrs, mask=rrm, other=0.0) + bo, mask=rrm)
            a_ptrs = ap_ptr + (pid64 * O + o) * RANK + r_i
            tl.store(a_ptrs, tl.load(a_ptrs, mask=rm, other=0.0) + tl.sum(a3 * co, axis=0),
                     mask=rm)


@triton.jit
def _slot_grads(dc_rows, nm, p, v_ptr, s, S, O: tl.constexpr, RANK: tl.constexpr,
                R_PAD: tl.constexpr, O_PAD: tl.constexpr, BN: tl.constexpr):
    # dP_s = Σ_o V[o, s] ⊙ dC_o: [BN, R];  Σ_n dC_o ⊙ P_s for every o: [O, R]
    r_i = tl.arange(0, R_PAD)
    o_i = tl.arange(0, O_PAD)
    rm = r_i < RANK
    dp = tl.zeros([BN, R_PAD], dtype=tl.float32)
    dv = tl.zeros([O_PAD, R_PAD], dtype=tl.float32)
    for o in range(0, O):
        dco = tl.load(dc_rows + o * R_PAD, mask=nm[:, None], other=0.0)   # [BN, R]
        vo = tl.load(v_ptr + (o * S + s) * RANK + r_i, mask=rm, other=0.0).to(tl.float32)
        dp += dco * vo[None, :]
        dv = tl.where((o_i == o)[:, None], tl.sum(dco * p, axis=0)[None, :], dv)
    return dp, dv


@triton.jit
def _fusion_bwd_slot_kernel(idx_ptr, u_ptr, w_ptr, lo_ptr, hi_ptr, order_ptr, h_ptr, k_ptr,
                            v_ptr, dc_ptr, dh_ptr, dwp_ptr, dkp_ptr, dvp_ptr,
                            n, KB, S_A, S_R, row_stride, slot_stride, n_groups, n_progs,
                            DIM: tl.constexpr, RANK: tl.constexpr, O: tl.constexpr,
                            D_PAD: tl.constexpr, R_PAD: tl.constexpr, O_PAD: tl.constexpr,
                            BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr,
                            HAS_INDEX: tl.constexpr, HAS_BASIS: tl.constexpr,
                            HAS_ROWS: tl.constexpr, WRITE_DH: tl.constexpr, PREC: tl.constexpr):
    # a program takes groups of GROUP node tiles; row slots keep dK_s, dV_s over a group in
    # registers, basis slots take the group as one tile (dW_s, dV_s added into the program's
    # partial sums once per group)
    pid = tl.program_id(0)
    pid64 = pid.to(tl.int64)
    S = S_A + S_R
    d_i = tl.arange(0, D_PAD)
    r_i = tl.arange(0, R_PAD)
    o_i = tl.arange(0, O_PAD)
    k_i = tl.arange(0, BK)
    b_i = tl.arange(0, BN)
    BNB: tl.constexpr = GROUP * BN
    bb_i = tl.arange(0, BNB)
    dm = d_i < DIM
    rm = r_i < RANK
    drm = dm[:, None] & rm[None, :]                                   # [D, R]
    vm = (o_i[:, None] < O) & rm[None, :]                             # [O, R]
    for grp in range(pid, n_groups, n_progs):
        if HAS_BASIS:                                                 # the group as one tile
            nodes_b = grp * BNB + bb_i
            nm_b = nodes_b < n
            nodes_b64 = nodes_b.to(tl.int64)
            if HAS_INDEX:
                src_b = tl.load(idx_ptr + nodes_b, mask=nm_b, other=0).to(tl.int64)
            else:
                src_b = nodes_b64
            dc_rows_b = dc_ptr + nodes_b64[:, None] * (O_PAD * R_PAD) + r_i[None, :]
            for i in range(0, S_A):
                sb = tl.load(order_ptr + i)
                lo = tl.load(lo_ptr + sb)
                hi = tl.load(hi_ptr + sb)
                dpb, _ = _slot_grads(dc_rows_b, nm_b, tl.zeros([BNB, R_PAD], dtype=tl.float32),
                                    v_ptr, sb, S, O, RANK, R_PAD, O_PAD, BNB)
                pb = tl.zeros([BNB, R_PAD], dtype=tl.float32)
                for j in range(lo, hi, BK):
                    cols = j + k_i
                    km = cols < hi
                    ut = tl.load(u_ptr + src_b[:, None] * KB + cols[None, :],
                                 mask=nm_b[:, None] & km[None, :], other=0.0).to(tl.float32)
                    wt = tl.load(w_ptr + (sb * KB + cols[:, None]) * RANK + r_i[None, :],
                                 mask=km[:, None] & rm[None, :], other=0.0).to(tl.float32)
                    pb = tl.dot(ut, wt, pb, input_precision=PREC)
                    dwc = tl.dot(tl.trans(ut), dpb, input_precision=PREC)   # [BK, R]
                    dwb_ptrs = dwp_ptr + ((pid64 * S_A + sb) * KB + cols[:, None]) * RANK \
                        + r_i[None, :]
                    wm = km[:, None] & rm[None, :]
                    tl.store(dwb_ptrs, tl.load(dwb_ptrs, mask=wm, other=0.0) + dwc, mask=wm)
                _, dvb = _slot_grads(dc_rows_b, nm_b, pb, v_ptr, sb, S, O, RANK, R_PAD, O_PAD, BNB)
                dvb_ptrs = dvp_ptr + ((pid64 * O + o_i[:, None]) * S + sb) * RANK + r_i[None, :]
                tl.store(dvb_ptrs, tl.load(dvb_ptrs, mask=vm, other=0.0) + dvb, mask=vm)
        if HAS_ROWS:
            h_slot = h_ptr                                            # slot s of node 0
            for s in range(0, S_R):
                ks = tl.load(k_ptr + (s * DIM + d_i[:, None]) * RANK + r_i[None, :],
                             mask=drm, other=0.0).to(tl.float32)      # [D, R]
                dk = tl.zeros([D_PAD, R_PAD], dtype=tl.float32)
                dv = tl.zeros([O_PAD, R_PAD], dtype=tl.float32)
                for t in range(0, GROUP):
                    nodes = (grp * GROUP + t) * BN + b_i
                    nm = nodes < n
                    nodes64 = nodes.to(tl.int64)
                    if HAS_INDEX:
                        src = tl.load(idx_ptr + nodes, mask=nm, other=0).to(tl.int64)
                    else:
                        src = nodes64
                    nd = nm[:, None] & dm[None, :]
                    hs = tl.load(h_slot + src[:, None] * row_stride + d_i[None, :],
                                 mask=nd, other=0.0).to(tl.float32)   # [BN, D]
                    p = tl.dot(hs, ks, input_precision=PREC)          # [BN, R]
                    dc_rows = dc_ptr + nodes64[:, None] * (O_PAD * R_PAD) + r_i[None, :]
                    dp, dvt = _slot_grads(dc_rows, nm, p, v_ptr, S_A + s, S, O, RANK, R_PAD,
                                          O_PAD, BN)
                    dv += dvt
                    dk = tl.dot(tl.trans(hs), dp, dk, input_precision=PREC)   # [D, R]
                    if WRITE_DH:
                        dhs = tl.dot(dp, tl.trans(ks), input_precision=PREC)   # [BN, D]
                        tl.store(dh_ptr + (nodes64[:, None] * S_R + s) * DIM + d_i[None, :],
                                 dhs, mask=nd)
                dv_ptrs = dvp_ptr + ((pid64 * O + o_i[:, None]) * S + S_A + s) * RANK \
                    + r_i[None, :]
                tl.store(dv_ptrs, tl.load(dv_ptrs, mask=vm, other=0.0) + dv, mask=vm)
                dk_ptrs = dkp_ptr + ((pid64 * S_R + s) * DIM + d_i[:, None]) * RANK \
                    + r_i[None, :]
                tl.store(dk_ptrs, tl.load(dk_ptrs, mask=drm, other=0.0) + dk, mask=drm)
                h_slot += slot_stride


def _meta(Q: torch.Tensor, dtype: torch.dtype) -> dict:
    O, d, r = Q.shape
    return dict(DIM=d, RANK=r, O=O, D_PAD=max(16, triton.next_power_of_2(d)),
                R_PAD=max(16, triton.next_power_of_2(r)), O_PAD=triton.next_power_of_2(O),
                BN=BLOCK_N, PREC="tf32x3" if dtype == torch.float32 else "tf32")


def _sources(n, index, U, W, lo, hi, rows, row_stride, slot_stride, K, device) -> dict:
    """Kernel arguments of the slot sources (a dummy pointer for each absent one)."""
    dummy = torch.zeros(1, dtype=torch.float32, device=device)
    has_basis, has_rows = U is not None, rows is not None
    order = dummy
    if has_basis:       # basis slots in column order, so slots sharing a band run together
        order = torch.sort(lo.to(torch.int64), stable=True).indices.to(torch.int32)
    return dict(
        idx_ptr=index if index is not None else dummy,
        u_ptr=U if has_basis else dummy, w_ptr=W if has_basis else dummy,
        lo_ptr=lo if has_basis else dummy, hi_ptr=hi if has_basis else dummy, order_ptr=order,
        h_ptr=rows if has_rows else dummy, k_ptr=K if has_rows else dummy,
        n=n, KB=U.shape[1] if has_basis else 0, S_A=W.shape[0] if has_basis else 0,
        S_R=K.shape[0] if has_rows else 0, row_stride=row_stride, slot_stride=slot_stride,
        BK=BLOCK_K, HAS_INDEX=index is not None, HAS_BASIS=has_basis, HAS_ROWS=has_rows)


def fusion_forward(n: int, V: torch.Tensor, Q: torch.Tensor, w: torch.Tensor, eps: float, *,
                   index: Optional[torch.Tensor] = None, U: Optional[torch.Tensor] = None,
                   W: Optional[torch.Tensor] = None, lo: Optional[torch.Tensor] = None,
                   hi: Optional[torch.Tensor] = None, rows: Optional[torch.Tensor] = None,
                   row_stride: int = 0, slot_stride: int = 0, K: Optional[torch.Tensor] = None,
                   store_c: bool = False,
                   out: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Forward of the fusion for ``n`` nodes.

    Args:
        n: number of output nodes.
        V: ``[O, S, r]``; Q: ``[O, d, r]``; w: ``[d]``; eps: norm epsilon.
        index: optional int32/int64 ``[n]`` node ids into U / rows (default: ``arange(n)``).
        U: basis ``[N_u, kb]``; W: ``[S_A, kb, r]`` slot maps; lo, hi: int32 ``[S_A]`` column
            ranges of the basis slots.
        rows: row-slot storage; ``H_j[i] = rows[src_i * row_stride + j * slot_stride + :d]``.
        K: ``[S_R, d, r]`` key factors of the row slots.
        store_c: also return ``C`` (float32 ``[n, O_PAD * R_PAD]``, zero-padded band-major
            ``C_o``), which the backward needs.
        out: optional ``[n, d]`` output (float32 or the inputs' dtype).

    Returns:
        ``(h [n, d], C or None)``.
    """
    O, d, r = Q.shape
    dtype = (rows if rows is not None else U).dtype
    dev = Q.device
    if out is None:
        out = torch.empty(n, d, dtype=dtype, device=dev)
    meta = _meta(Q, dtype)
    C = (torch.empty(n, meta["O_PAD"] * meta["R_PAD"], dtype=torch.float32, device=dev)
         if store_c else None)
    if n:
        _fusion_fwd_kernel[(triton.cdiv(n, BLOCK_N),)](
            v_ptr=V, q_ptr=Q, gw_ptr=w, out_ptr=out, c_ptr=C if store_c else out, eps=eps,
            STORE_C=store_c,
            **_sources(n, index, U, W, lo, hi, rows, row_stride, slot_stride, K, dev),
            **meta, num_warps=4, num_stages=2)
    return out, C


def _programs(n_tiles: int, device: torch.device, n_programs: Optional[int]) -> int:
    if n_programs is None:
        n_programs = (4 * torch.cuda.get_device_properties(device).multi_processor_count
                      if device.type == "cuda" else 3)
    return max(1, min(n_tiles, n_programs))


def fusion_backward(n: int, grad_out: torch.Tensor, C: torch.Tensor, V: torch.Tensor,
                    Q: torch.Tensor, w: torch.Tensor, eps: float, *,
                    index: Optional[torch.Tensor] = None, U: Optional[torch.Tensor] = None,
                    W: Optional[torch.Tensor] = None, lo: Optional[torch.Tensor] = None,
                    hi: Optional[torch.Tensor] = None, rows: Optional[torch.Tensor] = None,
                    row_stride: int = 0, slot_stride: int = 0, K: Optional[torch.Tensor] = None,
                    want_drows: bool = False, drows: Optional[torch.Tensor] = None,
                    n_programs: Optional[int] = None) -> dict:
    """Backward of :func:`fusion_forward` (same slot arguments).

    Args:
        grad_out: ``[n, d]`` gradient of the output.
        C: from the forward (``store_c=True``).
        want_drows: also return ``dH`` of the row slots, ``[n, S_R, d]``.
        drows: optional output buffer for it.
        n_programs: persistent programs per kernel (default: 4 per multiprocessor on CUDA,
            3 elsewhere); weight gradients are summed over them.

    Returns:
        dict of float32 gradients: ``W [S_A, kb, r]``, ``K [S_R, d, r]``, ``V``, ``Q``, ``w``,
        and ``rows`` (``[n, S_R, d]``, the rows' dtype) when asked for.
    """
    O, S, r = V.shape
    d = Q.shape[1]
    dtype = (rows if rows is not None else U).dtype
    dev = Q.device
    meta = _meta(Q, dtype)
    s_a = W.shape[0] if U is not None else 0
    s_r = K.shape[0] if rows is not None else 0
    kb = U.shape[1] if U is not None else 0
    f32 = dict(dtype=torch.float32, device=dev)
    Qf, wf = Q.float(), w.float()
    n_tiles = triton.cdiv(n, GATE_BLOCK_N)
    g1 = _programs(n_tiles, dev, n_programs)
    t1p = torch.zeros(g1, O, d, r, **f32)
    bp = torch.zeros(g1, O, r, r, **f32)
    ap = torch.zeros(g1, O, r, **f32)
    n_groups = triton.cdiv(n, SLOT_BLOCK_N * SLOT_GROUP)
    g2 = _programs(n_groups, dev, n_programs)
    dwp = torch.zeros(g2, s_a, kb, r, **f32)
    dkp = torch.zeros(g2, s_r, d, r, **f32)
    dvp = torch.zeros(g2, O, S, r, **f32)
    write_dh = bool(want_drows and s_r)
    if write_dh and drows is None:
        drows = torch.empty(n, s_r, d, dtype=dtype, device=dev)
    if n:
        # bands o >= O of dC are never written by the gate kernel but read (times 0) later
        dC = torch.empty_like(C) if meta["O_PAD"] == O else torch.zeros_like(C)
        gram = torch.einsum("odr,ods->ors", Qf, Qf).contiguous()     # Q_oᵀ Q_o
        wq = torch.einsum("odr,d->or", Qf, wf).contiguous()          # Q_oᵀ w
        _fusion_bwd_gate_kernel[(g1,)](
            C, Q, gram, wq, grad_out, dC, t1p, bp, ap, n, eps, n_tiles, g1,
            **dict(meta, BN=GATE_BLOCK_N), num_warps=4, num_stages=1)
        _fusion_bwd_slot_kernel[(g2,)](
            v_ptr=V, dc_ptr=dC, dh_ptr=drows if write_dh else dC, dwp_ptr=dwp, dkp_ptr=dkp,
            dvp_ptr=dvp, n_groups=n_groups, n_progs=g2, WRITE_DH=write_dh,
            GROUP=SLOT_GROUP, **_sources(n, index, U, W, lo, hi, rows, row_stride, slot_stride,
                                         K, dev),
            **dict(meta, BN=SLOT_BLOCK_N), num_warps=4, num_stages=2)
    A = ap.sum(0)                                                     # Σ_n a3 c_o: [O, r]
    dQ = t1p.sum(0) - torch.einsum("odr,ors->ods", Qf, bp.sum(0)) + wf[None, :, None] * A[:, None, :]
    grads = dict(W=dwp.sum(0), K=dkp.sum(0), V=dvp.sum(0), Q=dQ,
                 w=torch.einsum("odr,or->d", Qf, A))
    if want_drows:
        grads["rows"] = drows if write_dh else torch.zeros(n, 0, d, dtype=dtype, device=dev)
    return grads
