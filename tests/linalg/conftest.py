"""Small graphs and matrices with closed-form spectra for the eigensolver tests."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ssr_engine import InteractionGraph
from tolerances import tol


def bipartite_from_edges(edges, n_nodes, users, items) -> InteractionGraph:
    """An InteractionGraph from an undirected bipartite edge list on nodes ``0..n-1`` whose
    colour classes are ``users`` and ``items``; returns the graph and the node order
    (users first) that maps graph nodes back to the original ones."""
    uid = {v: i for i, v in enumerate(users)}
    iid = {v: i for i, v in enumerate(items)}
    u, it = [], []
    for a, b in edges:
        if a in iid:
            a, b = b, a
        u.append(uid[a])
        it.append(iid[b])
    return InteractionGraph(u, it, len(users), len(items))


def path_graph(n: int) -> InteractionGraph:
    """Path on n nodes; normalised Laplacian spectrum ``1 - cos(pi j / (n - 1))``."""
    nodes = range(n)
    return bipartite_from_edges([(i, i + 1) for i in range(n - 1)], n,
                                [v for v in nodes if v % 2 == 0], [v for v in nodes if v % 2])


def path_spectrum(n: int) -> np.ndarray:
    return np.sort(1 - np.cos(np.pi * np.arange(n) / (n - 1)))


def cycle_graph(n: int) -> InteractionGraph:
    """Even cycle; spectrum ``1 - cos(2 pi j / n)`` (mostly double)."""
    assert n % 2 == 0
    nodes = range(n)
    return bipartite_from_edges([(i, (i + 1) % n) for i in range(n)], n,
                                [v for v in nodes if v % 2 == 0], [v for v in nodes if v % 2])


def cycle_spectrum(n: int) -> np.ndarray:
    return np.sort(1 - np.cos(2 * np.pi * np.arange(n) / n))


def torus_graph(a: int, b: int) -> InteractionGraph:
    """a x b torus grid (a, b even): 4-regular bipartite; spectrum
    ``1 - (cos(2 pi i / a) + cos(2 pi j / b)) / 2``."""
    idx = lambda i, j: (i % a) * b + (j % b)
    edges = [(idx(i, j), idx(i + 1, j)) for i in range(a) for j in range(b)]
    edges += [(idx(i, j), idx(i, j + 1)) for i in range(a) for j in range(b)]
    nodes = [(i, j) for i in range(a) for j in range(b)]
    users = [idx(i, j) for i, j in nodes if (i + j) % 2 == 0]
    items = [idx(i, j) for i, j in nodes if (i + j) % 2 == 1]
    return bipartite_from_edges(edges, a * b, users, items)


def torus_spectrum(a: int, b: int) -> np.ndarray:
    ci = np.cos(2 * np.pi * np.arange(a) / a)
    cj = np.cos(2 * np.pi * np.arange(b) / b)
    return np.sort((1 - (ci[:, None] + cj[None, :]) / 2).ravel())


def complete_bipartite(a: int, b: int) -> InteractionGraph:
    """K_{a,b}: spectrum 0, 1 (a + b - 2 times), 2."""
    u, i = np.meshgrid(np.arange(a), np.arange(b), indexing="ij")
    return InteractionGraph(u.ravel(), i.ravel(), a, b)


def disjoint_union(*graphs: InteractionGraph, extra_items: int = 0) -> InteractionGraph:
    """Graphs side by side (plus isolated items)."""
    us, its, ou, oi = [], [], 0, 0
    for g in graphs:
        u, i = g.edges()
        us.append(u + ou)
        its.append(i + oi)
        ou += g.n_users
        oi += g.n_items
    return InteractionGraph(np.concatenate(us), np.concatenate(its), ou, oi + extra_items)


def grid_laplacian(a: int, b: int) -> sp.csr_matrix:
    """Combinatorial Laplacian of the a x b grid (free ends): spectrum
    ``(2 - 2 cos(pi i / a)) + (2 - 2 cos(pi j / b))``."""
    def path_lap(n):
        main = np.full(n, 2.0)
        main[[0, -1]] = 1.0
        return sp.diags([-np.ones(n - 1), main, -np.ones(n - 1)], [-1, 0, 1])
    return sp.csr_matrix(sp.kronsum(path_lap(b), path_lap(a)))


def grid_spectrum(a: int, b: int) -> np.ndarray:
    la = 2 - 2 * np.cos(np.pi * np.arange(a) / a)
    lb = 2 - 2 * np.cos(np.pi * np.arange(b) / b)
    return np.sort((la[:, None] + lb[None, :]).ravel())


def check_pairs(A_dense: torch.Tensor, w: torch.Tensor, V: torch.Tensor, dtype,
                norm: float) -> None:
    """Residuals within the solve tolerance and orthonormal columns."""
    Ad = A_dense.to(V.dtype)
    res = (Ad @ V - V * w).norm(dim=0) / max(norm, 1e-300)
    assert float(res.max()) <= tol(dtype, "solve"), f"residuals {res}"
    eye = torch.eye(V.shape[1], dtype=V.dtype)
    assert float((V.mT @ V - eye).abs().max()) <= 10 * tol(dtype, "close")


def projector_distance(V: torch.Tensor, U: torch.Tensor) -> float:
    """``||(I - U U^T) V||``: how far span(V) sticks out of span(U) (U orthonormal)."""
    V = V.double()
    U = U.double()
    return float((V - U @ (U.mT @ V)).norm(dim=0).max())


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def cases():
    """The builders above, for the test modules (which cannot import a conftest)."""
    return SimpleNamespace(
        path_graph=path_graph, path_spectrum=path_spectrum, cycle_graph=cycle_graph,
        cycle_spectrum=cycle_spectrum, torus_graph=torus_graph, torus_spectrum=torus_spectrum,
        complete_bipartite=complete_bipartite, disjoint_union=disjoint_union,
        grid_laplacian=grid_laplacian, grid_spectrum=grid_spectrum, check_pairs=check_pairs,
        projector_distance=projector_distance)
