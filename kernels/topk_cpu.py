"""Masked top-k of score rows on the CPU (numba): the full-ranking evaluation's selection.

For each row of a ``[b, n]`` score block, the indices of the ``k`` largest scores, leaving out
the row's excluded items (its training items in the MMRec protocol), largest first. Rows run
in parallel (``prange``). A row is read once, in chunks of ``CHUNK`` scores: a chunk is
looked at score by score only when its maximum is above the current ``k``-th best (or its
sum is not finite, which a NaN or an infinity makes it); after the first few chunks almost
none is, so a row costs about one vectorised pass. The kernel takes no scores from excluded
items, so the block is never written (no ``-inf`` scatter).

Semantics follow ``torch.topk`` on the block with the excluded scores set to ``-inf``: NaN
ranks above every number; equal scores keep the lower index first; a row with fewer than
``k`` items left completes its list with its excluded items, lowest index first (where
``torch.topk`` would return them, at ``-inf``, in an unspecified order).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["masked_topk_rows", "CHUNK"]

CHUNK = 128         # scores per chunk; 16 lanes of 8 float32 vectors (64 and 256 were slower)
LANES = 16


@njit(nogil=True, fastmath=True, inline="always", cache=True)
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
def _insert(vals, ids, q, s, j):
    """Put score ``s`` of item ``j`` into the descending list ``vals[:q + 1]``."""
    while q > 0 and vals[q - 1] < s:
        vals[q] = vals[q - 1]
        ids[q] = ids[q - 1]
        q -= 1
    vals[q] = s
    ids[q] = j


@njit(parallel=True, nogil=True, cache=True)
def masked_topk_rows(scores, k, ex_ptr, ex_idx, out):
    """``out[r]`` = the ``k`` best items of ``scores[r]`` outside ``ex_idx[ex_ptr[r]:ex_ptr[r+1]]``.

    Args:
        scores: ``[b, n]`` float32 or float64, C-contiguous.
        k: ``1 <= k <= n``.
        ex_ptr, ex_idx: CSR row pointer ``[b + 1]`` and sorted column indices of the excluded
            items (int64).
        out: ``[b, k]`` int64, written.
    """
    b, n = scores.shape
    for r in prange(b):
        row = scores[r]
        vals = np.empty(k, scores.dtype)
        ids = np.empty(k, np.int64)
        mx = np.empty(LANES, scores.dtype)
        sm = np.empty(LANES, scores.dtype)
        p, pe = ex_ptr[r], ex_ptr[r + 1]
        m = 0
        j = 0
        while j < n and m < k:            # the first k items left: a sorted start
            while p < pe and ex_idx[p] < j:
                p += 1
            if not (p < pe and ex_idx[p] == j):
                s = row[j]
                if s != s:
                    s = np.inf
                _insert(vals, ids, m, s, j)
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
                    if s != s:
                        s = np.inf
                    if s > thr:
                        while p < pe and ex_idx[p] < t:
                            p += 1
                        if p < pe and ex_idx[p] == t:
                            continue
                        _insert(vals, ids, k - 1, s, t)
                        thr = vals[k - 1]
            j = e
        p = ex_ptr[r]
        while m < k:                      # fewer than k items left: excluded ones complete
            ids[m] = ex_idx[p]
            m += 1
            p += 1
        for q in range(k):
            out[r, q] = ids[q]
