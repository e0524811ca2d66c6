"""SSRModel: Structured Spectral Reasoning for multimodal recommendation (DESIGN.md §2–3).

Per node the model holds ``S = m·M`` band slots (``m`` modalities: the ID modality first,
then the content modalities in the order given; ``M`` bands each):

1. **decompose** — content modalities: fixed band signals of the PCA-reduced node signal
   (item features, users = mean of their training items), computed once by
   :class:`~ssr_engine.spectral.SpectralBands` and projected by a learnable ``W_m``
   (:class:`~ssr_engine.nn.FixedBands`); the ID modality: spectral-domain embeddings
   (:class:`~ssr_engine.nn.SpectralIDBands`). All modalities share one set of band edges,
   energy-balanced on the content signals (or, ID-only, on a white probe signal, whose
   energy is the graph's spectral density), so band ``b`` is the same frequency range in
   every modality — which the shared band mask and the band-wise alignment presuppose;
2. **modulate** — reliabilities ``α_{m,b}``; in training a band mask and a consistency loss;
3. **fuse** — the ``S`` modulated slots into one vector: a plain sum (default, chosen on
   validation), G-HSNO (:class:`~ssr_engine.nn.CPFusion`), or G-HSNO on a linear skip path
   (:class:`~ssr_engine.nn.SkipCPFusion`);
4. **align** — :class:`~ssr_engine.nn.SpectralInfoNCE` between all modalities (the ID
   modality included: its band embeddings are pulled towards the content views of the same
   item in the same band, which regularises them — on MovieLens-100k this beat aligning the
   content modalities only, see the results), band by band, on the items of the batch.

``score(u, i) = h_uᵀ h_i``; the objective is
``L = L_rec + λ_mask L_mask + λ_cl L_cl + λ_dec L_dec + λ_fus R_fus + λ_reg ‖Θ‖²``: the
ranking loss, the mask consistency loss, the band-wise InfoNCE, the decomposition loss
(cross-band correlation of each node's band slots,
:func:`~ssr_engine.nn.bands.decomposition_loss`), the fusion regularisation (distance of the
G-HSNO band-interaction tensor from its anchor, :meth:`~ssr_engine.nn.CPFusion.penalty`;
G-HSNO fusions only) and an L2 term applied, as in the baselines, to the band slots of the
batch's nodes. ``λ_dec`` and ``λ_fus`` default to 0 (see the README's ablations).

**Band sources.** The fixed inputs of the slots — content band signals, the ID eigenbasis and
the shared edges — come from a :class:`~ssr_engine.nn.sources.BandSource`: computed in memory
from the graph and features (the default), or read by rows from a band store on disk
(``BandStore.source()`` in ``ssr_engine.train.store``) for graphs whose bands do not fit in
memory. The model, its parameters, its objective and its training are the same for both; a
step reads only the rows of its batch and costs ``O(n·(K + S·d)·d)`` for its ``n`` distinct
nodes, independent of the graph size when the ID residual has sparse gradients.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..graph import InteractionGraph
from .alignment import SpectralInfoNCE
from .bands import FixedBands, SpectralIDBands, decomposition_loss
from .fusion import CPFusion, SkipCPFusion, SumFusion
from .modulation import BandMask, BandReliability, consistency_loss
from .recommender import Recommender, ranking_loss
from .sources import BandSource, StoredRows, id_basis_k, memory_source

__all__ = ["SSRModel"]

#: defaults of the settings that model configurations record only when changed.
LATER_DEFAULTS = {"fusion_init": "random", "fusion_gates": True, "fusion_norm": True,
                  "lambda_fusion": 0.0, "lambda_dec": 0.0, "atom": "slot", "id_residual": "free",
                  "mask_scope": "batch"}
#: the later settings that only a G-HSNO fusion uses.
_GHSNO_ONLY = ("lambda_fusion", "fusion_init", "fusion_gates", "fusion_norm")

ArrayLike = Union[np.ndarray, torch.Tensor]


def check_id_residual(id_residual: str, n_nodes: int, partial: bool) -> None:
    """Refuse ``id_residual="smooth"`` where the ID basis is full (there is no residual to
    smooth); the band pipeline calls it before it writes any band."""
    if id_residual == "smooth" and not partial:
        raise ValueError(f"--id-residual smooth (id_residual='smooth') smooths the residual of a "
                         f"partial ID basis; this graph's ({n_nodes} nodes) is full: pass "
                         f"id_basis=k (on the command line: pass --id-basis K) with "
                         f"2k < {n_nodes}")


def _check_features(graph: InteractionGraph, features: Optional[Mapping[str, ArrayLike]]
                    ) -> Dict[str, torch.Tensor]:
    out = {}
    if features is not None and not isinstance(features, Mapping):
        raise TypeError(f"features must be a mapping {{modality name: [n_items, d] array}}, "
                        f"got {type(features).__name__}; e.g. {{'text': X}}")
    for name, f in (features or {}).items():
        if not isinstance(name, str) or not name or name == "id":
            raise ValueError(f"modality names must be non-empty strings other than 'id', "
                             f"got {name!r}")
        t = f.detach() if isinstance(f, torch.Tensor) else torch.from_numpy(np.array(f))
        if t.dim() != 2 or t.shape[0] != graph.n_items:
            raise ValueError(f"features[{name!r}] has shape {tuple(t.shape)}; expected "
                             f"[n_items={graph.n_items}, d] with one row per item id")
        if not t.dtype.is_floating_point:
            t = t.double()
        finite = torch.isfinite(t).all(dim=1)
        if not bool(finite.all()):
            rows = torch.nonzero(~finite).flatten()
            raise ValueError(f"features[{name!r}] has NaN/inf in {rows.numel()} rows, e.g. "
                             f"item {int(rows[0])}; impute or drop them first")
        out[name] = t.detach().cpu().double()
    return out


class SSRModel(Recommender):
    """The SSR recommender: band decomposition, modulation, G-HSNO fusion and alignment.

    Args:
        graph: the training interaction graph.
        features: modality name -> ``[n_items, d_m]`` item features (``None`` or ``{}``:
            ID-only). Must be ``None`` with ``source`` (the source holds the modalities).
        n_bands: number of bands ``M``.
        dim: embedding size ``d``.
        rank: CP rank ``r`` of the fusion.
        approx: how the content bands are computed: ``"auto"``, ``"exact"``, ``"eigen"``,
            ``"lobpcg"`` (``"eigen"`` with the LOBPCG solver) or ``"chebyshev"`` (see
            :class:`~ssr_engine.spectral.SpectralBands`).
        order: Chebyshev order (``approx="chebyshev"``; default: the bands helper's).
        id_basis: eigenpairs per end of the spectrum for the ID modality; ``None`` picks the
            full basis up to ``FULL_BASIS_MAX_NODES`` nodes and
            :func:`~ssr_engine.nn.sources.default_id_basis` beyond.
        id_prior: fixed spectral prior of the ID coefficients (``"none"``, ``"lightgcn"``,
            ``"mirror"``; see :class:`~ssr_engine.nn.SpectralIDBands`).
        d0: content features are reduced to at most ``d0`` dimensions by PCA.
        band_edges: ``"energy"`` (energy-balanced) or ``"uniform"`` (equal widths in λ).
        atom: ``"slot"`` or ``"fold"``: whether the energy balance counts the ``λ = 1`` atom
            (see :class:`~ssr_engine.spectral.SpectralBands`; in memory only, a band
            source fixes its own edges).
        id_residual: ``"free"`` or ``"smooth"``: with a partial ID basis, the per-node
            residual is a free vector, or smoothed over each node's neighbours,
            ``s(1)(I + Â) E_res`` (see :class:`~ssr_engine.nn.SpectralIDBands`'s
            ``adjacency``). Needs a partial basis.
        fusion: ``"sum"`` (plain sum of the modulated slots — the default, chosen on
            validation: on MovieLens-100k it beat G-HSNO clearly), ``"cp"`` (G-HSNO,
            :class:`~ssr_engine.nn.CPFusion`) or ``"cp+sum"`` (G-HSNO on a linear skip path,
            :class:`~ssr_engine.nn.SkipCPFusion`).
        n_out: output bands of the fusion (default ``n_bands``).
        fusion_init: G-HSNO initialisation, ``"random"`` (the paper's) or ``"identity"``
            (output band ``b`` = input band ``b``; needs ``rank >= dim``).
        fusion_gates: G-HSNO softmax gates on.
        fusion_norm: G-HSNO scale normalisation on (without it and with ``"identity"``,
            G-HSNO starts as the plain sum).
        lambda_fusion: weight of the fusion regularisation (G-HSNO fusions).
        lambda_dec: weight of the decomposition loss.
        band_mask: use the band mask and its consistency loss.
        mask_scope: ``"batch"`` (one band mask per step, shared by the batch's nodes) or
            ``"node"`` (each node of the batch draws its own; the same draw for all its
            modalities).
        mask_p: band drop probability ``p`` (0.4, chosen on validation on MovieLens-100k,
            Amazon Baby and Clothing; it was 0.2 before 2026-12-06).
        lambda_mask: weight of the consistency loss.
        consistency: ``"representation"`` (fused vectors) or ``"prediction"`` (scores).
        align: use the band-wise InfoNCE alignment across modalities (needs at least one
            content modality besides the ID).
        lambda_cl: weight of the alignment loss.
        tau: InfoNCE temperature.
        align_items: the alignment uses at most this many of the batch's items (drawn at
            random each step), which bounds its ``O(items² · M)`` cost.
        reg: ``λ_reg``.
        loss: ``"bpr"`` or ``"bce"``.
        seed: seed of the ID modality's initialisation and of the white probe signal.
        backend: backend of the fused ops (``"auto"``, ``"torch"``, ``"triton"``).
        source: a :class:`~ssr_engine.nn.sources.BandSource` to read the band slots' fixed
            inputs from (e.g. ``BandStore.source()``); ``None`` computes them in memory from
            ``graph`` and ``features`` with ``approx``, ``order``, ``id_basis``, ``d0`` and
            ``band_edges`` (which a given source fixes instead).
        sparse_residual: the ID residual (partial basis) gets sparse gradients, updated with
            ``SparseAdam`` by the trainers: a step's cost then does not grow with ``N``.

    Shapes:
        ``slots(nodes [n])`` -> ``[n, m, M, d]``; ``embed(nodes [n])`` -> ``[n, d]``;
        ``node_embeddings()`` -> ``([n_users, d], [n_items, d])``.

    Raises:
        ValueError: on feature rows that don't match the items, NaN/inf features, unknown
            options, out-of-range sizes, or a source of another graph size.

    Example:
        >>> import torch, ssr_engine
        >>> from ssr_engine.data import synthetic_dataset
        >>> ds = synthetic_dataset(60, 40, 600, modalities={"text": 8}, seed=0)
        >>> model = ssr_engine.SSRModel(ds.train_graph(), ds.features, n_bands=2, dim=8,
        ...                             rank=4)
        >>> scores, items = model.recommend(torch.tensor([0, 1]), k=5)
        >>> items.shape
        torch.Size([2, 5])
    """

    def __init__(self, graph: InteractionGraph, features: Optional[Mapping[str, ArrayLike]] = None,
                 n_bands: int = 4, dim: int = 64, rank: int = 16, *, approx: str = "auto",
                 order: Optional[int] = None, id_basis: Optional[int] = None,
                 id_prior: str = "none", id_residual: str = "free", d0: int = 64,
                 band_edges: str = "energy", atom: str = "slot", fusion: str = "sum",
                 n_out: Optional[int] = None,
                 fusion_init: str = "random", fusion_gates: bool = True,
                 fusion_norm: bool = True, lambda_fusion: float = 0.0, lambda_dec: float = 0.0,
                 band_mask: bool = True, mask_p: float = 0.4, lambda_mask: float = 0.1,
                 mask_scope: str = "batch", consistency: str = "representation",
                 align: bool = True, lambda_cl: float = 0.05, tau: float = 0.2,
                 align_items: int = 256, reg: float = 1e-4, loss: str = "bpr", seed: int = 0,
                 backend: str = "auto", source: Optional[BandSource] = None,
                 sparse_residual: bool = False):
        super().__init__(graph.interaction_matrix(), loss)
        if n_bands < 1 or dim < 1 or rank < 1 or d0 < 1 or (n_out is not None and n_out < 1):
            raise ValueError(f"n_bands, dim, rank, d0 and n_out must be >= 1, got {n_bands}, "
                             f"{dim}, {rank}, {d0}, {n_out}")
        if lambda_fusion < 0 or lambda_dec < 0:
            raise ValueError(f"lambda_fusion and lambda_dec must be >= 0, got {lambda_fusion}, "
                             f"{lambda_dec}")
        # Settings added later are recorded only where they differ from their defaults, so
        # that checkpoints written before they existed still match a default model.
        later = {"fusion_init": fusion_init, "fusion_gates": bool(fusion_gates),
                 "fusion_norm": bool(fusion_norm), "lambda_fusion": float(lambda_fusion),
                 "lambda_dec": float(lambda_dec), "atom": atom, "id_residual": id_residual,
                 "mask_scope": mask_scope}
        later = {k: v for k, v in later.items() if v != LATER_DEFAULTS[k]}
        if fusion == "sum":
            unused = [k for k in _GHSNO_ONLY if k in later]
            unused += ["n_out"] if n_out is not None else []
            if unused:
                raise ValueError(f"{', '.join(unused)} set a G-HSNO fusion; fusion='sum' has "
                                 f"no factors (use fusion='cp' or 'cp+sum')")
        if atom == "fold" and band_edges == "uniform":
            raise ValueError("atom='fold' changes the energy balance; band_edges='uniform' "
                             "has none (use band_edges='energy')")
        for opt, val, allowed in (("band_edges", band_edges, ("energy", "uniform")),
                                  ("atom", atom, ("slot", "fold")),
                                  ("id_residual", id_residual, ("free", "smooth")),
                                  ("mask_scope", mask_scope, ("batch", "node")),
                                  ("fusion_init", fusion_init, ("random", "identity")),
                                  ("fusion", fusion, ("cp", "cp+sum", "sum")),
                                  ("consistency", consistency, ("representation",
                                                                "prediction"))):
            if val not in allowed:
                raise ValueError(f"{opt} must be one of {allowed}, got {val!r}")
        check_id_residual(id_residual, graph.n_nodes,       # before any band is computed
                          source.partial if source is not None else
                          id_basis_k(graph.n_nodes, id_basis) is not None)
        gen = torch.Generator().manual_seed(int(seed))
        if source is None:
            feats = _check_features(graph, features)
            source = memory_source(graph, feats, n_bands, approx=approx, order=order,
                                   id_k=id_basis, d0=d0, band_edges=band_edges, seed=seed,
                                   atom=atom)
            bands_cfg = {"features": {k: int(v.shape[1]) for k, v in feats.items()},
                         "n_bands": n_bands, "approx": approx, "order": order,
                         "id_basis": id_basis, "d0": d0, "band_edges": band_edges}
        else:
            if features:
                raise ValueError("pass either features or a band source, not both: the "
                                 "source holds the content modalities")
            if atom != "slot":
                raise ValueError("atom applies to bands computed in memory; a band source "
                                 "fixes its own edges")
            if source.n_nodes != graph.n_nodes:
                raise ValueError(f"the band source has {source.n_nodes} nodes but the graph "
                                 f"{graph.n_users} users + {graph.n_items} items")
            bands_cfg = {"features": source.dims, "n_bands": source.n_bands,
                         "source": source.identity}
        self._config = {
            "model": "ssr", "n_users": graph.n_users, "n_items": graph.n_items, **bands_cfg,
            "dim": dim, "rank": rank, "id_prior": id_prior, "fusion": fusion, "n_out": n_out,
            "band_mask": band_mask, "mask_p": mask_p, "lambda_mask": lambda_mask,
            "consistency": consistency, "align": align, "lambda_cl": lambda_cl, "tau": tau,
            "align_items": align_items, "reg": reg, "loss": loss, "seed": seed,
            "sparse_residual": bool(sparse_residual)}
        self._config.update(later)
        self.modalities = ["id"] + list(source.content)
        self.n_bands, self.dim = source.n_bands, int(dim)
        self.reg, self.lambda_mask, self.lambda_cl = float(reg), float(lambda_mask), float(lambda_cl)
        self.lambda_fusion, self.lambda_dec = float(lambda_fusion), float(lambda_dec)
        self.consistency, self.align_items = consistency, int(align_items)
        self.mask_scope = mask_scope
        self.band_report = source.report

        # 1. decomposition: shared edges, content bands, spectral ID bands.
        self.content = nn.ModuleDict({name: FixedBands(x, dim)
                                      for name, x in source.content.items()})
        self.id_bands = SpectralIDBands(
            source.basis, source.eigenvalues, source.edges, self.dim, residual=source.partial,
            prior=id_prior, sparse=sparse_residual, generator=gen,
            adjacency=graph.normalized_adjacency_scipy() if id_residual == "smooth" else None)

        # 2-4. modulation, fusion, alignment.
        m, M = len(self.modalities), self.n_bands
        self.reliability = BandReliability(m, M)
        self.mask = BandMask(M, mask_p if band_mask else 0.0)
        self.band_of_slot = [b for _ in range(m) for b in range(M)]     # slot s = j·M + b
        kinds = {"cp": CPFusion, "cp+sum": SkipCPFusion}
        self.fusion = (kinds[fusion](m * M, dim, rank, n_out or M, backend=backend,
                                     gates=fusion_gates, normalise=fusion_norm,
                                     init=fusion_init, band_of_slot=self.band_of_slot)
                       if fusion in kinds else SumFusion())
        self.align = SpectralInfoNCE(tau) if (align and m >= 2) else None

    # -- Recommender interface ---------------------------------------------------------
    def config(self) -> Dict:
        return dict(self._config)

    @property
    def device(self) -> torch.device:
        return self.id_bands.coef.device

    @property
    def reads_store(self) -> bool:
        """Whether the band slots are read by rows from a band store (not held in memory)."""
        return isinstance(self.id_bands.basis, StoredRows)

    def check_inputs(self, nodes: torch.Tensor) -> None:
        """Check the stored rows of ``nodes`` (content bands and ID basis read from a band
        store) for NaN/inf; the error names the file."""
        tables = [layer.bands for layer in self.content.values()] + [self.id_bands.basis]
        for t in tables:
            if isinstance(t, StoredRows):
                t.check(nodes)

    def sparse_parameters(self):
        """Parameters with sparse gradients (the ID residual with ``sparse_residual``)."""
        ids = self.id_bands
        return [ids.residual.weight] if ids.sparse and ids.residual_band is not None else []

    def fusion_parameters(self):
        """The G-HSNO factors (none with the plain sum)."""
        return [] if isinstance(self.fusion, SumFusion) else list(self.fusion.parameters())

    def slots(self, nodes: torch.Tensor) -> torch.Tensor:
        """Band slots of nodes (users first, items offset by ``n_users``): ``[n, m, M, d]``."""
        parts = [self.id_bands(nodes)] + [layer(nodes) for layer in self.content.values()]
        return torch.stack(parts, dim=1)

    def fuse(self, raw: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Fused node vectors ``[n, d]`` from raw slots ``[n, m, M, d]`` and slot scales.

        ``scale [m, M]`` (reliability times band mask) multiplies each slot; the fusions
        fold it in without forming a scaled copy of the slots.
        """
        return self.fusion(raw.flatten(1, 2), scale.flatten())

    @torch.no_grad()
    def embed(self, nodes, chunk: int = 8192, progress=None) -> torch.Tensor:
        """Inference vectors (no band mask) of ``nodes`` (users first): ``[n, d]``.

        Args:
            nodes: ``[n]`` node ids.
            chunk: nodes per block.
            progress: optional tqdm bar, advanced by the nodes done.
        """
        nodes = self._check_ids(nodes, self.n_users + self.n_items, "node")
        alpha = self.reliability.alpha
        out = []
        for lo in range(0, nodes.numel(), chunk):
            part = nodes[lo:lo + chunk]
            out.append(self.fuse(self.slots(part), alpha))
            if progress is not None:
                progress.update(part.numel())
        return torch.cat(out) if out else torch.zeros(0, self.dim, device=self.device)

    def node_embeddings(self, chunk: int = 8192) -> Tuple[torch.Tensor, torch.Tensor]:
        """Inference vectors (no band mask): ``([n_users, d], [n_items, d])``."""
        h = self.embed(torch.arange(self.n_users + self.n_items), chunk)
        return h[:self.n_users], h[self.n_users:]

    # -- the objective -----------------------------------------------------------------
    def _batch_nodes(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The batch's distinct nodes ``uniq [n]`` (items offset by ``n_users``) and ``inv
        [B (2 + n_neg)]``, the position in ``uniq`` of the users, positives and negatives."""
        nodes = torch.cat([users, pos + self.n_users, neg.flatten() + self.n_users])
        return torch.unique(nodes, return_inverse=True)

    @staticmethod
    def _triplet_mean(per_node: torch.Tensor, inv: torch.Tensor, B: int, n_neg: int
                      ) -> torch.Tensor:
        """Mean over the triplets of ``x_u + x_pos + mean x_neg`` for per-node ``x [n]``."""
        x = per_node[inv]
        return (x[:B] + x[B:2 * B] + x[2 * B:].view(B, n_neg).mean(1)).mean()

    def _fuse_batch(self, nodes: torch.Tensor, scales: torch.Tensor,
                    node_scale: Optional[torch.Tensor] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Fused vectors of ``nodes`` under each slot scale ``scales [P, m, M]`` (and, when
        given, under the per-node slot scales ``node_scale [n, m, M]``, appended last) ->
        ``[P (+1), n, d]``, each node's squared slot norm ``Σ_{m,b} ‖H_{m,b}‖²`` -> ``[n]``,
        and the decomposition loss of the nodes' slots (``None`` when ``λ_dec = 0``).

        With the plain sum the slots are summed modality by modality, so the ``[n, m, M, d]``
        slot tensor of a batch is never formed (on a large batch the step is memory-bound,
        and this reads each modality's slots once for all scales and the norm).
        """
        dec = None
        if isinstance(self.fusion, SumFusion):
            layers = [self.id_bands, *self.content.values()]
            h, hn, sq, parts = 0.0, 0.0, 0.0, []
            n = nodes.numel()
            for j, layer in enumerate(layers):
                H = layer(nodes)                                             # [n, M, d]
                # one product [P, M] @ [M, n·d] for all scales
                Hb = H.transpose(0, 1).reshape(H.shape[1], -1)
                h = h + (scales[:, j].to(H.dtype) @ Hb).view(-1, n, self.dim)
                if node_scale is not None:
                    hn = hn + torch.einsum("nb,nbd->nd", node_scale[:, j].to(H.dtype), H)
                sq = sq + (H * H).sum(dim=(1, 2))
                if self.lambda_dec > 0:
                    parts.append(H)
            if parts:
                dec = decomposition_loss(torch.cat(parts, 1), self.band_of_slot)
            if node_scale is not None:
                h = torch.cat([h, hn.unsqueeze(0)])
            return h, sq, dec
        raw = self.slots(nodes)                                              # [n, m, M, d]
        if self.lambda_dec > 0:
            dec = decomposition_loss(raw.flatten(1, 2), self.band_of_slot)
        hs = [self.fuse(raw, s) for s in scales]
        if node_scale is not None:
            # the fusions take one scale per slot: fold the per-node part into the slots
            ones = torch.ones_like(node_scale[0])
            hs.append(self.fuse(raw * node_scale.unsqueeze(-1), ones))
        return torch.stack(hs), raw.pow(2).sum(dim=(1, 2, 3)), dec

    def _batch_loss(self, users, pos, neg) -> Dict[str, torch.Tensor]:
        """``L = L_rec + λ_mask L_mask + λ_cl L_cl + λ_dec L_dec + λ_fus R_fus + L_reg`` of a
        batch of ``B`` triplets."""
        B, n_neg = neg.shape
        uniq, inv = self._batch_nodes(users, pos, neg)
        alpha = self.reliability.alpha                           # [m, M]
        scales, node_scale = [alpha], None
        if self.mask.active and self.mask_scope == "node":
            z = self.mask.sample(alpha.device, alpha.dtype, n=uniq.numel())    # [n, M]
            node_scale = alpha.unsqueeze(0) * z.unsqueeze(1)                  # [n, m, M]
        elif self.mask.active:
            z = self.mask.sample(alpha.device, alpha.dtype)      # [M], shared by modalities
            scales.append(alpha * z)
        hs, sq, l_dec = self._fuse_batch(uniq, torch.stack(scales), node_scale)
        h_full, h_masked = hs[0], (hs[1] if hs.shape[0] > 1 else None)

        def scores(h):
            x = h[inv]
            hu, hp, hn = x[:B], x[B:2 * B], x[2 * B:].view(B, n_neg, -1)
            return (hu * hp).sum(-1), (hu.unsqueeze(1) * hn).sum(-1)

        zero = h_full.new_zeros(())
        if h_masked is not None:
            pos_s, neg_s = scores(h_masked)
            if self.consistency == "representation":
                l_mask = consistency_loss(h_full, h_masked)
            else:
                pf, nf = scores(h_full)
                l_mask = consistency_loss(torch.cat([pf.unsqueeze(1), nf], 1),
                                          torch.cat([pos_s.unsqueeze(1), neg_s], 1))
        else:
            pos_s, neg_s = scores(h_full)
            l_mask = zero
        rec = ranking_loss(pos_s, neg_s, self.loss_kind)
        l_cl = zero
        if self.align is not None:
            items = torch.nonzero(uniq >= self.n_users).flatten()
            if items.numel() > self.align_items:
                items = items[torch.randperm(items.numel(), device=items.device)[:self.align_items]]
            l_cl = self.align(self.slots(uniq[items]))
        l_reg = self.reg * self._triplet_mean(sq, inv, B, n_neg) / 2
        l_dec = zero if l_dec is None else l_dec
        l_fus = self.fusion.penalty() if self.lambda_fusion > 0 else zero
        total = (rec + self.lambda_mask * l_mask + self.lambda_cl * l_cl
                 + self.lambda_dec * l_dec + self.lambda_fusion * l_fus + l_reg)
        return {"loss": total, "rec": rec, "mask": l_mask, "align": l_cl, "dec": l_dec,
                "fusion": l_fus, "reg": l_reg}
