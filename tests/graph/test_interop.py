"""networkx and pylops where users meet them: graphs in and out of networkx, operators as
pylops LinearOperators and pylops operators inside eigsh."""
import numpy as np
import pytest
import torch

import ssr_engine
from ssr_engine import InteractionGraph, as_operator
from ssr_engine.graph import FunctionOperator
from tolerances import tol

nx = pytest.importorskip("networkx")
pylops = pytest.importorskip("pylops")


def test_networkx_round_trip_keeps_ids_weights_and_isolated_nodes():
    G = nx.Graph()
    G.add_nodes_from(["alice", "bob", "carol"])          # carol has no interactions
    G.add_nodes_from(["book", "film"])
    G.add_edge("alice", "film", w=2.0)
    G.add_edge("book", "bob", w=1.0)                      # item first: still user-item
    g, users, items = InteractionGraph.from_networkx(G, ["alice", "bob", "carol"], weight="w")
    assert (g.n_users, g.n_items, g.n_edges) == (3, 2, 2) and items == ["book", "film"]
    assert g.interaction_matrix()[0, 1] == 2.0 and g.interaction_matrix()[1, 0] == 1.0
    back = g.to_networkx(users, items)
    assert set(back.nodes) == set(G.nodes)
    assert {frozenset(e) for e in back.edges} == {frozenset(e) for e in G.edges}
    assert back["alice"]["film"]["weight"] == 2.0 and back.nodes["carol"]["bipartite"] == 0


def test_networkx_refuses_a_non_bipartite_split():
    G = nx.path_graph(3)                                  # 0 - 1 - 2
    with pytest.raises(ValueError, match=r"edge \(1, 2\) joins two items"):
        InteractionGraph.from_networkx(G, user_nodes=[0])
    with pytest.raises(ValueError, match="not nodes of G"):
        InteractionGraph.from_networkx(G, user_nodes=[7])


@pytest.mark.parametrize("make", [lambda: nx.complete_bipartite_graph(3, 5),
                                  lambda: nx.bipartite.random_graph(20, 12, 0.3, seed=4)])
def test_laplacian_equals_networkx_normalised_laplacian(make):
    G = make()
    G.remove_nodes_from([v for v in list(G) if G.degree(v) == 0])
    users = [v for v, d in G.nodes(data=True) if d["bipartite"] == 0]
    g, us, its = InteractionGraph.from_networkx(G, users)
    ours = g.laplacian(dtype=torch.float64).to_dense().numpy()
    theirs = nx.normalized_laplacian_matrix(G, nodelist=us + its).toarray()
    np.testing.assert_allclose(ours, theirs, atol=tol(torch.float64))


def test_complete_bipartite_spectrum_in_closed_form():
    # K_{m,n}: eigenvalues 0 and 2 once each, 1 with multiplicity m + n - 2
    g, _, _ = InteractionGraph.from_networkx(nx.complete_bipartite_graph(4, 6), range(4))
    w, _ = ssr_engine.eigsh(g.laplacian(dtype=torch.float64), k=10, which="SA",
                            method="dense")
    np.testing.assert_allclose(w.numpy(), [0.0] + [1.0] * 8 + [2.0], atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_operator_as_pylops_and_back(dtype):
    g, _, _ = InteractionGraph.from_networkx(nx.bipartite.random_graph(30, 20, 0.3, seed=0),
                                             range(30))
    L = g.laplacian(dtype=dtype)
    P = L.to_pylops()
    assert isinstance(P, pylops.LinearOperator) and P.shape == L.shape
    x = np.random.default_rng(2).standard_normal((L.shape[0], 3))
    np.testing.assert_allclose(P @ x, (L @ torch.from_numpy(x).to(dtype)).double().numpy(),
                               rtol=tol(dtype), atol=tol(dtype))
    # a pylops composition goes back into the engine's eigensolver, matrix-free
    shifted = 2.0 * pylops.Identity(L.shape[0], dtype=P.dtype) - P
    op = as_operator(shifted, dtype=dtype)
    assert isinstance(op, FunctionOperator)
    res = ssr_engine.eigsh(shifted, k=4, which="LA", method="lanczos",
                           tol=1e-4 if dtype == torch.float32 else 1e-8)
    want = np.sort(2.0 - np.linalg.eigvalsh(L.to_dense().double().numpy()))[-4:]
    np.testing.assert_allclose(res.eigenvalues.double().numpy(), want,
                               atol=1e-3 if dtype == torch.float32 else 1e-7)
    assert res.eigenvalues.dtype == (torch.float32 if P.dtype == np.float32 else torch.float64)


def test_pylops_non_symmetric_operator_is_refused_by_eigsh():
    A = pylops.MatrixMult(np.triu(np.ones((6, 6))))
    with pytest.raises(ValueError, match="not symmetric"):
        ssr_engine.eigsh(A, k=2)


def test_to_pylops_without_pylops_says_how_to_get_it(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "pylops", None)          # as if not installed
    with pytest.raises(ImportError, match="pip install pylops"):
        InteractionGraph([0], [0]).laplacian().to_pylops()
