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

``score(u, i) = h_uᵀ h_i``; ``L = L_rec + λ_mask L_mask + λ_cl L_cl + λ_reg ‖Θ‖²`` where the
L2 term is applied, as in the baselines, to the band slots of the batch's nodes.
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..graph import InteractionGraph
from ..linalg import graph_eigs
from ..spectral import SpectralBands
from .alignment import SpectralInfoNCE
from .bands import FixedBands, SpectralIDBands, reduce_features
from .fusion import CPFusion, SkipCPFusion, SumFusion
from .modulation import BandMask, BandReliability, consistency_loss
from .recommender import Recommender, ranking_loss

__all__ = ["SSRModel"]

ArrayLike = Union[np.ndarray, torch.Tensor]

#: graphs up to this many nodes get the full eigenbasis for the ID modality by default.
FULL_BASIS_MAX_NODES = 6000
#: eigenpairs per end of the spectrum for the ID modality on larger graphs.
DEFAULT_ID_BASIS = 256


def _check_features(graph: InteractionGraph, features: Optional[Mapping[str, ArrayLike]]
                    ) -> Dict[str, torch.Tensor]:
    out = {}
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


class _SSRObjective:
    """The training objective of the SSR models from the fused vectors on, shared by
    :class:`SSRModel` and :class:`~ssr_engine.train.stored_model.StoredSSR` (which differ in
    how they form the band slots and fuse them).

    Uses the model's ``n_users``, ``loss_kind``, ``consistency``, ``align``, ``align_items``,
    ``lambda_mask`` and ``lambda_cl``.
    """

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

    def _objective(self, uniq: torch.Tensor, inv: torch.Tensor, B: int, n_neg: int,
                   h_full: torch.Tensor, h_masked: Optional[torch.Tensor],
                   align_slots: Callable[[torch.Tensor], torch.Tensor],
                   reg: Callable[[], torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``L = L_rec + λ_mask L_mask + λ_cl L_cl + L_reg`` of a batch of ``B`` triplets.

        Args:
            uniq, inv: from :meth:`_batch_nodes`.
            B, n_neg: the batch's triplets and negatives per triplet.
            h_full: ``[n, d]`` fused vectors of ``uniq`` without band mask.
            h_masked: ``[n, d]`` the same under the step's band mask (``None``: no mask).
            align_slots: positions ``[k]`` in ``uniq`` -> their band slots ``[k, m, M, d]``.
            reg: the regularisation term, called after the other losses.
        """
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
            l_cl = self.align(align_slots(items))
        l_reg = reg()
        total = rec + self.lambda_mask * l_mask + self.lambda_cl * l_cl + l_reg
        return {"loss": total, "rec": rec, "mask": l_mask, "align": l_cl, "reg": l_reg}


class SSRModel(_SSRObjective, Recommender):
    """The SSR recommender: band decomposition, modulation, G-HSNO fusion and alignment.

    Args:
        graph: the training interaction graph.
        features: modality name -> ``[n_items, d_m]`` item features (``None`` or ``{}``:
            ID-only).
        n_bands: number of bands ``M``.
        dim: embedding size ``d``.
        rank: CP rank ``r`` of the fusion.
        approx: how the content bands are computed: ``"auto"``, ``"exact"``, ``"eigen"``,
            ``"lobpcg"`` (``"eigen"`` with the LOBPCG solver) or ``"chebyshev"`` (see
            :class:`~ssr_engine.spectral.SpectralBands`).
        order: Chebyshev order (``approx="chebyshev"``; default: the bands helper's).
        id_basis: eigenpairs per end of the spectrum for the ID modality; ``None`` picks the
            full basis up to ``FULL_BASIS_MAX_NODES`` nodes and ``DEFAULT_ID_BASIS`` beyond.
        id_prior: fixed spectral prior of the ID coefficients (``"none"``, ``"lightgcn"``,
            ``"mirror"``; see :class:`~ssr_engine.nn.SpectralIDBands`).
        d0: content features are reduced to at most ``d0`` dimensions by PCA.
        band_edges: ``"energy"`` (energy-balanced) or ``"uniform"`` (equal widths in λ).
        fusion: ``"sum"`` (plain sum of the modulated slots — the default, chosen on
            validation: on MovieLens-100k it beat G-HSNO clearly), ``"cp"`` (G-HSNO,
            :class:`~ssr_engine.nn.CPFusion`) or ``"cp+sum"`` (G-HSNO on a linear skip path,
            :class:`~ssr_engine.nn.SkipCPFusion`).
        n_out: output bands of the fusion (default ``n_bands``).
        band_mask: use the band mask and its consistency loss.
        mask_p: band drop probability ``p``.
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
        seed: seed of the parameter initialisation and of the white probe signal.
        backend: backend of the fused ops (``"auto"``, ``"torch"``, ``"triton"``).

    Shapes:
        ``slots(nodes [n])`` -> ``[n, m, M, d]``; ``node_embeddings()`` ->
        ``([n_users, d], [n_items, d])``.

    Raises:
        ValueError: on feature rows that don't match the items, NaN/inf features, unknown
            options or out-of-range sizes.

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
                 id_prior: str = "none", d0: int = 64,
                 band_edges: str = "energy", fusion: str = "sum", n_out: Optional[int] = None,
                 band_mask: bool = True, mask_p: float = 0.2, lambda_mask: float = 0.1,
                 consistency: str = "representation", align: bool = True,
                 lambda_cl: float = 0.05, tau: float = 0.2, align_items: int = 256,
                 reg: float = 1e-4,
                 loss: str = "bpr", seed: int = 0, backend: str = "auto"):
        super().__init__(graph.interaction_matrix(), loss)
        if n_bands < 1 or dim < 1 or rank < 1 or d0 < 1:
            raise ValueError(f"n_bands, dim, rank and d0 must be >= 1, got {n_bands}, {dim}, "
                             f"{rank}, {d0}")
        for opt, val, allowed in (("band_edges", band_edges, ("energy", "uniform")),
                                  ("fusion", fusion, ("cp", "cp+sum", "sum")),
                                  ("consistency", consistency, ("representation",
                                                                "prediction"))):
            if val not in allowed:
                raise ValueError(f"{opt} must be one of {allowed}, got {val!r}")
        feats = _check_features(graph, features)
        self._config = {
            "model": "ssr", "n_users": graph.n_users, "n_items": graph.n_items,
            "features": {k: int(v.shape[1]) for k, v in feats.items()}, "n_bands": n_bands,
            "dim": dim, "rank": rank, "approx": approx, "order": order, "id_basis": id_basis,
            "id_prior": id_prior,
            "d0": d0, "band_edges": band_edges, "fusion": fusion, "n_out": n_out,
            "band_mask": band_mask, "mask_p": mask_p, "lambda_mask": lambda_mask,
            "consistency": consistency, "align": align, "lambda_cl": lambda_cl, "tau": tau,
            "align_items": align_items,
            "reg": reg, "loss": loss, "seed": seed}
        self.modalities = ["id"] + list(feats)
        self.n_bands, self.dim = int(n_bands), int(dim)
        self.reg, self.lambda_mask, self.lambda_cl = float(reg), float(lambda_mask), float(lambda_cl)
        self.consistency, self.align_items = consistency, int(align_items)
        gen = torch.Generator().manual_seed(int(seed))

        # 1. decomposition: shared edges, content bands, spectral ID bands.
        signals = {}
        for name, f in feats.items():
            x = graph.node_signal(reduce_features(f, d0))
            signals[name] = x / x.pow(2).mean().sqrt().clamp_min(1e-12)
        method, solver = ("eigen", "lobpcg") if approx == "lobpcg" else (approx, "auto")
        bands = SpectralBands(graph, n_bands=n_bands, method=method, order=order,
                              dtype=torch.float64, solver=solver)
        if band_edges == "energy":
            probe = (torch.cat(list(signals.values()), dim=1) if signals else
                     torch.randn(graph.n_nodes, 32, generator=gen, dtype=torch.float64))
            bands.fit(probe)
        else:
            bands.fit_uniform()
        shares = bands.shares_
        self.band_report = {"method": bands.method_, "order": bands.order_,
                            "edges": [float(e) for e in bands.edges],
                            "shares": None if shares is None else [float(x) for x in shares],
                            "atoms": [(float(a.lam), float(a.fraction)) for a in bands.atoms_],
                            "fitted_on": ("content" if signals else "white probe")
                            if band_edges == "energy" else "uniform"}
        self.content = nn.ModuleDict({name: FixedBands(bands.transform(x), dim)
                                      for name, x in signals.items()})
        self.id_bands = self._build_id_bands(graph, bands.edges, id_basis, id_prior, gen)

        # 2-4. modulation, fusion, alignment.
        m = len(self.modalities)
        self.reliability = BandReliability(m, n_bands)
        self.mask = BandMask(n_bands, mask_p if band_mask else 0.0)
        kinds = {"cp": CPFusion, "cp+sum": SkipCPFusion}
        self.fusion = (kinds[fusion](m * n_bands, dim, rank, n_out or n_bands, backend=backend)
                       if fusion in kinds else SumFusion())
        self.align = SpectralInfoNCE(tau) if (align and m >= 2) else None

    def _build_id_bands(self, graph: InteractionGraph, edges, id_basis: Optional[int],
                        prior: str, gen: torch.Generator) -> SpectralIDBands:
        n = graph.n_nodes
        full = (id_basis is None and n <= FULL_BASIS_MAX_NODES) or (
            id_basis is not None and 2 * int(id_basis) >= n)
        if full:
            lam, U = torch.linalg.eigh(graph.laplacian(dtype=torch.float64).to_dense())
            return SpectralIDBands(U, lam.clamp(0.0, 2.0), edges, self.dim, residual=False,
                                   prior=prior, generator=gen)
        k = DEFAULT_ID_BASIS if id_basis is None else int(id_basis)
        lam, U = graph_eigs(graph, k, which="both")
        return SpectralIDBands(U, lam.clamp(0.0, 2.0), edges, self.dim, residual=True,
                               prior=prior, generator=gen)

    # -- Recommender interface ---------------------------------------------------------
    def config(self) -> Dict:
        return dict(self._config)

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

    def node_embeddings(self, chunk: int = 8192) -> Tuple[torch.Tensor, torch.Tensor]:
        """Inference vectors (no band mask): ``([n_users, d], [n_items, d])``."""
        dev = self.id_bands.basis.device
        n = self.n_users + self.n_items
        with torch.no_grad():
            alpha = self.reliability.alpha
            h = torch.cat([self.fuse(self.slots(torch.arange(lo, min(lo + chunk, n),
                                                             device=dev)), alpha)
                           for lo in range(0, n, chunk)])
        return h[:self.n_users], h[self.n_users:]

    def batch_loss(self, users, pos, neg) -> Dict[str, torch.Tensor]:
        B, n_neg = neg.shape
        uniq, inv = self._batch_nodes(users, pos, neg)
        raw = self.slots(uniq)                                   # [n, m, M, d]
        alpha = self.reliability.alpha                           # [m, M]
        h_full = self.fuse(raw, alpha)
        h_masked = None
        if self.mask.active:
            z = self.mask.sample(alpha.device, alpha.dtype)      # [M], shared by modalities
            h_masked = self.fuse(raw, alpha * z)

        def reg():
            return self.reg * self._triplet_mean(raw.pow(2).sum(dim=(1, 2, 3)), inv, B, n_neg) / 2

        return self._objective(uniq, inv, B, n_neg, h_full, h_masked, lambda items: raw[items],
                               reg)
