"""Band features for training at scale, computed once and stored (DESIGN.md §3).

Filters are linear and commute with a learnable projection, ``h_b(L)(X W) = (h_b(L) X) W``,
so the band signals of every modality are computed once, written to a
:class:`~ssr_engine.train.store.BandStore`, and a training step only reads rows of them:

* **content modalities** — item features reduced to ``d0`` columns (PCA with a fixed sign
  convention, or a fixed random projection), lifted to the graph (users: mean of their
  training items, :meth:`~ssr_engine.InteractionGraph.node_signal`) and scaled to unit RMS;
* **the ID modality** — its eigenbasis (:func:`~ssr_engine.nn.sources.id_basis`: the ``k``
  lowest and ``k`` highest eigenpairs of ``L`` from one partial SVD of ``R̃``, or the full
  basis on small graphs), stored as rows ``[N, K]`` with the eigenvalues in the metadata.
  The model learns spectral coefficients on it plus a free per-node residual for the
  spectrum it does not cover (:class:`~ssr_engine.nn.SpectralIDBands`), exactly as in
  memory; a step reads its batch's basis rows (``O(n·K·d)``).

Band methods (``approx``): ``"chebyshev"`` — Jackson-damped Chebyshev filters whose edges
balance the energy of a probe of the content signals, found from KPM moments of the same
recurrence (no eigenvectors; ``K`` sparse products per column block; works row-partitioned
across processes with the halo exchange of :class:`~ssr_engine.PartitionedOperator`);
``"exact"`` and ``"eigen"`` — :class:`~ssr_engine.SpectralBands` with the full or a partial
eigenbasis (one process). :func:`check_feasible` refuses, before any work, a graph too large
for the chosen method, with the estimate and the alternative.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .. import ops
from ..distributed import collective
from ..graph import InteractionGraph
from ..graph.partition import PartitionedOperator
from ..nn.sources import PROBE_COLS, id_basis, id_basis_k, reduce_features, white_probe
from ..spectral import SpectralBands
from ..spectral.bands import (AUTO_EXACT_ENTRIES, ORDER_SHARE_TOL, auto_orders,
                              chebyshev_plan, exact_memory_estimate)
from ..spectral.edges import band_energies
from .store import BandStore, BandWriter, key_diff, store_nbytes

__all__ = ["APPROX", "BandPlan", "Estimate", "check_feasible", "estimate_cost",
           "precompute_bands", "resolve_approx", "kept_plan"]

APPROX = ("auto", "exact", "eigen", "lobpcg", "chebyshev")
#: the largest smaller side for which "auto" picks "exact" (SpectralBands' dense-SVD route).
EXACT_MAX = 8000
# Rough machine rates for the estimates (a 2-core CPU; a GPU is far faster).
_SPMM_NNZ_COLS_PER_S = 1.0e9
_DENSE_FLOPS = 1.0e10


def resolve_approx(approx: str, n_users: int, n_items: int) -> str:
    """``"auto"`` -> ``"exact"`` on small graphs (as :class:`~ssr_engine.SpectralBands`), else
    ``"chebyshev"``; other values are checked and returned."""
    if approx not in APPROX:
        raise ValueError(f"approx must be one of {APPROX}, got {approx!r}")
    if approx != "auto":
        return approx
    small = n_users * n_items <= AUTO_EXACT_ENTRIES and min(n_users, n_items) <= EXACT_MAX
    return "exact" if small else "chebyshev"


@dataclass
class Estimate:
    """What precomputing the bands will take (rough; for refusing hopeless runs up front).

    Attributes:
        approx: the band method.
        memory_bytes: peak working memory of the band computation (the larger of the
            content bands' and the ID basis').
        seconds: time on a 2-core CPU (order of magnitude), content bands plus ID basis.
        store_bytes: disk size of the band store.
        detail: how the figures were obtained.
    """

    approx: str
    memory_bytes: float
    seconds: float
    store_bytes: int
    detail: str

    def __str__(self) -> str:
        return (f"--approx {self.approx}: ~{self.memory_bytes / 1e9:.3g} GB of memory, "
                f"~{_duration(self.seconds)} on a 2-core CPU, {self.store_bytes / 1e9:.3g} GB "
                f"band store ({self.detail})")


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.0f} days"


def estimate_cost(approx: str, n_users: int, n_items: int, n_edges: int, widths: int,
                  n_bands: int = 4, order: Optional[int] = None, k: Optional[int] = None,
                  store_dtype: str = "float32", id_k: Optional[int] = None) -> Estimate:
    """Estimate memory and time of the band precompute.

    Args:
        approx: ``"exact"``, ``"eigen"``, ``"lobpcg"`` or ``"chebyshev"`` (resolve ``"auto"``
            first).
        n_users, n_items, n_edges: graph size (training interactions).
        widths: total content feature columns over all modalities.
        n_bands: ``M``.
        order: Chebyshev order (default: the largest automatic one).
        k: eigenpairs per end for ``"eigen"``.
        store_dtype: storage dtype of the band store.
        id_k: eigenpairs per end of the ID basis (default:
            :func:`~ssr_engine.nn.sources.default_id_basis`).

    Returns:
        An :class:`Estimate`.
    """
    content = _content_cost(approx, n_users, n_items, n_edges, widths, n_bands, order, k)
    N = n_users + n_items
    K, mem, secs, what = _id_basis_cost(N, 2 * n_edges, id_k)
    store = store_nbytes(N, n_bands, {"all": widths}, store_dtype, K)
    return Estimate(approx, max(content.memory_bytes, mem), content.seconds + secs, store,
                    f"{content.detail}; {what}")


def _id_basis_cost(N: int, nnz: int, id_k: Optional[int]) -> Tuple[int, float, float, str]:
    """``(K, memory, seconds, detail)`` of the ID basis (measured on 2 cores: 24 s and 3.5 GB
    for k = 256 at 180k nodes and 3.8M nonzeros; 35 s and 6.1 GB for k = 64 at 1.5M nodes)."""
    k = id_basis_k(N, id_k)
    if k is None:
        return N, 8.0 * N * N * 3, 4.0 * N ** 3 / _DENSE_FLOPS, f"full ID basis ({N} vectors)"
    mem = 60.0 * N * k + 12.0 * nnz
    secs = 2.5e-8 * nnz * k + 1e-9 * N * k * k
    return 2 * k, mem, secs, f"ID basis of {2 * k} eigenvectors"


def _content_cost(approx: str, n_users: int, n_items: int, n_edges: int, widths: int,
                  n_bands: int, order: Optional[int], k: Optional[int]) -> Estimate:
    """Memory and time of the content bands (``store_bytes`` left 0)."""
    N = n_users + n_items
    store = 0
    nnz = 2 * n_edges
    if approx == "exact":
        small, large = sorted((n_users, n_items))
        mem, route = exact_memory_estimate(n_users, n_items, EXACT_MAX)
        mem += 8.0 * N * widths
        if route == "svd":
            secs = 4.0 * small * small * large / _DENSE_FLOPS
            what = f"dense SVD of the {n_users}x{n_items} bipartite block"
        else:       # syevr of the s x s Gram matrix: 28 min for s = 23 033 on 2 shared cores
            secs = 1.4 * small ** 3 / _DENSE_FLOPS
            what = f"dense eigendecomposition of the {small}x{small} Gram matrix"
        return Estimate(approx, mem, secs, store, what)
    if approx in ("eigen", "lobpcg"):
        k = k or 64
        mem = 8.0 * N * 2 * k * 3 + 12.0 * nnz
        secs = 200 * k * nnz / _SPMM_NNZ_COLS_PER_S
        return Estimate(approx, mem, secs, store,
                        f"{2 * k} eigenvectors of L by Lanczos on the smaller side")
    K = order or max(auto_orders(nnz, widths + PROBE_COLS))
    chunk = 32
    mem = 12.0 * nnz + 4.0 * N * chunk * (3 + n_bands) + 4.0 * N * widths
    secs = K * nnz * (widths + PROBE_COLS) / _SPMM_NNZ_COLS_PER_S
    return Estimate(approx, mem, secs, store,
                    f"{K} sparse products with {widths + PROBE_COLS} columns")


def _available_memory() -> float:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


def check_feasible(approx: str, n_users: int, n_items: int, n_edges: int, widths: int,
                   n_bands: int = 4, order: Optional[int] = None, k: Optional[int] = None,
                   memory: Optional[float] = None, max_seconds: float = 86400.0,
                   store_dtype: str = "float32", id_k: Optional[int] = None) -> Estimate:
    """Refuse, before any work, a graph too large for ``approx``; return the estimate.

    Args:
        approx: the band method (``"auto"`` is resolved first).
        n_users, n_items, n_edges, widths, n_bands, order, k, store_dtype, id_k: see
            :func:`estimate_cost`.
        memory: bytes available (default: ``MemAvailable`` of ``/proc/meminfo``).
        max_seconds: longest acceptable precompute.

    Returns:
        The :class:`Estimate` of the accepted method.

    Raises:
        ValueError: naming the estimate (memory, time), what is available and the
            alternative (``--approx chebyshev`` and its own estimate).

    Example:
        >>> check_feasible("chebyshev", 1000, 500, 20000, widths=96).approx
        'chebyshev'
    """
    approx = resolve_approx(approx, n_users, n_items)
    est = estimate_cost(approx, n_users, n_items, n_edges, widths, n_bands, order, k, store_dtype,
                        id_k)
    memory = _available_memory() if memory is None else float(memory)
    reasons = []
    if est.memory_bytes > memory:
        reasons.append(f"{memory / 1e9:.3g} GB of memory is available")
    if est.seconds > max_seconds:
        reasons.append(f"that is more than the {_duration(max_seconds)} allowed")
    if reasons:
        if approx == "chebyshev":
            advice = ("Lower --d0, --n-bands or --id-basis, or run on a machine with more "
                      "memory (--distributed splits the content rows over processes)")
        else:
            advice = "Use instead " + str(estimate_cost(
                "chebyshev", n_users, n_items, n_edges, widths, n_bands, None,
                store_dtype=store_dtype, id_k=id_k))
        raise ValueError(f"a graph of {n_users} users x {n_items} items ({n_edges} training "
                         f"interactions) is too large for {est}: " + "; ".join(reasons)
                         + f". {advice}")
    return est


# -- signals -----------------------------------------------------------------------------------
def _node_rows(graph: InteractionGraph, items: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Rows ``lo … hi-1`` of ``graph.node_signal(items)`` (users: mean of their items)."""
    n_u = graph.n_users
    parts = []
    if lo < n_u:
        R = graph.interaction_matrix()[lo:min(hi, n_u)]
        deg = np.asarray(R.sum(axis=1)).ravel()
        R = sp.diags(np.where(deg > 0, 1.0 / np.maximum(deg, 1e-300), 0.0)) @ R
        parts.append(torch.from_numpy(np.asarray(R @ items.numpy())))
    if hi > n_u:
        parts.append(items[max(lo, n_u) - n_u:hi - n_u])
    return torch.cat(parts).to(torch.float64)


class _Rows:
    """The rows ``lo … hi-1`` this process works on, and sums over all processes."""

    def __init__(self, lo: int, hi: int, op: Optional[PartitionedOperator] = None):
        self.lo, self.hi, self.op = lo, hi, op

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.op is None else self.op.global_sum(t)

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> float:
        return float(self.sum(torch.dot(a.reshape(-1).double(), b.reshape(-1).double())))


def _unit_rms(x: torch.Tensor, rows: _Rows, n_nodes: int) -> torch.Tensor:
    ms = float(rows.sum(x.pow(2).sum())) / (n_nodes * x.shape[1])
    return x / max(math.sqrt(ms), 1e-12)


# -- the band plan -----------------------------------------------------------------------------
@dataclass
class BandPlan:
    """How the bands were computed (stored in the band store's ``meta.json``).

    Attributes:
        method: ``"chebyshev"``, ``"exact"`` or ``"eigen"``.
        n_bands: ``M``.
        edges: ``[M + 1]`` band edges in ``λ``.
        order: Chebyshev order ``K`` (``"chebyshev"``).
        coeffs: ``[M, K]`` damped coefficients applied (``"chebyshev"``).
        shares: each band's share of the probe's energy.
        atoms: ``[(λ, fraction)]`` point masses of the probe's energy.
        delta: spectral padding of ``L̃``.
        kept: the edges (and order) were kept from an earlier plan (:func:`kept_plan`).
    """

    method: str
    n_bands: int
    edges: List[float]
    order: Optional[int] = None
    coeffs: Optional[List[List[float]]] = None
    shares: Optional[List[float]] = None
    atoms: List[Tuple[float, float]] = field(default_factory=list)
    delta: float = 0.01
    kept: bool = False

    def to_dict(self) -> Dict:
        return asdict(self)


def band_plan(moments: np.ndarray, n_bands: int, orders, delta: float) -> BandPlan:
    """The stored :class:`BandPlan` of :func:`~ssr_engine.spectral.bands.chebyshev_plan`
    (the order rule of ``SpectralBands(method="chebyshev")``), with edges in ``λ``."""
    plan = chebyshev_plan(moments, n_bands, orders)
    lam = lambda t: min(2.0, max(0.0, 1.0 + (1.0 + delta) * float(t)))
    edges = [lam(t) for t in plan.t_edges]
    edges[0], edges[-1] = 0.0, 2.0
    return BandPlan("chebyshev", int(n_bands), edges, plan.order,
                    np.asarray(plan.coeffs).tolist(), [float(s) for s in plan.shares],
                    [(lam(a.t), float(a.fraction)) for a in plan.atoms], delta)


def kept_plan(moments: np.ndarray, old: BandPlan, n_bands: int, delta: float
              ) -> Tuple[Optional[BandPlan], float]:
    """``old``'s edges, order and filters for a graph whose spectrum has not moved, else None.

    The test: the new probe's energy shares under ``old``'s filters (from the new graph's
    moments) lie within ``ORDER_SHARE_TOL / M`` of ``old``'s shares — the tolerance within
    which the order rule calls two plans the same. Then the bands of the grown graph cover
    the same frequency ranges with the same balance, and keeping the edges keeps band ``b``
    meaning what it meant to the trained model (on an ID-only bipartite graph a fresh plan
    may otherwise put two bands on the other side of the ``λ = 1`` atom).

    Returns:
        ``(plan or None, the largest share difference)``.

    Example:
        >>> mom = np.r_[1.0, np.zeros(63)]                 # a flat spectrum
        >>> old = band_plan(mom, 2, (32,), 0.01)
        >>> kept_plan(mom, old, 2, 0.01)[0].kept
        True
    """
    if (old.method != "chebyshev" or old.order is None or old.n_bands != n_bands
            or old.delta != delta or len(moments) < 2 * old.order or old.shares is None):
        return None, float("inf")
    E = np.asarray(band_energies(np.asarray(moments)[:2 * old.order], np.asarray(old.coeffs)),
                   dtype=np.float64)
    shares = E / E.sum()
    moved = float(np.abs(shares - np.asarray(old.shares)).max())
    if moved > ORDER_SHARE_TOL / n_bands:
        return None, moved
    return BandPlan(old.method, n_bands, list(old.edges), old.order, old.coeffs,
                    [float(x) for x in shares], list(old.atoms), delta, kept=True), moved


def _moments(op, x: torch.Tensor, K: int, rows: _Rows, tick: Callable[[], None]) -> np.ndarray:
    """``μ_k = ⟨x, T_k(op) x⟩`` for ``k < 2K`` from ``K`` products (doubling identities);
    ``op`` may be row-partitioned (inner products summed over the processes)."""
    prev, cur = x, op @ x
    tick()
    mu = [rows.dot(prev, prev), rows.dot(prev, cur)]
    for _ in range(1, K):
        nxt = (op @ cur).mul_(2.0).sub_(prev)
        tick()
        mu += [2.0 * rows.dot(cur, cur) - mu[0], 2.0 * rows.dot(nxt, cur) - mu[1]]
        prev, cur = cur, nxt
    return np.asarray(mu, dtype=np.float64)


class _Ticking:
    """``op @ x`` that advances a progress bar (for the row-partitioned recurrence)."""

    def __init__(self, op, bar):
        self.op, self.bar = op, bar

    def __matmul__(self, x):
        y = self.op @ x
        self.bar.update(1)
        return y


def features_key(features: Mapping[str, np.ndarray]) -> Dict:
    """The part of a band store's key that identifies the item features (shape and CRC-32
    of each modality)."""
    return {name: [list(np.shape(f)), zlib.crc32(np.ascontiguousarray(f, np.float32).tobytes())]
            for name, f in features.items()}


def _store_key(graph: InteractionGraph, features: Mapping[str, np.ndarray], approx: str,
               n_bands: int, order, k, d0: int, reduce: str, seed: int, delta: float,
               dtype: str, compute_dtype: torch.dtype, id_k: Optional[int]) -> Dict:
    R = graph.interaction_matrix()
    crc = zlib.crc32(R.indptr.astype(np.int64).tobytes())
    crc = zlib.crc32(R.indices.astype(np.int64).tobytes(), crc)
    return {"graph": [graph.n_users, graph.n_items, int(R.nnz), crc],
            "features": features_key(features),
            "approx": approx, "n_bands": n_bands, "order": order, "k": k, "d0": d0,
            "reduce": reduce, "seed": seed, "delta": delta, "dtype": dtype,
            "compute_dtype": str(compute_dtype).split(".")[-1],
            "id_basis": id_basis_k(graph.n_nodes, id_k) or "full"}


def precompute_bands(graph: InteractionGraph, features: Mapping[str, np.ndarray],
                     root: Union[str, Path], *, approx: str = "chebyshev", n_bands: int = 4,
                     order: Optional[int] = None, k: Optional[int] = None, d0: int = 64,
                     reduce: str = "pca", seed: int = 0, delta: float = 0.01,
                     store_dtype: str = "float32", compute_dtype: torch.dtype = torch.float32,
                     distributed: bool = False, quiet: bool = False,
                     chunk_bytes: int = 1 << 30, id_k: Optional[int] = None,
                     expect_key: Optional[Dict] = None, keep_edges: Optional[BandPlan] = None
                     ) -> Tuple[BandStore, BandPlan]:
    """Compute the band features of every modality once and store them (or reuse the store).

    All modalities share one set of band edges, balanced on a random probe of the content
    signals (a white probe when there are none), so band ``b`` is the same frequency range
    in every modality. The ID modality is stored as its eigenbasis (``basis``, eigenvalues in
    the metadata); ``store.source()`` is the band source of an :class:`~ssr_engine.SSRModel`.

    Args:
        graph: the training interaction graph.
        features: modality name -> ``[n_items, d_m]`` item features (may be empty).
        root: the band store folder. A complete store computed from the same inputs is
            reused without recomputing.
        approx: ``"auto"``, ``"exact"``, ``"eigen"`` (partial basis by Lanczos), ``"lobpcg"``
            (the same by LOBPCG) or ``"chebyshev"``.
        n_bands: ``M``.
        order: Chebyshev order ``K`` (default: the rule of
            :func:`~ssr_engine.spectral.bands.chebyshev_plan` over
            :func:`~ssr_engine.spectral.bands.auto_orders`).
        k: eigenpairs per end for ``"eigen"``.
        d0: width of the reduced content features.
        reduce: ``"pca"`` or ``"random"`` feature reduction.
        seed: seed of the white probe and of the random reduction.
        delta: spectral padding of ``L̃`` (``"chebyshev"``).
        store_dtype: ``"float32"`` or ``"float16"`` storage.
        compute_dtype: dtype of the filtering (float32 default, float64 on request).
        distributed: partition the rows over the default process group (``"chebyshev"``
            only): each process computes and writes its rows, the recurrence exchanges
            halos; every process must call this with the same arguments.
        quiet: no progress bars.
        chunk_bytes: bound on the ``[M, N, c]`` band block computed at once (columns are
            processed in chunks that fit it).
        id_k: eigenpairs per end of the ID basis (default:
            :func:`~ssr_engine.nn.sources.default_id_basis`; computed by process 0 alone).
        expect_key: the key of the store a checkpoint was trained on (resuming): other
            inputs are refused before anything is computed or written.
        keep_edges: the plan of an earlier store (``"chebyshev"``; an update of a grown
            graph): its edges are kept when :func:`kept_plan` finds that the spectrum has not
            moved, else new ones are placed (``plan.kept`` says which).

    Returns:
        ``(store, plan)``.

    Raises:
        ValueError: on bad arguments, ``distributed`` with a method other than
            ``"chebyshev"``, or inputs that differ from ``expect_key``.
        OSError: ``errno.ENOSPC`` when the store does not fit on the disk (before writing).

    Example:
        >>> import tempfile
        >>> from ssr_engine.data import synthetic_dataset
        >>> ds = synthetic_dataset(200, 100, 2000, modalities={"text": 8}, seed=0)
        >>> store, plan = precompute_bands(ds.train_graph(), ds.features, tempfile.mkdtemp(),
        ...                                n_bands=3, order=16, d0=8, quiet=True)
        >>> store.modalities, store.rows([0, 1])["text"].shape, store.basis_width
        (['text'], torch.Size([2, 3, 8]), 300)
    """
    approx = resolve_approx(approx, graph.n_users, graph.n_items)
    if n_bands < 1 or d0 < 1:
        raise ValueError(f"n_bands and d0 must be >= 1, got {n_bands}, {d0}")
    if order is not None and order < 2:
        raise ValueError(f"order must be >= 2, got {order}")
    if distributed and approx != "chebyshev":
        raise ValueError(f"the distributed band precompute supports approx='chebyshev' only, "
                         f"got {approx!r} (exact and eigen bases need the whole graph in one "
                         "process)")
    if "id" in features:
        raise ValueError("'id' names the ID modality; rename the content modality 'id'")
    key = _store_key(graph, features, approx, n_bands, order, k, d0, reduce, seed, delta,
                     store_dtype, compute_dtype, id_k)
    if keep_edges is not None and approx == "chebyshev":
        key["keep_edges"] = [list(keep_edges.edges), keep_edges.order]
    diff = key_diff(expect_key, key) if expect_key is not None else ""
    if diff:
        raise ValueError(f"these band settings differ from those of the store the checkpoint "
                         f"was trained on ({diff}); nothing was computed "
                         "or changed: resume with the checkpoint's settings, or start over "
                         "with --fresh")
    root = Path(root)
    rank = dist.get_rank() if distributed else 0
    N = graph.n_nodes
    op = None
    if distributed:
        op = PartitionedOperator.from_graph(graph, "scaled_laplacian", delta, dtype=compute_dtype)
        rows = _Rows(op.row_start, op.row_stop, op)
    else:
        rows = _Rows(0, N)
    # Reuse a complete store from the same inputs (rank 0 decides for everyone).
    found = [BandStore.open_if_valid(root, key) is not None if rank == 0 else None]
    if distributed:
        with collective("band store check"):
            dist.broadcast_object_list(found, src=0)
    if found[0]:
        store = BandStore.open(root, key)
        return store, BandPlan(**store.meta["info"]["plan"])

    show = not quiet and rank == 0
    reduced = {name: reduce_features(f, d0, reduce, seed) for name, f in features.items()}
    dims = {name: int(x.shape[1]) for name, x in reduced.items()}
    per_end = id_basis_k(N, id_k)
    id_width = N if per_end is None else 2 * per_end

    def signal(name: str) -> torch.Tensor:
        x = _node_rows(graph, reduced[name], rows.lo, rows.hi)
        return _unit_rms(x, rows, N).to(compute_dtype)

    # 1. the band plan.
    if approx == "chebyshev":
        L = op if distributed else graph.scaled_laplacian(delta, dtype=compute_dtype)
        orders = (order,) if order is not None else \
            auto_orders(2 * graph.n_edges, sum(dims.values()) + PROBE_COLS)
        probe = _probe(graph, reduced, rows, signal, seed, compute_dtype)
        with tqdm(total=max(orders), desc="KPM moments", unit="product", disable=not show,
                  dynamic_ncols=True) as bar:
            mom = _moments(L, probe, max(orders), rows, lambda: bar.update(1))
        plan = band_plan(mom, n_bands, orders, delta)
        if keep_edges is not None:
            plan = kept_plan(mom, keep_edges, n_bands, delta)[0] or plan
        sb = None
    else:
        method, solver = ("eigen", "lobpcg") if approx == "lobpcg" else (approx, "auto")
        sb = SpectralBands(graph, n_bands=n_bands, method=method, k=k, dtype=torch.float64,
                           solver=solver)
        full = torch.cat([signal(n) for n in reduced], dim=1) if reduced else \
            white_probe(0, N, seed).double()
        if show:
            print(f"[bands] {approx} eigenbasis and edges ...", flush=True)
        sb.fit(full)
        del full
        plan = BandPlan(approx, n_bands, [float(e) for e in sb.edges], None, None,
                        [float(s) for s in sb.shares_],
                        [(float(a.lam), float(a.fraction)) for a in sb.atoms_])

    # 2. the store: rank 0 creates (space check + reservation), the others attach.
    err = [None]
    writer = None
    if rank == 0:
        try:
            writer = BandWriter.create(root, N, n_bands, dims, key, store_dtype, id_width)
        except OSError as e:
            err = [e]
    if distributed:
        with collective("band store creation"):
            dist.broadcast_object_list(err, src=0)
    if err[0] is not None:
        raise err[0]
    if writer is None:
        writer = BandWriter.attach(root)

    # 3. band signals, column chunks at a time.
    n_rows = rows.hi - rows.lo
    cols = max(1, int(chunk_bytes // (4 * n_bands * max(1, n_rows))))
    chunks = []
    for name, d in dims.items():
        width = -(-d // -(-d // cols))                  # even split into ceil(d / cols) parts
        chunks += [(name, lo, min(lo + width, d)) for lo in range(0, d, width)]
    K = plan.order or 1
    with tqdm(total=len(chunks) * (K - 1 if approx == "chebyshev" else 1),
              desc="band features", unit="product" if approx == "chebyshev" else "block",
              disable=not show, dynamic_ncols=True) as bar:
        for name in dims:
            x = signal(name)
            for _, lo, hi in [c for c in chunks if c[0] == name]:
                xc = x[:, lo:hi].contiguous()
                if approx == "chebyshev":
                    coeffs = torch.tensor(plan.coeffs, dtype=torch.float64)
                    if distributed:
                        bands = ops.chebyshev_bands(_Ticking(op, bar), xc, coeffs)
                    else:
                        bands = ops.chebyshev_bands(L, xc, coeffs)
                        bar.update(K - 1)
                else:
                    bands = sb.transform(xc.double()).float()
                    bar.update(1)
                writer.write(name, bands, rows.lo, slice(lo, hi))
                del bands
            del x
    # 4. the ID basis (process 0; one partial SVD of the smaller side's R̃).
    info = {"plan": plan.to_dict()}
    if rank == 0:
        if show:
            what = "full" if per_end is None else f"{per_end} lowest + {per_end} highest"
            print(f"[bands] ID basis: {what} eigenpairs of L ...", flush=True)
        lam, U, partial = id_basis(graph, id_k, progress=show)
        writer.write_basis(U)
        info["id"] = {"eigenvalues": [float(x) for x in lam], "partial": partial,
                      "crc32": writer.basis_crc32()}
        del U
    writer.flush()
    if distributed:
        with collective("band store barrier"):
            dist.barrier()
    if rank == 0:
        store = writer.commit(info)
    if distributed:
        with collective("band store commit"):
            dist.barrier()
        store = BandStore.open(root, key)
    return store, plan


def _probe(graph: InteractionGraph, reduced: Mapping[str, torch.Tensor], rows: _Rows,
           signal: Callable[[str], torch.Tensor], seed: int, dtype: torch.dtype) -> torch.Tensor:
    """``[n_rows, PROBE_COLS]`` random mixture of the centred content signals.

    With ``G`` Gaussian ``[Σ d_m, c] / sqrt(c)``, ``E[G Gᵀ] = I``, so the moments of ``X G``
    estimate those of ``X`` from ``c`` columns. Without content: a white probe.
    """
    if not reduced:
        x = white_probe(rows.lo, rows.hi, seed).double()
    else:
        width = sum(int(r.shape[1]) for r in reduced.values())
        g = torch.from_numpy(np.random.default_rng([int(seed), 0x9B]).standard_normal(
            (width, PROBE_COLS)) / math.sqrt(PROBE_COLS))
        x, at = 0.0, 0
        for name, r in reduced.items():               # one modality in memory at a time
            x = x + signal(name).double() @ g[at:at + r.shape[1]]
            at += int(r.shape[1])
    v = torch.from_numpy(np.sqrt(graph.degrees[rows.lo:rows.hi]))
    vnorm2 = float(rows.sum(v.pow(2).sum()))
    v = v / math.sqrt(vnorm2)
    coef = rows.sum(v @ x.double())                  # [c]: the trivial component
    return (x - torch.outer(v, coef)).to(dtype)
