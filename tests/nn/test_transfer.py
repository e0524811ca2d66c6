"""transfer_ssr: a trained SSRModel carried over to a grown graph."""
import warnings

import numpy as np
import pytest
import torch

import ssr_engine
from ssr_engine.data import synthetic_dataset
from ssr_engine.nn.transfer import transfer_ssr


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(60, 40, 500, modalities={"text": 6}, seed=3)


def _trained(graph, features=None, steps=30, **kw):
    """A model whose parameters moved away from their initialisation."""
    kw.setdefault("n_bands", 3)
    kw.setdefault("dim", 8)
    m = ssr_engine.SSRModel(graph, features, seed=0, **kw)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    u, i = graph.edges()
    rng = np.random.default_rng(0)
    for _ in range(steps):
        pick = rng.choice(u.size, 32)
        neg = rng.integers(0, graph.n_items, (32, 1))
        loss = m.loss(torch.from_numpy(u[pick]), torch.from_numpy(i[pick]),
                      torch.from_numpy(neg))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def _id_part(model, nodes):
    """The ID modality's part of the inference vector: Σ_b α_b F_b."""
    return torch.einsum("nbd,b->nd", model.id_bands(nodes), model.reliability.alpha[0])


def _new_ids(old_graph, new_graph, nodes):
    nu, nu2 = old_graph.n_users, new_graph.n_users
    return torch.where(nodes < nu, nodes, nodes - nu + nu2)


@pytest.mark.parametrize("id_basis,residual", [(None, "free"), (12, "free"), (12, "smooth")],
                         ids=["full-basis", "partial-basis", "partial-basis-smoothed"])
def test_same_graph_gives_the_same_model(ds, id_basis, residual):
    g = ds.train_graph()
    old = _trained(g, ds.features, id_basis=id_basis, id_residual=residual)
    new = ssr_engine.SSRModel(g, ds.features, n_bands=3, dim=8, seed=7, id_basis=id_basis,
                              id_residual=residual)
    transfer_ssr(old, g, new, g)
    nodes = torch.arange(g.n_nodes)
    assert torch.allclose(new.eval().embed(nodes), old.embed(nodes), atol=1e-4)


@pytest.mark.parametrize("id_basis,prior,residual",
                         [(None, "none", "free"), (10, "none", "free"),
                          (10, "lightgcn", "free"), (10, "none", "smooth")],
                         ids=["full-basis", "partial-basis", "partial-basis-lightgcn-prior",
                              "partial-basis-smoothed"])
def test_known_nodes_keep_their_id_vectors_on_a_grown_graph(id_basis, prior, residual):
    # the LightGCN prior vanishes at λ = 2: there the residual must take the projection
    # (it was lost before, 13% of the ID energy on Amazon Baby)
    ds = synthetic_dataset(48, 32, 350, modalities={}, seed=1)
    g = ds.train_graph()
    old = _trained(g, id_basis=id_basis, id_prior=prior, id_residual=residual)
    # two new users, one new item, and new edges between known nodes
    free = np.argwhere(g.interaction_matrix().toarray() == 0)[:5]
    users = np.r_[free[:, 0], 48, 48, 49, 3]
    items = np.r_[free[:, 1], 0, 32, 32, 32]
    g2, growth = g.grow(users, items)
    assert (growth.new_users, growth.new_items) == (2, 1)
    new = ssr_engine.SSRModel(g2, n_bands=3, dim=8, seed=9, id_basis=id_basis, id_prior=prior,
                              id_residual=residual)
    rep = transfer_ssr(old, g, new, g2)
    known = torch.from_numpy(np.flatnonzero(g.degrees > 0))
    want = _id_part(old, known)
    got = _id_part(new, _new_ids(g, g2, known))
    assert torch.allclose(got, want, atol=1e-4)
    assert rep["known"] == known.numel() and rep["extended"] == 3


def test_a_new_user_is_its_neighbours_aggregate_times_the_band_response():
    ds = synthetic_dataset(36, 24, 200, modalities={}, seed=2)
    g = ds.train_graph()
    assert (g.degrees > 0).all()
    old = _trained(g)
    g2, _ = g.grow([36, 36, 36], [0, 4, 7])               # a new user with three items
    new = ssr_engine.SSRModel(g2, n_bands=3, dim=8, seed=4)
    rep = transfer_ssr(old, g, new, g2)
    F = old.id_bands(torch.tensor([36 + 0, 36 + 4, 36 + 7]))          # old item node ids
    deg_items = g2.item_degrees[[0, 4, 7]]
    w = torch.tensor(1.0 / np.sqrt(3.0 * deg_items), dtype=torch.float32)
    agg = (w[:, None, None] * F).sum(0)                                 # [M, d]: (Â F_b)(u)
    gamma = torch.tensor(rep["gamma"], dtype=torch.float32)
    want = (old.reliability.alpha[0][:, None] * gamma[:, None] * agg).sum(0)
    got = _id_part(new, torch.tensor([36]))[0]
    assert torch.allclose(got, want, atol=1e-5)
    assert got.norm() > 0


def test_band_response_of_an_eigenvector_is_one_over_one_minus_lambda():
    ds = synthetic_dataset(36, 24, 200, modalities={}, seed=2)
    g = ds.train_graph()
    m = ssr_engine.SSRModel(g, n_bands=3, dim=4, seed=0)
    ids = m.id_bands
    j = 3                                      # a smooth eigenvector, in band 0
    assert ids.slices[0][0] <= j < ids.slices[0][1]
    with torch.no_grad():
        ids.coef.zero_()
        ids.coef[j] = torch.tensor([1.0, -2.0, 0.5, 3.0])
    new = ssr_engine.SSRModel(g, n_bands=3, dim=4, seed=1)
    rep = transfer_ssr(m, g, new, g)
    lam = float(ids.eigenvalues[j])
    assert rep["gamma"][0] == pytest.approx(1.0 / (1.0 - lam), rel=1e-4)


def test_shrink_scales_every_vector_and_keeps_the_ranking(ds):
    g = ds.train_graph()
    old = _trained(g, ds.features)
    new = ssr_engine.SSRModel(g, ds.features, n_bands=3, dim=8, seed=7)
    transfer_ssr(old, g, new, g, shrink=0.4)
    nodes = torch.arange(g.n_nodes)
    assert torch.allclose(new.eval().embed(nodes), 0.4 * old.embed(nodes), atol=1e-5)
    with pytest.raises(ValueError, match="shrink"):
        transfer_ssr(old, g, new, g, shrink=0.0)


def test_refuses_a_smaller_graph_and_other_models(ds):
    g = ds.train_graph()
    small = synthetic_dataset(40, 30, 280, modalities={"text": 6}, seed=3)
    gs = small.train_graph()
    old = ssr_engine.SSRModel(g, ds.features, n_bands=3, dim=8)
    with pytest.raises(ValueError, match="graphs only grow"):
        transfer_ssr(old, g, ssr_engine.SSRModel(gs, small.features, n_bands=3, dim=8), gs)
    with pytest.raises(ValueError, match="modalities"):
        transfer_ssr(old, g, ssr_engine.SSRModel(g, n_bands=3, dim=8), g)
    with pytest.raises(ValueError, match="bands x dim"):
        transfer_ssr(old, g, ssr_engine.SSRModel(g, ds.features, n_bands=2, dim=8), g)
    with pytest.raises(ValueError, match="parameter fusion"):
        transfer_ssr(old, g, ssr_engine.SSRModel(g, ds.features, n_bands=3, dim=8,
                                                 fusion="cp"), g)


def test_smoothed_residual_on_a_graph_of_several_components():
    """Four components and two eigenpairs per end: most λ = 2 vectors (where (I + Â)
    vanishes) lie outside the basis. The solve projects them out exactly, converges and
    carries the model over unchanged (it ran to its step limit, 10-17% off, before)."""
    pairs = np.array([(a, b) for a in range(12) for b in range(8) if (3 * a + 5 * b) % 4 < 2])
    u = np.concatenate([pairs[:, 0] + 12 * c for c in range(4)])
    i = np.concatenate([pairs[:, 1] + 8 * c for c in range(4)])
    g = ssr_engine.InteractionGraph(u, i, 48, 32)
    old = _trained(g, id_basis=2, id_residual="smooth")
    new = ssr_engine.SSRModel(g, n_bands=3, dim=8, seed=7, id_basis=2, id_residual="smooth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = transfer_ssr(old, g, new, g)
    solve = rep["smooth_residual"]
    assert solve["iterations"] < 100 and solve["relative_residual"] <= 1e-7
    assert solve["unrepresented"] <= 1e-10
    nodes = torch.arange(g.n_nodes)
    assert torch.allclose(new.eval().embed(nodes), old.embed(nodes), atol=1e-4)
