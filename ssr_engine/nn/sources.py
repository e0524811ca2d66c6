"""Band sources: where the band slots of :class:`~ssr_engine.SSRModel` come from.

One model, whatever the graph size (DESIGN.md §3): the model's parameters and objective are
the same, only the source of its fixed inputs changes. A :class:`BandSource` holds

* the shared band edges (``[M + 1]`` in ``λ``) and a report of how they were found;
* per content modality the band signals of its reduced node signal — ``[M, N, d_m]`` tensors
  held in memory, or :class:`StoredRows` ``[N, M, d_m]`` read from a band store;
* the eigenbasis of the ID modality — ``[N, K]`` in memory or :class:`StoredRows` — with its
  ascending eigenvalues ``[K]``, and whether it is partial (then the model adds a free per-node
  residual for the spectrum it does not cover).

:func:`memory_source` computes all of it in memory; a band store on disk gives the same
content through ``BandStore.source()`` (``ssr_engine.train.store``), so that a training step
reads only its batch's rows. The ID basis is :func:`id_basis`'s in both cases.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from ..graph import InteractionGraph
from ..linalg import graph_eigs
from ..spectral import SpectralBands

__all__ = ["BandSource", "StoredRows", "memory_source", "id_basis", "id_basis_k",
           "default_id_basis", "white_probe", "PROBE_COLS",
           "reduce_features", "FULL_BASIS_MAX_NODES", "MAX_ID_BASIS"]

#: graphs up to this many nodes get the full eigenbasis for the ID modality by default.
FULL_BASIS_MAX_NODES = 6000
#: the most eigenpairs per end of the spectrum that the ID modality gets by default.
MAX_ID_BASIS = 256
#: columns of the white probe (ID-only graphs: its energy is the graph's spectral density).
PROBE_COLS = 16
#: rows per block of the white probe (fixed: its rows must not depend on the layout).
PROBE_BLOCK = 1 << 16
#: working memory of the bipartite partial eigensolver per node and eigenpair per end
#: (measured: 3.5 GB peak at 180k nodes and k = 256, 6.1 GB at 1.5M nodes and k = 64).
_EIGS_BYTES_PER_NODE_PAIR = 60.0
#: memory the default ID basis may take to compute.
_ID_BASIS_MEMORY = 6e9


def default_id_basis(n_nodes: int) -> Optional[int]:
    """Eigenpairs per end for the ID modality: ``None`` (full basis) up to
    ``FULL_BASIS_MAX_NODES`` nodes, else ``MAX_ID_BASIS`` halved until computing the basis
    fits about 6 GB (256 up to ~390k nodes, 64 at 1.5M nodes), and at least 16.

    Example:
        >>> default_id_basis(5000), default_id_basis(26495), default_id_basis(1_500_000)
        (None, 256, 64)
    """
    if n_nodes <= FULL_BASIS_MAX_NODES:
        return None
    k = MAX_ID_BASIS
    while k > 16 and _EIGS_BYTES_PER_NODE_PAIR * n_nodes * k > _ID_BASIS_MEMORY:
        k //= 2
    return k


def id_basis_k(n_nodes: int, k: Optional[int] = None) -> Optional[int]:
    """Eigenpairs per end that :func:`id_basis` computes for ``k`` (``None``: the default) on
    ``n_nodes`` nodes, or ``None`` for the full basis. The basis has ``2k`` (or ``N``)
    columns.

    Example:
        >>> id_basis_k(26495), id_basis_k(26495, 20000), id_basis_k(100)
        (256, None, None)
    """
    if k is None:
        k = default_id_basis(n_nodes)
    if k is not None and (isinstance(k, bool) or int(k) != k or int(k) < 1):
        raise ValueError(f"id_basis must be >= 1 eigenpair per end (or None), got {k}")
    return None if k is None or 2 * int(k) >= n_nodes else int(k)


def id_basis(graph: InteractionGraph, k: Optional[int] = None, *, progress: bool = False
             ) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    """The eigenbasis of the ID modality: ``(eigenvalues [K], vectors [N, K], partial)``.

    The full basis of ``L`` (dense ``eigh``) when ``k`` is ``None`` on a graph of at most
    ``FULL_BASIS_MAX_NODES`` nodes or ``2k >= N``; else the ``k`` lowest and ``k`` highest
    eigenpairs from one partial SVD of ``R̃`` (:func:`~ssr_engine.graph_eigs`, float32).
    Eigenvalues ascending, clamped to ``[0, 2]``; vectors float32.

    Example:
        >>> import ssr_engine
        >>> g = ssr_engine.InteractionGraph([0, 0, 1, 2], [0, 1, 1, 2])
        >>> lam, U, partial = id_basis(g)
        >>> tuple(U.shape), partial
        ((6, 6), False)
    """
    k = id_basis_k(graph.n_nodes, k)
    if k is None:
        lam, U = torch.linalg.eigh(graph.laplacian(dtype=torch.float64).to_dense())
        return lam.clamp(0.0, 2.0), U.float(), False
    lam, U = graph_eigs(graph, k, which="both", progress=progress)
    order = torch.argsort(lam, stable=True)
    return lam[order].double().clamp(0.0, 2.0), U[:, order].float().contiguous(), True


def white_probe(lo: int, hi: int, seed: int, cols: int = PROBE_COLS) -> torch.Tensor:
    """Rows ``lo … hi-1`` of the fixed white probe ``P [N, cols]`` (float32) whose energy
    places the band edges of graphs without content features (its spectrum is the graph's
    spectral density).

    Rows are i.i.d. standard normal, generated in blocks of ``PROBE_BLOCK`` rows from
    ``(seed, block)``, so the same rows come out whichever process asks for them.

    Example:
        >>> bool((white_probe(3, 9, 0) == white_probe(0, 20, 0)[3:9]).all())
        True
    """
    if not 0 <= lo <= hi:
        raise ValueError(f"need 0 <= lo <= hi, got {lo}, {hi}")
    out = []
    B = PROBE_BLOCK
    for b in range(lo // B, (hi - 1) // B + 1 if hi > lo else lo // B):
        rng = np.random.default_rng([int(seed), 0x1D, b])
        block = rng.standard_normal((B, int(cols)), dtype=np.float32)
        out.append(block[max(lo, b * B) - b * B:min(hi, (b + 1) * B) - b * B])
    return torch.from_numpy(np.concatenate(out) if out else np.zeros((0, cols), np.float32))


def reduce_features(features, d0: int, method: str = "pca", seed: int = 0) -> torch.Tensor:
    """Reduce ``[n, d_m]`` features to ``[n, min(d_m, d0)]`` (float64).

    ``"pca"``: centred SVD, each component's sign fixed so that its largest-magnitude
    loading is positive (the result does not depend on the LAPACK build or thread count).
    ``"random"``: a fixed Gaussian projection ``[d_m, d0] / sqrt(d0)`` drawn from ``seed``.
    Features with at most ``d0`` columns are returned unchanged.

    Example:
        >>> import torch
        >>> reduce_features(torch.randn(50, 10), 4).shape
        torch.Size([50, 4])
    """
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor)
                        else features).to(torch.float64)
    if x.dim() != 2:
        raise ValueError(f"features must be [n, d], got {tuple(x.shape)}")
    if method not in ("pca", "random"):
        raise ValueError(f"reduce must be 'pca' or 'random', got {method!r}")
    if x.shape[1] <= d0:
        return x
    if method == "random":
        g = np.random.default_rng([int(seed), 0xF0]).standard_normal((x.shape[1], d0))
        return x @ torch.from_numpy(g / math.sqrt(d0))
    xc = x - x.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    comp = vh[:d0]
    sign = torch.sign(comp.gather(1, comp.abs().argmax(1, keepdim=True)))
    return xc @ (comp * sign).T


class StoredRows:
    """Rows of a read-only (memory-mapped) array ``[N, ...]``, gathered per batch.

    Not a parameter and not part of a ``state_dict``: the rows stay on disk and a batch reads
    its own (sorted ids read fastest).

    Args:
        array: a numpy array or memory map, float32 or float16.
        name: what the rows are (named in errors), e.g. the file they come from.

    Rows gathered per batch are not checked (that would cost a pass over them every step);
    :meth:`check` does it for the nodes of a batch whose loss was not finite, and
    :meth:`block` (whole ranges, read for evaluation) always does.

    Shapes:
        ``rows[nodes [n]]`` -> ``[n, ...]`` float32 on ``nodes``' device;
        ``rows.block(lo, hi)`` -> rows ``lo … hi-1``.

    Example:
        >>> import numpy as np, torch
        >>> rows = StoredRows(np.arange(12, dtype=np.float32).reshape(4, 3))
        >>> rows[torch.tensor([1, 3])].tolist()
        [[3.0, 4.0, 5.0], [9.0, 10.0, 11.0]]
    """

    def __init__(self, array: np.ndarray, name: str = "stored rows"):
        if array.ndim < 2:
            raise ValueError(f"stored rows need an [N, ...] array, got shape {array.shape}")
        self.array, self.name = array, name

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.array.shape)

    def __len__(self) -> int:
        return self.array.shape[0]

    def __repr__(self) -> str:
        return f"StoredRows(shape={self.shape}, dtype={self.array.dtype})"

    def __getitem__(self, nodes: torch.Tensor) -> torch.Tensor:
        idx = nodes.detach().cpu().numpy()
        return torch.from_numpy(np.asarray(self.array[idx], dtype=np.float32)).to(nodes.device)

    def block(self, lo: int, hi: int) -> torch.Tensor:
        return torch.from_numpy(self._checked(np.array(self.array[lo:hi], dtype=np.float32),
                                              np.arange(lo, hi)))

    def check(self, nodes) -> None:
        """Raise ValueError, naming the file and nodes, when rows of ``nodes`` hold NaN/inf."""
        idx = np.unique(np.asarray(nodes.detach().cpu().numpy() if isinstance(
            nodes, torch.Tensor) else nodes, dtype=np.int64))
        self._checked(np.asarray(self.array[idx], dtype=np.float32), idx)

    def _checked(self, rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
        if not np.isfinite(rows).all():
            bad = idx[~np.isfinite(rows.reshape(len(rows), -1)).all(axis=1)]
            raise ValueError(f"{self.name} holds NaN or inf in {bad.size} row(s) (nodes "
                             f"{', '.join(map(str, bad[:5].tolist()))}"
                             f"{' ...' if bad.size > 5 else ''}): the file is damaged — "
                             "delete the band store to recompute it")
        return rows


Table = Union[torch.Tensor, StoredRows]


@dataclass
class BandSource:
    """The fixed inputs of :class:`~ssr_engine.SSRModel`'s band slots.

    Attributes:
        n_nodes: ``N`` (users first, then items).
        edges: ``[M + 1]`` ascending band edges in ``λ`` (``0 … 2``), shared by all modalities.
        content: modality name -> band signals, ``[M, N, d_m]`` tensor or
            :class:`StoredRows` ``[N, M, d_m]``.
        eigenvalues: ``[K]`` ascending eigenvalues of the ID basis.
        basis: ``[N, K]`` orthonormal eigenvectors (tensor or :class:`StoredRows`).
        partial: the basis does not span the whole space (the model adds a residual).
        report: how the bands were computed (method, order, edges, shares, atoms).
        identity: what the source was computed from (part of the model's configuration,
            so a checkpoint of another source is refused).
    """

    n_nodes: int
    edges: torch.Tensor
    content: Dict[str, Table]
    eigenvalues: torch.Tensor
    basis: Table
    partial: bool
    report: Dict = field(default_factory=dict)
    identity: Dict = field(default_factory=dict)

    @property
    def n_bands(self) -> int:
        return int(self.edges.numel()) - 1

    @property
    def dims(self) -> Dict[str, int]:
        """Width of each content modality's band signals."""
        return {name: int(t.shape[-1]) for name, t in self.content.items()}


def memory_source(graph: InteractionGraph, features: Mapping[str, torch.Tensor],
                  n_bands: int = 4, *, approx: str = "auto", order: Optional[int] = None,
                  id_k: Optional[int] = None, d0: int = 64, band_edges: str = "energy",
                  seed: int = 0, atom: str = "slot") -> BandSource:
    """Compute a :class:`BandSource` in memory.

    Content modalities: PCA-reduced to ``d0`` columns (:func:`reduce_features`), lifted to
    the graph (users: mean of their items), scaled to unit RMS and split by
    :class:`~ssr_engine.spectral.SpectralBands`. The edges balance the energy of the content
    signals (ID-only: of :func:`white_probe`, as a band store's), or are uniform in
    ``λ``. The ID basis is :func:`id_basis`'s.

    Args:
        graph: the training interaction graph.
        features: modality name -> ``[n_items, d_m]`` float64 item features (validated).
        n_bands: ``M``.
        approx: ``"auto"``, ``"exact"``, ``"eigen"``, ``"lobpcg"`` or ``"chebyshev"``.
        order: Chebyshev order (``"chebyshev"``).
        id_k: eigenpairs per end of the ID basis (``None``: :func:`default_id_basis`).
        d0: reduced width of the content features.
        band_edges: ``"energy"`` or ``"uniform"``.
        seed: seed of the white probe.
        atom: ``"slot"`` or ``"fold"``, how the energy balance treats the ``λ = 1`` atom
            (:class:`~ssr_engine.spectral.SpectralBands`).

    Example:
        >>> from ssr_engine.data import synthetic_dataset
        >>> ds = synthetic_dataset(60, 40, 600, modalities={"text": 8}, seed=0)
        >>> src = memory_source(ds.train_graph(), {"text": ds.features["text"]}, 2)
        >>> tuple(src.content["text"].shape), tuple(src.basis.shape), src.partial
        ((2, 100, 8), (100, 100), False)
    """
    signals = {}
    for name, f in features.items():
        x = graph.node_signal(reduce_features(f, d0))
        signals[name] = x / x.pow(2).mean().sqrt().clamp_min(1e-12)
    method, solver = ("eigen", "lobpcg") if approx == "lobpcg" else (approx, "auto")
    bands = SpectralBands(graph, n_bands=n_bands, method=method, order=order,
                          dtype=torch.float64, solver=solver, atom=atom)
    if band_edges == "energy":
        probe = (torch.cat(list(signals.values()), dim=1) if signals else
                 white_probe(0, graph.n_nodes, seed).double())
        bands.fit(probe)
    else:
        bands.fit_uniform()
    shares = bands.shares_
    report = {"method": bands.method_, "order": bands.order_,
              "edges": [float(e) for e in bands.edges],
              "shares": None if shares is None else [float(x) for x in shares],
              "atoms": [(float(a.lam), float(a.fraction)) for a in bands.atoms_],
              "fitted_on": ("content" if signals else "white probe")
              if band_edges == "energy" else "uniform"}
    content = {name: bands.transform(x).float() for name, x in signals.items()}
    lam, U, partial = id_basis(graph, id_k)
    return BandSource(graph.n_nodes, bands.edges.double(), content, lam, U, partial, report,
                      {"source": "memory"})
