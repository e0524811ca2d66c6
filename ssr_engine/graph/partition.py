"""A row-partitioned sparse operator with halo exchange (DESIGN.md §3, "Beyond one machine").

Rank ``p`` of a ``torch.distributed`` group owns the contiguous rows ``[b_p, b_{p+1})`` of a
square sparse matrix ``M`` ``[N, N]`` (bounds balanced by nonzeros) and the same rows of
every signal block. ``y = scale * (M @ x) + shift * x`` is computed block-locally:
``M``'s local rows split into the *interior* columns (owned here) and the *halo* columns
(owned by other ranks). Before each product the rank sends the rows of its block that
other ranks' halos need and receives its own halo rows, in one ``all_to_all_single`` over
precomputed send/receive lists (gloo on the CPU and NCCL on GPUs both support it); the
interior product runs while the exchange is in flight. Inner products go through
``all_reduce`` (:meth:`PartitionedOperator.dot`, :meth:`~PartitionedOperator.gram`), so
Chebyshev recurrences, KPM moments and norms run on the local blocks unchanged:
``ssr_engine.ops.chebyshev_bands_reference(op, X_local, coeffs)`` gives the local rows of
the single-process band features.

Memory per rank is its rows of ``M`` plus its halo rows of the signal; the halo plan is
built collectively from the local rows alone (:class:`PartitionedOperator` itself), or
from an :class:`~ssr_engine.graph.InteractionGraph` or a global matrix that every rank
holds (:meth:`~PartitionedOperator.from_graph`, :meth:`~PartitionedOperator.from_global`).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist

from ..distributed import collective
from .interaction import InteractionGraph
from .operators import Operator, csr_tensor

__all__ = ["PartitionedOperator", "balanced_row_bounds"]

Device = Union[str, torch.device, None]

_KINDS = ("adjacency", "laplacian", "scaled_laplacian")


def balanced_row_bounds(row_nnz, parts: int) -> np.ndarray:
    """Split rows into ``parts`` contiguous, non-empty blocks of about equal work.

    A row costs its nonzeros plus one (the identity shift and the copy of its signal row),
    so zero rows are not free.

    Args:
        row_nnz: ``[N]`` nonzeros per row.
        parts: number of blocks, ``1 <= parts <= N``.

    Returns:
        ``[parts + 1]`` int64 bounds ``0 = b_0 < b_1 < ... < b_parts = N``; block ``p``
        holds rows ``b_p .. b_{p+1} - 1``.

    Example:
        >>> balanced_row_bounds([3, 0, 0, 3, 1, 1], 2).tolist()
        [0, 3, 6]
    """
    w = np.asarray(row_nnz, dtype=np.float64)
    if w.ndim != 1 or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError(f"row_nnz must be a 1-D array of counts >= 0, got shape {w.shape}")
    n = w.size
    if not 1 <= parts <= n:
        raise ValueError(f"cannot split {n} rows into {parts} non-empty blocks; "
                         f"use 1 <= parts <= {n}")
    cum = np.concatenate([[0.0], np.cumsum(w + 1.0)])
    targets = cum[-1] * np.arange(1, parts) / parts
    hi = np.clip(np.searchsorted(cum, targets), 1, n)
    # Of the two prefix ends around each target, take the nearer.
    inner = np.where(cum[hi] - targets <= targets - cum[hi - 1], hi, hi - 1)
    bounds = np.concatenate([[0], inner, [n]]).astype(np.int64)
    for p in range(1, parts):        # at least one row per block
        bounds[p] = max(bounds[p], bounds[p - 1] + 1)
    for p in range(parts - 1, 0, -1):
        bounds[p] = min(bounds[p], bounds[p + 1] - 1)
    return bounds


class PartitionedOperator:
    """``y = scale * (M @ x) + shift * x`` on row blocks distributed over a process group.

    Every rank of ``group`` constructs the operator collectively with its own rows of
    ``M``; afterwards ``op @ x_local`` (also collective: every rank calls it with the same
    ``B``) maps the rank's ``[n_local, B]`` block of ``x`` to its block of ``y``.

    Args:
        local_rows: ``[n_local, N]`` scipy sparse matrix: rows ``bounds[rank]`` to
            ``bounds[rank + 1] - 1`` of ``M``, with global column ids.
        bounds: ``[world_size + 1]`` increasing row bounds shared by all ranks
            (:func:`balanced_row_bounds`).
        scale: multiplies ``M @ x``.
        shift: multiplies the identity.
        group: the process group (default: the default group).
        dtype: value dtype (float32 default, float64 on request).
        device: device of the local blocks (default ``cuda:<current>`` under NCCL, else
            the CPU).

    Shapes:
        ``matmul``: ``[n_local]`` or ``[n_local, B]`` -> same; ``shape`` is the local
        ``(n_local, n_local)``, ``global_shape`` is ``(N, N)``.

    Example:
        >>> import torch, ssr_engine
        >>> from ssr_engine.distributed import free_port, init_distributed, shutdown_distributed
        >>> _ = init_distributed(0, 1, backend="gloo", master_port=free_port())
        >>> g = ssr_engine.InteractionGraph([0, 1, 1], [0, 0, 1])
        >>> op = ssr_engine.PartitionedOperator.from_graph(g, "laplacian", dtype=torch.float64)
        >>> x = op.scatter(g.trivial_vector(torch.float64))
        >>> round(float(op.norm(op @ x)), 12)
        0.0
        >>> shutdown_distributed()
    """

    def __init__(self, local_rows: sp.spmatrix, bounds, scale: float = 1.0, shift: float = 0.0,
                 group: Optional[dist.ProcessGroup] = None, dtype: torch.dtype = torch.float32,
                 device: Device = None):
        if not dist.is_initialized():
            raise RuntimeError("PartitionedOperator needs a torch.distributed process group; "
                               "call ssr_engine.distributed.init_distributed() first")
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        b = np.asarray(bounds, dtype=np.int64)
        if b.shape != (self.world_size + 1,) or b[0] != 0 or np.any(np.diff(b) <= 0):
            raise ValueError(f"bounds must be {self.world_size + 1} increasing row bounds "
                             f"starting at 0 (one non-empty block per rank), got {b.tolist()}")
        self.bounds = b
        self.row_start, self.row_stop = int(b[self.rank]), int(b[self.rank + 1])
        n, n_loc = int(b[-1]), self.row_stop - self.row_start
        if not sp.issparse(local_rows) or local_rows.shape != (n_loc, n):
            got = local_rows.shape if hasattr(local_rows, "shape") else type(local_rows).__name__
            raise ValueError(f"rank {self.rank} needs its rows {self.row_start}.."
                             f"{self.row_stop - 1} of M as a scipy sparse [{n_loc}, {n}] "
                             f"matrix, got {got}")
        if device is None:
            device = (torch.device("cuda", torch.cuda.current_device())
                      if dist.get_backend(group) == "nccl" else torch.device("cpu"))
        self.scale, self.shift = float(scale), float(shift)
        self._dtype, self._device = dtype, torch.device(device)
        self._build(sp.csr_matrix(local_rows, copy=True), n, n_loc)

    # -- construction ------------------------------------------------------------------
    def _build(self, rows: sp.csr_matrix, n: int, n_loc: int) -> None:
        rows.sum_duplicates()
        cols = rows.indices.astype(np.int64)
        own = (cols >= self.row_start) & (cols < self.row_stop)
        halo = np.unique(cols[~own])                     # sorted, hence grouped by owner
        owner = np.searchsorted(self.bounds, halo, side="right") - 1
        recv_counts = np.bincount(owner, minlength=self.world_size).astype(np.int64)
        # Ask every owner for our halo rows: counts first, then the global row ids.
        idx_dev = self._device  # NCCL moves only device tensors
        recv_t = torch.from_numpy(recv_counts).to(idx_dev)
        send_t = torch.empty_like(recv_t)
        with collective("halo plan (counts)", self.group):
            dist.all_to_all_single(send_t, recv_t, group=self.group)
        send_counts = send_t.cpu().numpy()
        wanted = torch.empty(int(send_counts.sum()), dtype=torch.int64, device=idx_dev)
        with collective("halo plan (row ids)", self.group):
            dist.all_to_all_single(wanted, torch.from_numpy(halo).to(idx_dev),
                                   send_counts.tolist(), recv_counts.tolist(), group=self.group)
        self._send_idx = wanted - self.row_start
        self._send_splits, self._recv_splits = send_counts.tolist(), recv_counts.tolist()
        self.n_halo = int(halo.size)
        # Local column ids: owned rows first, then the halo in receive order.
        local_cols = np.where(own, cols - self.row_start,
                              n_loc + np.searchsorted(halo, cols))
        m = sp.csr_matrix((rows.data, local_cols, rows.indptr), shape=(n_loc, n_loc + self.n_halo))
        self._interior = csr_tensor(m[:, :n_loc], self._dtype, self._device)
        self._boundary = (csr_tensor(m[:, n_loc:], self._dtype, self._device)
                          if self.n_halo else None)
        self.global_shape = (n, n)

    @classmethod
    def from_global(cls, matrix: Union[sp.spmatrix, Operator], group=None, *,
                    scale: float = 1.0, shift: float = 0.0, bounds=None,
                    dtype: Optional[torch.dtype] = None, device: Device = None
                    ) -> "PartitionedOperator":
        """Partition a square matrix that every rank holds (keeps only the local rows).

        Args:
            matrix: ``[N, N]`` scipy sparse matrix, or an :class:`~ssr_engine.Operator`
                whose own scale and shift are composed with ``scale`` and ``shift``.
            group: the process group (default: the default group).
            scale: multiplies ``matrix @ x``.
            shift: multiplies the identity.
            bounds: row bounds (default: :func:`balanced_row_bounds` on the row nonzeros).
            dtype: value dtype (default: the Operator's, else float32).
            device: see the class.

        Returns:
            The rank's :class:`PartitionedOperator`.
        """
        if isinstance(matrix, Operator):
            scale, shift = scale * matrix.scale, scale * matrix.shift + shift
            dtype = dtype or matrix.dtype
            matrix = matrix.to_scipy(unscaled=True)
        if not sp.issparse(matrix):
            raise TypeError(f"matrix must be a scipy sparse matrix or an ssr_engine.Operator, "
                            f"got {type(matrix).__name__}")
        if matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"a row-partitioned operator must be square, got {matrix.shape}")
        csr = sp.csr_matrix(matrix)
        if bounds is None:
            bounds = balanced_row_bounds(np.diff(csr.indptr), dist.get_world_size(group))
        r = dist.get_rank(group)
        rows = csr[int(bounds[r]):int(bounds[r + 1])]
        return cls(rows, bounds, scale, shift, group, dtype or torch.float32, device)

    @classmethod
    def from_graph(cls, graph: InteractionGraph, kind: str = "scaled_laplacian",
                   delta: float = 0.01, group=None, *, bounds=None,
                   dtype: torch.dtype = torch.float32, device: Device = None
                   ) -> "PartitionedOperator":
        """The graph's ``Â``, ``L = I - Â`` or ``L̃ = -Â / (1 + δ)``, partitioned by rows.

        Builds only this rank's rows of ``Â`` (from ``R̃`` and its transpose), never the
        global ``[N, N]`` matrix; scale and shift match ``graph.adjacency()``,
        ``graph.laplacian()`` and ``graph.scaled_laplacian(delta)``.

        Args:
            graph: the interaction graph (every rank holds it).
            kind: ``"adjacency"``, ``"laplacian"`` or ``"scaled_laplacian"``.
            delta: spectral padding of ``"scaled_laplacian"``, ``δ >= 0``.
            group: the process group (default: the default group).
            bounds: row bounds (default: balanced by the node degrees).
            dtype: value dtype.
            device: see the class.

        Returns:
            The rank's :class:`PartitionedOperator`.
        """
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        if not (delta >= 0.0 and np.isfinite(delta)):
            raise ValueError(f"delta must be a finite number >= 0, got {delta}")
        scale, shift = {"adjacency": (1.0, 0.0), "laplacian": (-1.0, 1.0),
                        "scaled_laplacian": (-1.0 / (1.0 + delta), 0.0)}[kind]
        rt = graph.normalized_bipartite_scipy()
        n_u, n = graph.n_users, graph.n_nodes
        if bounds is None:
            row_nnz = np.concatenate([np.diff(rt.indptr),
                                      np.bincount(rt.indices, minlength=graph.n_items)])
            bounds = balanced_row_bounds(row_nnz, dist.get_world_size(group))
        r = dist.get_rank(group)
        lo, hi = int(bounds[r]), int(bounds[r + 1])
        blocks = []
        if lo < n_u:                                     # user rows: [0, R̃]
            u = rt[lo:min(hi, n_u)]
            blocks.append(sp.csr_matrix((u.data, u.indices + n_u, u.indptr), shape=(u.shape[0], n)))
        if hi > n_u:                                     # item rows: [R̃ᵀ, 0]
            it = sp.csr_matrix(rt[:, max(lo, n_u) - n_u:hi - n_u].T)
            blocks.append(sp.csr_matrix((it.data, it.indices, it.indptr), shape=(it.shape[0], n)))
        return cls(sp.vstack(blocks, format="csr"), bounds, scale, shift, group, dtype, device)

    # -- description -------------------------------------------------------------------
    @property
    def n_local(self) -> int:
        return self.row_stop - self.row_start

    @property
    def shape(self) -> Tuple[int, int]:
        """The local map's shape ``(n_local, n_local)``."""
        return (self.n_local, self.n_local)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def nnz(self) -> int:
        """Nonzeros of this rank's rows."""
        return int(self._interior.values().numel()) + (
            int(self._boundary.values().numel()) if self._boundary is not None else 0)

    def __repr__(self) -> str:
        return (f"PartitionedOperator(rank={self.rank}/{self.world_size}, "
                f"rows={self.row_start}:{self.row_stop} of {self.global_shape[0]}, "
                f"halo={self.n_halo}, nnz={self.nnz}, scale={self.scale:g}, "
                f"shift={self.shift:g}, dtype={self.dtype}, device={self.device})")

    # -- products ----------------------------------------------------------------------
    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """Return this rank's rows of ``scale * M @ x + shift * x`` (collective).

        Args:
            x: ``[n_local]`` or ``[n_local, B]``: this rank's rows of the global block;
                ``B`` must be the same on every rank.

        Returns:
            Tensor of the same shape, in the operator's dtype, on its device.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch tensor, got {type(x).__name__}")
        if x.dim() not in (1, 2) or x.shape[0] != self.n_local:
            raise ValueError(f"rank {self.rank} owns {self.n_local} rows, got a block of shape "
                             f"{tuple(x.shape)}; expected [{self.n_local}] or [{self.n_local}, B]")
        vec = x.dim() == 1
        xt = x.reshape(self.n_local, -1).to(device=self.device, dtype=self.dtype).contiguous()
        width = xt.shape[1]
        if width == 0:
            y = xt.new_zeros(self.n_local, 0)
        else:
            send = xt.index_select(0, self._send_idx)
            halo = xt.new_empty(self.n_halo, width)
            with collective("halo exchange", self.group):
                work = dist.all_to_all_single(halo, send, self._recv_splits, self._send_splits,
                                              group=self.group, async_op=True)
            y = self._interior @ xt                      # overlaps the exchange
            with collective("halo exchange", self.group):
                work.wait()
            if self._boundary is not None:
                y.add_(self._boundary @ halo)
            if self.scale != 1.0:
                y.mul_(self.scale)
        if self.shift != 0.0:
            y.add_(xt, alpha=self.shift)
        return y[:, 0] if vec else y

    __matmul__ = matmul

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x)

    # -- reductions over the group -----------------------------------------------------
    def global_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of ``t`` over the ranks (collective; same shape on every rank).

        Args:
            t: any tensor, e.g. a partial sum over this rank's rows.

        Returns:
            A new tensor of ``t``'s shape holding the sum over all ranks.
        """
        out = t.detach().clone().contiguous()
        with collective("all_reduce", self.group):
            dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Global Frobenius inner product ``<a, b>`` of two row-partitioned blocks.

        Args:
            a: ``[n_local]`` or ``[n_local, B]``.
            b: same shape as ``a``.

        Returns:
            0-dim tensor, equal on every rank (e.g. the KPM moment ``<X, T_k X>_F``).
        """
        if a.shape != b.shape or a.shape[:1] != (self.n_local,):
            raise ValueError(f"dot needs two [{self.n_local}, ...] blocks of the same shape, "
                             f"got {tuple(a.shape)} and {tuple(b.shape)}")
        return self.global_sum(torch.sum(a * b))

    def norm(self, a: torch.Tensor) -> torch.Tensor:
        """Global Frobenius norm of a row-partitioned block (0-dim tensor)."""
        return self.dot(a, a).sqrt()

    def gram(self, a: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Global ``aᵀ b`` ``[Ba, Bb]`` of row-partitioned blocks (``b`` defaults to ``a``).

        Args:
            a: ``[n_local, Ba]``.
            b: ``[n_local, Bb]``.

        Returns:
            ``[Ba, Bb]``, equal on every rank (block orthogonalisation, Rayleigh–Ritz).
        """
        b = a if b is None else b
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != self.n_local or b.shape[0] != self.n_local:
            raise ValueError(f"gram needs [{self.n_local}, B] blocks, got {tuple(a.shape)} "
                             f"and {tuple(b.shape)}")
        return self.global_sum(a.T @ b)

    # -- moving signals ----------------------------------------------------------------
    def _global_rank(self, group_rank: int) -> int:
        return group_rank if self.group is None else dist.get_global_rank(self.group, group_rank)

    def scatter(self, x: Optional[torch.Tensor], src: Optional[int] = None,
                dim: int = 0) -> torch.Tensor:
        """This rank's rows of a global signal.

        Args:
            x: the global ``[..., N, ...]`` signal (``N`` at ``dim``). With ``src=None``
                every rank passes it and slices locally (no communication); with ``src``
                only that rank's ``x`` is read (others may pass None) and the rows are sent.
            src: the rank that holds ``x``, or None.
            dim: the row dimension.

        Returns:
            ``[..., n_local, ...]`` on the operator's device; in the operator's dtype
            when sent from ``src``, else in ``x``'s dtype.
        """
        n = self.global_shape[0]
        if src is None or self.rank == src:
            if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[dim] != n:
                raise ValueError(f"scatter needs the global signal with {n} rows at dim {dim}, "
                                 f"got {getattr(x, 'shape', type(x).__name__)}")
        if src is None:
            return x.narrow(dim, self.row_start, self.n_local).to(self.device)
        if not 0 <= src < self.world_size:
            raise ValueError(f"src must be a rank in [0, {self.world_size}), got {src}")
        meta = [None]
        if self.rank == src:
            meta = [(dim % x.dim(), tuple(x.shape))]
        with collective("scatter (shape)", self.group):
            dist.broadcast_object_list(meta, src=self._global_rank(src), group=self.group,
                                       device=self.device if self.device.type == "cuda" else None)
        d, shape = meta[0]
        pad = int(np.diff(self.bounds).max())
        rest = shape[:d] + shape[d + 1:]
        out = torch.empty((pad,) + rest, dtype=self.dtype, device=self.device)
        chunks = None
        if self.rank == src:
            rows = x.movedim(d, 0).to(device=self.device, dtype=self.dtype)
            chunks = []
            for p in range(self.world_size):
                c = rows.new_zeros((pad,) + rest)
                c[:self.bounds[p + 1] - self.bounds[p]] = rows[self.bounds[p]:self.bounds[p + 1]]
                chunks.append(c)
        with collective("scatter", self.group):
            dist.scatter(out, chunks, src=self._global_rank(src), group=self.group)
        return out[:self.n_local].movedim(0, d).contiguous()

    def gather(self, x: torch.Tensor, dst: Optional[int] = None,
               dim: int = 0) -> Optional[torch.Tensor]:
        """Assemble the global signal from every rank's rows (collective).

        Args:
            x: ``[..., n_local, ...]`` this rank's rows (``n_local`` at ``dim``); the other
                dimensions must agree across ranks.
            dst: the rank that receives the result, or None for all ranks.
            dim: the row dimension.

        Returns:
            ``[..., N, ...]`` on ``dst`` (every rank when ``dst`` is None), None elsewhere.
        """
        if x.dim() == 0 or x.shape[dim] != self.n_local:
            raise ValueError(f"rank {self.rank} owns {self.n_local} rows, got shape "
                             f"{tuple(x.shape)} with {x.shape[dim] if x.dim() else 0} at dim {dim}")
        if dst is not None and not 0 <= dst < self.world_size:
            raise ValueError(f"dst must be a rank in [0, {self.world_size}) or None, got {dst}")
        rows = x.movedim(dim, 0)
        pad = int(np.diff(self.bounds).max())
        buf = rows.new_zeros((pad,) + tuple(rows.shape[1:]))
        buf[:self.n_local] = rows
        parts = None if dst is not None and self.rank != dst else [torch.empty_like(buf)
                                                                  for _ in range(self.world_size)]
        with collective("gather", self.group):
            if dst is None:
                dist.all_gather(parts, buf, group=self.group)
            else:
                dist.gather(buf, parts, dst=self._global_rank(dst), group=self.group)
        if parts is None:
            return None
        sizes = np.diff(self.bounds)
        full = torch.cat([p[:int(s)] for p, s in zip(parts, sizes)], dim=0)
        return full.movedim(0, dim)
