"""The band profile of a trained SSR model: spectra, reliabilities, band interactions, usage.

* :func:`modality_spectra` — each modality's energy over the Laplacian spectrum with the
  model's band edges and the atoms (content modalities: the node signal the bands were
  computed from, via :meth:`~ssr_engine.spectral.SpectralBands.spectrum`; the ID modality:
  the learned embedding, whose spectrum is exact in its eigenbasis).
* :func:`slot_energy` — how much signal each (modality, band) slot feeds the fusion after
  the learned projection and reliability.
* :func:`band_interaction` — the CP band-interaction tensor reduced to an ``[O, S]`` map.
* :func:`band_usage` — mean attribution share per slot over the top-``k`` lists of user
  groups (cold-start users and activity groups of the others).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

from ..data import Dataset
from ..nn.model import SSRModel
from ..spectral import Atom, SpectralBands, Spectrum
from .attribution import attribute, check_ssr_model, fusion_paths

__all__ = ["ModalitySpectrum", "modality_spectra", "reliabilities", "slot_energy",
           "band_interaction", "BandUsage", "band_usage", "check_dataset"]

#: number of λ bins of the spectra.
SPECTRUM_GRID = 512
#: smallest atom (fraction of a modality's energy) that is reported.
ATOM_MIN = 0.02
#: eigenvalues closer than this form one cluster (an atom candidate).
CLUSTER_TOL = 1e-6


def check_dataset(model: SSRModel, dataset: Dataset) -> None:
    """Raise ``ValueError`` unless ``dataset`` has the model's users and items."""
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be an ssr_engine.data.Dataset, got "
                        f"{type(dataset).__name__}")
    if (dataset.n_users, dataset.n_items) != (model.n_users, model.n_items):
        raise ValueError(f"the model has {model.n_users} users x {model.n_items} items but "
                         f"dataset {dataset.name!r} has {dataset.n_users} x "
                         f"{dataset.n_items}; pass the dataset the model was trained on")


@dataclass
class ModalitySpectrum:
    """One modality's energy over ``λ`` and per band.

    Attributes:
        name: modality name.
        source: what signal the spectrum is of.
        spectrum: density over ``λ``, atoms and uncovered fraction
            (:class:`~ssr_engine.spectral.Spectrum`; density as a fraction of the energy).
        band_shares: ``[M]`` share of the (non-trivial) energy in each of the model's bands.
    """

    name: str
    source: str
    spectrum: Spectrum
    band_shares: torch.Tensor


def _content_shares(bands: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # ‖(I − v vᵀ) X_b‖² per band of the stored [M, N, d0] band signals.
    x = bands.to(torch.float64)
    c = x - v[None, :, None] * torch.einsum("n,bnd->bd", v, x)[:, None, :]
    E = c.pow(2).sum(dim=(1, 2)).cpu()
    return E / E.sum().clamp_min(1e-300)


def _id_sums(ids, v: Optional[torch.Tensor] = None, block: int = 1 << 14):
    """One pass, by node blocks, over the ID band vectors as the model computes them (prior,
    residual and its smoothing included), ``H [N, M, d]`` with embedding ``E = Σ_b H_b``:
    per-band energy ``Σ_n ‖H_{n,b}‖²`` ``[M]``; with ``v`` also ``Uᵀ E`` ``[k, d]``,
    ``vᵀ E`` ``[d]``, ``Uᵀ v`` ``[k]`` and ``‖E‖²`` (float64)."""
    band = 0.0
    UtE, vtE, Utv, sq = 0.0, 0.0, 0.0, 0.0
    with torch.no_grad():
        for lo in range(0, ids.n_nodes, block):
            hi = min(lo + block, ids.n_nodes)
            H = ids(torch.arange(lo, hi, device=ids.coef.device)).to(torch.float64)
            band = band + H.pow(2).sum(dim=(0, 2))
            if v is not None:
                E, U, vb = H.sum(1), ids._rows(lo, hi).to(H), v[lo:hi].to(H)
                UtE, vtE, Utv = UtE + U.T @ E, vtE + vb @ E, Utv + U.T @ vb
                sq += float(E.pow(2).sum())
    return band, UtE, vtE, Utv, sq


def _id_spectrum(model: SSRModel, v: torch.Tensor) -> ModalitySpectrum:
    ids = model.id_bands
    _, UtE, vtE, Utv, sq = _id_sums(ids, v)
    # the embedding without its trivial part, E − v vᵀE, in the basis (exact: U orthonormal)
    coef = UtE - torch.outer(Utv, vtE)
    e = coef.pow(2).sum(1).cpu().numpy()
    lam = ids.eigenvalues.to(torch.float64).cpu().numpy()
    res = 0.0
    if ids.residual_band is not None:   # what the partial basis does not hold
        res = max(sq - float(vtE.pow(2).sum()) - float(e.sum()), 0.0)
    total = float(e.sum()) + res
    if not total > 0:
        raise ValueError("the ID embedding has no energy outside the trivial component")
    order = np.argsort(lam, kind="stable")
    lam, e = lam[order], e[order]
    start = np.flatnonzero(np.r_[True, np.diff(lam) > CLUSTER_TOL])
    mass = np.add.reduceat(e, start)
    atoms, in_atom = [], np.zeros(lam.size, dtype=bool)
    for j, m in zip(start, mass):
        if m >= ATOM_MIN * total and np.sum(np.abs(lam - lam[j]) <= CLUSTER_TOL) > 1:
            atoms.append(Atom(t=float(lam[j] - 1.0), mass=float(m), fraction=float(m / total),
                              lam=float(lam[j])))
            in_atom |= np.abs(lam - lam[j]) <= CLUSTER_TOL
    grid = np.linspace(0.0, 2.0, SPECTRUM_GRID + 1)
    hist, _ = np.histogram(lam[~in_atom], bins=grid, weights=e[~in_atom])
    dens = hist / (grid[1] - grid[0]) / total
    edges = np.asarray(model.band_report["edges"])
    band = np.clip(np.searchsorted(edges[1:-1], lam, side="right"), 0, model.n_bands - 1)
    E = np.bincount(band, weights=e, minlength=model.n_bands)
    if ids.residual_band is not None:
        E[ids.residual_band] += res
    spec = Spectrum(torch.from_numpy(0.5 * (grid[1:] + grid[:-1])), torch.from_numpy(dens),
                    atoms, res / total)
    kind = "full" if ids.residual_band is None else "partial"
    return ModalitySpectrum("id", f"learned ID embedding ({kind} eigenbasis, exact)", spec,
                            torch.from_numpy(E / E.sum()))


def modality_spectra(model: SSRModel, dataset: Dataset) -> List[ModalitySpectrum]:
    """Energy spectrum of every modality of ``model`` (trivial component removed).

    Content modalities: the PCA-reduced node signal the model's bands were computed from
    (the sum of its stored band signals), with the spectrum method and order of the model
    (:meth:`~ssr_engine.spectral.SpectralBands.spectrum`). ID: the learned embedding, exact
    in its eigenbasis (a partial basis leaves the residual's energy as ``uncovered``).

    Args:
        model: an :class:`~ssr_engine.SSRModel`.
        dataset: the dataset it was trained on (its training graph).

    Returns:
        One :class:`ModalitySpectrum` per modality, in ``model.modalities`` order.

    Example:
        >>> from ssr_engine.nn import SSRModel
        >>> from ssr_engine.data import synthetic_dataset
        >>> from ssr_engine.explain import modality_spectra
        >>> ds = synthetic_dataset(40, 30, 250, modalities={"text": 6}, seed=0)
        >>> m = SSRModel(ds.train_graph(), ds.features, n_bands=2, dim=8, rank=4)
        >>> [s.name for s in modality_spectra(m, ds)]
        ['id', 'text']
    """
    check_ssr_model(model, stored=False)
    check_dataset(model, dataset)
    graph = dataset.train_graph()
    dev = model.id_bands.basis.device
    v = graph.trivial_vector(torch.float64, dev)
    out = [_id_spectrum(model, v)]
    if model.content:
        order = model.band_report.get("order") or model.config().get("order")
        sb = SpectralBands(graph, n_bands=model.n_bands, method=model.band_report["method"],
                           order=order, dtype=torch.float64, device=dev)
        sb.fit_uniform()  # the spectrum does not depend on the edges
        for name, layer in model.content.items():
            x = layer.bands.sum(0).to(torch.float64)
            dims = (f"PCA {model.config()['features'][name]} → {x.shape[1]} dims"
                    if model.config()["features"][name] > x.shape[1] else f"{x.shape[1]} dims")
            out.append(ModalitySpectrum(
                name, f"{name} features ({dims}, users = item means)",
                sb.spectrum(x, grid=SPECTRUM_GRID), _content_shares(layer.bands, v)))
    return out


def reliabilities(model) -> torch.Tensor:
    """The learned band reliabilities ``α [m, M]`` (CPU, float64)."""
    check_ssr_model(model)
    return model.reliability.alpha.detach().to(torch.float64).cpu()


def slot_energy(model: SSRModel) -> torch.Tensor:
    """Mean squared norm per node of each slot as the fusion sees it, ``α_{m,b}² ‖H_{m,b}‖²``.

    Content slots: ``‖X_b W_mᵀ‖²`` from the Gram matrix of the stored band signal; ID slots:
    the band vectors as the model computes them (``U_b diag(s_b) C_b``, plus the residual in
    its band).

    Returns:
        ``[m, M]`` float64 CPU tensor.
    """
    check_ssr_model(model, stored=False)
    with torch.no_grad():
        ids = model.id_bands
        rows = [_id_sums(ids)[0]]
        for layer in model.content.values():
            X = layer.bands.to(torch.float64)                              # [M, N, d0]
            W = layer.proj.weight.to(torch.float64)                        # [d, d0]
            G = torch.einsum("bnd,bne->bde", X, X)
            rows.append(torch.einsum("kd,bde,ke->b", W, G, W))
        E = torch.stack(rows) / ids.n_nodes
        return (E * model.reliability.alpha.to(torch.float64) ** 2).cpu()


def band_interaction(model) -> Optional[Dict[str, torch.Tensor]]:
    """The CP band-interaction tensor reduced to ``[O, S]`` maps (``None`` for the plain sum).

    Returns:
        ``{"v_sum": Σ_r V[o, s, r], "norm": ‖γ α_s W[o, s]‖_F, "gamma": γ}`` with
        ``W[o, s] = Q_o diag(V_{o,s}) K_sᵀ`` (the ``d×d`` block mapping slot ``s`` into output
        band ``o``; ``γ`` the weight of G-HSNO beside a skip path, else 1), maps ``[O, S]``
        float64 CPU tensors; slots in ``(modality, band)`` order.
    """
    check_ssr_model(model)
    _, f, gamma = fusion_paths(model)
    if f is None:
        return None
    g = 1.0 if gamma is None else float(gamma)
    with torch.no_grad():
        V, Q, K = (t.detach().to(torch.float64) for t in (f.V, f.Q, f.K))
        GQ = torch.einsum("odr,odt->ort", Q, Q)
        GK = torch.einsum("sdr,sdt->srt", K, K)
        n2 = torch.einsum("osr,ost,ort,srt->os", V, V, GQ, GK).clamp_min(0.0)
        a = model.reliability.alpha.detach().to(torch.float64).flatten()
        return {"v_sum": V.sum(-1).cpu(), "norm": (abs(g) * n2.sqrt() * a[None, :]).cpu(),
                "gamma": torch.tensor(g, dtype=torch.float64)}


@dataclass
class BandUsage:
    """Mean attribution share per slot over the top-``k`` items of user groups.

    Attributes:
        groups: group names (e.g. ``"cold (≤5)"``, ``"20–39 interactions"``).
        n_users: users sampled per group.
        counts: ``(lo, hi)`` interactions (whole dataset) per group.
        shares: ``[G, m, M]`` mean ``|A_slot| / Σ|A|`` over the group's (user, item) pairs.
        signed: ``[G, m, M]`` mean ``A_slot / score`` (signed share of the score).
        max_relative_error: largest ``|Σ A − score| / |score|`` over all pairs used.
    """

    groups: List[str]
    n_users: List[int]
    counts: List[tuple]
    shares: torch.Tensor
    signed: torch.Tensor
    max_relative_error: float


def _user_groups(counts: np.ndarray, cold_max: int, n_groups: int):
    users = np.arange(counts.size)
    active = counts > 0
    out = []
    cold = users[active & (counts <= cold_max)]
    if cold.size:
        out.append((f"cold (≤{cold_max})", cold, (int(counts[cold].min()), cold_max)))
    warm = users[active & (counts > cold_max)]
    if warm.size:
        qs = np.unique(np.quantile(counts[warm], np.linspace(0, 1, n_groups + 1)).round())
        for g, (lo, hi) in enumerate(zip(qs[:-1], qs[1:])):
            last = g == len(qs) - 2
            sel = warm[(counts[warm] >= lo) & ((counts[warm] <= hi) if last
                                               else (counts[warm] < hi))]
            if sel.size:
                low, top = int(counts[sel].min()), int(counts[sel].max())
                span = f"{low}" if low == top else f"{low}–{top}"
                out.append((f"{span} interactions", sel, (low, top)))
    return out


def band_usage(model, dataset: Dataset, k: int = 10, cold_max: int = 5,
               n_groups: int = 3, max_users: int = 300, side: str = "item",
               seed: int = 0) -> BandUsage:
    """Which slots drive the top-``k`` lists of cold-start users vs more active users.

    Users are grouped by their number of interactions in the whole dataset: the cold-start
    group (``≤ cold_max``, empty on MovieLens-100k where every user rated ≥ 20 movies) and
    ``n_groups`` quantile groups of the others. Up to ``max_users`` users per group are drawn
    at random; for each (user, top-``k`` item) pair the score is attributed exactly
    (:func:`~ssr_engine.explain.attribute`) and the slots' absolute shares are averaged.

    Args:
        model: an :class:`~ssr_engine.SSRModel`.
        dataset: the dataset it was trained on.
        k: list length.
        cold_max: cold-start threshold (interactions in the whole dataset).
        n_groups: activity groups of the non-cold users.
        max_users: users sampled per group.
        side: attribution side (see :func:`~ssr_engine.explain.attribute`).
        seed: seed of the user sample.

    Returns:
        A :class:`BandUsage`.

    Example:
        >>> from ssr_engine.nn import SSRModel
        >>> from ssr_engine.data import synthetic_dataset
        >>> from ssr_engine.explain import band_usage
        >>> ds = synthetic_dataset(60, 30, 400, modalities={"text": 6}, seed=0)
        >>> m = SSRModel(ds.train_graph(), ds.features, n_bands=2, dim=8, rank=4)
        >>> u = band_usage(m, ds, k=3, max_users=20)
        >>> u.shares.shape[1:]
        torch.Size([2, 2])
    """
    check_ssr_model(model)
    check_dataset(model, dataset)
    if n_groups < 1 or max_users < 1:
        raise ValueError(f"n_groups and max_users must be >= 1, got {n_groups}, {max_users}")
    rng = np.random.default_rng(seed)
    groups = _user_groups(dataset.user_counts(), cold_max, n_groups)
    picks = [np.sort(rng.choice(u, min(max_users, u.size), replace=False)) for _, u, _ in groups]
    users = torch.from_numpy(np.concatenate(picks))
    att = attribute(model, users, k=k, side=side)
    share = att.shares()                                               # [B, k, m, M]
    signed = att.by_slot() / att.scores.to(torch.float64)[..., None, None]
    bounds = np.cumsum([0] + [p.size for p in picks])
    mean = lambda t, a, b: t[a:b].mean(dim=(0, 1))
    return BandUsage(groups=[g for g, _, _ in groups], n_users=[p.size for p in picks],
                     counts=[c for _, _, c in groups],
                     shares=torch.stack([mean(share, a, b) for a, b in zip(bounds[:-1],
                                                                           bounds[1:])]),
                     signed=torch.stack([mean(signed, a, b) for a, b in zip(bounds[:-1],
                                                                            bounds[1:])]),
                     max_relative_error=float(att.relative_error().max()))
