"""Exact attribution of SSR scores to (modality, band) slots and to the fusion's output bands.

G-HSNO fusion (DESIGN.md §2) writes a node's vector as ``h = Σ_o g_o Z_o / ρ_o`` with
per-node scalars ``g_o`` (softmax gates) and ``ρ_o = sqrt(mean(Z_o²) + eps)`` (scale norms),
and ``Z_o = Σ_s Q_o (V_{o,s} ⊙ (α_s K_s)ᵀ H_s)`` linear in the slots ``H_s``. With the
per-node scalars held at their values, ``h = Σ_{o,s} c_{o,s}`` exactly, where

    c_{o,s} = (g_o / ρ_o) · Q_o (V_{o,s} ⊙ (α_s K_s)ᵀ H_s).

So a score ``h_uᵀ h_i`` splits into ``A[o, s] = h_uᵀ c_{o,s}(i)`` (item side), or
``h_iᵀ c_{o,s}(u)`` (user side), or their mean (symmetric); each split sums to the score.
The plain-sum path ``Σ_s α_s H_s`` (the ``"sum"`` ablation, and the skip path of
``"cp+sum"``, ``h = Σ_s α_s H_s + γ · G-HSNO``) adds the terms ``α_s H_s`` as one more
pseudo output band, ``"sum"``. The sums are formed in float64 (``dtype``) from the model's
slots, so the only difference from the model's own scores is the model's rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from ..nn.fusion import CPFusion, SkipCPFusion, SumFusion
from ..nn.model import SSRModel

__all__ = ["FusionTerms", "fusion_terms", "Attribution", "attribute", "check_ssr_model",
           "fusion_paths", "band_edges_of"]

SIDES = ("item", "user", "symmetric")


def check_ssr_model(model, stored: bool = True):
    """Return ``model`` if it is an SSR model, else raise ``TypeError``.

    Args:
        model: the model to check.
        stored: also accept a model whose band slots are read from a band store
            (attributions work the same way; whole-graph profiles need the bands in memory).
    """
    if not isinstance(model, SSRModel):
        raise TypeError(f"explanations need an SSR model (SSRModel: band slots and fusion); "
                        f"got {type(model).__name__}. Baselines such as MFBPR and LightGCN "
                        "have no frequency bands to attribute to")
    if not stored and model.reads_store:
        raise TypeError("this explanation needs the model's bands in memory; the model reads "
                        "its band slots from a band store (build it without a stored source "
                        "on a graph that fits in memory)")
    if not isinstance(model.fusion, (CPFusion, SkipCPFusion, SumFusion)):
        raise TypeError(f"unknown fusion {type(model.fusion).__name__}; explanations support "
                        "CPFusion, SkipCPFusion and SumFusion")
    return model


def band_edges_of(model) -> Optional[List[float]]:
    """The model's ``[M + 1]`` band edges in ``λ`` (``None`` when it does not record them)."""
    report = getattr(model, "band_report", None) or {}
    edges = report.get("edges")
    return None if edges is None else [float(e) for e in edges]


def fusion_paths(model) -> Tuple[bool, Optional[CPFusion], Optional[torch.Tensor]]:
    """``(has the plain-sum path, the G-HSNO part or None, its weight γ or None)``."""
    f = model.fusion
    if isinstance(f, SumFusion):
        return True, None, None
    if isinstance(f, SkipCPFusion):
        return True, f.cp, f.gamma.detach()
    return False, f, None


@dataclass
class FusionTerms:
    """The fusion of a set of nodes, split into the parts that are linear in the slots.

    Attributes:
        h: ``[n, d]`` fused node vectors.
        summed: ``[n, S, d]`` scaled slots ``α_s H_s`` of the plain-sum path (``None``
            without one).
        keyed: ``[n, S, r]`` keyed slots ``P_s = (α_s K_s)ᵀ H_s`` of G-HSNO (``None``
            without it).
        weight: ``[n, O]`` per-node scalars ``γ c_o`` (``c_o = g_o / ρ_o`` in the paper's
            form, see :meth:`CPFusion.output_weights`; ``γ = 1`` without a skip path).
        gates: ``[n, O]`` softmax gates ``g_o`` (``None`` without gates).
        norms: ``[n, O]`` scale norms ``ρ_o`` (``None`` without scale normalisation).
    """

    h: torch.Tensor
    summed: Optional[torch.Tensor] = None
    keyed: Optional[torch.Tensor] = None
    weight: Optional[torch.Tensor] = None
    gates: Optional[torch.Tensor] = None
    norms: Optional[torch.Tensor] = None


@torch.no_grad()
def fusion_terms(model, nodes: torch.Tensor, dtype: torch.dtype = torch.float64) -> FusionTerms:
    """Recompute the inference fusion of ``nodes`` (no band mask) and keep its parts.

    Args:
        model: a trained SSR model (:class:`~ssr_engine.SSRModel`, bands in memory or
            read from a band store).
        nodes: ``[n]`` node ids (users first, items offset by ``n_users``).
        dtype: precision of the recomputation (the slots are the model's, cast to it).

    Returns:
        A :class:`FusionTerms` on the model's device.

    Shapes:
        ``nodes [n]`` -> ``h [n, d]``, ``summed [n, S, d]``, ``keyed [n, S, r]``,
        ``weight / gates / norms [n, O]``.

    Example:
        >>> import torch
        >>> from ssr_engine.data import synthetic_dataset
        >>> from ssr_engine.nn import SSRModel
        >>> from ssr_engine.explain import fusion_terms
        >>> ds = synthetic_dataset(40, 30, 250, modalities={"text": 6}, seed=0)
        >>> m = SSRModel(ds.train_graph(), ds.features, n_bands=2, dim=8, rank=4, fusion="cp")
        >>> t = fusion_terms(m, torch.tensor([0, 35]))
        >>> t.h.shape, t.keyed.shape, t.weight.shape
        (torch.Size([2, 8]), torch.Size([2, 4, 4]), torch.Size([2, 2]))
    """
    check_ssr_model(model)
    H = model.slots(nodes).flatten(1, 2).to(dtype)                       # [n, S, d]
    a = model.reliability.alpha.flatten().to(device=H.device, dtype=dtype)
    has_sum, cp, gamma = fusion_paths(model)
    out = FusionTerms(h=H.new_zeros(H.shape[0], H.shape[2]))
    if has_sum:
        out.summed = H * a[None, :, None]
        out.h = out.h + out.summed.sum(1)
    if cp is not None:
        K = cp.K.to(dtype) * a[:, None, None]
        P = torch.einsum("nsd,sdr->nsr", H, K)
        Z = cp.band_outputs(P)                                                  # [n, O, d]
        out.keyed = P
        if cp.gates:
            out.gates = torch.softmax(Z @ cp.w.to(dtype), dim=1)
        if cp.normalise:
            out.norms = torch.sqrt(Z.pow(2).mean(-1) + cp.eps)
        out.weight = cp.output_weights(Z) * (1.0 if gamma is None else gamma.to(dtype))
        out.h = out.h + torch.einsum("no,nod->nd", out.weight, Z)
    return out


def _pair_split(model, t: FusionTerms, li: torch.Tensor, ri: torch.Tensor) -> torch.Tensor:
    """``A[p, o, s] = h[li[p]]ᵀ c_{o,s}(ri[p])`` for nodes of ``t``: ``[p, O', S]``.

    ``O' = O`` output bands of G-HSNO, plus one leading ``"sum"`` band for a plain-sum path.
    """
    h = t.h[li]                                                          # [p, d]
    parts = []
    if t.summed is not None:
        parts.append(torch.einsum("pd,psd->ps", h, t.summed[ri]).unsqueeze(1))
    if t.keyed is not None:
        cp = fusion_paths(model)[1]
        q = torch.einsum("odr,pd->por", cp.Q.to(h.dtype), h)            # [p, O, r]
        A = torch.einsum("por,osr,psr->pos", q, cp.V.to(h.dtype), t.keyed[ri])
        parts.append(A * t.weight[ri].unsqueeze(-1))
    return torch.cat(parts, dim=1)


@dataclass
class Attribution:
    """Scores of (user, item) pairs split over output bands, modalities and bands.

    ``contributions.sum((2, 3, 4))`` equals the scores up to the model's rounding.

    Attributes:
        users: ``[B]`` user ids.
        items: ``[B, k]`` item ids.
        scores: ``[B, k]`` the model's scores ``h_uᵀ h_i`` (its own dtype, on the CPU).
        contributions: ``[B, k, O, m, M]`` float64 contributions (CPU).
        modalities: the ``m`` modality names (``"id"`` first).
        edges: ``[M + 1]`` band edges in ``λ`` (``None`` when the model does not record them).
        side: ``"item"``, ``"user"`` or ``"symmetric"``.
        output_labels: names of the ``O`` output bands: ``"sum"`` for the plain-sum path,
            ``"o1"``, ``"o2"``, … for G-HSNO's.
    """

    users: torch.Tensor
    items: torch.Tensor
    scores: torch.Tensor
    contributions: torch.Tensor
    modalities: List[str]
    edges: Optional[List[float]]
    side: str
    output_labels: List[str]

    @property
    def n_bands(self) -> int:
        return self.contributions.shape[-1]

    def total(self) -> torch.Tensor:
        """``[B, k]`` sum of all contributions (the reconstructed score)."""
        return self.contributions.sum(dim=(2, 3, 4))

    def by_slot(self) -> torch.Tensor:
        """``[B, k, m, M]`` contributions per (modality, band), summed over output bands."""
        return self.contributions.sum(dim=2)

    def by_output(self) -> torch.Tensor:
        """``[B, k, O]`` contributions per output band of the fusion."""
        return self.contributions.sum(dim=(3, 4))

    def by_band(self) -> torch.Tensor:
        """``[B, k, M]`` contributions per input band, summed over modalities."""
        return self.contributions.sum(dim=(2, 3))

    def by_modality(self) -> torch.Tensor:
        """``[B, k, m]`` contributions per modality, summed over bands."""
        return self.contributions.sum(dim=(2, 4))

    def shares(self) -> torch.Tensor:
        """``[B, k, m, M]`` ``|A_slot| / Σ |A_slot|`` per pair (sums to 1 over the slots)."""
        a = self.by_slot().abs()
        return a / a.sum(dim=(2, 3), keepdim=True).clamp_min(1e-300)

    def relative_error(self) -> torch.Tensor:
        """``[B, k]`` ``|total − score| / |score|``."""
        s = self.scores.to(torch.float64)
        return (self.total() - s).abs() / s.abs().clamp_min(1e-300)

    def band_labels(self) -> List[str]:
        """``["b1 [0.000, 0.410)", …]``: band names with their λ range."""
        e = self.edges
        if e is None:
            return [f"b{b + 1}" for b in range(self.n_bands)]
        return [f"b{b + 1} [{e[b]:.3f}, {e[b + 1]:.3f}{']' if b == len(e) - 2 else ')'}"
                for b in range(len(e) - 1)]

    def slot_labels(self) -> List[str]:
        """``m·M`` names ``"<modality>:b<band>"`` in ``(modality, band)`` order."""
        return [f"{m}:b{b + 1}" for m in self.modalities for b in range(self.n_bands)]


def _as_pairs(model, users, items, k: int, exclude_seen: bool):
    users = model._check_ids(torch.as_tensor(users), model.n_users, "user").reshape(-1)
    if users.numel() == 0:
        raise ValueError("users is empty; pass at least one user id")
    if items is None:
        scores, items = model.recommend(users, k=k, exclude_seen=exclude_seen)
        return users, items, scores
    items = model._check_ids(torch.as_tensor(items), model.n_items, "item")
    if items.dim() == 1:
        items = items.unsqueeze(1)
    if items.dim() != 2 or items.shape[0] != users.shape[0]:
        raise ValueError(f"items must be [B] or [B, k] for B={users.shape[0]} users, got "
                         f"shape {tuple(items.shape)}")
    flat = model.score(users.repeat_interleave(items.shape[1]), items.reshape(-1))
    return users, items, flat.view_as(items)


@torch.no_grad()
def attribute(model, users, items=None, k: int = 10, side: str = "item",
              exclude_seen: bool = True, chunk: int = 4096) -> Attribution:
    """Split the scores of users' items over (output band, modality, band) exactly.

    Args:
        model: a trained :class:`~ssr_engine.SSRModel` (any band source, any fusion: CP,
            CP + sum, plain sum; any modalities; CPU or CUDA).
        users: ``[B]`` user ids.
        items: ``[B, k]`` (or ``[B]``) item ids to explain; ``None``: each user's top-``k``.
        k: list length when ``items`` is ``None``.
        side: ``"item"`` (``A = h_uᵀ c(i)``, which of the item's bands match the user),
            ``"user"`` (``h_iᵀ c(u)``) or ``"symmetric"`` (their mean).
        exclude_seen: with ``items=None``, skip the users' training items.
        chunk: pairs processed at once (bounds memory).

    Returns:
        An :class:`Attribution` (CPU tensors).

    Raises:
        TypeError: when ``model`` is not an SSR model.
        ValueError: on out-of-range ids, a bad ``side`` or mismatched shapes.

    Shapes:
        ``users [B]``, ``items [B, k]`` -> ``contributions [B, k, O, m, M]``.

    Example:
        >>> import torch
        >>> from ssr_engine.data import synthetic_dataset
        >>> from ssr_engine.nn import SSRModel
        >>> from ssr_engine.explain import attribute
        >>> ds = synthetic_dataset(40, 30, 250, modalities={"text": 6}, seed=0)
        >>> m = SSRModel(ds.train_graph(), ds.features, n_bands=2, dim=8, rank=4, fusion="cp")
        >>> a = attribute(m, [0, 1], k=3)
        >>> a.contributions.shape
        torch.Size([2, 3, 2, 2, 2])
        >>> bool(a.relative_error().max() < 1e-5)
        True
    """
    check_ssr_model(model)
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    was_training = model.training
    model.eval()
    try:
        users, items, scores = _as_pairs(model, users, items, k, exclude_seen)
        B, kk = items.shape
        pu = users.repeat_interleave(kk)
        pi = items.reshape(-1)
        parts = []
        for lo in range(0, pu.numel(), chunk):
            u, i = pu[lo:lo + chunk], pi[lo:lo + chunk]
            nodes = torch.cat([u, i + model.n_users])
            uniq, inv = torch.unique(nodes, return_inverse=True)
            t = fusion_terms(model, uniq)
            ui, ii = inv[:u.numel()], inv[u.numel():]
            if side == "item":
                A = _pair_split(model, t, ui, ii)
            elif side == "user":
                A = _pair_split(model, t, ii, ui)
            else:
                A = 0.5 * (_pair_split(model, t, ui, ii) + _pair_split(model, t, ii, ui))
            parts.append(A.cpu())
    finally:
        model.train(was_training)
    A = torch.cat(parts)
    m, M = len(model.modalities), model.n_bands
    O = A.shape[1]
    has_sum = fusion_paths(model)[0]
    labels = (["sum"] if has_sum else []) + [f"o{o + 1}" for o in range(O - int(has_sum))]
    return Attribution(users=users.cpu(), items=items.cpu(), scores=scores.detach().cpu(),
                       contributions=A.view(B, kk, O, m, M), modalities=list(model.modalities),
                       edges=band_edges_of(model), side=side,
                       output_labels=labels)
