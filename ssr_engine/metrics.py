"""Full-ranking evaluation with the MMRec toolbox's metric definitions (DESIGN.md §5).

Protocol (as MMRec's ``quick_start`` + ``TopKEvaluator``): every user with at least one
interaction in the evaluated split is ranked against **all** items; the items in
``exclude`` (the user's training items — MMRec masks the training items for both the
validation and the test split, and does *not* mask validation items at test time) get
score ``-inf`` and so never enter the top K. With ``hits[u, k] = 1`` when the item at rank
``k`` (1-based) is one of the user's ``m_u`` relevant items:

* ``Recall@K    = Σ_{k≤K} hits / m_u``
* ``Precision@K = Σ_{k≤K} hits / K``
* ``NDCG@K      = Σ_{k≤K} hits_k / log2(k+1)  /  Σ_{k≤min(K, m_u)} 1 / log2(k+1)`` (binary gains)
* ``MAP@K       = Σ_{k≤K} Precision@k · hits_k  /  min(K, m_u)``

Each is averaged over the evaluated users. Users are scored in blocks and the top K is
taken by :func:`ssr_engine.ops.masked_topk` (a numba kernel on the CPU, ``torch.topk``
elsewhere), so memory stays at ``block × n_items`` scores.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from .ops.ranking import masked_topk

__all__ = ["METRICS", "topk_metrics", "RankingResult", "full_ranking", "summary_problem"]

METRICS = ("recall", "ndcg", "precision", "map")


def topk_metrics(hits: np.ndarray, n_relevant: np.ndarray,
                 ks: Sequence[int] = (10, 20)) -> Dict[str, np.ndarray]:
    """Per-user ranking metrics from a top-K hit matrix (MMRec definitions).

    Args:
        hits: ``[n_users, K_max]`` 0/1 (or bool): whether the item at each rank is relevant.
        n_relevant: ``[n_users]`` number of relevant items of each user (≥ 1).
        ks: cut-offs, each in ``[1, K_max]``.

    Returns:
        ``{"recall@K": [n_users], "ndcg@K": ..., "precision@K": ..., "map@K": ...}`` for
        every K in ``ks`` (float64 per-user values; average them for the reported figure).

    Example:
        >>> import numpy as np
        >>> m = topk_metrics(np.array([[1, 0, 1]]), np.array([2]), ks=(3,))
        >>> round(float(m["recall@3"][0]), 4), round(float(m["ndcg@3"][0]), 4)
        (1.0, 0.9197)
    """
    hits = np.asarray(hits, dtype=np.float64)
    n_rel = np.asarray(n_relevant, dtype=np.float64)
    if hits.ndim != 2 or n_rel.shape != (hits.shape[0],):
        raise ValueError(f"hits must be [n_users, K] and n_relevant [n_users], got "
                         f"{hits.shape} and {n_rel.shape}")
    if hits.shape[0] and n_rel.min() < 1:
        raise ValueError("every evaluated user needs at least one relevant item; "
                         f"found n_relevant = {n_rel.min():g}")
    k_max = hits.shape[1]
    bad = [k for k in ks if not 1 <= int(k) <= k_max]
    if bad:
        raise ValueError(f"cut-offs {bad} are outside [1, {k_max}] (the hit matrix width)")
    ranks = np.arange(1, k_max + 1, dtype=np.float64)
    cum_hits = np.cumsum(hits, axis=1)
    discount = 1.0 / np.log2(ranks + 1.0)
    dcg = np.cumsum(hits * discount, axis=1)
    idcg_table = np.concatenate([[0.0], np.cumsum(discount)])
    prec = cum_hits / ranks
    sum_prec = np.cumsum(prec * hits, axis=1)
    out = {}
    for k in ks:
        k = int(k)
        ideal = np.minimum(n_rel, k).astype(np.int64)
        out[f"recall@{k}"] = cum_hits[:, k - 1] / n_rel
        out[f"ndcg@{k}"] = dcg[:, k - 1] / idcg_table[ideal]
        out[f"precision@{k}"] = cum_hits[:, k - 1] / k
        out[f"map@{k}"] = sum_prec[:, k - 1] / ideal
    return out


@dataclass
class RankingResult:
    """Per-user metrics of one full-ranking evaluation.

    Attributes:
        users: ``[n]`` ids of the evaluated users (those with relevant items), ascending.
        per_user: metric name (``"recall@20"`` …) -> ``[n]`` per-user values.
    """

    users: np.ndarray
    per_user: Dict[str, np.ndarray]

    def summary(self, subset: Optional[Iterable[int]] = None) -> Dict[str, float]:
        """Mean of each metric over all evaluated users, or over those in ``subset``.

        Args:
            subset: user ids (e.g. ``Dataset.cold_users(5)``); users of ``subset`` that were
                not evaluated are ignored. The count used is returned as ``"n_users"``.
        """
        if subset is None:
            sel = np.ones(self.users.size, dtype=bool)
        else:
            sel = np.isin(self.users, np.asarray(list(subset) if not isinstance(
                subset, np.ndarray) else subset, dtype=np.int64))
        out = {"n_users": int(sel.sum())}
        for name, v in self.per_user.items():
            out[name] = float(v[sel].mean()) if sel.any() else float("nan")
        return out

    def save(self, file) -> None:
        """Write the per-user metrics as an ``.npz`` (``users`` and one array per metric):
        what a later comparison on any group of users needs (:meth:`load`).

        Args:
            file: a path (written as given: no ``.npz`` is appended) or a binary file object.
        """
        arrays = {"users": self.users, **{f"metric:{k}": v for k, v in self.per_user.items()}}
        if isinstance(file, (str, os.PathLike)):
            with open(file, "wb") as fh:
                np.savez(fh, **arrays)
        else:
            np.savez(file, **arrays)

    @classmethod
    def load(cls, path) -> "RankingResult":
        """Read a result written by :meth:`save`.

        Raises:
            FileNotFoundError: when there is no such file.
            ValueError: when the file is not such a result (another file, or a damaged one).

        Example:
            >>> import io, numpy as np
            >>> r = RankingResult(np.array([0, 3]), {"recall@20": np.array([0.5, 1.0])})
            >>> buf = io.BytesIO(); r.save(buf); _ = buf.seek(0)
            >>> RankingResult.load(buf).summary([3])
            {'n_users': 1, 'recall@20': 1.0}
        """
        try:
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an .npz archive")
            with z:
                names = [k for k in z.files if k.startswith("metric:")]
                if "users" not in z.files or not names:
                    raise ValueError("no 'users' or 'metric:' arrays")
                users = z["users"]
                per_user = {k[len("metric:"):]: z[k] for k in names}
        except FileNotFoundError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path} does not hold per-user ranking metrics written by "
                             f"RankingResult.save ({e})") from None
        problem = None
        if users.ndim != 1 or users.dtype.kind not in "iu":
            problem = f"'users' is a {users.ndim}-d {users.dtype} array, not 1-d integers"
        elif users.size and (users.min() < 0 or np.any(np.diff(users) <= 0)):
            problem = "'users' is not a sorted list of distinct non-negative ids"
        elif "" in per_user:
            problem = "a metric without a name"
        else:
            for k, v in per_user.items():
                if v.shape != users.shape or v.dtype.kind != "f":
                    problem = (f"metric {k!r} is a {v.dtype} array of shape {v.shape}, not "
                               f"{users.size} floats (one per user)")
                    break
                if not np.all((v >= 0) & (v <= 1)):
                    problem = f"metric {k!r} has values outside [0, 1] (or NaN)"
                    break
        if problem is not None:
            raise ValueError(f"{path} does not hold per-user ranking metrics written by "
                             f"RankingResult.save: {problem}")
        return cls(users.astype(np.int64), per_user)


def summary_problem(x) -> Optional[str]:
    """What keeps ``x`` (e.g. read back from a ``metrics.json``) from being a
    :meth:`RankingResult.summary`: an integer ``"n_users"`` and numeric figures. ``None``
    when nothing does.

    Example:
        >>> summary_problem({"n_users": 3, "recall@20": 0.5}) is None
        True
        >>> summary_problem({"n_users": 3, "recall@20": "high"})
        "non-numeric figures ['recall@20']"
    """
    if not isinstance(x, dict) or isinstance(x.get("n_users"), bool) \
            or not isinstance(x.get("n_users"), int):
        return f"{x!r:.60} is not a summary with an integer 'n_users'"
    bad = [k for k, v in x.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    return f"non-numeric figures {bad}" if bad else None


def full_ranking(score_fn: Callable[[torch.Tensor], torch.Tensor], truth: sp.spmatrix,
                 exclude: Optional[sp.spmatrix] = None, ks: Sequence[int] = (10, 20),
                 users: Optional[np.ndarray] = None, block: int = 4096,
                 device=None) -> RankingResult:
    """Rank all items for every user with relevant items and compute MMRec metrics.

    Args:
        score_fn: maps a ``[b]`` int64 tensor of user ids to ``[b, n_items]`` scores.
        truth: ``[n_users, n_items]`` sparse matrix of relevant (e.g. test) interactions.
        exclude: ``[n_users, n_items]`` sparse matrix of items never to recommend (the
            training interactions in the MMRec protocol); ``None`` masks nothing.
        ks: cut-offs to report.
        users: users to evaluate (default: every user with a relevant item); users without
            relevant items are dropped.
        block: users scored per block.
        device: device of the user-id tensors handed to ``score_fn`` (default CPU).

    Returns:
        A :class:`RankingResult`.

    Raises:
        ValueError: when shapes disagree or no user has relevant items.

    Example:
        >>> import numpy as np, scipy.sparse as sp, torch
        >>> truth = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 0]]))
        >>> train = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 0]]))
        >>> S = torch.tensor([[9.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
        >>> r = full_ranking(lambda u: S[u], truth, train, ks=(1, 2))
        >>> r.summary()["recall@1"], r.summary()["recall@2"]
        (0.5, 0.5)
    """
    truth = sp.csr_matrix(truth)
    n_users, n_items = truth.shape
    if exclude is not None:
        exclude = sp.csr_matrix(exclude)
        if exclude.shape != truth.shape:
            raise ValueError(f"exclude has shape {exclude.shape}, truth {truth.shape}; both "
                             "must be [n_users, n_items]")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must hold positive cut-offs, got {ks}")
    k_max = min(ks[-1], n_items)
    if ks[-1] > n_items:
        raise ValueError(f"cut-off {ks[-1]} exceeds the number of items {n_items}")
    n_rel_all = np.diff(truth.indptr)
    cand = np.flatnonzero(n_rel_all > 0) if users is None else np.unique(
        np.asarray(users, dtype=np.int64))
    if cand.size and (cand.min() < 0 or cand.max() >= n_users):
        raise ValueError(f"user ids must lie in [0, {n_users}), got {cand.min()}..{cand.max()}")
    cand = cand[n_rel_all[cand] > 0]
    if cand.size == 0:
        raise ValueError("no user has a relevant item in this split: nothing to evaluate "
                         "(does the split have validation/test interactions?)")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    hits = np.zeros((cand.size, k_max), dtype=np.bool_)
    with torch.no_grad():
        for lo in range(0, cand.size, block):
            ub = cand[lo:lo + block]
            scores = score_fn(torch.from_numpy(ub).to(dev))
            if scores.shape != (ub.size, n_items):
                raise ValueError(f"score_fn returned {tuple(scores.shape)}, expected "
                                 f"[{ub.size}, {n_items}]")
            scores = scores.float()
            ex = exclude[ub] if exclude is not None else None
            top = masked_topk(scores, k_max, ex, overwrite=True).cpu().numpy()
            tb = truth[ub]
            # Membership of (row, item) in truth: compare against sorted keys.
            keys = np.repeat(np.arange(ub.size, dtype=np.int64), np.diff(tb.indptr)) * n_items \
                + tb.indices
            keys.sort()
            q = (np.arange(ub.size, dtype=np.int64)[:, None] * n_items + top).ravel()
            pos = np.minimum(np.searchsorted(keys, q), max(keys.size - 1, 0))
            hits[lo:lo + ub.size] = (keys[pos] == q).reshape(ub.size, k_max)
    per_user = topk_metrics(hits, n_rel_all[cand], ks)
    return RankingResult(users=cand, per_user=per_user)
