"""The user–item interaction graph and its normalised operators (DESIGN.md §2).

Users are nodes ``0..n_users-1``, items follow (node ``n_users + i``). With ``R`` the
``[n_u, n_i]`` matrix of training interactions, ``A = [[0, R], [R^T, 0]]``, ``D`` its degrees,

* ``Â = D^{-1/2} A D^{-1/2}`` (isolated nodes: zero rows),
* ``L = I - Â`` (spectrum in [0, 2]),
* ``L̃ = (L - I) / (1 + δ) = -Â / (1 + δ)`` (spectrum inside [-1, 1], for Chebyshev work),
* ``R̃ = D_u^{-1/2} R D_i^{-1/2}`` (the bipartite block; its SVD gives both ends of L's
  spectrum).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.sparse as sp
import torch

from .operators import Operator, csr_tensor

__all__ = ["InteractionGraph", "Growth"]

Device = Union[str, torch.device, None]


def _as_index_array(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of ids, got shape {a.shape}")
    if a.size == 0:
        return a.astype(np.int64)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer ids, got dtype {a.dtype} "
                         "(cast with .astype(np.int64) if the values are whole numbers)")
    if a.size and a.min() < 0:
        bad = int(np.flatnonzero(a < 0)[0])
        raise ValueError(f"{name} has a negative id {int(a[bad])} at position {bad}")
    return a.astype(np.int64, copy=False)


def _id_pair(user_ids, item_ids) -> Tuple[np.ndarray, np.ndarray]:
    """Validated int64 ``(users, items)`` of the same length."""
    u = _as_index_array(user_ids, "user_ids")
    i = _as_index_array(item_ids, "item_ids")
    if u.shape != i.shape:
        raise ValueError(f"user_ids and item_ids differ in length: {u.size} vs {i.size}")
    return u, i


@dataclass(frozen=True)
class Growth:
    """What :meth:`InteractionGraph.grow` changed.

    Attributes:
        old_users, old_items: sizes before.
        new_users, new_items: nodes added (ids ``old_users …``, ``old_items …``).
        added: interactions added (after merging repeats within the new ones).
        users, items: ids of the users and items that gained interactions (sorted).
    """

    old_users: int
    old_items: int
    new_users: int
    new_items: int
    added: int
    users: np.ndarray
    items: np.ndarray


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):       # not POSIX: no limit checked
        return 1 << 62


class InteractionGraph:
    """A user–item bipartite graph built from training interactions.

    Duplicate (user, item) pairs are merged: without ``weights`` the graph is binary (a pair
    given twice is one interaction of weight 1; :attr:`duplicates_merged` counts them and a
    warning says so); with ``weights`` their weights are summed. Users or items without
    interactions are isolated nodes; their rows in every operator are zero.

    Args:
        user_ids: ``[E]`` integer user ids in ``[0, n_users)``.
        item_ids: ``[E]`` integer item ids in ``[0, n_items)``.
        n_users: number of users (default ``max(user_ids) + 1``).
        n_items: number of items (default ``max(item_ids) + 1``).
        weights: optional ``[E]`` positive, finite interaction weights.

    Raises:
        ValueError: on negative or out-of-range ids, mismatched lengths, non-integer ids,
            bad weights, an empty graph, or sizes whose index arrays alone would not fit in
            this machine's memory (ids must be dense, ``0 … n − 1``).

    Example:
        >>> import torch, ssr_engine
        >>> g = ssr_engine.InteractionGraph([0, 0, 1], [0, 1, 1])
        >>> g.n_users, g.n_items, g.n_nodes, g.n_edges
        (2, 2, 4, 3)
        >>> L = g.laplacian(dtype=torch.float64)
        >>> round(float((L @ g.trivial_vector(torch.float64)).norm()), 12)
        0.0
    """

    def __init__(self, user_ids: Sequence[int], item_ids: Sequence[int],
                 n_users: Optional[int] = None, n_items: Optional[int] = None,
                 weights: Optional[Sequence[float]] = None):
        u, i = _id_pair(user_ids, item_ids)
        if u.size == 0:
            raise ValueError("the graph is empty: no interactions were given")
        n_u = int(u.max()) + 1 if n_users is None else int(n_users)
        n_i = int(i.max()) + 1 if n_items is None else int(n_items)
        if n_u <= 0 or n_i <= 0:
            raise ValueError(f"n_users and n_items must be positive, got {n_u} and {n_i}")
        if u.max() >= n_u:
            raise ValueError(f"user id {int(u.max())} is out of range for n_users={n_u}")
        if i.max() >= n_i:
            raise ValueError(f"item id {int(i.max())} is out of range for n_items={n_i}")
        if weights is None:
            w = np.ones(u.size, dtype=np.float64)
        else:
            w = np.asarray(weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor)
                           else weights, dtype=np.float64)
            if w.shape != u.shape:
                raise ValueError(f"weights has length {w.size}, expected {u.size}")
            if not np.all(np.isfinite(w)) or np.any(w <= 0):
                raise ValueError("weights must be finite and positive")
        need = 16 * (n_u + n_i + 2)            # the row pointers of R and Rᵀ (int64)
        if need > _physical_memory():
            raise ValueError(
                f"a graph of {n_u} users x {n_i} items needs {need / 1e9:.3g} GB for its "
                f"index arrays alone, more than this machine's "
                f"{_physical_memory() / 1e9:.3g} GB; ids must be dense (0 … n − 1): remap "
                "them, e.g. with numpy.unique(ids, return_inverse=True)")
        self.n_users, self.n_items = n_u, n_i
        r = sp.csr_matrix((w, (u, i)), shape=(n_u, n_i))
        r.sum_duplicates()
        r.sort_indices()
        #: interactions that repeated an earlier (user, item) pair and were merged into it.
        self.duplicates_merged = int(u.size - r.nnz)
        if weights is None and self.duplicates_merged:
            r.data[:] = 1.0
            warnings.warn(f"{self.duplicates_merged} duplicate (user, item) interactions were "
                          "merged (the graph is binary; pass weights to count repeats)",
                          stacklevel=2)
        self._R = r
        self._cache: Dict[Tuple, object] = {}

    # -- sizes and raw data ------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items

    @property
    def n_edges(self) -> int:
        """Number of distinct (user, item) interactions."""
        return int(self._R.nnz)

    @property
    def binary(self) -> bool:
        return bool(np.all(self._R.data == 1.0))

    def __repr__(self) -> str:
        return (f"InteractionGraph(n_users={self.n_users}, n_items={self.n_items}, "
                f"n_edges={self.n_edges})")

    # -- growth ------------------------------------------------------------------------
    def grow(self, user_ids: Sequence[int], item_ids: Sequence[int],
             weights: Optional[Sequence[float]] = None) -> Tuple["InteractionGraph", "Growth"]:
        """The graph with new interactions added, and what changed; ``self`` is unchanged.

        New users and items take the ids after the current ones (``n_users, n_users + 1,
        …``); every new id must appear, so a file of another dataset (ids far beyond the
        current range) is refused instead of creating thousands of empty nodes.

        Args:
            user_ids: ``[E]`` user ids (existing or new).
            item_ids: ``[E]`` item ids (existing or new).
            weights: optional ``[E]`` positive weights (the graph's existing weights stay).

        Returns:
            ``(graph, growth)``: the grown graph and a :class:`Growth` record.

        Raises:
            ValueError: on the construction errors (negative or non-integer ids, lengths,
                weights), on pairs the graph already holds (counted, with examples), or on new
                ids that skip ids.

        Example:
            >>> g = InteractionGraph([0, 1], [0, 1])
            >>> g2, d = g.grow([1, 2], [0, 2])
            >>> (g2.n_users, g2.n_items, g2.n_edges), (d.new_users, d.new_items, d.added)
            ((3, 3, 4), (1, 1, 2))
        """
        u, i = _id_pair(user_ids, item_ids)
        if u.size == 0:
            raise ValueError("no interactions to add")
        sizes = {}
        for name, ids, n in (("user", u, self.n_users), ("item", i, self.n_items)):
            new = np.unique(ids[ids >= n])
            if new.size and (new[0] != n or new[-1] != n + new.size - 1):
                missing = np.setdiff1d(np.arange(n, new[-1] + 1), new)
                raise ValueError(
                    f"new {name} ids must continue the current range ({n}, {n + 1}, …) without "
                    f"gaps; got ids up to {int(new[-1])}, and {missing.size} ids in between "
                    f"have no interaction (e.g. {int(missing[0])}): is this the same dataset?")
            sizes[name] = n + new.size
        old = u < self.n_users
        old &= i < self.n_items
        if old.any():
            hit = np.asarray(self._R[u[old], i[old]]).ravel() != 0
            if hit.any():
                ex = ", ".join(f"({a}, {b})" for a, b in zip(u[old][hit][:3], i[old][hit][:3]))
                raise ValueError(f"{int(hit.sum())} of the new interactions are already in the "
                                 f"graph, e.g. {ex}; pass only new ones")
        w_new = np.ones(u.size) if weights is None else weights
        coo = self._R.tocoo()
        keep_binary = weights is None and self.binary
        grown = InteractionGraph(np.concatenate([coo.row, u]), np.concatenate([coo.col, i]),
                                 sizes["user"], sizes["item"],
                                 weights=None if keep_binary else
                                 np.concatenate([coo.data, np.asarray(w_new, dtype=np.float64)]))
        growth = Growth(self.n_users, self.n_items, sizes["user"] - self.n_users,
                        sizes["item"] - self.n_items, grown.n_edges - self.n_edges,
                        np.unique(u), np.unique(i))
        return grown, growth

    # -- networkx ----------------------------------------------------------------------
    @classmethod
    def from_networkx(cls, G, user_nodes, weight: Optional[str] = None
                      ) -> Tuple["InteractionGraph", list, list]:
        """The interaction graph of a bipartite networkx graph.

        Args:
            G: a ``networkx.Graph`` whose edges all join a user to an item.
            user_nodes: the users (an iterable of nodes of ``G``); every other node is an
                item. Users take ids ``0 … U − 1`` in this order, items ``0 … I − 1`` in
                ``G``'s node order.
            weight: edge attribute holding interaction weights (default: unweighted).

        Returns:
            ``(graph, users, items)``: the graph and the networkx node of each user id and
            item id (isolated nodes keep their ids).

        Raises:
            ValueError: when an edge joins two users or two items, a user node is not in
                ``G``, or ``G`` has no edges.

        Example:
            >>> import networkx as nx
            >>> G = nx.complete_bipartite_graph(2, 3)
            >>> g, users, items = InteractionGraph.from_networkx(G, user_nodes=[0, 1])
            >>> g.n_users, g.n_items, g.n_edges, items
            (2, 3, 6, [2, 3, 4])
        """
        users = list(dict.fromkeys(user_nodes))
        missing = [u for u in users if u not in G]
        if missing:
            raise ValueError(f"user_nodes are not nodes of G: {missing[:5]}")
        uid = {u: j for j, u in enumerate(users)}
        items = [v for v in G.nodes if v not in uid]
        iid = {v: j for j, v in enumerate(items)}
        rows, cols, w = [], [], []
        for a, b, data in G.edges(data=True):
            if a in uid and b in iid:
                u, i = uid[a], iid[b]
            elif b in uid and a in iid:
                u, i = uid[b], iid[a]
            else:
                side = "users" if a in uid else "items"
                raise ValueError(f"edge ({a!r}, {b!r}) joins two {side}; the graph must be "
                                 "bipartite between user_nodes and the other nodes")
            rows.append(u)
            cols.append(i)
            if weight is not None:
                w.append(data.get(weight, 1.0))
        graph = cls(np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64),
                    len(users), len(items), weights=w if weight is not None else None)
        return graph, users, items

    def to_networkx(self, users=None, items=None):
        """The graph as a ``networkx.Graph``: nodes ``("user", u)`` and ``("item", i)`` (or
        the labels given, one per id), attribute ``bipartite`` 0 for users and 1 for items,
        edge attribute ``weight``.

        Example:
            >>> G = InteractionGraph([0, 1], [1, 0]).to_networkx()
            >>> sorted(G.edges())
            [(('user', 0), ('item', 1)), (('user', 1), ('item', 0))]
        """
        import networkx as nx
        users = [("user", u) for u in range(self.n_users)] if users is None else list(users)
        items = [("item", i) for i in range(self.n_items)] if items is None else list(items)
        if len(users) != self.n_users or len(items) != self.n_items:
            raise ValueError(f"expected {self.n_users} user and {self.n_items} item labels, got "
                             f"{len(users)} and {len(items)}")
        G = nx.Graph()
        G.add_nodes_from(users, bipartite=0)
        G.add_nodes_from(items, bipartite=1)
        coo = self._R.tocoo()
        G.add_weighted_edges_from((users[u], items[i], float(x))
                                  for u, i, x in zip(coo.row, coo.col, coo.data))
        return G

    def interaction_matrix(self) -> sp.csr_matrix:
        """``R`` as a scipy CSR matrix ``[n_users, n_items]`` (float64, merged weights)."""
        return self._R

    def edges(self) -> Tuple[np.ndarray, np.ndarray]:
        """The distinct interactions as ``(user_ids [E], item_ids [E])``, sorted by user."""
        coo = self._R.tocoo()
        return coo.row.astype(np.int64), coo.col.astype(np.int64)

    @property
    def user_degrees(self) -> np.ndarray:
        """``[n_users]`` weighted degrees."""
        return np.asarray(self._R.sum(axis=1)).ravel()

    @property
    def item_degrees(self) -> np.ndarray:
        """``[n_items]`` weighted degrees."""
        return np.asarray(self._R.sum(axis=0)).ravel()

    @property
    def degrees(self) -> np.ndarray:
        """``[N]`` weighted node degrees, users first."""
        return np.concatenate([self.user_degrees, self.item_degrees])

    # -- normalised matrices (scipy, float64) -----------------------------------------
    @staticmethod
    def _inv_sqrt(d: np.ndarray) -> np.ndarray:
        out = np.zeros_like(d)
        nz = d > 0
        out[nz] = 1.0 / np.sqrt(d[nz])
        return out

    def normalized_bipartite_scipy(self) -> sp.csr_matrix:
        """``R̃ = D_u^{-1/2} R D_i^{-1/2}`` as scipy CSR ``[n_users, n_items]`` (float64)."""
        key = ("rtilde_scipy",)
        if key not in self._cache:
            du = self._inv_sqrt(self.user_degrees)
            di = self._inv_sqrt(self.item_degrees)
            r = self._R.tocsr(copy=True)
            r.data *= np.repeat(du, np.diff(r.indptr)) * di[r.indices]
            self._cache[key] = r
        return self._cache[key]

    def normalized_adjacency_scipy(self) -> sp.csr_matrix:
        """``Â`` as scipy CSR ``[N, N]`` (float64)."""
        key = ("ahat_scipy",)
        if key not in self._cache:
            rt = self.normalized_bipartite_scipy()
            self._cache[key] = sp.bmat([[None, rt], [rt.T, None]], format="csr",
                                       dtype=np.float64)
            self._cache[key].sort_indices()
        return self._cache[key]

    # -- operators (torch) -------------------------------------------------------------
    def _operator(self, kind: str, dtype: torch.dtype, device: Device) -> Operator:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        key = (kind, dtype, dev)
        if key not in self._cache:
            if kind == "adjacency":
                m = csr_tensor(self.normalized_adjacency_scipy(), dtype, dev)
                self._cache[key] = Operator(m, symmetric=True)
            else:
                rt = self.normalized_bipartite_scipy()
                self._cache[key] = Operator(csr_tensor(rt, dtype, dev),
                                            transpose=csr_tensor(rt.T, dtype, dev))
        return self._cache[key]

    def adjacency(self, dtype: torch.dtype = torch.float32, device: Device = None) -> Operator:
        """The normalised adjacency ``Â`` ``[N, N]``, spectrum in [-1, 1]."""
        return self._operator("adjacency", dtype, device)

    def laplacian(self, dtype: torch.dtype = torch.float32, device: Device = None) -> Operator:
        """The normalised Laplacian ``L = I - Â`` ``[N, N]``, spectrum in [0, 2]."""
        a = self._operator("adjacency", dtype, device)
        return Operator(a.matrix, scale=-1.0, shift=1.0, symmetric=True)

    def scaled_laplacian(self, delta: float = 0.01, dtype: torch.dtype = torch.float32,
                         device: Device = None) -> Operator:
        """``L̃ = (L - I) / (1 + δ) = -Â / (1 + δ)`` ``[N, N]``, spectrum inside [-1, 1].

        Args:
            delta: padding of the spectral interval, ``δ ≥ 0``.
        """
        if not (delta >= 0.0 and np.isfinite(delta)):
            raise ValueError(f"delta must be a finite number >= 0, got {delta}")
        a = self._operator("adjacency", dtype, device)
        return Operator(a.matrix, scale=-1.0 / (1.0 + delta), symmetric=True)

    def bipartite(self, dtype: torch.dtype = torch.float32, device: Device = None) -> Operator:
        """The normalised bipartite block ``R̃`` ``[n_users, n_items]``; ``.T`` is ``R̃^T``."""
        return self._operator("bipartite", dtype, device)

    # -- signals -----------------------------------------------------------------------
    def trivial_vector(self, dtype: torch.dtype = torch.float32, device: Device = None) -> torch.Tensor:
        """The unit vector ``D^{1/2} 1 / ||D^{1/2} 1||`` ``[N]``: L's eigenvector at λ = 0."""
        v = np.sqrt(self.degrees)
        v /= np.linalg.norm(v)
        return torch.from_numpy(v).to(dtype=dtype, device=device)

    def user_mean(self, item_features: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
        """Each user's mean of its training items' features.

        Args:
            item_features: ``[n_items, d]``.

        Returns:
            ``[n_users, d]`` tensor (zeros for users without items), same dtype and device
            as a tensor input (float32 for numpy float32, float64 for float64).
        """
        x = torch.as_tensor(item_features)
        if x.dim() != 2 or x.shape[0] != self.n_items:
            raise ValueError(f"item_features must be [n_items={self.n_items}, d], "
                             f"got {tuple(x.shape)}")
        deg = self.user_degrees
        inv = np.where(deg > 0, 1.0 / np.maximum(deg, 1e-300), 0.0)
        r = sp.diags(inv) @ self._R
        op = Operator(csr_tensor(r, x.dtype if x.dtype.is_floating_point else torch.float32,
                                 x.device))
        return op @ x.to(op.dtype)

    def node_signal(self, item_features: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
        """The graph signal of an item modality: ``[N, d]``, user means first, then items."""
        x = torch.as_tensor(item_features)
        users = self.user_mean(x)
        return torch.cat([users, x.to(users.dtype)], dim=0)
