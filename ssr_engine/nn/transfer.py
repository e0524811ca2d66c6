"""Carry a trained :class:`~ssr_engine.SSRModel` over to a grown graph (living graphs).

When interactions, users or items are added, the graph's eigenbasis and band signals change,
but what the model learned is still there in the **node domain**: each node's ID band vectors
``F_b(n) = [U_b diag(s_b) C_b](n)`` (plus the residual in its band). :func:`transfer_ssr`
moves a model to the grown graph in four steps:

1. every learned parameter that does not depend on the graph (content projections ``W_m``,
   band reliabilities, fusion factors) is copied;
2. the ID band vectors of the **known** nodes (those with training interactions in the old
   graph) are kept as they are;
3. a node without training interactions in the old graph (a new user or item, or one that
   had none) gets, in each band, its neighbours' aggregate scaled by the band's own
   neighbour response: ``F_b(n) = γ_b · (Â F_b)(n)`` with ``Â = D^{-1/2} A D^{-1/2}`` of the
   grown graph (its unknown neighbours count as zero). For an eigenvector ``u`` of
   eigenvalue ``λ``, ``u = (Â u) / (1 − λ)`` exactly, so a signal concentrated in a band is
   predicted from its neighbours by one scalar per band; ``γ_b`` is that scalar fitted by
   least squares on the known nodes of the old graph,
   ``γ_b = ⟨F_b, Â F_b⟩ / ‖Â F_b‖²``. In a smooth band ``γ_b > 0`` (a new user sits near
   the items it took), in the highest band of a bipartite graph ``γ_b < 0`` (the mirror
   image), and near ``λ = 1`` (``Â F_b ≈ 0``: neighbours say nothing) the prediction is
   small. A new node is thus served from its neighbours' spectral coordinates before any
   retraining;
4. the ID modality's part of the fused vector, ``E = Σ_b α_b F_b`` (``α`` the ID
   reliabilities), is written in the grown graph's basis: ``C_j = u_jᵀ E / (α_b(j) s_j)``
   for each eigenvector ``u_j`` (in the band ``b(j)`` of its new eigenvalue), and with a
   partial basis the residual takes what the basis does not hold. ``E`` is thus carried
   over exactly for every node, with the full basis as with a partial one: under the
   plain-sum fusion (the default) the ID part of every known node's inference vector is
   unchanged, and the content part follows the grown graph's content band signals. The
   split of ``E`` into bands is the grown graph's; under G-HSNO, which mixes the bands, the
   carried-over vectors are a starting point rather than the same model.

Optionally (``shrink < 1``) every carried-over vector is then scaled down: the ID vectors
and the content projections by ``shrink``, so that under the plain-sum fusion each score
``h_uᵀ h_i`` shrinks by ``shrink²`` and the ranking stays the same. A model trained to
convergence sits where its scores are large and the BPR gradients small, and it hardly
moves towards what the new interactions say; shrinking restores the gradients while keeping
every learned direction (the "shrink" of shrink-and-perturb, Ash & Adams, *On Warm-Starting
Neural Network Training*, NeurIPS 2020). Optimiser state is not carried over: continued
training starts a new Adam.
"""
from __future__ import annotations

import warnings
from typing import Dict, Tuple

import torch

from ..graph import InteractionGraph
from ..linalg.bipartite import component_labels
from .model import SSRModel

__all__ = ["transfer_ssr", "MIN_PRIOR"]

#: coefficients whose spectral prior ``s`` is below this are fitted as if ``s`` were this
#: (the LightGCN prior vanishes at ``λ = 2``, where the coefficient does not matter).
MIN_PRIOR = 1e-2
#: basis eigenvalues within this of 2 count as λ = 2 (computed in float32, they are off by
#: about 1e-6), where a smoothed residual ``(I + Â) E_res`` vanishes.
_LAMBDA2_GAP = 1e-4


def _unsmooth(ids, graph: InteractionGraph, T: torch.Tensor, block: int, tol: float = 1e-8,
              maxiter: int = 1000) -> Tuple[torch.Tensor, Dict[str, float]]:
    """``X`` with ``(I + Â) X = T`` in the least-squares sense (``[N, d]`` float64), for a
    smoothed ID residual, and a report of the solve.

    ``(I + Â)`` is symmetric with eigenvalues ``2 − λ ≥ 0``; it vanishes exactly on the
    ``λ = 2`` vectors, one per connected component (``±√deg``, opposite signs on users and
    items), so the part of ``T`` along them cannot be represented and is dropped (reported as
    ``unrepresented``; the LightGCN prior also vanishes there). The rest is solved in two
    parts that the operator keeps apart: along the basis ``U`` (its eigenvectors) directly,
    ``diag(1 / (2 − λ_j))``; on the complement by conjugate gradients, all ``d`` columns at
    once, with the ``λ = 2`` vectors projected out at every step.
    """
    col, vec = component_labels(graph)
    col = torch.from_numpy(col)
    z = torch.from_numpy(vec).clone()
    z[graph.n_users:] *= -1.0                   # the λ = 2 vector of each component
    on = col >= 0
    n_comp = int(col.max()) + 1 if bool(on.any()) else 0

    def flat(V: torch.Tensor) -> torch.Tensor:
        """``V`` without its part along the λ = 2 vectors (disjoint supports: one pass)."""
        c = torch.zeros(n_comp, V.shape[1], dtype=V.dtype).index_add_(
            0, col[on], z[on, None] * V[on])
        out = V.clone()
        out[on] -= z[on, None] * c[col[on]]
        return out

    total = float(T.pow(2).sum())
    T = flat(T)
    lost = max(total - float(T.pow(2).sum()), 0.0)
    lam = ids.eigenvalues.double().cpu()
    gap = 2.0 - lam
    inv = torch.where(gap > _LAMBDA2_GAP, 1.0 / gap.clamp_min(_LAMBDA2_GAP),
                      torch.zeros_like(gap))
    UtT = ids._basis_t(T, block)
    ids._basis_add(T, UtT, -1.0, block)                               # T: the complement part
    X = ids._basis_add(torch.zeros_like(T), inv[:, None] * UtT, 1.0, block)
    A = graph.adjacency(torch.float64)
    Y = torch.zeros_like(T)
    res = flat(T)
    d = res.clone()
    rr = (res * res).sum(0)
    stop = tol ** 2 * rr
    it = 0
    while it < maxiter and not bool((rr <= stop).all()):
        Ad = flat(d + A @ d)
        step = rr / (d * Ad).sum(0).clamp_min(1e-300)
        Y += step * d
        res -= step * Ad
        rr_new = (res * res).sum(0)
        d = res + (rr_new / rr.clamp_min(1e-300)) * d
        rr = rr_new
        it += 1
    X += ids._basis_add(Y, ids._basis_t(Y, block), -1.0, block)  # less its drift into span(U)
    rel = float(rr.sum().sqrt()) / max(total, 1e-300) ** 0.5
    if not rel <= 10 * tol:
        warnings.warn(f"the smoothed ID residual was carried over to relative residual "
                      f"{rel:.1e} after {it} conjugate-gradient steps (aim {tol:g})",
                      RuntimeWarning, stacklevel=3)
    return X, {"iterations": it, "relative_residual": rel,
               "unrepresented": lost / total if total > 0 else 0.0}


def _node_map(old_graph: InteractionGraph, new_graph: InteractionGraph) -> torch.Tensor:
    """Node id in the grown graph of every node of the old one (items move up by the number
    of new users)."""
    nu, nu2 = old_graph.n_users, new_graph.n_users
    ids = torch.arange(old_graph.n_nodes)
    return torch.where(ids < nu, ids, ids - nu + nu2)


def _check_pair(old: SSRModel, old_graph: InteractionGraph, new: SSRModel,
                new_graph: InteractionGraph) -> None:
    if (old.n_users, old.n_items) != (old_graph.n_users, old_graph.n_items):
        raise ValueError(f"the old model is for {old.n_users} users x {old.n_items} items, "
                         f"its graph has {old_graph.n_users} x {old_graph.n_items}")
    if (new.n_users, new.n_items) != (new_graph.n_users, new_graph.n_items):
        raise ValueError(f"the new model is for {new.n_users} users x {new.n_items} items, "
                         f"its graph has {new_graph.n_users} x {new_graph.n_items}")
    if new_graph.n_users < old_graph.n_users or new_graph.n_items < old_graph.n_items:
        raise ValueError(f"the new graph ({new_graph.n_users} users x {new_graph.n_items} "
                         f"items) must hold the old one ({old_graph.n_users} x "
                         f"{old_graph.n_items}); graphs only grow")
    if old.modalities != new.modalities:
        raise ValueError(f"the models have different modalities: {old.modalities} and "
                         f"{new.modalities}")
    if (old.n_bands, old.dim) != (new.n_bands, new.dim):
        raise ValueError(f"the models differ in bands x dim: {old.n_bands} x {old.dim} and "
                         f"{new.n_bands} x {new.dim}")


@torch.no_grad()
def transfer_ssr(old: SSRModel, old_graph: InteractionGraph, new: SSRModel,
                 new_graph: InteractionGraph, shrink: float = 1.0, block: int = 1 << 16) -> Dict:
    """Initialise ``new`` (built on the grown graph) from the trained ``old`` model.

    Args:
        old: the trained model, on ``old_graph``.
        old_graph: the graph it was trained on.
        new: a model of the same settings built on ``new_graph`` (its band source computed
            from the grown graph); its parameters are overwritten.
        new_graph: the grown graph (``old_graph.grow(...)``: same ids, new ones after them).
        shrink: scale of the carried-over ID vectors and content projections, in ``(0, 1]``
            (1: the same model; see the module notes).
        block: rows per block when reading the basis.

    Memory: a few ``[N, M, d]`` float32 tables (the band vectors and their neighbour
    aggregates), about 5 GB at 1.5M nodes with ``M = 4`` and ``d = 64``; the basis is read by
    row blocks. A smoothed residual adds about six ``[N, d]`` float64 tables for its solve.

    Returns:
        A report: ``known`` (nodes carried over), ``extended`` (nodes initialised from their
        neighbours), ``isolated`` (nodes without interactions in either graph, left at zero
        ID vectors), and ``gamma`` ``[M]`` (the band responses of step 3); with a smoothed
        residual also ``smooth_residual``: ``iterations`` and ``relative_residual`` of its
        solve, and ``unrepresented``, the share of the residual's energy at ``λ = 2`` (where
        ``(I + Â)`` vanishes). A solve that misses its tolerance warns.

    Raises:
        ValueError: when the models differ in modalities, bands, width or parameter shapes,
            the new graph does not hold the old one, or ``shrink`` is outside ``(0, 1]``.

    Example:
        >>> import torch, ssr_engine
        >>> g = ssr_engine.InteractionGraph([0, 0, 1, 2, 2], [0, 1, 1, 1, 2])
        >>> old = ssr_engine.SSRModel(g, n_bands=2, dim=4, seed=0)
        >>> g2, _ = g.grow([3, 3], [0, 2])                     # a new user with two items
        >>> new = ssr_engine.SSRModel(g2, n_bands=2, dim=4, seed=1)
        >>> rep = transfer_ssr(old, g, new, g2)
        >>> rep["known"], rep["extended"]
        (6, 1)
        >>> torch.allclose(new.embed(torch.tensor([0, 1, 2])), old.embed(torch.tensor([0, 1, 2])),
        ...                atol=1e-5)
        True
    """
    _check_pair(old, old_graph, new, new_graph)
    if not 0.0 < shrink <= 1.0:
        raise ValueError(f"shrink must be in (0, 1], got {shrink}")
    # 1. parameters that do not depend on the graph.
    old_params = dict(old.named_parameters())
    for name, p in new.named_parameters():
        if name.startswith("id_bands."):
            continue
        q = old_params.get(name)
        if q is None or q.shape != p.shape:
            raise ValueError(f"parameter {name} differs between the models: "
                             f"{None if q is None else tuple(q.shape)} and {tuple(p.shape)}")
        p.copy_(q)
        if name.startswith("content.") and name.endswith(".proj.weight"):
            p.mul_(shrink)

    N_old, N = old_graph.n_nodes, new_graph.n_nodes
    M, d = new.n_bands, new.dim
    dev = new.device
    # 2. the ID band vectors of the known nodes, in the grown graph's node ids.
    F_old = torch.cat([old.id_bands(torch.arange(lo, min(lo + block, N_old), device=old.device))
                       .float().cpu() for lo in range(0, N_old, block)])    # [N_old, M, d]
    known_old = torch.from_numpy(old_graph.degrees > 0)
    F_old[~known_old] = 0.0
    F = torch.zeros(N, M, d)
    F[_node_map(old_graph, new_graph)] = F_old
    known = torch.zeros(N, dtype=torch.bool)
    known[_node_map(old_graph, new_graph)] = known_old

    # 3. band responses on the old graph, and the unknown nodes from their neighbours.
    P_old = (old_graph.adjacency(torch.float32) @ F_old.view(N_old, -1)).view(N_old, M, d)
    num = (F_old[known_old] * P_old[known_old]).sum(dim=(0, 2))
    den = (P_old[known_old] ** 2).sum(dim=(0, 2))
    gamma = torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(den))
    has_edges = torch.from_numpy(new_graph.degrees > 0)
    unknown = has_edges & ~known
    if bool(unknown.any()):
        P = (new_graph.adjacency(torch.float32) @ F.view(N, -1)).view(N, M, d)
        F[unknown] = gamma.view(1, M, 1) * P[unknown]
    del F_old, P_old

    # 4. the ID modality's part of the fused vector, E = Σ_b α_b F_b, in the new basis.
    ids = new.id_bands
    alpha = new.reliability.alpha[0].detach().double().cpu()                # [M]
    prior = ids.prior.double().cpu()
    s = torch.where(prior.abs() < MIN_PRIOR, torch.full_like(prior, MIN_PRIOR), prior)
    band_of = torch.repeat_interleave(torch.arange(M), torch.tensor([e - a for a, e in ids.slices]))
    scale = alpha[band_of] * s                                                # [k]
    E = torch.einsum("nbd,b->nd", F.double(), alpha) * shrink                # [N, d]
    del F
    proj = ids._basis_t(E, block)                                             # [k, d]
    ids.coef.copy_((proj / scale[:, None]).float().to(dev))
    held = proj * (prior / s)[:, None]          # what the coefficients give (a clamped s: less)
    r = ids.residual_band
    solve = None
    if r is not None:                 # the residual takes what the partial basis does not hold
        ids._basis_add(E, held, -1.0, block)
        E /= alpha[r] * ids.residual_scale
        if ids.smooth:                # its output is (I + Â) E_res: solve for E_res
            E, solve = _unsmooth(ids, new_graph, E, block)
        ids.residual.weight.copy_(E.float().to(dev))
    report = {"known": int(known.sum()), "extended": int(unknown.sum()),
              "isolated": int((~has_edges).sum()), "gamma": [float(x) for x in gamma]}
    if solve is not None:
        report["smooth_residual"] = solve
    return report
