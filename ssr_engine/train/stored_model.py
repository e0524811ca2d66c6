"""SSR on stored band features: a training step reads its batch's rows and nothing else.

:class:`StoredSSR` is the SSR model of :class:`~ssr_engine.SSRModel` (band modulation with
reliabilities and band mask, G-HSNO CP fusion, band-wise alignment, BPR/BCE) whose band
slots come from a :class:`~ssr_engine.train.store.BandStore` (DESIGN.md §3):

* content modality ``m``: ``H_{m,b}(v) = X_{m,b}[v] W_m`` — the stored band ``b`` of the
  reduced features times a learnable ``W_m`` (filters commute with ``W_m``);
* the ID modality: ``H_{id,b}(v) = (h_b(L) P)[v] W_id`` — the stored bands of the fixed
  random node projection ``P`` times a learnable ``W_id`` (band-limited by construction, no
  eigenbasis needed) — plus, in the last (highest-frequency) band, a free per-node
  residual embedding ``E[v]``: what a rank-``d0`` projection of smooth random features
  cannot express. ``E`` is an ``nn.Embedding`` with sparse gradients, so the optimiser
  touches only the batch's rows.

**Cost of a step.** Nothing of size ``[n, S, d]`` is formed. The projections fold into the
fusion's factors: with ``A_s = W_mᵀ K_s`` the CP mix of slot ``s`` is
``C_o = Σ_s V_{o,s} ⊙ α_s (X_s[v] A_s)``, so per band ``b`` one product
``X_b [n, D] @ B_b [D, O·r]`` (``D = Σ_m d_m``, ``B_b`` built from the parameters each step)
gives that band's share ``C^{(b)}``; the full pass is ``Σ_b C^{(b)}`` and the band-masked pass
``Σ_b z_b C^{(b)}`` — the mask costs nothing extra. The rest stays in the ``r``-space of the
CP factors (``Z_o = Q_o C_o`` is never formed): the gate logit is ``C_o · (Q_oᵀ w)``, the
norm ``‖Z_o‖² = C_oᵀ (Q_oᵀ Q_o) C_o`` and ``h = Σ_o Q_o (g_o C_o / rms(Z_o))`` — one product
``[n, O·r] @ [O·r, d]``. The slots themselves are formed only for the (at most
``align_items``) items of the alignment loss. With ``~B(2 + n_neg)`` distinct nodes a
step costs ``O(B · M · D · O · r)``, independent of the graph size.

**Regularisation.** ``λ_reg ‖Θ‖²`` on the parameters a step uses: the batch's residual rows
(as the baselines regularise their batch embeddings: half the mean over the triplets of
``‖E_u‖² + ‖E_pos‖² + mean ‖E_neg‖²``) and the projections ``W_m``.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ..nn import BandMask, BandReliability, CPFusion, SkipCPFusion, SpectralInfoNCE, SumFusion
from ..nn.model import _SSRObjective
from ..nn.recommender import Recommender
from .store import BandStore

__all__ = ["StoredSSR"]


class StoredSSR(_SSRObjective, Recommender):
    """The SSR recommender on precomputed, stored band features.

    Args:
        store: the band store (from :func:`~ssr_engine.train.precompute.precompute_bands`);
            modality ``"id"`` is the ID projection, the others content modalities.
        seen: ``[n_users, n_items]`` sparse matrix of the training interactions.
        dim: embedding size ``d``.
        rank: CP rank ``r`` of the fusion.
        residual: add the free per-node ID residual to the last band.
        fusion: ``"cp"`` (G-HSNO), ``"sum"`` (plain sum of the modulated slots) or
            ``"cp+sum"`` (G-HSNO on a linear skip path, :class:`~ssr_engine.nn.SkipCPFusion`).
        n_out: output bands of the fusion (default ``M``).
        band_mask: use the band mask and its consistency loss.
        mask_p: band drop probability.
        lambda_mask: weight of the consistency loss.
        consistency: ``"representation"`` (fused vectors) or ``"prediction"`` (scores).
        align: band-wise InfoNCE alignment between modalities.
        lambda_cl: weight of the alignment loss.
        tau: InfoNCE temperature.
        align_items: the alignment uses at most this many of the batch's items.
        reg: ``λ_reg``.
        loss: ``"bpr"`` or ``"bce"``.
        seed: seed of the parameter initialisation (the global RNG is left untouched).

    Shapes:
        ``slots(nodes [n])`` -> ``[n, m, M, d]``; ``embed(nodes [n])`` -> ``[n, d]``.

    Raises:
        ValueError: when the store and ``seen`` disagree on the node count, or on bad
            options.

    Example:
        >>> import tempfile, torch
        >>> from ssr_engine.data import synthetic_dataset
        >>> from ssr_engine.train.precompute import precompute_bands
        >>> ds = synthetic_dataset(200, 100, 2000, modalities={"text": 8}, seed=0)
        >>> store, _ = precompute_bands(ds.train_graph(), ds.features, tempfile.mkdtemp(),
        ...                             n_bands=3, order=16, d0=8, quiet=True)
        >>> model = StoredSSR(store, ds.user_item_matrix("train"), dim=16, rank=4)
        >>> out = model.loss(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5]))
        >>> out["loss"].dim(), model.embed(torch.tensor([0, 250])).shape
        (0, torch.Size([2, 16]))
    """

    def __init__(self, store: BandStore, seen: sp.spmatrix, dim: int = 64, rank: int = 16, *,
                 residual: bool = True, fusion: str = "cp", n_out: Optional[int] = None,
                 band_mask: bool = True, mask_p: float = 0.2, lambda_mask: float = 0.1,
                 consistency: str = "representation", align: bool = True,
                 lambda_cl: float = 0.05, tau: float = 0.2, align_items: int = 256,
                 reg: float = 1e-4, loss: str = "bpr", seed: int = 0):
        super().__init__(seen, loss)
        if self.n_users + self.n_items != store.n_nodes:
            raise ValueError(f"the band store has {store.n_nodes} nodes but the interaction "
                             f"matrix {self.n_users} users + {self.n_items} items")
        if "id" not in store.modalities:
            raise ValueError(f"the band store holds no 'id' modality: {store.modalities}")
        if min(dim, rank) < 1 or (n_out is not None and n_out < 1):
            raise ValueError(f"dim, rank and n_out must be >= 1, got {dim}, {rank}, {n_out}")
        for opt, val, allowed in (("fusion", fusion, ("cp", "cp+sum", "sum")),
                                  ("consistency", consistency, ("representation",
                                                                "prediction"))):
            if val not in allowed:
                raise ValueError(f"{opt} must be one of {allowed}, got {val!r}")
        self.store = store
        self.modalities = list(store.modalities)
        M = store.n_bands
        self.n_bands, self.dim = M, int(dim)
        self.reg, self.lambda_mask = float(reg), float(lambda_mask)
        self.lambda_cl = float(lambda_cl)
        self.consistency, self.align_items = consistency, int(align_items)
        self._config = {
            "model": "ssr-stored", "n_users": self.n_users, "n_items": self.n_items,
            "store": store.meta["key"], "dims": store.dims, "n_bands": M, "dim": dim,
            "rank": rank, "residual": residual, "fusion": fusion, "n_out": n_out,
            "band_mask": band_mask, "mask_p": mask_p, "lambda_mask": lambda_mask,
            "consistency": consistency, "align": align, "lambda_cl": lambda_cl, "tau": tau,
            "align_items": align_items, "reg": reg, "loss": loss, "seed": seed}
        self.band_report = store.meta.get("info", {}).get("plan")
        m = len(self.modalities)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.proj = nn.ModuleDict({name: nn.Linear(d, dim, bias=False)
                                       for name, d in store.dims.items()})
            self.residual = None
            if residual:
                n = store.n_nodes
                self.residual = nn.Embedding(n, dim, sparse=True)
                nn.init.normal_(self.residual.weight, std=math.sqrt(2.0 / (n + dim)))
            self.reliability = BandReliability(m, M)
            self.mask = BandMask(M, mask_p if band_mask else 0.0)
            kinds = {"cp": CPFusion, "cp+sum": SkipCPFusion}
            self.fusion = (kinds[fusion](m * M, dim, rank, n_out or M) if fusion in kinds
                           else SumFusion())
        self.align = SpectralInfoNCE(tau) if (align and m >= 2) else None

    # -- Recommender interface ----------------------------------------------------------------
    def config(self) -> Dict:
        return dict(self._config)

    @property
    def device(self) -> torch.device:
        return self.reliability.rho.device

    def sparse_parameters(self):
        """Parameters with sparse gradients (the ID residual): for ``torch.optim.SparseAdam``."""
        return [] if self.residual is None else [self.residual.weight]

    def dense_parameters(self):
        """All other parameters: for ``torch.optim.Adam``."""
        sparse = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]

    # -- slots and mixes -------------------------------------------------------------------------
    def _rows(self, nodes: torch.Tensor) -> Dict[str, torch.Tensor]:
        dev, dtype = self.device, self.reliability.rho.dtype
        return {k: v.to(dev, dtype, non_blocking=True) for k, v in self.store.rows(nodes).items()}

    def _slots(self, rows: Dict[str, torch.Tensor], nodes: torch.Tensor) -> torch.Tensor:
        parts = []
        for name in self.modalities:
            x = self.proj[name](rows[name])                                  # [n, M, d]
            if name == "id" and self.residual is not None:
                last = x[:, -1] + self.residual(nodes.to(self.device))
                x = torch.cat([x[:, :-1], last.unsqueeze(1)], dim=1)
            parts.append(x)
        return torch.stack(parts, dim=1)

    def slots(self, nodes: torch.Tensor) -> torch.Tensor:
        """Band slots of nodes (users first, items offset by ``n_users``): ``[n, m, M, d]``."""
        return self._slots(self._rows(nodes), nodes)

    def _cp(self) -> Optional[CPFusion]:
        f = self.fusion
        return f if isinstance(f, CPFusion) else f.cp if isinstance(f, SkipCPFusion) else None

    def _band_maps(self, alpha: torch.Tensor):
        """Per band the map from the stored rows to the fusion's mix, reliabilities folded
        in: ``[M, D, k]`` with ``k = d`` (the slot sum) and/or ``O·r`` (the CP mix
        ``C^{(b)}``), sum first; and the residual's map ``[d, k]`` (None without one)."""
        M, cp, skip = self.n_bands, self._cp(), not isinstance(self.fusion, CPFusion)
        maps, res = [], None
        for j, name in enumerate(self.modalities):
            Wt = self.proj[name].weight.T                                      # [d_m, d]
            a = alpha[j]                                                       # [M]
            parts, res_parts = [], []
            if skip:
                parts.append(a[:, None, None] * Wt.unsqueeze(0))               # [M, d_m, d]
                res_parts.append(a[-1] * torch.eye(self.dim, device=Wt.device, dtype=Wt.dtype))
            if cp is not None:
                K, V = cp.K[j * M:(j + 1) * M], cp.V[:, j * M:(j + 1) * M]
                A = torch.matmul(Wt.unsqueeze(0), K)                           # [M, d_m, r]
                parts.append(torch.einsum("bkr,obr,b->bkor", A, V, a).flatten(2))
                res_parts.append(torch.einsum("kr,or->kor", K[-1], V[:, -1]).flatten(1) * a[-1])
            maps.append(torch.cat(parts, dim=2))
            if name == "id" and self.residual is not None:
                res = torch.cat(res_parts, dim=1)
        return torch.cat(maps, dim=1), res

    def _mix(self, rows: Dict[str, torch.Tensor], nodes: torch.Tensor,
             alpha: torch.Tensor, masks=()):
        """The fusion's mix for the full pass and for each band mask ``z [M]`` in ``masks``."""
        X = torch.cat([rows[name] for name in self.modalities], dim=2)       # [n, M, D]
        maps, res_map = self._band_maps(alpha)
        Y = torch.bmm(X.transpose(0, 1), maps)                                # [M, n, k]
        E = self.residual(nodes.to(self.device)) @ res_map if res_map is not None else None
        out = []
        for z in (None, *masks):
            if z is None:
                y = Y.sum(0)
                out.append(y if E is None else y + E)
            else:
                y = torch.einsum("b,bnk->nk", z.to(Y.dtype), Y)
                out.append(y if E is None else y + z[-1] * E)
        return out

    def _finish(self, mix: torch.Tensor) -> torch.Tensor:
        """Fused vectors ``[n, d]`` from a mix (``[n, k]``, see :meth:`_band_maps`)."""
        f, cp = self.fusion, self._cp()
        if cp is None:
            return mix
        if isinstance(f, CPFusion):
            return _fuse_from_mix(mix, cp.Q, cp.w, cp.eps)
        d = self.dim
        return mix[:, :d] + f.gamma * _fuse_from_mix(mix[:, d:], cp.Q, cp.w, cp.eps)

    @torch.no_grad()
    def embed(self, nodes, chunk: int = 65536, progress=None) -> torch.Tensor:
        """Inference vectors (no band mask) of ``nodes``: ``[n, d]`` on the model's device.

        Args:
            nodes: ``[n]`` node ids (users first).
            chunk: nodes per block.
            progress: optional tqdm bar, advanced by the nodes done.
        """
        nodes = torch.as_tensor(np.asarray(nodes) if not isinstance(nodes, torch.Tensor)
                                else nodes, dtype=torch.int64)
        alpha = self.reliability.alpha
        out = []
        for lo in range(0, nodes.numel(), chunk):
            part = nodes[lo:lo + chunk]
            out.append(self._finish(self._mix(self._rows(part), part, alpha)[0]))
            if progress is not None:
                progress.update(part.numel())
        return torch.cat(out) if out else torch.zeros(0, self.dim, device=self.device)

    def node_embeddings(self, chunk: int = 65536) -> Tuple[torch.Tensor, torch.Tensor]:
        """Inference vectors of all nodes: ``([n_users, d], [n_items, d])``."""
        h = self.embed(torch.arange(self.n_users + self.n_items), chunk)
        return h[:self.n_users], h[self.n_users:]

    def forward(self, users: torch.Tensor, pos: torch.Tensor,
                neg: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The training losses (``Recommender.loss``); a module call, so DDP can wrap it."""
        return self.loss(users, pos, neg)

    def batch_loss(self, users, pos, neg) -> Dict[str, torch.Tensor]:
        B, n_neg = neg.shape
        uniq, inv = self._batch_nodes(users, pos, neg)
        rows = self._rows(uniq)
        alpha = self.reliability.alpha                                       # [m, M]
        z = self.mask.sample(alpha.device, alpha.dtype) if self.mask.active else None
        mixes = self._mix(rows, uniq, alpha, masks=() if z is None else (z,))
        h_full = self._finish(mixes[0])
        h_masked = self._finish(mixes[1]) if z is not None else None          # band mask

        def align_slots(items):
            return self._slots({k: v[items] for k, v in rows.items()}, uniq[items])

        def reg():
            l_reg = sum(p.pow(2).sum() for p in self.proj.parameters())
            if self.residual is not None:
                sq = self.residual(uniq.to(self.device)).pow(2).sum(-1)
                l_reg = l_reg + self._triplet_mean(sq, inv, B, n_neg) / 2
            return self.reg * l_reg

        return self._objective(uniq, inv, B, n_neg, h_full, h_masked, align_slots, reg)


def _fuse_from_mix(C: torch.Tensor, Q: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """G-HSNO output from the CP mix ``C [n, O·r]``, equal to ``ops.cp_fusion``'s.

    With ``Z_o = Q_o C_o``: gate logits ``Z_o · w = C_o · (Q_oᵀ w)``, mean square
    ``mean(Z_o²) = C_oᵀ (Q_oᵀ Q_o) C_o / d`` and ``h = Σ_o g_o Z_o / sqrt(mean(Z_o²) + eps)
    = [g_o C_o / rms_o]_o @ [Q_oᵀ]_o`` — ``Z`` (``[n, O, d]``) is never formed.
    """
    O, d, r = Q.shape
    C = C.reshape(-1, O, r)
    logits = torch.einsum("nor,or->no", C, torch.einsum("odr,d->or", Q, w))
    gram = torch.einsum("odr,ods->ors", Q, Q)                                # [O, r, r]
    ms = (torch.einsum("nor,ors->nos", C, gram) * C).sum(-1).clamp_min(0.0) / d
    coef = torch.softmax(logits, dim=1) * torch.rsqrt(ms + eps)              # [n, O]
    return (C * coef.unsqueeze(-1)).flatten(1) @ Q.transpose(1, 2).reshape(O * r, d)
