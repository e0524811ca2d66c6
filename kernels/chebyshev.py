"""Fused Chebyshev band step: CSR SpMM + three-term recurrence + band accumulation.

One launch group per order ``p`` computes ``t_p = 2 L̃ t_{p-1} - t_{p-2}`` (``t_1 = L̃ X``) with
``L̃ = scale * M + shift * I`` and adds the damped coefficients of up to three consecutive
terms ``t_{p-2}, t_{p-1}, t_p`` into the band accumulators while the rows are in registers
(DESIGN.md §2, §4). Rows are processed in degree-sorted bins, each bin with a tile shape
``[R rows, BN nonzeros, D]`` that fits its degrees; rows longer than ``HEAVY`` are split into
segments of ``SEG`` nonzeros whose partial sums are reduced by a second pass.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch
import triton
import triton.language as tl

__all__ = ["CsrSchedule", "csr_schedule", "band_schedule", "chebyshev_bands_fused",
           "chebyshev_moments_fused"]

# (largest degree in the bin, rows per program R, nonzeros per step BN); R * BN = 64 slots.
BINS = ((2, 32, 2), (4, 16, 4), (8, 8, 8), (16, 4, 16), (32, 2, 32))
LONG_BIN = (2, 32)          # rows with 32 < degree <= HEAVY: R = 2, BN = 32
HEAVY = 4096                # longer rows are split into segments
SEG = 1024                  # nonzeros per segment
SEG_BN = 64                 # nonzeros per step in the segment kernel


@triton.jit(do_not_specialize=["n_nodes"])
def _cheb_pass_kernel(
    order_ptr, n_items,                 # int32 [n_items]: rows handled by this launch
    ptr_ptr,                            # CSR row pointer (by row) or segment pointer (by item)
    col_ptr, val_ptr,                   # CSR columns / values (unused when SEGMENTED)
    src_ptr,                            # gathered rows: t_{p-1} [N, DIM] or segment sums
    cur_ptr, prev_ptr, next_ptr, x_ptr,  # t_{p-1}, t_{p-2}, t_p (may alias prev), X: [N, DIM]
    acc_ptr, coef_ptr,                  # [M_ACC (+1), N, DIM] fp32; [M_ACC, 3] fp32
    mom_ptr,                            # [programs, 2] fp32: <t_{p-1}, t_{p-1}>, <t_p, t_{p-1}>
    n_nodes, scale, shift,
    DIM: tl.constexpr, D_PAD: tl.constexpr, R: tl.constexpr, BN: tl.constexpr,
    SEGMENTED: tl.constexpr, FIRST: tl.constexpr, LOAD_CUR: tl.constexpr,
    ACC_MODE: tl.constexpr, M_ACC: tl.constexpr, LAST_BAND: tl.constexpr,
    MOMENTS: tl.constexpr,
):
    pid = tl.program_id(0)
    it = pid * R + tl.arange(0, R)                                    # [R]
    im = it < n_items
    rows = tl.load(order_ptr + it, mask=im, other=0).to(tl.int64)     # [R]
    if SEGMENTED:
        pidx = it.to(tl.int64)
    else:
        pidx = rows
    start = tl.load(ptr_ptr + pidx, mask=im, other=0).to(tl.int64)
    cnt = (tl.load(ptr_ptr + pidx + 1, mask=im, other=0).to(tl.int64) - start).to(tl.int32)
    n_steps = tl.max(cnt, axis=0)
    offs_n = tl.arange(0, BN)
    offs_d = tl.arange(0, D_PAD)
    dmask = offs_d < DIM
    y = tl.zeros([R, D_PAD], dtype=tl.float32)
    for j in range(0, n_steps, BN):
        k = j + offs_n                                                # [BN]
        em = (k[None, :] < cnt[:, None]) & im[:, None]               # [R, BN]
        e = start[:, None] + k[None, :]                               # [R, BN]
        if SEGMENTED:
            src = e
            v = em.to(tl.float32)
        else:
            src = tl.load(col_ptr + e, mask=em, other=0).to(tl.int64)
            v = tl.load(val_ptr + e, mask=em, other=0.0).to(tl.float32)
        xs = tl.load(src_ptr + src[:, :, None] * DIM + offs_d[None, None, :],
                     mask=em[:, :, None] & dmask[None, None, :], other=0.0)   # [R, BN, D]
        y += tl.sum(xs.to(tl.float32) * v[:, :, None], axis=1)
    offs = rows[:, None] * DIM + offs_d[None, :]                      # [R, D]
    m2 = im[:, None] & dmask[None, :]
    y = y * scale
    if LOAD_CUR:
        cur = tl.load(cur_ptr + offs, mask=m2, other=0.0).to(tl.float32)
        y += shift * cur
    if FIRST:
        nxt = y
    else:
        prv = tl.load(prev_ptr + offs, mask=m2, other=0.0).to(tl.float32)
        nxt = 2.0 * y - prv
    tl.store(next_ptr + offs, nxt, mask=m2)
    if MOMENTS:
        tl.store(mom_ptr + pid * 2, tl.sum(tl.sum(cur * cur, axis=1), axis=0))
        tl.store(mom_ptr + pid * 2 + 1, tl.sum(tl.sum(nxt * cur, axis=1), axis=0))
    if ACC_MODE > 0:
        plane = n_nodes.to(tl.int64) * DIM
        tot = tl.zeros([R, D_PAD], dtype=tl.float32)
        for b in tl.static_range(M_ACC):
            upd = tl.load(coef_ptr + b * 3 + 2) * nxt
            if not FIRST:
                upd += tl.load(coef_ptr + b * 3) * prv
            if LOAD_CUR:
                upd += tl.load(coef_ptr + b * 3 + 1) * cur
            if ACC_MODE == 2:
                upd += tl.load(acc_ptr + b * plane + offs, mask=m2, other=0.0)
            tl.store(acc_ptr + b * plane + offs, upd, mask=m2)
            tot += upd
        if LAST_BAND:
            xr = tl.load(x_ptr + offs, mask=m2, other=0.0).to(tl.float32)
            tl.store(acc_ptr + M_ACC * plane + offs, xr - tot, mask=m2)


@triton.jit
def _segment_sum_kernel(seg_start_ptr, seg_len_ptr, col_ptr, val_ptr, src_ptr, out_ptr,
                        DIM: tl.constexpr, D_PAD: tl.constexpr, BN: tl.constexpr):
    s = tl.program_id(0)
    st = tl.load(seg_start_ptr + s).to(tl.int64)
    ln = tl.load(seg_len_ptr + s)
    offs_n = tl.arange(0, BN)
    offs_d = tl.arange(0, D_PAD)
    dmask = offs_d < DIM
    acc = tl.zeros([BN, D_PAD], dtype=tl.float32)
    for j in range(0, ln, BN):
        k = j + offs_n                                                # [BN]
        em = k < ln
        c = tl.load(col_ptr + st + k, mask=em, other=0).to(tl.int64)
        v = tl.load(val_ptr + st + k, mask=em, other=0.0).to(tl.float32)
        xs = tl.load(src_ptr + c[:, None] * DIM + offs_d[None, :],
                     mask=em[:, None] & dmask[None, :], other=0.0)    # [BN, D]
        acc += xs.to(tl.float32) * v[:, None]
    tl.store(out_ptr + s.to(tl.int64) * DIM + offs_d, tl.sum(acc, axis=0), mask=dmask)


@dataclass
class CsrSchedule:
    """Degree-binned row order of a CSR matrix (built once per matrix and cached).

    Attributes:
        bins: ``(order, R, BN)`` per non-empty bin; ``order`` int32 row ids, degrees descending.
        heavy_rows: int32 ids of the rows split into segments.
        heavy_ptr: int32 ``[n_heavy + 1]`` segment pointer of the heavy rows.
        seg_start: int64 first nonzero of each segment.
        seg_len: int32 length of each segment.
    """
    bins: List[Tuple[torch.Tensor, int, int]]
    heavy_rows: torch.Tensor
    heavy_ptr: torch.Tensor
    seg_start: torch.Tensor
    seg_len: torch.Tensor


# id(matrix) -> (weak reference to the matrix, schedule); entries leave with their matrix
_SCHEDULES: dict = {}


def csr_schedule(matrix: torch.Tensor) -> CsrSchedule:
    """Bin the rows of a CSR matrix by degree (cached per matrix tensor).

    Args:
        matrix: ``[N, N]`` torch CSR tensor (int32/int64 indices).

    Returns:
        The :class:`CsrSchedule`.
    """
    hit = _SCHEDULES.get(id(matrix))
    if hit is not None and hit[0]() is matrix:
        return hit[1]
    crow = matrix.crow_indices()
    dev = crow.device
    deg = (crow[1:] - crow[:-1]).to(torch.int64)
    deg_sorted, order = torch.sort(deg, descending=True, stable=True)
    # number of rows with degree > bound, for each bin bound (degrees are descending)
    bounds = torch.tensor([HEAVY] + [b[0] for b in reversed(BINS)], device=dev)
    above = torch.searchsorted(-deg_sorted, -bounds).tolist()
    order32 = order.to(torch.int32)
    n_heavy = above[0]
    bins = []
    edges = above + [deg.numel()]            # heavy | long | 32 | 16 | 8 | 4 | 2
    shapes = [LONG_BIN] + [(b[1], b[2]) for b in reversed(BINS)]
    for (lo, hi), (r, bn) in zip(zip(edges[:-1], edges[1:]), shapes):
        if hi > lo:
            bins.append((order32[lo:hi].contiguous(), r, bn))
    heavy_rows = order32[:n_heavy].contiguous()
    if n_heavy:
        hdeg = deg_sorted[:n_heavy]
        nseg = (hdeg + SEG - 1) // SEG
        heavy_ptr = torch.zeros(n_heavy + 1, dtype=torch.int64, device=dev)
        heavy_ptr[1:] = torch.cumsum(nseg, 0)
        n_seg = int(heavy_ptr[-1])
        owner = torch.repeat_interleave(torch.arange(n_heavy, device=dev), nseg)
        local = torch.arange(n_seg, device=dev) - heavy_ptr[owner]
        row_start = crow.to(torch.int64)[order[:n_heavy]]
        seg_start = row_start[owner] + local * SEG
        seg_len = torch.minimum(hdeg[owner] - local * SEG, torch.full_like(local, SEG))
        heavy_ptr = heavy_ptr.to(torch.int32)
        seg_len = seg_len.to(torch.int32)
    else:
        heavy_ptr = torch.zeros(1, dtype=torch.int32, device=dev)
        seg_start = torch.zeros(0, dtype=torch.int64, device=dev)
        seg_len = torch.zeros(0, dtype=torch.int32, device=dev)
    sched = CsrSchedule(bins, heavy_rows, heavy_ptr, seg_start, seg_len)
    _SCHEDULES[id(matrix)] = (weakref.ref(matrix), sched)
    weakref.finalize(matrix, _SCHEDULES.pop, id(matrix), None)
    return sched


def band_schedule(coeffs: np.ndarray, unity: bool) -> Tuple[list, np.ndarray]:
    """Which terms each pass adds to the accumulators, and with which coefficients.

    Pass ``p = 1..K-1`` computes ``t_p`` and holds ``t_{p-2}`` (prev), ``t_{p-1}`` (cur)
    and ``t_p`` (next) in registers. The lowest term not yet added is ``u``; a pass adds
    ``t_u..t_p`` when ``p - u == 2`` (three terms, one extra row read) or when it is the last.

    Args:
        coeffs: ``[M, K]`` float64 coefficients, ``K >= 2``.
        unity: accumulate only the first ``M - 1`` bands (the last is ``X - Σ others``).

    Returns:
        ``(passes, table)``: ``passes[p-1] = (acc_mode, load_cur)`` with acc_mode 0 (none),
        1 (write) or 2 (add); ``table`` float32 ``[K-1, M_acc, 3]`` coefficients of
        (prev, cur, next) per pass.
    """
    M, K = coeffs.shape
    m_acc = M - 1 if unity else M
    table = np.zeros((K - 1, m_acc, 3), dtype=np.float32)
    passes = []
    u = 0
    written = False
    for p in range(1, K):
        if p - u == 2 or p == K - 1:
            for term in range(u, p + 1):
                table[p - 1, :, term - (p - 2)] = coeffs[:m_acc, term]
            passes.append((2 if written else 1, u <= p - 1))
            written, u = True, p + 1
        else:
            passes.append((0, False))
    return passes, table


def _launch_pass(sched: CsrSchedule, crow, col, val, partial, common: dict,
                 mom: Optional[torch.Tensor] = None) -> None:
    """All launches of one order: heavy-row segments, then each degree bin."""
    n_heavy = sched.heavy_rows.numel()
    at = 0

    def moments(n_prog):
        nonlocal at
        out = common["x_ptr"] if mom is None else mom[at:at + n_prog]
        at += n_prog
        return out

    if n_heavy:
        _segment_sum_kernel[(partial.shape[0],)](
            sched.seg_start, sched.seg_len, col, val, common["cur_ptr"], partial,
            DIM=common["DIM"], D_PAD=common["D_PAD"], BN=SEG_BN, num_warps=4)
        grid = triton.cdiv(n_heavy, 2)
        _cheb_pass_kernel[(grid,)](
            sched.heavy_rows, n_heavy, sched.heavy_ptr, col, val, partial, mom_ptr=moments(grid),
            R=2, BN=16, SEGMENTED=True, num_warps=4, **common)
    for order, r, bn in sched.bins:
        grid = triton.cdiv(order.numel(), r)
        _cheb_pass_kernel[(grid,)](
            order, order.numel(), crow, col, val, common["cur_ptr"], mom_ptr=moments(grid),
            R=r, BN=bn, SEGMENTED=False, num_warps=4, **common)


def _programs_per_pass(sched: CsrSchedule) -> int:
    return (triton.cdiv(sched.heavy_rows.numel(), 2)
            + sum(triton.cdiv(order.numel(), r) for order, r, _ in sched.bins))


def chebyshev_bands_fused(matrix: torch.Tensor, scale: float, shift: float, X: torch.Tensor,
                          coeffs: torch.Tensor,
                          unity: Optional[bool] = None,
                          out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """All M Chebyshev bands of ``X`` with one fused pass per order.

    Args:
        matrix: torch CSR tensor of the square matrix ``M`` ``[N, N]`` (int32/int64 indices).
        scale, shift: ``L̃ = scale * M + shift * I`` (spectrum inside [-1, 1]).
        X: ``[N, d]`` contiguous float32/bfloat16/float16 signal.
        coeffs: ``[M, K]`` damped coefficients, ``K >= 2``.
        unity: use ``last band = X - Σ others`` (``None``: when the columns of ``coeffs`` sum
            to ``[1, 0, 0, …]`` to float32 rounding).
        out: optional float32 ``[M, N, d]`` output buffer.

    Returns:
        float32 ``[M, N, d]`` bands (``out`` when given).
    """
    N, d = X.shape
    c64 = coeffs.detach().to("cpu", torch.float64).numpy()
    M, K = c64.shape
    if unity is None:
        target = np.zeros(K)
        target[0] = 1.0
        gap = np.abs(c64.sum(axis=0) - target).max()
        unity = M >= 2 and gap <= 8 * np.finfo(np.float32).eps * max(1.0, np.abs(c64).max())
    passes, table = band_schedule(c64, unity)
    m_acc = table.shape[1]
    table_t = torch.from_numpy(table).to(X.device)
    if out is None:
        out = torch.empty(M, N, d, dtype=torch.float32, device=X.device)
    sched = csr_schedule(matrix)
    crow, col, val = matrix.crow_indices(), matrix.col_indices(), matrix.values()
    bufs = [torch.empty(N, d, dtype=torch.float32, device=X.device) for _ in range(2)]
    partial = torch.empty(sched.seg_len.numel(), d, dtype=torch.float32, device=X.device)
    cur, prev = X, None
    for p in range(1, K):
        acc_mode, load_cur = passes[p - 1]
        nxt = bufs[0] if p == 1 else (bufs[1] if p == 2 else prev)
        _launch_pass(sched, crow, col, val, partial, dict(
            cur_ptr=cur, prev_ptr=X if prev is None else prev, next_ptr=nxt, x_ptr=X,
            acc_ptr=out, coef_ptr=table_t[p - 1], n_nodes=N, scale=scale, shift=shift, DIM=d,
            D_PAD=triton.next_power_of_2(d), FIRST=p == 1, LOAD_CUR=load_cur or shift != 0.0,
            ACC_MODE=acc_mode, M_ACC=m_acc, LAST_BAND=unity and p == K - 1, MOMENTS=False))
        prev, cur = cur, nxt
    return out


def chebyshev_moments_fused(matrix: torch.Tensor, scale: float, shift: float, X: torch.Tensor,
                            n_products: int) -> torch.Tensor:
    """KPM moments ``μ_k = ⟨X, T_k(L̃) X⟩_F``, ``k < 2 n_products``, one fused pass per product.

    Pass ``p`` computes ``t_p`` and the inner products ``⟨t_{p-1}, t_{p-1}⟩`` and
    ``⟨t_p, t_{p-1}⟩`` (per-program float32 partial sums, added in float64), which give
    ``μ_{2p-2} = 2⟨t_{p-1}, t_{p-1}⟩ - μ_0`` and ``μ_{2p-1} = 2⟨t_p, t_{p-1}⟩ - μ_1``.

    Args:
        matrix, scale, shift: as in :func:`chebyshev_bands_fused`.
        X: ``[N, d]`` contiguous float32/bfloat16/float16 block.
        n_products: number of operator products ``K >= 1``.

    Returns:
        float64 CPU tensor ``[2K]``.
    """
    N, d = X.shape
    sched = csr_schedule(matrix)
    crow, col, val = matrix.crow_indices(), matrix.col_indices(), matrix.values()
    bufs = [torch.empty(N, d, dtype=torch.float32, device=X.device) for _ in range(2)]
    partial = torch.empty(sched.seg_len.numel(), d, dtype=torch.float32, device=X.device)
    mom = torch.zeros(n_products, _programs_per_pass(sched), 2, dtype=torch.float32,
                      device=X.device)
    cur, prev = X, None
    for p in range(1, n_products + 1):
        nxt = bufs[0] if p == 1 else (bufs[1] if p == 2 else prev)
        _launch_pass(sched, crow, col, val, partial, dict(
            cur_ptr=cur, prev_ptr=X if prev is None else prev, next_ptr=nxt, x_ptr=X,
            acc_ptr=nxt, coef_ptr=nxt, n_nodes=N, scale=scale, shift=shift, DIM=d,
            D_PAD=triton.next_power_of_2(d), FIRST=p == 1, LOAD_CUR=True, ACC_MODE=0,
            M_ACC=1, LAST_BAND=False, MOMENTS=True), mom=mom[p - 1])
        prev, cur = cur, nxt
    dots = mom.double().sum(dim=1).cpu()                                  # [K, 2]
    mu = torch.empty(2 * n_products, dtype=torch.float64)
    mu[0], mu[1] = dots[0, 0], dots[0, 1]
    mu[2::2] = 2.0 * dots[1:, 0] - mu[0]
    mu[3::2] = 2.0 * dots[1:, 1] - mu[1]
    return mu
