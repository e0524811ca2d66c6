"""StoredSSR: the folded fusion equals explicit slots + ops.cp_fusion; losses; sparse steps."""
import numpy as np
import pytest
import torch
from tolerances import tol

from ssr_engine import ops
from ssr_engine.data import synthetic_dataset
from ssr_engine.nn import ranking_loss
from ssr_engine.ops.cp_fusion import fuse_projected
from ssr_engine.train.precompute import precompute_bands
from ssr_engine.train.stored_model import StoredSSR, _fuse_from_mix


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ds = synthetic_dataset(300, 200, 3000, modalities={"image": 12, "text": 6}, seed=3)
    store, _ = precompute_bands(ds.train_graph(), ds.features, tmp_path_factory.mktemp("bands"),
                                n_bands=3, order=16, d0=8, quiet=True)
    return ds, store


def _model(setup, **kw):
    ds, store = setup
    m = StoredSSR(store, ds.user_item_matrix("train"), dim=16, rank=4, **kw)
    with torch.no_grad():                       # leave the initial point: generic parameters
        m.reliability.rho.normal_(generator=torch.Generator().manual_seed(1))
        if m.residual is not None:
            m.residual.weight.normal_(generator=torch.Generator().manual_seed(2))
        if hasattr(m.fusion, "gamma"):
            m.fusion.gamma.fill_(0.7)
    return m.double()


def test_fuse_from_mix_equals_cp_fusion():
    g = torch.Generator().manual_seed(0)
    n, S, r, O, d = 37, 5, 3, 4, 7
    P = torch.randn(n, S, r, generator=g, dtype=torch.float64)
    V = torch.randn(O, S, r, generator=g, dtype=torch.float64)
    Q = torch.randn(O, d, r, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    C = torch.einsum("osr,nsr->nor", V, P).flatten(1)
    torch.testing.assert_close(_fuse_from_mix(C, Q, w, 1e-6), fuse_projected(P, V, Q, w, 1e-6),
                               rtol=tol(torch.float64), atol=tol(torch.float64))


@pytest.mark.parametrize("fusion", ["cp", "sum", "cp+sum"])
def test_embed_equals_explicit_slots(setup, fusion):
    m = _model(setup, fusion=fusion)
    nodes = torch.tensor([0, 7, 299, 300, 499])
    H = m.slots(nodes) * m.reliability.alpha[None, :, :, None]       # [n, m, M, d]
    assert H.shape == (5, 3, 3, 16)
    ref = H.sum(dim=(1, 2))
    if fusion == "cp":
        f = m.fusion
        ref = ops.cp_fusion_reference(H.flatten(1, 2), f.K, f.V, f.Q, f.w, f.eps)
    elif fusion == "cp+sum":
        f = m.fusion.cp
        ref = ref + m.fusion.gamma * ops.cp_fusion_reference(H.flatten(1, 2), f.K, f.V, f.Q, f.w,
                                                             f.eps)
    torch.testing.assert_close(m.embed(nodes), ref, rtol=tol(torch.float64), atol=1e-12)
    u, i = m.node_embeddings()
    torch.testing.assert_close(torch.cat([u, i])[nodes], ref, rtol=tol(torch.float64), atol=1e-12)


def test_residual_sits_in_the_last_id_band(setup):
    m = _model(setup)
    nodes = torch.tensor([3, 400])
    with torch.no_grad():
        H = m.slots(nodes)
        m.residual.weight.zero_()
        H0 = m.slots(nodes)
    delta = (H - H0).abs().sum(-1)                                     # [n, m, M]
    assert bool((delta[:, 0, -1] > 0).all())
    assert float(delta[:, 0, :-1].sum() + delta[:, 1:].sum()) == 0.0


def test_ranking_loss_equals_reference(setup):
    m = _model(setup, band_mask=False, align=False, reg=0.0)
    users, pos = torch.tensor([0, 1, 1, 5]), torch.tensor([3, 4, 4, 9])
    neg = torch.tensor([[10, 11], [12, 13], [14, 3], [0, 1]])
    out = m.loss(users, pos, neg)
    hu = m.embed(users)
    hp = m.embed(pos + m.n_users)
    hn = m.embed(neg.flatten() + m.n_users).view(4, 2, -1)
    ref = ranking_loss((hu * hp).sum(-1), (hu.unsqueeze(1) * hn).sum(-1))
    torch.testing.assert_close(out["rec"], ref, rtol=tol(torch.float64), atol=0.0)
    assert float(out["loss"].detach()) == pytest.approx(float(ref), rel=tol(torch.float64))


def test_step_touches_only_batch_rows(setup):
    m = _model(setup).float()
    users, pos, neg = torch.tensor([0, 1]), torch.tensor([3, 4]), torch.tensor([5, 6])
    out = m.loss(users, pos, neg)
    assert set(out) == {"loss", "rec", "mask", "align", "reg"}
    out["loss"].backward()
    g = m.residual.weight.grad
    assert g.is_sparse
    touched = set(g.coalesce().indices()[0].tolist())
    assert touched <= {0, 1, 300 + 3, 300 + 4, 300 + 5, 300 + 6} and {0, 1} <= touched
    assert all(p.grad is not None for p in m.dense_parameters())
    assert {id(p) for p in m.sparse_parameters()} | {id(p) for p in m.dense_parameters()} == \
        {id(p) for p in m.parameters()}


def test_mask_and_alignment_losses(setup):
    torch.manual_seed(0)
    m = _model(setup, mask_p=0.5)
    users, pos, neg = torch.arange(20), torch.arange(20) + 50, torch.arange(20) + 100
    out = m.loss(users, pos, neg)
    assert float(out["align"].detach()) > 0
    m.eval()                                   # no band mask at evaluation
    assert float(m.loss(users, pos, neg)["mask"].detach()) == 0.0


def test_rejects_mismatch(setup):
    ds, store = setup
    with pytest.raises(ValueError, match="300 nodes|nodes but"):
        StoredSSR(store, ds.user_item_matrix("train")[:, :100])
    with pytest.raises(ValueError, match="fusion"):
        StoredSSR(store, ds.user_item_matrix("train"), fusion="concat")
    m = _model(setup)
    with pytest.raises(ValueError, match="ids must lie"):
        m.loss(torch.tensor([0]), torch.tensor([200]), torch.tensor([1]))
    with torch.no_grad():
        assert np.isfinite(float(m.loss(torch.tensor([0]), torch.tensor([1]),
                                        torch.tensor([2]))["loss"]))
