"""``graph_eigs``: both ends of a bipartite graph's Laplacian from one partial SVD.

With ``R̃ = P Σ Q^T`` (DESIGN.md §2) the normalised adjacency ``Â = [[0, R̃], [R̃^T, 0]]`` has
eigenpairs ``±σ_j`` with eigenvectors ``[p_j; ±q_j] / √2``, so ``L = I - Â`` has the pairs
``(1 - σ_j, [p_j; q_j] / √2)`` at the low end and ``(1 + σ_j, [p_j; -q_j] / √2)`` at the
high end. The top singular pairs come from the top eigenpairs of the Gram operator of the
smaller side (``R̃^T R̃`` when there are fewer items, ``R̃ R̃^T`` otherwise), applied as two
sparse products and never formed; the other side follows from one product, ``p = R̃ q / σ``.

Special cases handled exactly:

* ``σ = 1`` (``λ = 0``) has one eigenvector per connected component with edges,
  ``D^{1/2} 1_C``. These are written down in closed form (components from the edge list) and
  the Gram solver is deflated against them, so disconnected graphs get every ``λ = 0``.
* ``σ ≈ 0`` (``λ ≈ 1``, the null space of ``R̃``, at least ``|n_u - n_i|`` of it): the split
  ``[p; ±q]`` is meaningless there. When ``k`` reaches these pairs, null vectors ``[0; q]``
  (Gram eigenvectors with ``σ <= tol``) and ``[p; 0]`` (random vectors of the larger side
  orthogonal to every computed ``p``) are returned instead, all at ``λ = 1``.

**Residuals** are those of the returned ``N``-vectors on ``L`` itself:
``||L v - λ v|| / ||L||`` with ``||L|| = 2`` (``λ_max(L) = 2`` for any bipartite graph with an
edge), computed after the solve from two sparse products with ``R̃`` and ``R̃^T``. Those
products, and the ones that build the returned vectors, accumulate in float64 whatever the
working precision: float32 sums over an item with 10^5 users lose about 1e-4.
"""
from __future__ import annotations

import math
import weakref
from typing import Optional, Tuple, Union

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
import torch

from ..graph.interaction import InteractionGraph
from .dense import DENSE_MAX_N, dense_eigs
from .eigsh import _check_common, _progress_bar, _solve_largest, default_tol
from .result import EigResult, NoConvergence
from .subspace import MatMul, RitzPairs, column_norms, orthonormalize, project_out, \
    rayleigh_ritz

__all__ = ["graph_eigs", "component_vectors", "component_labels"]

WHICH_GRAPH = ("low", "high", "both")
# "auto" solves the Gram problem densely below this size (or when k is a large share of it).
AUTO_DENSE_M = 512
_AIM = 0.7
# ||L|| for a bipartite graph with at least one edge.
L_NORM = 2.0


# graph -> (component column of every node or -1, entries of D^{1/2} 1_C / ||.||): a graph is
# immutable and the components cost a pass over the edges (about a second at 20M edges), so
# repeated solves on one graph pay it once.
_COMPONENTS: "weakref.WeakKeyDictionary[InteractionGraph, Tuple[np.ndarray, np.ndarray]]" = \
    weakref.WeakKeyDictionary()


def component_labels(graph: InteractionGraph) -> Tuple[np.ndarray, np.ndarray]:
    """Connected components as labels: ``(col [N], vec [N])`` with ``col`` the component of
    every node (largest by volume first; ``-1`` for a node without edges) and ``vec`` the
    node's entry of its component's unit vector ``D^{1/2} 1_C / ||D^{1/2} 1_C||`` (the
    ``λ = 0`` eigenvector; with the item entries negated, the ``λ = 2`` one). Cached per
    graph; sparse, so graphs with many small components cost ``O(N)``.

    Example:
        >>> import ssr_engine
        >>> from ssr_engine.linalg.bipartite import component_labels
        >>> col, vec = component_labels(ssr_engine.InteractionGraph([0, 1], [0, 1]))
        >>> col.tolist(), vec.round(4).tolist()
        ([0, 1, 0, 1], [0.7071, 0.7071, 0.7071, 0.7071])
    """
    if graph not in _COMPONENTS:
        _COMPONENTS[graph] = _components(graph)
    return _COMPONENTS[graph]


def component_vectors(graph: InteractionGraph,
                      limit: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The ``λ = 0`` eigenvectors of ``L``, one per connected component with edges.

    Args:
        graph: the interaction graph.
        limit: return at most this many (the largest components by volume first).

    Returns:
        ``(users [n_users, c], items [n_items, c])`` float64 halves of the unit vectors
        ``D^{1/2} 1_C / ||D^{1/2} 1_C||`` (each half has norm ``1/√2``), largest component
        first.

    Example:
        >>> import ssr_engine
        >>> from ssr_engine.linalg.bipartite import component_vectors
        >>> g = ssr_engine.InteractionGraph([0, 1], [0, 1])      # two separate edges
        >>> cu, ci = component_vectors(g)
        >>> cu.shape, ci.shape
        ((2, 2), (2, 2))
    """
    col, vec = component_labels(graph)
    c = int(col.max()) + 1 if col.size else 0
    c = c if limit is None else min(c, int(limit))
    rows = np.flatnonzero((col >= 0) & (col < c))
    full = np.zeros((graph.n_nodes, c))
    full[rows, col[rows]] = vec[rows]
    return full[:graph.n_users], full[graph.n_users:]


def _components(graph: InteractionGraph) -> Tuple[np.ndarray, np.ndarray]:
    R = graph.interaction_matrix()
    n_u, n_i = graph.n_users, graph.n_items
    # Each edge once (user -> item); weak connectivity treats it as undirected.
    indptr = np.concatenate([R.indptr, np.full(n_i, R.nnz, dtype=R.indptr.dtype)])
    upper = sp.csr_matrix((np.ones(R.nnz, dtype=np.int8), R.indices + n_u, indptr),
                          shape=(n_u + n_i, n_u + n_i))
    _, labels = csgraph.connected_components(upper, directed=True, connection="weak")
    deg = graph.degrees
    vol = np.bincount(labels, weights=deg)
    order = np.argsort(-vol, kind="stable")
    order = order[vol[order] > 0]                 # components with edges, largest first
    remap = -np.ones(vol.size, dtype=np.int64)
    remap[order] = np.arange(order.size)
    col = remap[labels]
    vec = np.where(col >= 0, np.sqrt(deg / np.where(col >= 0, vol[labels], 1.0)), 0.0)
    return col, vec


def graph_eigs(graph: InteractionGraph, k: int, which: str = "low",
               tol: Optional[float] = None, dtype: torch.dtype = torch.float32,
               device: Union[str, torch.device, None] = None, method: str = "auto",
               maxiter: Optional[int] = None, generator: Optional[torch.Generator] = None,
               v0: Optional[EigResult] = None, *, progress: bool = False) -> EigResult:
    """Eigenpairs at the ends of the Laplacian ``L = I - Â`` of an interaction graph.

    Uses the bipartite structure (module docstring): one partial eigendecomposition of the
    Gram operator of the smaller side gives the low end, the high end, or both.

    Args:
        graph: an :class:`~ssr_engine.InteractionGraph`.
        k: eigenpairs per end: ``1 <= k <= N`` (``2k <= N`` for ``"both"``).
        which: ``"low"`` (the k smallest λ), ``"high"`` (the k largest) or ``"both"`` (the
            k smallest and the k largest: ``2k`` pairs).
        tol: relative residual ``||L v - λ v|| / 2`` every pair must reach; default
            ``1e-8`` in float64, ``1e-4`` in float32.
        dtype: float32 (default) or float64.
        device: torch device (default CPU).
        method: Gram solver: ``"auto"`` (Lanczos; dense when the smaller side has at most
            512 nodes or ``k`` is over a quarter of it), ``"lanczos"``, ``"lobpcg"``,
            ``"chebyshev"`` or ``"dense"`` (smaller side ``<= 8192``).
        maxiter: outer iterations of the Gram solver.
        generator: ``torch.Generator`` for random vectors (default: fixed seed).
        v0: a previous result of ``graph_eigs`` to start from (warm start), on this graph or
            on an earlier version of it whose users and items are the first ids of this one
            (new nodes start at zero). Its vectors' smaller-side halves are the warm block
            of the Gram solver. LOBPCG and Chebyshev subspace iteration start from all of
            them; Lanczos first runs one Rayleigh–Ritz step on them (one product) and stops
            there when the Ritz pairs already meet ``tol`` and a short Krylov probe finds
            nothing above them, else starts from their best Ritz vectors. What it saves
            depends on how far the update rotates the wanted vectors. Measured on Amazon
            Clothing (k = 64, float64, tol 1e-6, one torch thread on a loaded 2-core
            machine): the same graph again 3.5 → 0.4 s; the grown graph of
            bench/bench_eigs.py (10% of the training edges added, where most new vectors
            lie far from the old span) 3.5 → 3.0 s (17 → 15 restarts), so far from 3x
            (that benchmark, at two threads beside other jobs: 8.9 → 5.3 s and 45 → 42 s
            in two runs, mostly noise). On Amazon Baby with 1% new edges, before the
            Rayleigh–Ritz step: Lanczos 1.8 → 1.9 s, Chebyshev subspace 3.5 → 2.7 s,
            LOBPCG 11.2 → 9.6 s.
        progress: show a tqdm bar of converged pairs.

    Returns:
        :class:`~ssr_engine.EigResult`: ascending eigenvalues ``[K]``, eigenvectors
        ``[N, K]`` (users first), relative residuals on ``L`` ``[K]``; ``K = k``, or ``2k``
        for ``"both"``. ``method`` reads ``"bipartite-<gram method>"``.

    Raises:
        TypeError: if ``graph`` is not an InteractionGraph.
        ValueError: on bad ``k``, ``which``, ``method``, ``tol``, ``dtype``, ``maxiter`` or
            ``v0`` (not a graph_eigs result, or from a graph with more users or items).
        NoConvergence: when a pair misses ``tol``; ``.result`` holds the partial result.

    Shapes:
        eigenvalues ``[K]``; eigenvectors ``[N, K]`` with ``N = n_users + n_items``.

    Example:
        >>> import torch, ssr_engine
        >>> g = ssr_engine.InteractionGraph([0, 0, 1, 2, 2], [0, 1, 1, 1, 2])
        >>> w, V = ssr_engine.graph_eigs(g, k=2, which="both", dtype=torch.float64)
        >>> [round(float(x), 6) for x in w]
        [0.0, 0.292893, 1.707107, 2.0]
    """
    if not isinstance(graph, InteractionGraph):
        raise TypeError(f"graph_eigs needs an ssr_engine.InteractionGraph, got "
                        f"{type(graph).__name__}; for other operators use ssr_engine.eigsh")
    if which not in WHICH_GRAPH:
        raise ValueError(f"which must be one of {WHICH_GRAPH}, got {which!r}")
    n_u, n_i = graph.n_users, graph.n_items
    N = n_u + n_i
    _check_common(k, tol, maxiter, method, N, dtype)
    if which == "both" and 2 * k > N:
        raise ValueError(f"which='both' returns 2k pairs, so k must be at most N/2 = {N // 2}, "
                         f"got k = {k}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    tol = default_tol(dtype) if tol is None else float(tol)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)

    items_side = n_i <= n_u          # the Gram operator lives on the smaller side
    m, M = (n_i, n_u) if items_side else (n_u, n_i)
    if method == "dense" and m > DENSE_MAX_N:
        raise ValueError(f"method='dense' forms the Gram matrix of the smaller side, limited "
                         f"to {DENSE_MAX_N} nodes; this graph's smaller side has {m}. Use "
                         "method='lanczos' (or 'auto') instead")
    X0 = None if v0 is None else _warm_block(v0, n_u, n_i, items_side, dtype, dev)
    if method == "auto":
        method = "dense" if m <= DENSE_MAX_N and (m <= AUTO_DENSE_M or 4 * k > m) \
            else "lanczos"
    Rt = graph.bipartite(dtype, dev)
    fwd, bwd = (Rt, Rt.T) if items_side else (Rt.T, Rt)   # small -> large, large -> small

    def gram(X: torch.Tensor) -> torch.Tensor:
        return bwd @ (fwd @ X)

    # -- λ = 0: one closed-form pair per connected component ------------------------------------
    kg = min(k, m)                   # Gram pairs wanted (σ descending)
    cu, ci = component_vectors(graph, limit=kg)
    c_small = torch.from_numpy(ci if items_side else cu).to(device=dev, dtype=dtype)
    c_large = torch.from_numpy(cu if items_side else ci).to(device=dev, dtype=dtype)
    n_triv = c_small.shape[1]
    T_small = c_small * math.sqrt(2.0)      # unit Gram eigenvectors at μ = 1
    T_large = c_large * math.sqrt(2.0)

    # -- the Gram problem on the complement of the trivial vectors ------------------------------
    bar = _progress_bar(kg, progress)
    need = kg - n_triv
    iters = 0
    gram_method = method
    if need > 0:
        deflate = T_small if n_triv else None
        # A low pair [p; q]/√2 from a Gram pair with residual e has ||L v - λ v|| =
        # ||e|| / (σ √2), so the Gram solver needs ||e|| <= 2 √2 tol σ. Near σ = 0 that is
        # below rounding; the floor keeps it reachable (null pairs [0; q] need only σ small,
        # which ||R̃ q|| tells directly).
        eps = torch.finfo(dtype).eps
        floor = max(2 * _AIM * tol, 50 * eps / (_AIM * L_NORM * math.sqrt(2.0) * tol))
        thr = lambda mu: _AIM * L_NORM * math.sqrt(2.0) * tol * \
            mu.clamp_min(0).sqrt().clamp_min(floor)
        if method == "dense":
            r = _dense_deflated(gram, m, need, deflate, dtype, dev)
        else:
            monitor = (lambda c: bar.update(n_triv + c - bar.n)) if bar else None
            r = _solve_largest(method, gram, m, need, threshold=thr, maxiter=maxiter,
                               dtype=dtype, device=dev, X0=X0, deflate=deflate,
                               generator=gen, bounds=lambda: (0.0, 1.0), monitor=monitor)
        fwd_acc, bwd_acc = _float64_pair(Rt, items_side)    # after the solve: not in its peak
        # One more Rayleigh–Ritz over the found subspace, free of products: with
        # A = R̃ Q (needed anyway for the other side) the projected Gram is A^T A. It makes
        # the recovered p = R̃ q / σ exactly orthogonal whichever solver ran.
        A_found = _product(fwd_acc, r.vectors)
        _, S = rayleigh_ritz(A_found.mT @ A_found)
        S = S.flip(1).to(device=dev, dtype=dtype)            # largest first
        Qs = torch.cat([T_small, r.vectors @ S], dim=1)
        A_small = torch.cat([_product(fwd_acc, T_small), A_found @ S], dim=1)
        iters = r.iterations
        solver_ok = r.converged
    else:
        Qs, solver_ok = T_small, True
        fwd_acc, bwd_acc = _float64_pair(Rt, items_side)
        A_small = _product(fwd_acc, Qs)
    if bar:
        bar.close()
    # σ = ||R̃ q|| directly: accurate to rounding even where sqrt(μ) is not (σ near 0).
    # column_norms, not .norm(dim=0), whose float32 CPU sum over a 1M-long column is off by
    # ~1e-3 (λ = 1 - σ with it, and p normalised by it, miss a 1e-4 residual).
    col_norms = column_norms(A_small)
    sigma = col_norms.double().cpu()
    sigma[:n_triv] = 1.0
    n_pos = int((sigma > tol).sum())          # pairs with σ above the null threshold

    # -- how many pairs of each kind each end takes ---------------------------------------------
    # The k lowest are: 1 - σ (σ descending), then λ = 1 (N - 2 n_pos of them), then 1 + σ
    # (σ ascending); the k highest mirror that.
    n_null_all = N - 2 * n_pos
    takes = {}
    nulls_used = 0
    for end in (("low", "high") if which == "both" else (which,)):
        kp = min(k, n_pos)
        kn = min(k - kp, n_null_all - nulls_used)
        takes[end] = (kp, kn, k - kp - kn)
        nulls_used += kn

    # -- the other side: p = R̃ q / σ (A_small = R̃ q; exact for the trivial pairs) -------------
    P = A_small[:, :n_pos] / col_norms[:n_pos].clamp_min(torch.finfo(dtype).tiny)
    P[:, :n_triv] = T_large
    null_small = Qs[:, n_pos:n_pos + nulls_used]
    n_large_null = nulls_used - null_small.shape[1]
    null_large = torch.empty(M, 0, dtype=dtype, device=dev)
    if n_large_null > 0:
        Z = torch.randn(M, n_large_null, dtype=torch.float64, generator=gen).to(dev, dtype)
        null_large = orthonormalize(Z, [orthonormalize(P.clone())], fill=True, generator=gen)
    B_large = _product(bwd_acc, torch.cat([P, null_large], dim=1))   # R̃^T p and R̃^T z
    nulls = _null_pairs(Qs[:, n_pos:n_pos + null_small.shape[1]],
                        A_small[:, n_pos:n_pos + null_small.shape[1]],
                        null_large, B_large[:, n_pos:], m, M)

    # -- assemble the N-vectors and their residuals on L ----------------------------------------
    h = 1.0 / math.sqrt(2.0)
    q, p, a, b = Qs[:, :n_pos] * h, P * h, A_small[:, :n_pos] * h, B_large[:, :n_pos] * h
    s = sigma[:n_pos]
    parts = []                  # (λ [c], small half, large half, (Âv) small, (Âv) large)
    null_at = 0
    for end, (kp, kn, ko) in takes.items():
        sign = 1.0 if end == "low" else -1.0
        # own end: λ = 1 ∓ σ, v = [±q; p]
        parts.append((1.0 - sign * s[:kp], sign * q[:, :kp], p[:, :kp], b[:, :kp],
                      sign * a[:, :kp]))
        parts.append(tuple(x[..., null_at:null_at + kn] for x in nulls))
        null_at += kn
        # past λ = 1: the other end's pairs, smallest σ first
        idx = torch.arange(n_pos - 1, n_pos - 1 - ko, -1)
        idd = idx.to(dev)
        parts.append((1.0 + sign * s[idx], -sign * q[:, idd], p[:, idd], b[:, idd],
                      -sign * a[:, idd]))
    lam = torch.cat([x[0] for x in parts])
    small, large, a_small, a_large = (torch.cat([x[i] for x in parts], dim=1)
                                      for i in range(1, 5))
    one_minus = (1.0 - lam).to(device=dev, dtype=dtype)
    res = ((small * one_minus - a_small).pow(2).sum(0)
           + (large * one_minus - a_large).pow(2).sum(0)).sqrt().double().cpu() / L_NORM
    order = torch.argsort(lam, stable=True)
    od = order.to(dev)
    halves = (large[:, od], small[:, od]) if items_side else (small[:, od], large[:, od])
    V = torch.cat(halves, dim=0)
    lam, res = lam[order], res[order]
    converged = bool((res <= tol).all())
    result = EigResult(eigenvalues=lam.to(device=dev, dtype=dtype), eigenvectors=V,
                       residuals=res, iterations=iters, converged=converged,
                       method=f"bipartite-{gram_method}", n_users=n_u)
    if not converged:
        worst = int(res.argmax())
        raise NoConvergence(
            f"graph_eigs ({gram_method}): {int((res > tol).sum())} of {lam.numel()} "
            f"eigenpairs missed tol = {tol:g} (worst relative residual "
            f"{float(res[worst]):.2e} at λ = {float(lam[worst]):.6g}) after {iters} "
            f"iterations{'' if solver_ok else ' (the Gram solver did not converge)'}; "
            "raise maxiter, loosen tol or try another method. The partial result is in "
            ".result", result)
    return result


def _warm_block(v0, n_u: int, n_i: int, items_side: bool, dtype: torch.dtype,
                dev: torch.device) -> torch.Tensor:
    """The smaller-side halves of a previous result's vectors, zero-padded for new nodes:
    ``[m, K]`` start vectors of the Gram solver (``[p; ±q]/√2`` share ``q`` at both ends)."""
    if not isinstance(v0, EigResult) or v0.n_users is None:
        raise ValueError("v0 must be a result of graph_eigs (an EigResult with n_users), got "
                         f"{type(v0).__name__}")
    V = v0.eigenvectors
    u_old, i_old = v0.n_users, V.shape[0] - v0.n_users
    if u_old > n_u or i_old > n_i:
        raise ValueError(f"v0 comes from a graph of {u_old} users x {i_old} items, larger than "
                         f"this one ({n_u} x {n_i}); a warm start needs the same nodes or more")
    rows, m = (V[u_old:], n_i) if items_side else (V[:u_old], n_u)
    X0 = torch.zeros(m, V.shape[1], dtype=dtype, device=dev)
    X0[:rows.shape[0]] = rows.to(device=dev, dtype=dtype)
    return X0


def _float64_pair(Rt, items_side: bool):
    """``(small -> large, large -> small)`` products in float64, for the products that build
    the returned vectors and their residuals: a float32 sum over a long sparse row (an item
    with 10^5 users) is off by about 1e-4 relative, which would read as a missed tolerance
    although the vectors are accurate."""
    R64 = Rt if Rt.dtype == torch.float64 else Rt.to(dtype=torch.float64)
    return (R64, R64.T) if items_side else (R64.T, R64)


def _product(op64, X: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """``op64 @ X`` for a float64 operator, returned in ``X``'s dtype; a float32 ``X`` goes
    through in blocks of ``chunk`` columns so that the float64 copies stay small."""
    if X.dtype == op64.dtype:
        return op64 @ X
    out = X.new_empty(op64.shape[0], X.shape[1])
    for s in range(0, X.shape[1], chunk):
        out[:, s:s + chunk] = op64 @ X[:, s:s + chunk]
    return out


def _null_pairs(q0: torch.Tensor, a0: torch.Tensor, z: torch.Tensor, bz: torch.Tensor,
                m: int, M: int):
    """λ = 1 pairs ``[q; 0]`` (small side) then ``[0; z]`` (large side), as
    ``(λ, small half, large half, (Âv) small, (Âv) large)``."""
    c0, c1 = q0.shape[1], z.shape[1]
    zs = q0.new_zeros(m, c1)
    zl = q0.new_zeros(M, c0)
    lam = torch.ones(c0 + c1, dtype=torch.float64)
    return (lam, torch.cat([q0, zs], dim=1), torch.cat([zl, z], dim=1),
            torch.cat([q0.new_zeros(m, c0), bz], dim=1), torch.cat([a0, zl.new_zeros(M, c1)],
                                                                    dim=1))


def _dense_deflated(gram: MatMul, m: int, k: int, deflate: Optional[torch.Tensor],
                    dtype: torch.dtype, device: torch.device) -> RitzPairs:
    """Dense Gram eigenpairs on the complement of ``deflate`` (its directions pushed to -1)."""
    if deflate is None:
        return dense_eigs(gram, m, k, largest=True, dtype=dtype, device=device)

    def shifted(X: torch.Tensor) -> torch.Tensor:
        Y = project_out(gram(project_out(X.clone(), [deflate])), [deflate])
        return Y - deflate @ (deflate.mT @ X)

    return dense_eigs(shifted, m, k, largest=True, dtype=dtype, device=device)
