"""Training batches: every training interaction once per epoch, with uniform negatives.

As in MMRec's ``TrainDataLoader``: an epoch shuffles the training pairs ``(u, i)`` and pairs
each with ``n_neg`` items drawn uniformly from the items ``u`` has **not** interacted with in
training (rejection sampling against the sorted ``u * n_items + i`` keys).
"""
from __future__ import annotations

from typing import Iterator, Tuple

import numpy as np
import scipy.sparse as sp

__all__ = ["BPRSampler"]


class BPRSampler:
    """Shuffled ``(users, positives, negatives)`` batches over the training interactions.

    Args:
        train: ``[n_users, n_items]`` sparse matrix of training interactions.
        batch_size: interactions per batch.
        n_neg: negatives per positive.
        rng: the numpy generator that drives shuffling and sampling (its state is what a
            checkpoint saves).

    Raises:
        ValueError: when there are no training interactions, or a user has interacted with
            every item (no negative exists).

    Example:
        >>> import numpy as np, scipy.sparse as sp
        >>> R = sp.csr_matrix(np.array([[1, 0, 0], [0, 1, 1]]))
        >>> s = BPRSampler(R, batch_size=2, rng=np.random.default_rng(0))
        >>> [tuple(b[0].shape) for b in s.epoch()]
        [(2,), (1,)]
    """

    def __init__(self, train: sp.spmatrix, batch_size: int = 2048, n_neg: int = 1,
                 rng: np.random.Generator = None):
        r = sp.csr_matrix(train)
        r.sum_duplicates()
        if r.nnz == 0:
            raise ValueError("the training split has no interactions")
        if batch_size < 1 or n_neg < 1:
            raise ValueError(f"batch_size and n_neg must be >= 1, got {batch_size}, {n_neg}")
        self.n_users, self.n_items = r.shape
        deg = np.diff(r.indptr)
        if deg.max() >= self.n_items:
            u = int(np.argmax(deg))
            raise ValueError(f"user {u} has interacted with all {self.n_items} items: no "
                             "negative can be sampled")
        coo = r.tocoo()
        self.users = coo.row.astype(np.int64)
        self.items = coo.col.astype(np.int64)
        self._keys = np.sort(self.users * self.n_items + self.items)
        self.batch_size = int(batch_size)
        self.n_neg = int(n_neg)
        self.rng = rng if rng is not None else np.random.default_rng()

    def __len__(self) -> int:
        return -(-self.users.size // self.batch_size)

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each ``(users[j], items[j])`` is a training interaction."""
        q = users * self.n_items + items
        pos = np.minimum(np.searchsorted(self._keys, q), self._keys.size - 1)
        return self._keys[pos] == q

    def negatives(self, users: np.ndarray) -> np.ndarray:
        """``[len(users), n_neg]`` items drawn uniformly among each user's non-interactions."""
        u = np.repeat(users, self.n_neg)
        neg = self.rng.integers(0, self.n_items, u.size)
        bad = np.flatnonzero(self.is_positive(u, neg))
        while bad.size:
            neg[bad] = self.rng.integers(0, self.n_items, bad.size)
            bad = bad[self.is_positive(u[bad], neg[bad])]
        return neg.reshape(users.size, self.n_neg)

    def epoch(self) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(users [B], positives [B], negatives [B, n_neg])`` int64 batches."""
        order = self.rng.permutation(self.users.size)
        for lo in range(0, order.size, self.batch_size):
            idx = order[lo:lo + self.batch_size]
            u = self.users[idx]
            yield u, self.items[idx], self.negatives(u)
