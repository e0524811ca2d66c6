"""Energy-balanced spectral bands of graph signals, at any graph size (DESIGN.md §2–3).

:class:`SpectralBands` splits node signals ``X [N, d]`` on an interaction graph into ``M``
frequency bands of the normalised Laplacian ``L`` whose edges share the energy of the
fitted signal, by one of three methods:

* ``"exact"`` — the full spectrum of the bipartite block ``R̃ = P Σ Qᵀ`` (eigenpairs
  ``1 ∓ σ_j``, ``[p_j; ±q_j]/√2``; the remaining null space sits at ``λ = 1``); ideal
  (indicator) bands. The reference. Graphs whose smaller side is at most ``exact_max`` take a
  dense SVD of ``R̃``; larger ones the memory-lean Gram route: a dense eigendecomposition of
  the smaller side's Gram matrix (``R̃ᵀR̃`` or ``R̃R̃ᵀ``), keeping only that side's
  singular vectors and reaching the other side through the sparse ``R̃``. Refused when its
  memory estimate (:func:`exact_memory_estimate`) exceeds the budget ``exact_memory``.
* ``"eigen"`` — a partial eigenbasis (:func:`ssr_engine.graph_eigs`, low end and its
  bipartite mirror at the high end): covered eigenvectors are split into bands by their exact
  energies; whatever the basis does not cover is the residual ``X − Σ covered``, its own
  (mid-frequency) band.
* ``"chebyshev"`` — Jackson-damped Chebyshev band filters of order ``K`` sharing one
  recurrence (``K − 1`` sparse products for all bands); edges balance the energy of exactly
  these damped filters, computed from KPM moments of the same recurrence. No eigenvectors.

For every method the band signals sum back to ``X`` (partition of unity).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..graph import InteractionGraph
from .edges import _clusters, band_edges, band_energies, spectrum_edges
from .. import ops
from .filters import band_coefficients
from .kpm import ATOM_MIN_MOMENTS, Atom, kpm_atoms, kpm_density, kpm_moments

__all__ = ["SpectralBands", "Spectrum", "exact_memory_estimate", "ChebyshevPlan",
           "chebyshev_plan", "auto_orders"]

Device = Union[str, torch.device, None]
METHODS = ("auto", "exact", "eigen", "chebyshev")
#: eigensolvers of the partial basis of ``"eigen"`` (``graph_eigs`` methods).
SOLVERS = ("auto", "lanczos", "lobpcg", "chebyshev")
# Orders tried when none is given (see chebyshev_plan): the lowest whose band shares are
# within ORDER_SHARE_TOL / M of those at the highest order tried is kept.
AUTO_ORDERS = (32, 64, 128, 256)
ORDER_SHARE_TOL = 0.25
# Work budget of the automatic order: nonzeros x columns x order (the multiply-adds of the
# sparse products, KPM probe plus band filters); orders above it are not tried.
AUTO_ORDER_WORK = 1.5e11
UNIFORM_ORDER = 64
DEFAULT_K = 64
# "auto" takes the exact method while the dense bipartite block has at most this many entries.
AUTO_EXACT_ENTRIES = 1 << 24
# Default memory budget of method="exact": this fraction of the device's memory.
EXACT_MEMORY_FRACTION = 0.5
# Gram route: basis columns formed or multiplied at a time when synthesising band signals.
GRAM_CHUNK = 1024


def auto_orders(nnz: int, columns: int) -> Tuple[int, ...]:
    """The Chebyshev orders tried when none is given: ``AUTO_ORDERS`` whose work
    ``nnz · columns · K`` fits in ``AUTO_ORDER_WORK`` (at least the lowest).

    Example:
        >>> auto_orders(200_000, 400), auto_orders(32_000_000, 144)
        ((32, 64, 128, 256), (32,))
    """
    work = max(1, int(nnz)) * max(1, int(columns))
    return tuple(K for K in AUTO_ORDERS if K == AUTO_ORDERS[0] or work * K <= AUTO_ORDER_WORK)


@dataclass
class ChebyshevPlan:
    """Band edges and damped filters of one order, from KPM moments.

    Attributes:
        order: ``K``.
        t_edges: ``[M + 1]`` edges on the Chebyshev interval ``[−1, 1]``.
        coeffs: ``[M, K]`` Jackson-damped coefficients.
        shares: ``[M]`` each band's share of the signal's energy through these filters.
        moments: the ``2K`` moments the plan was made from.
        atoms: point masses found in them.
    """

    order: int
    t_edges: torch.Tensor
    coeffs: torch.Tensor
    shares: np.ndarray
    moments: np.ndarray
    atoms: List[Atom]


def chebyshev_plan(moments: np.ndarray, n_bands: int, orders: Sequence[int],
                   balance: str = "filter", min_width: Optional[float] = None,
                   atom_min: float = 0.02, atom: str = "slot") -> ChebyshevPlan:
    """Choose the Chebyshev order and energy-balanced edges (``method="chebyshev"``).

    For each order ``K`` in ``orders`` (ascending; ``moments`` must hold at least
    ``2 max(orders)`` values, the first ``2K`` of which are the moments at order ``K``) the
    edges balance the energy of that order's damped filters. The kept order is the lowest
    whose band shares are within ``ORDER_SHARE_TOL / M`` of the shares at the highest order
    tried: the bands have converged, so more products would not change what they hold. A
    low order blurs every spectral feature sharper than ``π/K`` — the ``λ = 1`` atom (the null
    space of ``R̃``) above all, which then drags a wide slice of its neighbours into its
    band (MovieLens-100k text: 55% of the energy at ``K = 32`` against 35% at ``K = 256``).

    Args:
        moments: ``[n]`` KPM moments of the signal (trivial component removed).
        n_bands: ``M``.
        orders: candidate orders, ascending.
        balance, min_width: see :func:`band_edges`.
        atom_min: smallest atom (fraction of the energy) that edges keep clear of.
        atom: ``"slot"`` or ``"fold"``: see :class:`SpectralBands`.

    Returns:
        the :class:`ChebyshevPlan` of the kept order.

    Example:
        >>> import torch, ssr_engine
        >>> from ssr_engine.spectral.bands import chebyshev_plan
        >>> g = ssr_engine.InteractionGraph([0, 0, 1, 1, 2, 3], [0, 1, 1, 2, 2, 3])
        >>> X = torch.randn(g.n_nodes, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> mom = ssr_engine.kpm_moments(g.scaled_laplacian(dtype=torch.float64), X, 64).numpy()
        >>> plan = chebyshev_plan(mom, 2, (16, 32, 64))
        >>> plan.order in (16, 32, 64), plan.coeffs.shape[0]
        (True, 2)
    """
    orders = sorted(int(K) for K in orders)
    mu = np.asarray(moments, dtype=np.float64)
    if not orders or mu.size < 2 * orders[-1]:
        raise ValueError(f"{mu.size} moments do not cover the orders {orders} (need "
                         f"2 max(orders))")
    M = int(n_bands)
    plans = []
    for K in orders:
        mom = mu[:2 * K]
        atoms = _find_atoms(mom, atom_min)
        if atom == "fold" and mom.size < 16:
            raise ValueError(f"atom='fold' needs order >= 8 to resolve the λ = 1 atom, got "
                             f"order {K}")
        fold = kpm_atoms(mom, atom_min, at=[0.0]) if atom == "fold" else []
        t_edges = band_edges(mom, M, order=K, balance=balance, min_width=min_width,
                             atoms=atoms, fold=fold)
        coeffs = band_coefficients(t_edges, K)
        E = np.asarray(band_energies(mom, coeffs), dtype=np.float64)
        plans.append(ChebyshevPlan(K, t_edges, coeffs, E / E.sum(), mom, atoms))
    ref = plans[-1].shares
    for plan in plans:
        if float(np.abs(plan.shares - ref).max()) <= ORDER_SHARE_TOL / M:
            return plan
    return plans[-1]


def _find_atoms(mom: np.ndarray, atom_min: float) -> List[Atom]:
    # A scan for point masses needs resolution; below it only λ = 1 (t = 0), where the
    # null space of R̃ sits on every bipartite graph, is tested.
    if mom.size >= ATOM_MIN_MOMENTS:
        return kpm_atoms(mom, atom_min)
    if mom.size >= 16:
        return kpm_atoms(mom, atom_min, at=[0.0])
    return []


def exact_memory_estimate(n_users: int, n_items: int, exact_max: int = 8000) -> Tuple[int, str]:
    """Peak memory of ``method="exact"`` on a bipartite graph, and the route it takes.

    * smaller side ``s ≤ exact_max`` — dense SVD of ``R̃`` (``n_u × n_i``): the matrix, its
      factors and the SVD workspace, about ``8 · (3 n_u n_i + 4 s²)`` bytes;
    * otherwise — the Gram route: the dense ``s × s`` Gram matrix and its eigenvectors (LAPACK
      ``syevr`` overwrites the matrix and needs ``O(s)`` workspace), about
      ``8 · (2 s² + 64 (n_u + n_i))`` bytes.

    Args:
        n_users: number of users ``n_u``.
        n_items: number of items ``n_i``.
        exact_max: largest smaller side that takes the dense SVD.

    Returns:
        ``(bytes, route)`` with ``route`` ``"svd"`` or ``"gram"``.

    Example:
        >>> from ssr_engine.spectral import exact_memory_estimate
        >>> b, route = exact_memory_estimate(39387, 23033)
        >>> route, round(b / 2**30, 1)
        ('gram', 7.9)
    """
    s = min(int(n_users), int(n_items))
    if s <= exact_max:
        return 8 * (3 * int(n_users) * int(n_items) + 4 * s * s), "svd"
    return 8 * (2 * s * s + 64 * (int(n_users) + int(n_items))), "gram"


def _device_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


@dataclass
class _GramBasis:
    """Exact basis of the Gram route: one side's singular vectors ``V [n_s, r]`` (the smaller
    side; ``items`` tells which), ``σ [r]`` (ascending, all above the numerical floor) and
    the sparse ``R̃`` operator that reaches the other side (``P = R̃ Q Σ⁻¹`` or
    ``Q = R̃ᵀ P Σ⁻¹``)."""

    items: bool
    V: torch.Tensor
    sigma: torch.Tensor
    R: object


@dataclass
class Spectrum:
    """A signal's energy over the Laplacian spectrum, for plots and reports.

    Attributes:
        lam: ``[G]`` grid of ``λ`` in ``(0, 2)``.
        density: ``[G]`` energy per unit ``λ`` of the continuous part, as a fraction of the
            total (non-trivial) energy.
        atoms: point masses (``Atom.lam``, ``Atom.fraction``), excluded from ``density``.
        uncovered: fraction of the energy outside a partial eigenbasis (``"eigen"``; else 0).
    """

    lam: torch.Tensor
    density: torch.Tensor
    atoms: List[Atom] = field(default_factory=list)
    uncovered: float = 0.0


class SpectralBands:
    """Split graph signals into ``M`` energy-balanced frequency bands.

    Args:
        graph: the :class:`~ssr_engine.InteractionGraph`.
        n_bands: number of bands ``M ≥ 1``.
        method: ``"auto"``, ``"exact"``, ``"eigen"`` or ``"chebyshev"``. ``"auto"`` takes
            ``"exact"`` while ``n_users · n_items ≤ 2^24``, else ``"eigen"`` when ``k`` is
            given, else ``"chebyshev"``.
        order: Chebyshev order ``K`` (number of terms; ``K − 1`` products per transform).
            Default: the first of 32, 64, 128, 256 at which every band holds at least
            ``1/(2M)`` of the fitted energy (the best one if none does).
        k: eigenpairs per end for ``"eigen"`` (default 64).
        dtype: ``torch.float32`` (default) or ``torch.float64``.
        device: torch device (default CPU).
        delta: spectral padding of ``L̃ = (L − I)/(1 + δ)`` (``"chebyshev"``).
        balance: ``"filter"`` (balance the damped filters' energies) or ``"quantile"``
            (quantiles of the KPM cumulative energy) for ``"chebyshev"``.
        min_width: smallest band width in ``θ`` (``"chebyshev"``; default ``π/K``).
        exact_max: largest smaller side ``min(n_users, n_items)`` for which ``"exact"``
            takes the dense SVD of ``R̃`` (``8 · n_users · n_items`` bytes, ``O(n_u n_i
            min)`` time); above it ``"exact"`` takes the Gram route (dense eigendecomposition
            of the smaller side's ``s × s`` Gram matrix: ``16 s²`` bytes, ``O(s³)`` time —
            28 minutes for Clothing, ``s = 23 033``, on 2 shared cores).
        exact_memory: memory budget of ``"exact"`` in bytes (default: half the memory of
            the device); a graph whose :func:`exact_memory_estimate` exceeds it is refused.
        atom_min: smallest reported (and, for ``"chebyshev"``, edge-guarded) atom, as a
            fraction of the energy.
        atom: how the energy-balanced edges treat the ``λ = 1`` atom (the null space of
            ``R̃``, of multiplicity at least ``|n_users − n_items|``): ``"slot"`` (its energy
            counts like any other; on real graphs it then tends to get a band of its own)
            or ``"fold"`` (its energy does not count in the balance, so the ``M`` bands share
            the energy off the atom, and the atom lies inside the band that covers ``λ = 1``).
            In recommendation terms the atom holds the signal on the larger side that no
            node of the other side sees: propagation maps it to zero, so it carries no
            collaborative information, and for the ID modality it is zero on the smaller side.
            ``shares_`` report the true energies either way. With ``"eigen"`` only the
            covered eigenpairs at ``λ = 1`` are folded (the uncovered middle, the residual
            band, counts whole).
        tol: eigensolver tolerance for ``"eigen"`` (default: the solver's).
        solver: eigensolver of the partial basis for ``"eigen"``: ``"auto"``, ``"lanczos"``,
            ``"lobpcg"`` or ``"chebyshev"`` (``method`` of :func:`~ssr_engine.graph_eigs`).
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` for the Chebyshev recurrence
            (``"auto"`` keeps float64 bands on the float64 torch path; the fused kernels
            accumulate in float32).

    Attributes (after :meth:`fit`):
        edges: ``[M + 1]`` float64 band edges in ``λ`` (``0 … 2``); band ``b`` is
            ``edges[b] ≤ λ < edges[b + 1]`` (nominal for damped filters).
        method_: the method used.
        order_: the Chebyshev order used (``"chebyshev"``).
        coeffs_: ``[M, K]`` damped coefficients applied (``"chebyshev"``).
        moments_: ``[2K]`` KPM moments of the fitted signal (``"chebyshev"``).
        shares_: ``[M]`` energy shares of the fitted signal (``None`` after
            :meth:`fit_uniform`).
        atoms_: point masses of the fitted signal's energy.

    Shapes:
        ``fit(X [N, d])``; ``transform(X [N, d]) -> [M, N, d]``; ``energy -> [M]``.

    Example:
        >>> import torch, ssr_engine
        >>> from ssr_engine.data import synthetic_dataset
        >>> g = synthetic_dataset(300, 200, 3000, seed=0).train_graph()
        >>> X = g.node_signal(torch.randn(200, 8))
        >>> sb = ssr_engine.SpectralBands(g, n_bands=3, method="chebyshev", order=32).fit(X)
        >>> Y = sb.transform(X)
        >>> Y.shape, bool(torch.allclose(Y.sum(0), X, atol=1e-5))
        (torch.Size([3, 500, 8]), True)
    """

    def __init__(self, graph: InteractionGraph, n_bands: int = 4, method: str = "auto",
                 order: Optional[int] = None, k: Optional[int] = None,
                 dtype: torch.dtype = torch.float32, device: Device = None, *,
                 delta: float = 0.01, balance: str = "filter",
                 min_width: Optional[float] = None, exact_max: int = 8000,
                 exact_memory: Optional[int] = None, atom_min: float = 0.02,
                 atom: str = "slot", tol: Optional[float] = None, solver: str = "auto",
                 backend: str = "auto"):
        if not isinstance(graph, InteractionGraph):
            raise TypeError(f"graph must be an ssr_engine.InteractionGraph, got "
                            f"{type(graph).__name__}")
        if isinstance(n_bands, bool) or int(n_bands) != n_bands or n_bands < 1:
            raise ValueError(f"n_bands must be a positive integer, got {n_bands}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        for name, val in (("order", order), ("k", k)):
            if val is not None and (int(val) != val or val < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {val}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if not (0.0 <= delta < 1.0):
            raise ValueError(f"delta must lie in [0, 1), got {delta}")
        if balance not in ("filter", "quantile"):
            raise ValueError(f"balance must be 'filter' or 'quantile', got {balance!r}")
        if atom not in ("slot", "fold"):
            raise ValueError(f"atom must be 'slot' or 'fold', got {atom!r}")
        if atom == "fold" and balance == "quantile":
            raise ValueError("atom='fold' needs balance='filter' (quantile edges place atoms "
                             "as steps of the cumulative energy)")
        self.atom = atom
        self.graph = graph
        self.n_bands = int(n_bands)
        self.method = method
        self.order = None if order is None else int(order)
        self.k = None if k is None else int(k)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.delta, self.balance, self.min_width = float(delta), balance, min_width
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        self.exact_max, self.atom_min, self.tol = int(exact_max), atom_min, tol
        self.solver, self.backend = solver, backend
        N, nu, ni = graph.n_nodes, graph.n_users, graph.n_items
        if method == "auto":
            small = nu * ni <= AUTO_EXACT_ENTRIES and min(nu, ni) <= self.exact_max
            self.method_ = "exact" if small else ("eigen" if k is not None else "chebyshev")
        else:
            self.method_ = method
        if self.method_ == "exact":
            need, route = exact_memory_estimate(nu, ni, self.exact_max)
            budget = (int(EXACT_MEMORY_FRACTION * _device_memory(self.device))
                      if exact_memory is None else int(exact_memory))
            if need > budget:
                what = (f"a dense SVD of the {nu}x{ni} bipartite block" if route == "svd" else
                        f"a dense eigendecomposition of the {min(nu, ni)}x{min(nu, ni)} "
                        "Gram matrix of its smaller side")
                raise ValueError(f"method='exact' on this N={N}-node graph ({nu} users x "
                                 f"{ni} items) needs {what}: about {need / 2**30:.1f} GiB, "
                                 f"more than the budget exact_memory={budget / 2**30:.1f} GiB "
                                 f"(exact_max={self.exact_max}). Use method='chebyshev' (any "
                                 "size) or method='eigen' (partial basis), or raise "
                                 "exact_memory on a machine that has the memory")
            self._route = route
        else:
            self._route = None
        self.edges: Optional[torch.Tensor] = None
        self.order_: Optional[int] = None
        self.shares_: Optional[torch.Tensor] = None
        self.atoms_: List[Atom] = []
        self._basis = None           # exact: (w [2r], (P, Q)); eigen: (w [2k], V [N, 2k])
        self._band_of = None         # band index per basis vector
        self._rest = None            # band formed as X − Σ others
        self._coeffs = None          # chebyshev: [M, K] float64
        self.moments_: Optional[torch.Tensor] = None
        self.uncovered_ = 0.0

    @property
    def coeffs_(self) -> Optional[torch.Tensor]:
        """``[M, K]`` float64 damped Chebyshev coefficients (``"chebyshev"``; else ``None``)."""
        return self._coeffs

    def __repr__(self) -> str:
        fitted = "unfitted" if self.edges is None else \
            "edges=[" + ", ".join(f"{e:.4f}" for e in self.edges.tolist()) + "]"
        return (f"SpectralBands(n_bands={self.n_bands}, method={self.method_!r}, "
                f"order={self.order_ or self.order}, {fitted})")

    # -- signals ----------------------------------------------------------------------
    def _signal(self, X) -> torch.Tensor:
        x = torch.as_tensor(X)
        N = self.graph.n_nodes
        if x.dim() != 2 or x.shape[0] != N:
            raise ValueError(f"X must be [N={N}, d] (users first, then items), got "
                             f"{tuple(x.shape)}")
        if not (x.dtype.is_floating_point or x.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"X must hold real numbers, got dtype {x.dtype}")
        x = x.to(device=self.device, dtype=self.dtype)
        if x.numel() and not torch.isfinite(x).all():
            bad = (~torch.isfinite(x)).nonzero()[0].tolist()
            raise ValueError(f"X contains NaN or inf (first at row {bad[0]}, column {bad[1]})")
        return x

    def _centred(self, x: torch.Tensor) -> torch.Tensor:
        v = self.graph.trivial_vector(self.dtype, self.device)
        return x - torch.outer(v, v @ x)

    def _operator(self):
        return self.graph.scaled_laplacian(self.delta, dtype=self.dtype, device=self.device)

    def _lam(self, t: float) -> float:
        return min(2.0, max(0.0, 1.0 + (1.0 + self.delta) * t))

    # -- fitting ----------------------------------------------------------------------
    def fit(self, X) -> "SpectralBands":
        """Place the band edges so the bands share the energy of ``X`` (trivial part removed).

        Args:
            X: ``[N, d]`` node signal (users first), e.g. ``graph.node_signal(features)``.

        Returns:
            ``self``.

        Raises:
            ValueError: on a bad shape, NaN/inf, or a signal with no energy outside the
                trivial component.
        """
        raw = self._signal(X)
        x = self._centred(raw)
        energy, scale = float(x.double().pow(2).sum()), float(raw.double().pow(2).sum())
        if not energy > (100 * torch.finfo(self.dtype).eps) ** 2 * scale:
            raise ValueError("X has no energy once its trivial component D^{1/2}1 is removed "
                             f"(left: {energy:.3g} of {scale:.3g}); edges cannot be balanced "
                             "— use fit_uniform()")
        getattr(self, f"_fit_{self.method_}")(x)
        return self

    def fit_uniform(self) -> "SpectralBands":
        """Equal-width bands in ``λ`` (no signal needed); ``shares_`` stays ``None``."""
        M = self.n_bands
        edges = np.linspace(0.0, 2.0, M + 1)
        self.edges = torch.from_numpy(edges)
        self.shares_, self.atoms_ = None, []
        if self.method_ == "chebyshev":
            K = self.order or UNIFORM_ORDER
            t = (edges - 1.0) / (1.0 + self.delta)
            t[0], t[-1] = -1.0, 1.0
            self.order_, self._coeffs = K, band_coefficients(t, K)
        else:
            # The rest (null space at λ = 1, or the uncovered middle) joins the band of λ = 1.
            w = self._ensure_basis()[0]
            self._band_of = np.clip(np.searchsorted(edges[1:-1], w, side="right"), 0, M - 1)
            self._rest = int(np.clip(np.searchsorted(edges[1:-1], 1.0, side="right"), 0, M - 1))
        return self

    def _backend(self) -> str:
        # The fused kernels work in float32: float64 bands stay on the float64 torch path.
        return "torch" if self.backend == "auto" and self.dtype == torch.float64 else self.backend

    def _fit_chebyshev(self, x: torch.Tensor) -> None:
        op = self._operator()
        orders = (self.order,) if self.order is not None else \
            auto_orders(op.nnz, 2 * x.shape[1])
        mom = kpm_moments(op, x, max(orders), backend=self._backend()).numpy()
        plan = chebyshev_plan(mom, self.n_bands, orders, balance=self.balance,
                              min_width=self.min_width, atom_min=self.atom_min,
                              atom=self.atom)
        self.order_, self._coeffs = plan.order, plan.coeffs
        self.shares_ = torch.from_numpy(plan.shares)
        self.moments_ = torch.from_numpy(plan.moments)
        lam = np.array([self._lam(float(t)) for t in plan.t_edges])
        lam[0], lam[-1] = 0.0, 2.0
        self.edges = torch.from_numpy(lam)
        self.atoms_ = [Atom(a.t, a.mass, a.fraction, self._lam(a.t)) for a in plan.atoms]

    def _ensure_basis(self):
        # exact: the SVD R̃ = P Σ Qᵀ gives L's eigenpairs 1 ∓ σ_j with [p_j; ±q_j]/√2; the
        # rest of the space (N − 2r dimensions) is R̃'s null space, at λ = 1.
        # eigen: a partial eigenbasis (w [k], V [N, k]) from graph_eigs.
        if self._basis is None:
            if self.method_ == "exact" and self._route == "gram":
                self._basis = self._gram_basis()
            elif self.method_ == "exact":
                rt = torch.from_numpy(self.graph.normalized_bipartite_scipy().toarray())
                P, s, Vh = torch.linalg.svd(rt.to(self.device), full_matrices=False)
                s = s.clamp(0.0, 1.0)
                w = torch.cat([1.0 - s, 1.0 + s]).cpu().numpy()
                self._basis = (w, (P, Vh.T.contiguous()))
            else:
                from ..linalg import graph_eigs
                k = self.k or min(DEFAULT_K, max(1, self.graph.n_nodes // 4))
                kw = {} if self.tol is None else {"tol": self.tol}
                w, V = graph_eigs(self.graph, k, which="both", dtype=self.dtype,
                                  device=self.device, method=self.solver, **kw)
                self._basis = (w.double().clamp(0.0, 2.0).cpu().numpy(),
                               V.to(torch.float64))
        return self._basis

    def _gram_basis(self):
        # The smaller side's Gram matrix G = R̃ᵀR̃ (or R̃R̃ᵀ) = V Σ² Vᵀ, dense in float64. Its
        # eigenvalues σ² carry an absolute error of about s·eps (‖G‖ = 1), so σ² at or below
        # that floor cannot be told from 0: those directions join R̃'s null space at λ = 1
        # (the residual), as do all directions of the larger side outside P or Q.
        g = self.graph
        items = g.n_items <= g.n_users
        rt = g.normalized_bipartite_scipy()
        G = (rt.T @ rt) if items else (rt @ rt.T)
        n = G.shape[0]
        floor = n * float(np.finfo(np.float64).eps)
        if self.device.type == "cuda":
            Gd = torch.from_numpy(G.toarray()).to(self.device)
            del G
            s2, V = torch.linalg.eigh(Gd)
            del Gd
            first = int((s2 <= floor).sum())
            s2, V = s2[first:], V[:, first:]
        else:
            import scipy.linalg
            A = G.toarray()
            del G
            # G is symmetric, so A and A.T are the same matrix: hand LAPACK (syevr) the one
            # in Fortran order, which it overwrites in place instead of copying (peak: the
            # matrix and its eigenvectors, 2 s² floats). Eigenvectors come back in Fortran
            # order, so the kept (trailing) columns are a contiguous view.
            s2, Z = scipy.linalg.eigh(A if A.flags.f_contiguous else A.T, overwrite_a=True,
                                      check_finite=False, driver="evr")
            del A
            first = int(np.searchsorted(s2, floor, side="right"))
            s2, V = torch.from_numpy(s2[first:]), torch.from_numpy(Z[:, first:])
        sigma = s2.clamp(max=1.0).sqrt()
        s_np = sigma.cpu().numpy()
        w = np.concatenate([1.0 - s_np, 1.0 + s_np])
        return w, _GramBasis(items, V, sigma, g.bipartite(torch.float64, self.device))

    def _cols_mm(self, V: torch.Tensor, idx: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``V[:, idx] @ c`` with at most ``GRAM_CHUNK`` columns of ``V`` gathered at a time."""
        out = torch.zeros(V.shape[0], c.shape[1], dtype=V.dtype, device=V.device)
        for a in range(0, idx.numel(), GRAM_CHUNK):
            out.addmm_(V.index_select(1, idx[a:a + GRAM_CHUNK]), c[a:a + GRAM_CHUNK])
        return out

    def _analyse(self, x: torch.Tensor):
        """Coefficients ``C [m, d]`` on the covered basis and the residual ``[N, d]`` (float64)."""
        _, B = self._ensure_basis()
        x = x.to(torch.float64)
        if isinstance(B, _GramBasis):
            # a = Pᵀx_u, b = Qᵀx_i with the stored side's vectors V and the other side's
            # reached through R̃: P = R̃ Q Σ⁻¹ (items stored) or Q = R̃ᵀ P Σ⁻¹ (users stored).
            nu, V, s = self.graph.n_users, B.V, B.sigma[:, None]
            xu, xi = x[:nu], x[nu:]
            if B.items:
                a, b = (V.T @ (B.R.T @ xu)) / s, V.T @ xi
                resid = torch.cat([xu - B.R @ (V @ (a / s)), xi - V @ b])
            else:
                a, b = V.T @ xu, (V.T @ (B.R @ xi)) / s
                resid = torch.cat([xu - V @ a, xi - B.R.T @ (V @ (b / s))])
            C = torch.cat([a + b, a - b]) / math.sqrt(2.0)
        elif self.method_ == "exact":
            P, Q = B
            nu = self.graph.n_users
            a, b = P.T @ x[:nu], Q.T @ x[nu:]
            C = torch.cat([a + b, a - b]) / math.sqrt(2.0)
            resid = torch.cat([x[:nu] - P @ a, x[nu:] - Q @ b])
        else:
            C = B.T @ x
            resid = x - B @ C
        return C, resid

    def _synthesise(self, C: torch.Tensor, idx: torch.Tensor, out: torch.Tensor) -> None:
        """``out = Σ_{j ∈ idx} v_j C[j]`` for covered basis vectors ``v_j`` (float64)."""
        _, B = self._ensure_basis()
        if isinstance(B, _GramBasis):
            # Pair j is [p_j; ±q_j]/√2: users get P[:, +] c₊ + P[:, −] c₋, items
            # Q[:, +] c₊ − Q[:, −] c₋; the side not stored is R̃ (or R̃ᵀ) applied to the
            # stored side's vectors scaled by Σ⁻¹. Columns are gathered in chunks.
            r, nu, V, s = B.V.shape[1], self.graph.n_users, B.V, B.sigma[:, None]
            plus, minus = idx[idx < r], idx[idx >= r] - r
            cp, cm = C[plus] / math.sqrt(2.0), C[minus + r] / math.sqrt(2.0)
            if B.items:
                out[nu:] = self._cols_mm(V, plus, cp) - self._cols_mm(V, minus, cm)
                out[:nu] = B.R @ (self._cols_mm(V, plus, cp / s[plus])
                                  + self._cols_mm(V, minus, cm / s[minus]))
            else:
                out[:nu] = self._cols_mm(V, plus, cp) + self._cols_mm(V, minus, cm)
                out[nu:] = B.R.T @ (self._cols_mm(V, plus, cp / s[plus])
                                    - self._cols_mm(V, minus, cm / s[minus]))
        elif self.method_ == "exact":
            P, Q = B
            r, nu = P.shape[1], self.graph.n_users
            plus, minus = idx[idx < r], idx[idx >= r] - r
            cp, cm = C[plus] / math.sqrt(2.0), C[minus + r] / math.sqrt(2.0)
            torch.mm(P[:, plus], cp, out=out[:nu])
            out[:nu].addmm_(P[:, minus], cm)
            torch.mm(Q[:, plus], cp, out=out[nu:])
            out[nu:].addmm_(Q[:, minus], cm, alpha=-1.0)
        else:
            torch.mm(B[:, idx], C[idx], out=out)

    def _atoms_exact(self, w: np.ndarray, e: np.ndarray, total: float) -> List[Atom]:
        order = np.argsort(w, kind="stable")
        w, e = w[order], e[order]
        first = _clusters(w, 1e-8)
        mass = np.add.reduceat(e, first)
        return [Atom(t=(w[f] - 1.0) / (1.0 + self.delta), mass=float(m),
                     fraction=float(m / total), lam=float(w[f]))
                for f, m in zip(first, mass) if m >= self.atom_min * total]

    def _exact_spectrum(self, x: torch.Tensor):
        # Eigenvalues and energies of the whole spectrum: covered pairs plus the λ = 1 null space.
        w, _ = self._ensure_basis()
        C, resid = self._analyse(x)
        e = C.pow(2).sum(1).cpu().numpy()
        return np.r_[w, 1.0], np.r_[e, float(resid.pow(2).sum())]

    def _balanced(self, w: np.ndarray, e: np.ndarray) -> np.ndarray:
        """The energies the edges balance: ``e``, less the ``λ = 1`` atom's with ``"fold"``."""
        if self.atom != "fold":
            return e
        return np.where(np.abs(w - 1.0) <= 1e-8, 0.0, e)

    def _fit_exact(self, x: torch.Tensor) -> None:
        w_all, e_all = self._exact_spectrum(x)
        M = self.n_bands
        edges = spectrum_edges(w_all, self._balanced(w_all, e_all), M, 0.0, 2.0).numpy()
        band = np.clip(np.searchsorted(edges[1:-1], w_all, side="right"), 0, M - 1)
        E = np.bincount(band, weights=e_all, minlength=M)
        self.edges, self._band_of, self._rest = torch.from_numpy(edges), band[:-1], int(band[-1])
        self.shares_ = torch.from_numpy(E / E.sum())
        self.atoms_ = self._atoms_exact(w_all, e_all, float(e_all.sum()))

    def _fit_eigen(self, x: torch.Tensor) -> None:
        w, _ = self._ensure_basis()
        C, resid = self._analyse(x)
        e = C.pow(2).sum(1).cpu().numpy()
        r = float(resid.pow(2).sum())
        total = r + float(e.sum())
        M = self.n_bands
        best = None
        e_bal = self._balanced(w, e)
        for m_lo in range(M):
            split = self._eigen_split(w, e_bal, r, m_lo, M - 1 - m_lo)
            if split is None:
                continue
            E = split[1]
            cost = float(np.sum(np.log(np.maximum(E, 1e-300) / (total / M)) ** 2))
            if best is None or cost < best[0]:
                best = (cost, m_lo) + split
        if best is None:
            raise ValueError(f"the partial basis of {w.size} eigenpairs cannot carry {M} "
                             "bands; raise k or lower n_bands")
        _, self._rest, band, E, edges = best
        if self.atom == "fold":                       # report the true energies
            E = np.bincount(band, weights=e, minlength=M)
            E[self._rest] += r
        self._band_of = band
        self.edges = torch.tensor(edges, dtype=torch.float64)
        self.shares_ = torch.from_numpy(E / E.sum())
        self.atoms_ = self._atoms_exact(w, e, total)
        self.uncovered_ = r / total

    @staticmethod
    def _eigen_split(w: np.ndarray, e: np.ndarray, r: float, m_lo: int, m_hi: int):
        # m_lo bands on the covered low end, the residual band, m_hi bands on the high end;
        # an end without bands joins the residual band.
        M = m_lo + 1 + m_hi
        band = np.full(w.size, m_lo, dtype=np.int64)
        E = np.zeros(M)
        E[m_lo] = r
        edges = [0.0]
        for side, m, offset in ((w < 1.0, m_lo, 0), (w >= 1.0, m_hi, m_lo + 1)):
            if m == 0:
                E[m_lo] += float(e[side].sum())
                continue
            ws, es = w[side], e[side]
            if np.unique(ws.round(8)).size < m or not es.sum() > 0:
                return None
            lo, hi = (0.0, float(ws.max()) + 1e-9) if offset == 0 else (float(ws.min()), 2.0)
            ed = spectrum_edges(ws, es, m, lo, hi).numpy()
            b = np.clip(np.searchsorted(ed[1:-1], ws, side="right"), 0, m - 1)
            band[side] = b + offset
            E[offset:offset + m] = np.bincount(b, weights=es, minlength=m)
            edges.extend(ed[1:].tolist() if offset == 0 else ed[:-1].tolist())
        edges.append(2.0)
        return band, E, edges

    # -- applying ---------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.edges is None:
            raise RuntimeError("SpectralBands is not fitted: call fit(X) (energy-balanced) or "
                               "fit_uniform() before transform/energy/spectrum")

    def transform(self, X) -> torch.Tensor:
        """Band signals of ``X``: ``[M, N, d]``, summing back to ``X`` (partition of unity).

        Args:
            X: ``[N, d]`` node signal (not centred: the trivial component goes to band 0).

        Returns:
            ``[M, N, d]`` tensor in the bands' dtype and on their device.
        """
        self._check_fitted()
        x = self._signal(X)
        if self.n_bands == 1:
            return x.unsqueeze(0).clone()
        if self.method_ == "chebyshev":
            # x is validated: go straight to the shared recurrence (no second NaN scan).
            return ops.chebyshev_bands(self._operator(), x, self._coeffs.to(self.device),
                                       backend=self._backend())
        C, _ = self._analyse(x)
        out = torch.empty(self.n_bands, *x.shape, dtype=torch.float64, device=self.device)
        band = torch.as_tensor(self._band_of, device=self.device)
        keep = [b for b in range(self.n_bands) if b != self._rest]
        for b in keep:
            self._synthesise(C, (band == b).nonzero().flatten(), out[b])
        torch.sub(x.to(torch.float64), out[keep].sum(0), out=out[self._rest])
        return out.to(self.dtype)

    __call__ = transform

    def energy(self, X) -> torch.Tensor:
        """Each band's share ``‖X_b‖² / Σ_b' ‖X_b'‖²`` of ``X`` with its trivial part removed.

        Returns:
            ``[M]`` float64 shares (sum 1).
        """
        self._check_fitted()
        Y = self.transform(self._centred(self._signal(X)))
        E = Y.to(torch.float64).pow(2).sum(dim=(1, 2)).cpu()
        if not float(E.sum()) > 0:
            raise ValueError("X has no energy outside the trivial component")
        return E / E.sum()

    def spectrum(self, X, grid: int = 512) -> Spectrum:
        """The energy density of ``X`` (trivial part removed) over ``λ``, and its atoms.

        ``"chebyshev"``: Jackson-damped KPM density from ``2K`` moments (atoms taken out);
        ``"exact"``/``"eigen"``: a histogram of the exact energies (``"eigen"``: covered part
        only, ``uncovered`` holds the rest).

        Args:
            X: ``[N, d]`` node signal.
            grid: number of ``λ`` points.

        Returns:
            A :class:`Spectrum`.
        """
        self._check_fitted()
        x = self._centred(self._signal(X))
        lam = np.linspace(0.0, 2.0, int(grid) + 1)
        mid = 0.5 * (lam[1:] + lam[:-1])
        if self.method_ == "chebyshev":
            mu = kpm_moments(self._operator(), x, self.order_, backend=self._backend()).numpy()
            atoms = [Atom(a.t, a.mass, a.fraction, self._lam(a.t))
                     for a in _find_atoms(mu, self.atom_min)]
            cont = mu.copy()
            k = np.arange(mu.size)
            for a in atoms:
                cont -= a.mass * np.cos(k * math.acos(max(-1.0, min(1.0, a.t))))
            t = (mid - 1.0) / (1.0 + self.delta)
            dens = kpm_density(cont, t).numpy() / (1.0 + self.delta) / mu[0]
            return Spectrum(torch.from_numpy(mid), torch.from_numpy(np.maximum(dens, 0.0)),
                            atoms)
        total = float(x.to(torch.float64).pow(2).sum())
        if self.method_ == "exact":
            w, e = self._exact_spectrum(x)
            uncovered = 0.0
        else:
            w, _ = self._ensure_basis()
            C, resid = self._analyse(x)
            e = C.pow(2).sum(1).cpu().numpy()
            uncovered = float(resid.pow(2).sum()) / total
        atoms = self._atoms_exact(w, e, total)
        in_atom = np.zeros(w.size, dtype=bool)
        for a in atoms:
            in_atom |= np.abs(w - a.lam) <= 1e-8
        hist, _ = np.histogram(w[~in_atom], bins=lam, weights=e[~in_atom])
        dens = hist / (lam[1] - lam[0]) / total
        return Spectrum(torch.from_numpy(mid), torch.from_numpy(dens), atoms, uncovered)
