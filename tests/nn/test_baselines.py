"""Baselines: LightGCN propagation against a dense formula, losses, recommend."""
import pytest
import torch

import ssr_engine
from tolerances import tol


@pytest.fixture(scope="module")
def graph():
    g = torch.Generator().manual_seed(0)
    return ssr_engine.InteractionGraph(torch.randint(0, 12, (60,), generator=g),
                                       torch.randint(0, 9, (60,), generator=g), 12, 9)


def test_lightgcn_propagation_matches_dense(graph):
    torch.manual_seed(0)
    m = ssr_engine.LightGCN(graph, dim=4, n_layers=3).double()
    A = graph.adjacency(dtype=torch.float64).to_dense()
    E = m.emb.detach()
    want = (E + A @ E + A @ A @ E + A @ A @ A @ E) / 4
    assert torch.allclose(m.propagate(), want, atol=tol(torch.float64))


@pytest.mark.parametrize("cls", [ssr_engine.MFBPR, ssr_engine.LightGCN])
@pytest.mark.parametrize("loss", ["bpr", "bce"])
def test_losses_and_scores(graph, cls, loss):
    torch.manual_seed(1)
    m = cls(graph, dim=8, loss=loss)
    out = m.loss(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([[4, 5], [6, 7]]))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["reg"] > 0
    u, i = m.node_embeddings()
    s = m.score(torch.tensor([0, 5]), torch.tensor([1, 8]))
    assert torch.allclose(s, torch.stack([u[0] @ i[1], u[5] @ i[8]]), atol=tol(torch.float32))


def test_recommend_excludes_seen(graph):
    torch.manual_seed(2)
    m = ssr_engine.MFBPR(graph, dim=8)
    users = torch.arange(graph.n_users)
    _, items = m.recommend(users, k=3)
    seen = graph.interaction_matrix().toarray() > 0
    for u in range(graph.n_users):
        assert not seen[u, items[u].numpy()].any()
    _, all_items = m.recommend(users, k=graph.n_items, exclude_seen=False)
    assert sorted(all_items[0].tolist()) == list(range(graph.n_items))


def test_bad_ids_and_options(graph):
    m = ssr_engine.MFBPR(graph, dim=4)
    with pytest.raises(ValueError, match="user ids must lie in"):
        m.loss(torch.tensor([99]), torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="item ids must lie in"):
        m.score(torch.tensor([0]), torch.tensor([-1]))
    with pytest.raises(TypeError, match="integer"):
        m.score(torch.tensor([0.5]), torch.tensor([1]))
    with pytest.raises(ValueError, match="k must lie"):
        m.recommend(torch.tensor([0]), k=0)
    with pytest.raises(ValueError, match="loss must be one of"):
        ssr_engine.MFBPR(graph, loss="hinge")
