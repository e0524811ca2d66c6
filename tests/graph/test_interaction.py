import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ssr_engine import InteractionGraph
from tolerances import tol


def small_graph():
    # 3 users, 4 items; item 3 isolated; user 0 has a duplicate interaction.
    with pytest.warns(UserWarning, match="1 duplicate .* merged"):
        return InteractionGraph([0, 0, 1, 2, 2, 0], [0, 1, 1, 2, 0, 0], n_users=3, n_items=4)


def test_sizes_and_duplicates_merged():
    # before: the duplicate (0, 0) summed to weight 2 and an unweighted graph was not binary
    g = small_graph()
    assert (g.n_users, g.n_items, g.n_nodes, g.n_edges) == (3, 4, 7, 5)
    assert g.binary is True and g.duplicates_merged == 1
    np.testing.assert_array_equal(g.user_degrees, [2, 1, 2])
    np.testing.assert_array_equal(g.item_degrees, [2, 2, 1, 0])
    with pytest.warns(UserWarning):
        assert InteractionGraph([0, 0], [0, 0]).binary
    w = InteractionGraph([0, 0, 1], [0, 0, 1], weights=[1.0, 2.0, 1.0])   # weights still sum
    assert w.duplicates_merged == 1 and w.interaction_matrix()[0, 0] == 3.0


def test_ids_too_large_for_memory_are_refused_before_allocating():
    # before: an id of 10**12 asked scipy for terabytes
    with pytest.raises(ValueError, match="needs .* GB for its index arrays alone.*dense"):
        InteractionGraph([0, 10**12], [0, 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_operators_match_dense_definition(dtype):
    g = small_graph()
    R = g.interaction_matrix().toarray()
    A = np.block([[np.zeros((3, 3)), R], [R.T, np.zeros((4, 4))]])
    d = A.sum(1)
    inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
    Ahat = inv[:, None] * A * inv[None, :]
    X = torch.randn(7, 3, dtype=torch.float64)
    eps = tol(dtype)
    for op, ref in ((g.adjacency(dtype), Ahat), (g.laplacian(dtype), np.eye(7) - Ahat),
                    (g.scaled_laplacian(0.05, dtype), -Ahat / 1.05)):
        y = op @ X.to(dtype)
        np.testing.assert_allclose(y.double().numpy(), ref @ X.numpy(), atol=eps, rtol=eps)
    Rt = g.bipartite(dtype)
    Xi = torch.randn(4, 2, dtype=dtype)
    np.testing.assert_allclose((Rt @ Xi).double().numpy(), Ahat[:3, 3:] @ Xi.double().numpy(),
                               atol=eps, rtol=eps)
    Xu = torch.randn(3, 2, dtype=dtype)
    np.testing.assert_allclose((Rt.T @ Xu).double().numpy(), Ahat[3:, :3] @ Xu.double().numpy(),
                               atol=eps, rtol=eps)


def test_isolated_nodes_give_zero_rows_not_nan():
    g = small_graph()
    L = g.laplacian(torch.float64).to_dense()
    assert torch.isfinite(L).all()
    # isolated item 3 is node 6: its row of Â is zero, so L's row is e_6
    assert torch.equal(L[6], torch.eye(7, dtype=torch.float64)[6])


def test_trivial_vector_is_null_vector_of_laplacian():
    g = small_graph()
    v = g.trivial_vector(torch.float64)
    assert abs(float(v.norm()) - 1.0) < tol(torch.float64)
    assert float((g.laplacian(torch.float64) @ v).norm()) < tol(torch.float64)


def test_spectrum_in_range_and_bipartite_symmetry():
    g = InteractionGraph(np.random.default_rng(0).integers(0, 30, 200),
                         np.random.default_rng(1).integers(0, 20, 200))
    w = np.linalg.eigvalsh(g.laplacian(torch.float64).to_dense().numpy())
    assert w.min() > -tol(torch.float64) and w.max() < 2 + tol(torch.float64)
    np.testing.assert_allclose(np.sort(w), np.sort(2 - w), atol=1e-10)  # λ ↔ 2 − λ


def test_user_mean_and_node_signal():
    g = small_graph()
    f = torch.arange(8, dtype=torch.float64).reshape(4, 2)
    um = g.user_mean(f)
    # user 0: items {0 (given twice, merged), 1}
    np.testing.assert_allclose(um[0].numpy(), (f[0] + f[1]).numpy() / 2)
    np.testing.assert_allclose(um[1].numpy(), f[1].numpy())
    sig = g.node_signal(f)
    assert sig.shape == (7, 2) and torch.equal(sig[3:], f)
    with pytest.raises(ValueError, match="n_items=4"):
        g.user_mean(torch.zeros(3, 2))


def test_user_without_items_has_zero_mean():
    g = InteractionGraph([0], [0], n_users=2, n_items=1)
    assert torch.equal(g.user_mean(torch.ones(1, 3))[1], torch.zeros(3))


def test_scipy_interop():
    g = small_graph()
    lin = g.laplacian(torch.float64).as_linear_operator()
    x = np.random.default_rng(0).standard_normal(7)
    ref = g.laplacian(torch.float64).to_scipy() @ x
    np.testing.assert_allclose(lin @ x, ref, atol=1e-14)
    rt = g.bipartite(torch.float64).as_linear_operator()
    np.testing.assert_allclose(rt.T @ np.ones(3), g.normalized_bipartite_scipy().T @ np.ones(3))


@pytest.mark.parametrize("args, match", [
    (([0, -1], [0, 1]), "negative id -1"),
    (([0, 1], [0, 1, 2]), "differ in length"),
    (([0.5, 1.0], [0, 1]), "integer ids"),
    (([], []), "empty"),
    (([0, 5], [0, 1], 3), "user id 5 is out of range for n_users=3"),
    (([0, 1], [0, 7], None, 4), "item id 7 is out of range for n_items=4"),
    (([[0, 1]], [[0, 1]]), "1-D"),
])
def test_bad_input_raises_clear_errors(args, match):
    with pytest.raises(ValueError, match=match):
        InteractionGraph(*args)


def test_bad_weights():
    with pytest.raises(ValueError, match="finite and positive"):
        InteractionGraph([0, 1], [0, 1], weights=[1.0, float("nan")])
    with pytest.raises(ValueError, match="weights has length"):
        InteractionGraph([0, 1], [0, 1], weights=[1.0])


def test_accepts_torch_ids_and_weights():
    g = InteractionGraph(torch.tensor([0, 1]), torch.tensor([1, 0]), weights=torch.tensor([2.0, 3.0]))
    assert g.n_edges == 2 and not g.binary
    assert sp.issparse(g.interaction_matrix())


def test_grow_adds_users_items_and_edges_like_building_from_scratch():
    u0, i0 = [0, 0, 1, 2], [0, 1, 1, 2]
    g = InteractionGraph(u0, i0)
    nu, ni = [2, 3, 3, 1], [0, 3, 1, 3]                  # user 3 and item 3 are new
    g2, d = g.grow(nu, ni)
    ref = InteractionGraph(u0 + nu, i0 + ni)
    assert (g2.n_users, g2.n_items, g2.n_edges) == (4, 4, 8) and g2.binary
    assert (d.old_users, d.old_items, d.new_users, d.new_items, d.added) == (3, 3, 1, 1, 4)
    np.testing.assert_array_equal(d.users, [1, 2, 3])
    np.testing.assert_array_equal(d.items, [0, 1, 3])
    assert (g2.interaction_matrix() != ref.interaction_matrix()).nnz == 0
    np.testing.assert_allclose(g2.laplacian(torch.float64).to_dense().numpy(),
                               ref.laplacian(torch.float64).to_dense().numpy())
    assert (g.n_users, g.n_edges) == (3, 4)                        # the old graph is unchanged
    w, _ = InteractionGraph(u0, i0, weights=[1.0, 2.0, 1.0, 1.0]).grow([3], [0])
    assert w.interaction_matrix()[0, 1] == 2.0 and w.interaction_matrix()[3, 0] == 1.0


@pytest.mark.parametrize("users, items, match", [
    ([0, 1], [1, 1], r"2 of the new interactions are already in the graph, e\.g\. \(0, 1\)"),
    ([50], [0], r"new user ids must continue the current range \(3, 4, …\).*up to 50"),
    ([0], [9], r"new item ids must continue .* is this the same dataset"),
    ([], [], "no interactions to add"),
    ([0, -1], [3, 3], "negative id"),
])
def test_grow_refuses_bad_additions(users, items, match):
    g = InteractionGraph([0, 0, 1, 2], [0, 1, 1, 2])
    with pytest.raises(ValueError, match=match):
        g.grow(users, items)
