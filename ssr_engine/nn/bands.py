"""Band decomposition of node signals as layers: fixed content bands and spectral ID bands.

**Content modalities** (DESIGN.md §3). Band filters are linear and commute with the learnable
projection ``W_m``: ``h_b(L)(X W) = (h_b(L) X) W``. So the band signals of the *raw* (PCA-
reduced) features are computed once by :class:`~ssr_engine.spectral.SpectralBands` and stored
(:class:`FixedBands`); a training step only reads rows and multiplies by ``W_m``.

**The ID modality** is learned, so its bands cannot be precomputed. It is parameterised in
the spectral domain (:class:`SpectralIDBands`): with an orthonormal eigenbasis ``U`` of ``L``
(the full basis on small graphs, or the ``k`` lowest and ``k`` highest eigenpairs from one
partial SVD of ``R̃`` on large ones), band ``b`` of the ID signal is ``U_b C_b`` — the basis
vectors whose eigenvalues fall in band ``b``, times free coefficients ``C_b``. This is exactly
band-limited, needs no propagation per step (a batch costs ``O(n·k·d)``) and never touches
the whole graph. When the basis is partial, the spectrum it does not cover gets a free
per-node residual ``E_res`` (initialised in the orthogonal complement of the basis, free
afterwards; documented as the mid-frequency part of the ID signal) that is added to the band
holding the uncovered gap. With the full basis ``E = Σ_b U_b C_b`` reaches every ``[N, d]``
table, so the parameterisation loses nothing.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .sources import StoredRows, reduce_features

__all__ = ["FixedBands", "SpectralIDBands", "reduce_features", "decomposition_loss"]


class FixedBands(nn.Module):
    """Precomputed band signals of one content modality, projected by a learnable ``W_m``.

    Args:
        bands: ``[M, N, d0]`` band signals held in memory (a buffer; ``Σ_b bands[b]`` is the
            node signal), or :class:`~ssr_engine.nn.sources.StoredRows` ``[N, M, d0]`` read
            from a band store by rows.
        dim: output size ``d``.

    Shapes:
        ``forward(nodes [n])`` -> ``[n, M, d]``.

    Example:
        >>> import torch
        >>> from ssr_engine.nn import FixedBands
        >>> layer = FixedBands(torch.randn(4, 10, 6), dim=8)
        >>> layer(torch.tensor([0, 3, 9])).shape
        torch.Size([3, 4, 8])
    """

    def __init__(self, bands: Union[torch.Tensor, StoredRows], dim: int):
        super().__init__()
        if len(bands.shape) != 3:
            raise ValueError(f"bands must be [M, N, d0] (or stored [N, M, d0]), got "
                             f"{tuple(bands.shape)}")
        if isinstance(bands, StoredRows):
            self.bands = bands
        else:
            if not torch.isfinite(bands).all():
                raise ValueError("band signals contain NaN or inf")
            self.register_buffer("bands", bands.float().contiguous())
        self.proj = nn.Linear(bands.shape[2], dim, bias=False)

    @property
    def n_bands(self) -> int:
        return self.bands.shape[1 if isinstance(self.bands, StoredRows) else 0]

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        if isinstance(self.bands, StoredRows):
            x = self.bands[nodes].to(self.proj.weight.dtype)          # [n, M, d0]
            return self.proj(x)
        x = self.bands[:, nodes]                                       # [M, n, d0]
        return self.proj(x).transpose(0, 1)                            # [n, M, d]


class SpectralIDBands(nn.Module):
    """ID embeddings parameterised in the spectral domain, split into bands.

    Args:
        basis: ``[N, k]`` orthonormal eigenvectors of ``L``: a tensor (a buffer) or
            :class:`~ssr_engine.nn.sources.StoredRows` read from a band store by rows (whose
            columns must already be in ascending eigenvalue order).
        eigenvalues: ``[k]`` their eigenvalues (in ``[0, 2]``).
        edges: ``[M + 1]`` ascending band edges in ``λ`` (``edges[0] = 0``, ``edges[-1] = 2``);
            a vector with eigenvalue ``λ`` belongs to the band ``b`` with
            ``edges[b] ≤ λ < edges[b + 1]`` (the last band includes 2).
        dim: embedding size ``d``.
        residual: add a free per-node residual for the spectrum the basis does not cover
            (use it when the basis is partial).
        init_std: standard deviation of the initial (node-domain) embeddings; default
            ``sqrt(2 / (N + d))`` (Xavier, as the baselines).
        prior: fixed spectral prior ``s(λ)`` on the coefficients (band ``b`` is
            ``U_b diag(s_b) C_b``): ``"none"`` (``s = 1``); ``"lightgcn"`` — the response of a
            3-layer LightGCN, ``s = (1 + σ + σ² + σ³)/4`` with ``σ = 1 − λ`` (smooth
            components learn and start large, ``λ → 2`` is suppressed); ``"mirror"`` — the
            same in ``|σ|``, symmetric under the bipartite mirror ``λ ↔ 2 − λ``. The residual
            takes ``s(1)``. Under Adam a coefficient moves about ``lr`` per step whatever its
            gradient scale, so ``s`` sets how fast (and from how large) each frequency of the
            ID signal is learned — the smoothness bias a propagating model has built in.
        sparse: the residual gets sparse gradients (only the batch's rows; for
            ``torch.optim.SparseAdam``), so a step's cost does not grow with ``N``.
        generator: optional torch generator for the initialisation.
        adjacency: ``[N, N]`` scipy CSR normalised adjacency ``Â`` of the graph: the
            residual is then *smoothed*, ``s(1) (I + Â) E_res`` instead of ``s(1) E_res``
            (one hop, response ``s(1)(2 − λ)``: the first-order LightGCN filter on the
            spectrum the basis does not cover). A node's residual vector then holds its
            neighbours' free vectors too, so a node with few interactions is not left with
            a free vector learned from those few alone. A step gathers the neighbours of
            its nodes, so its cost grows with their degrees (``O(Σ deg · d)``; the gradients
            stay sparse, on those rows). ``None``: the free residual.

    Shapes:
        ``forward(nodes [n])`` -> ``[n, M, d]``; ``full()`` -> ``[N, M, d]``.

    Example:
        >>> import torch, ssr_engine
        >>> from ssr_engine.nn import SpectralIDBands
        >>> g = ssr_engine.InteractionGraph([0, 0, 1, 2], [0, 1, 1, 2])
        >>> w, U = torch.linalg.eigh(g.laplacian(dtype=torch.float64).to_dense())
        >>> ids = SpectralIDBands(U, w, torch.tensor([0.0, 1.0, 2.0]), dim=4)
        >>> ids(torch.tensor([0, 5])).shape
        torch.Size([2, 2, 4])
    """

    def __init__(self, basis: Union[torch.Tensor, StoredRows], eigenvalues: torch.Tensor,
                 edges: torch.Tensor, dim: int, residual: bool = False,
                 init_std: Optional[float] = None, prior: str = "none", sparse: bool = False,
                 generator: Optional[torch.Generator] = None, adjacency=None):
        super().__init__()
        stored = isinstance(basis, StoredRows)
        if not stored:
            basis = torch.as_tensor(basis)
        lam = torch.as_tensor(eigenvalues, dtype=torch.float64).cpu()
        edges = torch.as_tensor(edges, dtype=torch.float64).cpu()
        if len(basis.shape) != 2 or lam.shape != (basis.shape[1],):
            raise ValueError(f"basis must be [N, k] with k eigenvalues, got {tuple(basis.shape)} "
                             f"and {tuple(lam.shape)}")
        if edges.dim() != 1 or edges.numel() < 2 or bool((edges[1:] < edges[:-1]).any()):
            raise ValueError(f"edges must be an ascending [M + 1] vector, got {edges.tolist()}")
        n_nodes, k = basis.shape
        M = edges.numel() - 1
        order = torch.argsort(lam, stable=True)
        if stored:
            if bool((lam[1:] < lam[:-1]).any()):
                raise ValueError("a stored basis must hold its eigenvectors in ascending "
                                 "eigenvalue order")
            self.basis = basis
        else:
            self.register_buffer("basis", basis[:, order.to(basis.device)].float().contiguous())
        lam = lam[order]
        band = torch.bucketize(lam, edges[1:-1], right=True)          # [k] in [0, M)
        counts = torch.bincount(band, minlength=M)
        self.register_buffer("eigenvalues", lam.float())
        self.register_buffer("edges", edges.float())
        self.slices = [(int(a), int(b)) for a, b in
                       zip(torch.cumsum(counts, 0) - counts, torch.cumsum(counts, 0))]
        self.dim, self.n_nodes, self.sparse = int(dim), n_nodes, bool(sparse)
        std = math.sqrt(2.0 / (n_nodes + dim)) if init_std is None else float(init_std)
        priors = ("none", "lightgcn", "mirror")
        if prior not in priors:
            raise ValueError(f"prior must be one of {priors}, got {prior!r}")
        self.register_buffer("prior", self._prior(lam, prior).float())
        self.residual_scale = float(self._prior(torch.ones(1, dtype=torch.float64), prior))
        self.coef = nn.Parameter(torch.randn(k, dim, generator=generator,
                                             dtype=torch.float64).float() * std)
        self.residual_band: Optional[int] = None
        if residual:
            lo = lam[lam < 1.0]
            hi = lam[lam >= 1.0]
            gap_lo = float(lo.max()) if lo.numel() else 0.0
            gap_hi = float(hi.min()) if hi.numel() else 2.0
            mid = 0.5 * (gap_lo + gap_hi)
            self.residual_band = int(torch.bucketize(torch.tensor([mid], dtype=torch.float64),
                                                     edges[1:-1], right=True))
            e0 = torch.randn(n_nodes, dim, generator=generator, dtype=torch.float64) * std
            # An Embedding module (not a bare parameter), so DistributedDataParallel knows
            # its gradients are sparse.
            self.residual = nn.Embedding(n_nodes, dim, sparse=self.sparse,
                                         _weight=self._complement(e0).float())
        self.smooth = adjacency is not None
        if self.smooth:
            if self.residual_band is None:
                raise ValueError("adjacency smooths the ID residual; without residual=True "
                                 "(a partial basis) there is none")
            if tuple(adjacency.shape) != (n_nodes, n_nodes):
                raise ValueError(f"adjacency must be [N, N] = [{n_nodes}, {n_nodes}], got "
                                 f"{tuple(adjacency.shape)}")
            a = adjacency.tocsr()
            # not in the state dict: the graph gives them back
            self.register_buffer("adj_ptr", torch.from_numpy(a.indptr.astype("int64")),
                                 persistent=False)
            self.register_buffer("adj_idx", torch.from_numpy(a.indices.astype("int64")),
                                 persistent=False)
            self.register_buffer("adj_val", torch.from_numpy(a.data.astype("float64")),
                                 persistent=False)

    def _rows(self, lo: int, hi: int) -> torch.Tensor:
        if isinstance(self.basis, StoredRows):
            return self.basis.block(lo, hi)
        return self.basis[lo:hi].cpu()

    def _basis_t(self, e: torch.Tensor, block: int = 1 << 16) -> torch.Tensor:
        """``Uᵀ e`` ``[k, d]`` for ``e [N, d]`` (float64), reading the basis in row blocks."""
        n = self.n_nodes
        return sum(self._rows(lo, min(lo + block, n)).double().T @ e[lo:lo + block]
                   for lo in range(0, n, block))

    def _basis_add(self, e: torch.Tensor, c: torch.Tensor, alpha: float = 1.0,
                   block: int = 1 << 16) -> torch.Tensor:
        """``e += alpha · U c`` in place for ``e [N, d]``, ``c [k, d]`` (float64), by row
        blocks; returns ``e``."""
        n = self.n_nodes
        for lo in range(0, n, block):
            e[lo:lo + block] += alpha * (self._rows(lo, min(lo + block, n)).double() @ c)
        return e

    def _complement(self, e: torch.Tensor, block: int = 1 << 16) -> torch.Tensor:
        """``e - U (Uᵀ e)`` for ``e [N, d]`` (float64), reading the basis in row blocks."""
        return self._basis_add(e, self._basis_t(e, block), -1.0, block)

    @staticmethod
    def _prior(lam: torch.Tensor, kind: str) -> torch.Tensor:
        if kind == "none":
            return torch.ones_like(lam)
        sigma = 1.0 - lam
        if kind == "mirror":
            sigma = sigma.abs()
        return (1.0 + sigma + sigma ** 2 + sigma ** 3) / 4.0

    @property
    def n_bands(self) -> int:
        return len(self.slices)

    def extra_repr(self) -> str:
        sizes = [b - a for a, b in self.slices]
        return (f"n_nodes={self.n_nodes}, dim={self.dim}, basis_per_band={sizes}, "
                f"residual_band={self.residual_band}, smooth={self.smooth}, "
                f"sparse={self.sparse}")

    def _residual(self, nodes: torch.Tensor) -> torch.Tensor:
        """``E_res`` rows of ``nodes``, or ``((I + Â) E_res)`` rows when smoothed: ``[n, d]``."""
        r = self.residual(nodes)
        if not self.smooth:
            return r
        nodes = nodes.to(self.adj_ptr.device)
        start = self.adj_ptr[nodes]
        count = self.adj_ptr[nodes + 1] - start
        offsets = torch.cumsum(count, 0) - count
        pos = (torch.arange(int(count.sum()), device=start.device)
               + torch.repeat_interleave(start - offsets, count))
        w = self.adj_val[pos].to(r.dtype)
        nb = F.embedding_bag(self.adj_idx[pos], self.residual.weight, offsets, mode="sum",
                             per_sample_weights=w, sparse=self.sparse)
        return r + nb

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        u = self.basis[nodes].to(self.coef.dtype)                      # [n, k]
        out = []
        for b, (a, e) in enumerate(self.slices):
            x = u[:, a:e] @ (self.prior[a:e, None] * self.coef[a:e])  # [n, d] (0 if empty)
            if b == self.residual_band:
                x = x + self.residual_scale * self._residual(nodes)
            out.append(x)
        return torch.stack(out, dim=1)

    def full(self) -> torch.Tensor:
        """Band signals of every node ``[N, M, d]``."""
        return self(torch.arange(self.n_nodes, device=self.coef.device))


def decomposition_loss(H: torch.Tensor, band_of_slot, eps: float = 1e-12) -> torch.Tensor:
    """Cross-band correlation of each node's band slots: the SSR decomposition loss.

    ``L_dec = mean_n mean_{(s, t): band(s) ≠ band(t)} cos²(H_{n,s}, H_{n,t})``.

    Why per node, in the embedding space: the bands are orthogonal as graph signals by
    construction (disjoint eigenspaces, or nearly so for Chebyshev filters), so a correlation
    taken over the nodes is zero or near it and constrains nothing. What the bands do not
    guarantee is that a node's band vectors point in different directions of ``R^d``; where
    they align, the score ``h_uᵀ h_i = Σ_{b,b'} h_{u,b}ᵀ h_{i,b'}`` mixes every band with every
    other, and the band mask and reliabilities no longer act on one frequency range at a time.
    ``L_dec = 0`` when each node's bands are mutually orthogonal (a score is then a sum of
    band-wise matches), ``1`` when they are parallel, about ``1/d`` for random directions.
    Pairs of the same band (a band in two modalities) are left out: the alignment pulls those
    together. A zero slot (no energy in that band) counts as orthogonal.

    Args:
        H: ``[n, S, d]`` band slots of ``n`` nodes.
        band_of_slot: ``[S]`` band index of each slot.
        eps: guards the norms of zero slots.

    Returns:
        A scalar (``0`` when no two slots are of different bands).

    Example:
        >>> import torch
        >>> from ssr_engine.nn.bands import decomposition_loss
        >>> e = torch.eye(3)
        >>> float(decomposition_loss(e.expand(2, 3, 3), [0, 1, 2]))       # orthogonal
        0.0
        >>> float(decomposition_loss(torch.ones(2, 3, 4), [0, 1, 1]))     # parallel
        1.0
    """
    bands = torch.as_tensor(list(band_of_slot), device=H.device)
    if H.dim() != 3 or bands.numel() != H.shape[1]:
        raise ValueError(f"expected H [n, S, d] with S = len(band_of_slot) = {bands.numel()}, "
                         f"got {tuple(H.shape)}")
    pairs = bands[:, None] != bands[None, :]
    if not bool(pairs.any()) or H.shape[0] == 0:
        return H.new_zeros(())
    X = H.float() if H.dtype in (torch.float16, torch.bfloat16) else H  # eps underflows there
    U = X * torch.rsqrt(X.pow(2).sum(-1, keepdim=True) + eps)
    G = U @ U.transpose(1, 2)                                         # [n, S, S] cosines
    return G.pow(2)[:, pairs].mean().to(H.dtype)
