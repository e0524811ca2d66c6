"""Masked top-k of score rows on the CPU (numba): the full-ranking evaluation's selection.

For each row of a ``[b, n]`` score block, the indices of the ``k`` largest scores, leaving out
the row's excluded items (its training items in the MMRec protocol), largest first. A row is
read once, in chunks of ``CHUNK`` scores: a chunk is looked at score by score only when its
maximum is above the current ``k``-th best (or its sum is not finite, which a NaN or an
infinity makes it); after the first few chunks almost none is, so a row costs about one
vectorised pass. Excluded items are skipped, so the block is never written (no ``-inf``
scatter). The current best ``k`` are kept sorted by insertion (``O(k)`` each), which suits the
evaluation's small ``k``; ``ssr_engine.ops.masked_topk`` sends large ``k`` to torch.

Semantics: ``torch.topk`` on the block with the excluded scores set to ``-inf``, with a fixed
order among equal scores: NaN ranks above every number (``+inf`` included); equal scores keep
the lower index first; a row with fewer than ``k`` items left completes its list with its
excluded items, lowest index first.

Two entry points with one row routine: :func:`masked_topk_rows` runs rows in parallel
(``prange``, numba's threading layer) and :func:`masked_topk_rows_serial` on the calling
thread only — for one thread, and in a process forked from one that used the parallel
kernel (numba's OpenMP layer terminates such a child).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["masked_topk_rows", "masked_topk_rows_serial", "CHUNK"]

CHUNK = 128         # scores per chunk; 16 lanes of 8 float32 vectors (64 and 256 were slower)
LANES = 16


@njit(nogil=True, fastmath={"reassoc", "nsz", "contract"}, inline="always", cache=True)
def _chunk_stats(row, j, mx, sm):
    """Maximum and sum of ``row[j:j + CHUNK]`` over ``LANES`` lanes (vectorised)."""
    for q in range(LANES):
        mx[q] = row[j + q]
        sm[q] = row[j + q]
    for t in range(j + LANES, j + CHUNK, LANES):
        for q in range(LANES):
            v = row[t + q]
            mx[q] = v if v > mx[q] else mx[q]
            sm[q] += v
    a = mx[0]
    z = sm[0]
    for q in range(1, LANES):
        a = mx[q] if mx[q] > a else a
        z += sm[q]
    return a, z


@njit(nogil=True, inline="always", cache=True)
def _above(a, b):
    """Whether score ``a`` ranks strictly above ``b`` (NaN above every number)."""
    return (a != a and b == b) or a > b


@njit(nogil=True, inline="always", cache=True)
def _insert(vals, ids, q, s, j):
    """Put score ``s`` of item ``j`` into the list ``vals[:q + 1]``, best first (after the
    entries it does not rank above)."""
    while q > 0 and _above(s, vals[q - 1]):
        vals[q] = vals[q - 1]
        ids[q] = ids[q - 1]
        q -= 1
    vals[q] = s
    ids[q] = j


@njit(nogil=True, cache=True)
def _row_topk(row, k, ex_idx, p, pe, vals, ids, mx, sm):
    """The top ``k`` of one row outside ``ex_idx[p:pe]`` (sorted) into ``vals``/``ids``;
    returns how many items were left (``k`` unless fewer)."""
    n = row.shape[0]
    m = 0
    j = 0
    while j < n and m < k:                # the first k items left: a sorted start
        while p < pe and ex_idx[p] < j:
            p += 1
        if not (p < pe and ex_idx[p] == j):
            _insert(vals, ids, m, row[j], j)
            m += 1
        j += 1
    thr = vals[k - 1]
    while j < n:
        e = min(j + CHUNK, n)
        look = True
        if e - j == CHUNK:
            a, z = _chunk_stats(row, j, mx, sm)
            look = a > thr or not (abs(z) < np.inf)
        if look:
            for t in range(j, e):
                s = row[t]
                if _above(s, thr):
                    while p < pe and ex_idx[p] < t:
                        p += 1
                    if p < pe and ex_idx[p] == t:
                        continue
                    _insert(vals, ids, k - 1, s, t)
                    thr = vals[k - 1]
        j = e
    return m


@njit(nogil=True, cache=True)
def _one_row(scores, k, ex_ptr, ex_idx, out, r):
    vals = np.empty(k, scores.dtype)
    ids = np.empty(k, np.int64)
    mx = np.empty(LANES, scores.dtype)
    sm = np.empty(LANES, scores.dtype)
    m = _row_topk(scores[r], k, ex_idx, ex_ptr[r], ex_ptr[r + 1], vals, ids, mx, sm)
    p = ex_ptr[r]
    while m < k:                          # fewer than k items left: excluded ones complete
        ids[m] = ex_idx[p]
        m += 1
        p += 1
    for q in range(k):
        out[r, q] = ids[q]


@njit(parallel=True, nogil=True, cache=True)
def masked_topk_rows(scores, k, ex_ptr, ex_idx, out):
    """``out[r]`` = the ``k`` best items of ``scores[r]`` outside ``ex_idx[ex_ptr[r]:ex_ptr[r+1]]``,
    rows in parallel.

    Args:
        scores: ``[b, n]`` float32 or float64, C-contiguous.
        k: ``1 <= k <= n``.
        ex_ptr, ex_idx: CSR row pointer ``[b + 1]`` and sorted column indices (each in
            ``[0, n)``, once per row) of the excluded items, int64.
        out: ``[b, k]`` int64, written.
    """
    for r in prange(scores.shape[0]):
        _one_row(scores, k, ex_ptr, ex_idx, out, r)


@njit(nogil=True, cache=True)
def masked_topk_rows_serial(scores, k, ex_ptr, ex_idx, out):
    """:func:`masked_topk_rows` on the calling thread (no threading layer)."""
    for r in range(scores.shape[0]):
        _one_row(scores, k, ex_ptr, ex_idx, out, r)
