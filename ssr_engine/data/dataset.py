"""Interaction datasets with a train/valid/test split and item features."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Sequence, Tuple

import numpy as np
import scipy.sparse as sp

from ..graph import InteractionGraph
from ..graph.interaction import Growth, _id_pair

__all__ = ["Dataset", "TRAIN", "VALID", "TEST"]

TRAIN, VALID, TEST = 0, 1, 2
_SPLITS = {"train": TRAIN, "valid": VALID, "test": TEST}


@dataclass
class Dataset:
    """Interactions with MMRec split labels and row-aligned item features.

    Attributes:
        user_ids: ``[E]`` int64 user ids.
        item_ids: ``[E]`` int64 item ids.
        split: ``[E]`` int8 labels, 0 train / 1 valid / 2 test (MMRec's ``x_label``).
        n_users: number of users.
        n_items: number of items.
        features: modality name -> ``[n_items, d_m]`` float32 array.
        name: dataset name.

    Example:
        >>> from ssr_engine.data import synthetic_dataset
        >>> ds = synthetic_dataset(200, 100, 2000, seed=0)
        >>> g = ds.train_graph()
        >>> g.n_users, g.n_items
        (200, 100)
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    split: np.ndarray
    n_users: int
    n_items: int
    features: Dict[str, np.ndarray] = field(default_factory=dict)
    name: str = "dataset"

    def __post_init__(self):
        self.user_ids = np.asarray(self.user_ids, dtype=np.int64)
        self.item_ids = np.asarray(self.item_ids, dtype=np.int64)
        self.split = np.asarray(self.split, dtype=np.int8)
        n = self.user_ids.size
        if self.item_ids.size != n or self.split.size != n:
            raise ValueError(f"user_ids, item_ids and split differ in length: {n}, "
                             f"{self.item_ids.size}, {self.split.size}")
        if n == 0:
            raise ValueError(f"dataset {self.name!r} has no interactions")
        for arr, lim, what in ((self.user_ids, self.n_users, "user"),
                               (self.item_ids, self.n_items, "item")):
            if arr.min() < 0 or arr.max() >= lim:
                raise ValueError(f"{what} ids of {self.name!r} must lie in [0, {lim}), "
                                 f"found {int(arr.min())}..{int(arr.max())}")
        bad = ~np.isin(self.split, (TRAIN, VALID, TEST))
        if bad.any():
            raise ValueError(f"split labels must be 0, 1 or 2; found {int(self.split[bad][0])}")
        for name, f in list(self.features.items()):
            f = np.asarray(f)
            if f.ndim != 2 or f.shape[0] != self.n_items:
                raise ValueError(f"feature {name!r} has shape {f.shape}; expected "
                                 f"[n_items={self.n_items}, d] with one row per item id")
            if not np.all(np.isfinite(f)):
                rows = np.flatnonzero(~np.isfinite(f).all(axis=1))
                raise ValueError(f"feature {name!r} has NaN/inf in {rows.size} rows, "
                                 f"e.g. item {int(rows[0])}")
            self.features[name] = f.astype(np.float32, copy=False)

    def __repr__(self) -> str:
        counts = np.bincount(self.split, minlength=3)
        feats = {k: v.shape[1] for k, v in self.features.items()}
        return (f"Dataset({self.name!r}, users={self.n_users}, items={self.n_items}, "
                f"train/valid/test={counts[0]}/{counts[1]}/{counts[2]}, features={feats})")

    def _label(self, which) -> int:
        if isinstance(which, str):
            if which not in _SPLITS:
                raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {which!r}")
            return _SPLITS[which]
        return int(which)

    def interactions(self, which="train"):
        """``(user_ids, item_ids)`` of one split ("train", "valid" or "test")."""
        m = self.split == self._label(which)
        return self.user_ids[m], self.item_ids[m]

    def user_item_matrix(self, which="train") -> sp.csr_matrix:
        """Binary ``[n_users, n_items]`` CSR matrix of one split."""
        u, i = self.interactions(which)
        m = sp.csr_matrix((np.ones(u.size, dtype=np.float32), (u, i)),
                          shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    def train_graph(self) -> InteractionGraph:
        """The graph of the training interactions only (valid/test never enter it)."""
        u, i = self.interactions("train")
        return InteractionGraph(u, i, self.n_users, self.n_items)

    def user_counts(self) -> np.ndarray:
        """``[n_users]`` number of interactions of each user in the whole dataset."""
        return np.bincount(self.user_ids, minlength=self.n_users)

    def cold_users(self, max_interactions: int = 5) -> np.ndarray:
        """Ids of users with at most ``max_interactions`` interactions in the whole dataset."""
        return np.flatnonzero(self.user_counts() <= max_interactions)

    def add_training(self, user_ids: Sequence[int], item_ids: Sequence[int]
                     ) -> Tuple["Dataset", Growth]:
        """The dataset with new training interactions appended, and what changed in its
        training graph; ``self`` is unchanged. Validation and test stay as they are.

        New users and items take the ids after the current ones, as in
        :meth:`InteractionGraph.grow`, which checks the ids and refuses pairs already in
        the training graph.

        Args:
            user_ids: ``[E]`` user ids (existing or new).
            item_ids: ``[E]`` item ids (existing or new).

        Returns:
            ``(dataset, growth)``.

        Raises:
            ValueError: on the checks of :meth:`InteractionGraph.grow`, on pairs listed twice,
                on pairs that are validation or test interactions (training on them would
                leak the answers into the evaluation), and on new items of a dataset with
                item features (a new item needs its feature rows).

        Example:
            >>> ds = Dataset([0, 0, 1, 1], [0, 1, 1, 0], [0, 0, 0, 2], 2, 2)
            >>> ds2, growth = ds.add_training([2, 2], [0, 1])
            >>> ds2.n_users, int((ds2.split == 0).sum()), growth.new_users
            (3, 5, 1)
        """
        u, i = _id_pair(user_ids, item_ids)                    # the graph's id checks
        if u.size:
            width = max(self.n_items, int(i.max()) + 1)
            uniq, counts = np.unique(u * width + i, return_counts=True)
            if (counts > 1).any():
                twice = uniq[counts > 1]
                raise ValueError(f"{twice.size} new interactions are listed more than once, "
                                 f"e.g. ({int(twice[0] // width)}, {int(twice[0] % width)})")
        graph, growth = self.train_graph().grow(u, i)
        pairs = u * graph.n_items + i
        if growth.new_items and self.features:
            raise ValueError(f"{growth.new_items} new items (ids {self.n_items} and up) but the "
                             f"dataset has item features ({', '.join(self.features)}) with "
                             f"{self.n_items} rows: a new item needs its feature rows")
        for split in ("valid", "test"):
            su, si = self.interactions(split)
            held = np.isin(pairs, su * graph.n_items + si)
            if held.any():
                j = int(np.flatnonzero(held)[0])
                raise ValueError(f"{int(held.sum())} new interactions are {split} "
                                 f"interactions of the dataset, e.g. ({int(u[j])}, {int(i[j])}); "
                                 "training on them would leak the answers into the evaluation")
        grown = Dataset(np.concatenate([self.user_ids, u]), np.concatenate([self.item_ids, i]),
                        np.concatenate([self.split, np.zeros(u.size, dtype=np.int8)]),
                        graph.n_users, graph.n_items, dict(self.features), name=self.name)
        return grown, growth
