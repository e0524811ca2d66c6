"""SSRModel: shapes, losses, masking at eval, recommend, batched = per-item, bad inputs."""
import numpy as np
import pytest
import torch

import ssr_engine
from ssr_engine.data import synthetic_dataset
from ssr_engine.nn import decomposition_loss
from tolerances import tol


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(60, 40, 500, modalities={"text": 12, "image": 6}, seed=0)


def _model(ds, features="all", **kw):
    torch.manual_seed(0)
    feats = ds.features if features == "all" else features
    kw.setdefault("dim", 8)
    kw.setdefault("rank", 4)
    return ssr_engine.SSRModel(ds.train_graph(), feats, n_bands=kw.pop("n_bands", 3), **kw)


def _batch(ds, B=16, n_neg=2, seed=0):
    rng = np.random.default_rng(seed)
    u, i = ds.interactions("train")
    pick = rng.choice(u.size, B, replace=False)
    return (torch.from_numpy(u[pick]), torch.from_numpy(i[pick]),
            torch.from_numpy(rng.integers(0, ds.n_items, (B, n_neg))))


def test_slots_and_embeddings_shapes(ds):
    m = _model(ds)
    assert m.modalities == ["id", "text", "image"]
    assert m.slots(torch.tensor([0, 5, 70])).shape == (3, 3, 3, 8)
    u, i = m.node_embeddings()
    assert u.shape == (ds.n_users, 8) and i.shape == (ds.n_items, 8)


def test_losses_and_gradients_reach_every_parameter(ds):
    m = _model(ds)
    out = m.loss(*_batch(ds))
    assert set(out) == {"loss", "rec", "mask", "align", "dec", "fusion", "reg"}
    out["loss"].backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_decomposition_and_fusion_terms_enter_the_objective(ds):
    """λ_dec L_dec and λ_fus R_fus are added to the loss; both are 0 unless asked for; the
    identity-initialised G-HSNO without normalisation starts as the sum fusion."""
    plain = _model(ds).loss(*_batch(ds))
    assert float(plain["dec"]) == 0.0 and float(plain["fusion"]) == 0.0
    m = _model(ds, fusion="cp", rank=8, fusion_init="identity", fusion_norm=False,
               lambda_dec=0.5, lambda_fusion=2.0, band_mask=False)
    s = _model(ds, band_mask=False)
    s.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("fusion.")})
    nodes = torch.arange(ds.n_users + ds.n_items)
    torch.testing.assert_close(m.embed(nodes), s.embed(nodes))
    with torch.no_grad():
        m.fusion.K.mul_(1.5)                               # R_fus = 1.5^2 - 2*1.5 + 1 = 0.25
    torch.manual_seed(7)
    out = m.loss(*_batch(ds))
    assert float(out["fusion"]) == pytest.approx(0.25, rel=1e-5)
    assert 0 < float(out["dec"]) < 1
    parts = out["rec"] + 0.05 * out["align"] + 0.5 * out["dec"] + 2.0 * out["fusion"] + out["reg"]
    torch.testing.assert_close(out["loss"], parts)
    for kw in ({"lambda_fusion": 0.1}, {"fusion_init": "identity"}, {"fusion_gates": False},
               {"fusion_norm": False}, {"n_out": 2}):
        with pytest.raises(ValueError, match="fusion='sum' has no"):
            _model(ds, **kw)
    with pytest.raises(ValueError, match="band_edges='uniform' has none"):
        _model(ds, atom="fold", band_edges="uniform")
    with pytest.raises(ValueError, match=">= 0"):
        _model(ds, lambda_dec=-1.0)


def test_mask_off_at_eval_and_consistency_zero_without_mask(ds):
    m = _model(ds, mask_p=0.5)
    m.eval()
    a = m.node_embeddings()[1]
    b = m.node_embeddings()[1]
    assert torch.equal(a, b)
    assert m.loss(*_batch(ds))["mask"].item() == 0.0
    m.train()
    torch.manual_seed(3)
    vals = [m.loss(*_batch(ds))["mask"].item() for _ in range(6)]
    assert max(vals) > 0.0
    off = _model(ds, band_mask=False)
    assert off.loss(*_batch(ds))["mask"].item() == 0.0


@pytest.mark.parametrize("fusion", ["sum", "cp"])
def test_node_scope_mask_fuses_each_node_under_its_own_draw(ds, fusion):
    """``mask_scope="node"``: the masked vector of each node is its fusion under its own
    slot scales, the same as fusing that node alone under a shared scale; with every row
    equal to one draw it is the batch-scope mask."""
    m = _model(ds, fusion=fusion, mask_scope="node")
    nodes = torch.tensor([0, 5, 70, 80])
    alpha = m.reliability.alpha.detach()
    z = torch.tensor([[2.0, 0.0, 2.0], [0.0, 2.0, 2.0], [2.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    node_scale = alpha.unsqueeze(0) * z.unsqueeze(1)                  # [n, m, M]
    with torch.no_grad():
        hs, sq, _ = m._fuse_batch(nodes, alpha.unsqueeze(0), node_scale)
        assert hs.shape == (2, 4, 8)
        for r in range(4):
            one, _, _ = m._fuse_batch(nodes[r:r + 1], node_scale[r].unsqueeze(0))
            torch.testing.assert_close(hs[1, r], one[0, 0])
        shared = alpha * z[0]
        same, _, _ = m._fuse_batch(nodes, torch.stack([alpha, shared]),
                                   shared.expand(4, -1, -1))
        torch.testing.assert_close(same[2], same[1])
        torch.testing.assert_close(same[0], hs[0])
    torch.manual_seed(1)
    out = m.loss(*_batch(ds))
    assert float(out["mask"]) > 0
    out["loss"].backward()
    assert m.config()["mask_scope"] == "node" and "mask_scope" not in _model(ds).config()
    with pytest.raises(ValueError, match="mask_scope"):
        _model(ds, mask_scope="slot")


def test_batched_equals_per_item_and_score_is_dot(ds):
    m = _model(ds).eval()
    users = torch.tensor([0, 3, 3, 59])
    items = torch.tensor([1, 0, 39, 7])
    s = m.score(users, items)
    single = torch.stack([m.score(users[j:j + 1], items[j:j + 1])[0] for j in range(4)])
    assert torch.allclose(s, single, rtol=tol(torch.float32), atol=tol(torch.float32))
    u, i = m.node_embeddings()
    assert torch.allclose(s, (u[users] * i[items]).sum(-1), atol=tol(torch.float32))
    full = m.scorer()(users)
    assert torch.allclose(full[torch.arange(4), items], s, atol=tol(torch.float32))


def test_recommend_excludes_seen(ds):
    m = _model(ds)
    users = torch.arange(ds.n_users)
    _, items = m.recommend(users, k=5)
    seen = ds.user_item_matrix("train").toarray() > 0
    assert not any(seen[u, items[u].numpy()].any() for u in range(ds.n_users))


@pytest.mark.parametrize("kw", [dict(features={}), dict(fusion="cp"), dict(fusion="cp+sum"),
                                dict(band_edges="uniform"), dict(align=False),
                                dict(consistency="prediction", loss="bce"),
                                dict(n_bands=1), dict(n_bands=6),
                                dict(id_basis=8, id_residual="smooth")])
def test_options_train(ds, kw):
    feats = kw.pop("features", "all")
    m = _model(ds, features=feats, **kw)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    batch = _batch(ds, B=64, n_neg=1)
    # The loss of the unmasked model (eval mode) before and after: a training-mode loss
    # depends on the band mask's draw, which drops every band with probability p^M
    # (0.4 for M = 1).
    first = m.eval().loss(*batch)["rec"].item()
    m.train()
    for _ in range(15):
        out = m.loss(*batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert m.eval().loss(*batch)["rec"].item() < first


def test_alignment_needs_a_content_modality(ds):
    m = _model(ds, features=None)
    assert m.modalities == ["id"] and m.align is None
    assert m.loss(*_batch(ds))["align"].item() == 0.0
    one = _model(ds, features={"text": ds.features["text"]})
    assert one.align is not None and one.loss(*_batch(ds))["align"].item() > 0.0


def test_bad_inputs(ds):
    g = ds.train_graph()
    with pytest.raises(ValueError, match="one row per item"):
        ssr_engine.SSRModel(g, {"text": np.ones((ds.n_items + 1, 4))})
    bad = ds.features["text"].copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN/inf in 1 rows, e.g. item 3"):
        ssr_engine.SSRModel(g, {"text": bad})
    with pytest.raises(ValueError, match="fusion must be one of"):
        ssr_engine.SSRModel(g, None, fusion="concat")
    m = _model(ds, features=None)
    with pytest.raises(ValueError, match="item ids must lie in"):
        m.loss(torch.tensor([0]), torch.tensor([ds.n_items]), torch.tensor([0]))
    with pytest.raises(ValueError, match="user ids must lie in"):
        m.recommend(torch.tensor([ds.n_users]), k=3)
    # before: the public batch_loss trained node -1 (the last one) and embed(N) gave a bare
    # IndexError; the unchecked hook is now private and every public entry checks ids
    assert not hasattr(m, "batch_loss")
    with pytest.raises(ValueError, match=r"user ids must lie in \[0, .*got -1"):
        m.loss(torch.tensor([-1]), torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="node ids must lie in"):
        m.embed(torch.tensor([0, ds.n_users + ds.n_items]))
    with pytest.raises(ValueError, match="node ids must lie in"):
        ssr_engine.MFBPR(g, dim=4).embed([-1])
    with pytest.raises(TypeError, match="integer tensor"):
        m.embed(torch.tensor([0.5]))
    with pytest.raises(TypeError, match="features must be a mapping"):
        ssr_engine.SSRModel(g, [ds.features["text"]])
    with pytest.raises(ValueError, match="id_residual must be one of"):
        ssr_engine.SSRModel(g, None, id_basis=8, id_residual="propagated")
    with pytest.raises(ValueError, match="is full: pass id_basis=k"):
        ssr_engine.SSRModel(g, None, id_residual="smooth")


def test_id_residual_is_recorded_only_when_changed(ds):
    assert "id_residual" not in _model(ds, id_basis=8).config()
    assert _model(ds, id_basis=8, id_residual="smooth").config()["id_residual"] == "smooth"


# -- band sources -------------------------------------------------------------------------------
def _stored(ds, tmp_path, **kw):
    from ssr_engine.train.precompute import precompute_bands
    store, _ = precompute_bands(ds.train_graph(), ds.features, tmp_path, approx="exact",
                                n_bands=3, d0=6, quiet=True, **kw)
    return store


@pytest.mark.parametrize("residual", ["none", "free", "smooth"])
def test_store_source_equals_memory_source(ds, tmp_path, residual):
    """The same model on a band store and in memory: same slots, vectors and losses (with a
    full ID basis, and with a partial one whose residual is free or smoothed; a smoothed
    residual's adjacency is not in the state dict, the graph gives it back)."""
    k = None if residual == "none" else 8                # eigenpairs per end (None: all)
    kind = "smooth" if residual == "smooth" else "free"
    store = _stored(ds, tmp_path, id_k=k)
    mem = _model(ds, approx="exact", d0=6, id_basis=k, id_residual=kind)
    torch.manual_seed(0)
    disk = ssr_engine.SSRModel(ds.train_graph(), source=store.source(), dim=8, rank=4,
                               id_residual=kind)
    assert disk.reads_store and not mem.reads_store
    assert disk.modalities == mem.modalities and disk.n_bands == mem.n_bands
    assert disk.id_bands.smooth == mem.id_bands.smooth == (residual == "smooth")
    assert not any(k.startswith("id_bands.adj") for k in disk.state_dict())
    torch.testing.assert_close(disk.id_bands.edges, mem.id_bands.edges)
    nodes = torch.tensor([0, 3, 59, 60, 99])
    f32 = dict(rtol=tol(torch.float32), atol=tol(torch.float32))
    torch.testing.assert_close(disk.slots(nodes), mem.slots(nodes), **f32)
    torch.testing.assert_close(disk.embed(nodes), mem.embed(nodes), **f32)
    batch = _batch(ds)
    torch.manual_seed(1)
    a = disk.loss(*batch)
    torch.manual_seed(1)
    b = mem.loss(*batch)
    for k in a:
        torch.testing.assert_close(a[k], b[k], **f32)


def test_sparse_residual_touches_only_batch_rows(ds, tmp_path):
    store = _stored(ds, tmp_path, id_k=8)                      # partial basis: a residual
    m = ssr_engine.SSRModel(ds.train_graph(), source=store.source(), dim=8, rank=4,
                            sparse_residual=True)
    users, pos, neg = torch.tensor([0, 1]), torch.tensor([3, 4]), torch.tensor([5, 6])
    m.loss(users, pos, neg)["loss"].backward()
    (res,) = m.sparse_parameters()
    assert res is m.id_bands.residual.weight and res.grad.is_sparse
    touched = set(res.grad.coalesce().indices()[0].tolist())
    assert touched == {0, 1, 60 + 3, 60 + 4, 60 + 5, 60 + 6}
    assert all(p.grad is not None for p in m.dense_parameters())
    assert {id(p) for p in m.dense_parameters()} | {id(res)} == {id(p) for p in m.parameters()}


@pytest.mark.parametrize("fusion", ["sum", "cp"])
def test_batch_fusion_equals_explicit_slots(ds, fusion):
    """The batch path (sum: modality by modality) equals fusing the explicit slot tensor, and
    its decomposition loss equals the loss of the explicit slots."""
    m = _model(ds, fusion=fusion, lambda_dec=0.3).double()
    with torch.no_grad():
        m.reliability.rho.normal_(generator=torch.Generator().manual_seed(1))
    nodes = torch.tensor([0, 7, 59, 60, 99])
    alpha = m.reliability.alpha
    scales = torch.stack([alpha, alpha * torch.tensor([1.25, 0.0, 1.25], dtype=alpha.dtype)])
    h, sq, dec = m._fuse_batch(nodes, scales)
    raw = m.slots(nodes)
    torch.testing.assert_close(dec, decomposition_loss(raw.flatten(1, 2), m.band_of_slot))
    assert m.band_of_slot == [0, 1, 2] * 3 and 0 < float(dec) < 1
    for p in range(2):
        torch.testing.assert_close(h[p], m.fuse(raw, scales[p]), rtol=tol(torch.float64),
                                   atol=1e-12)
    torch.testing.assert_close(sq, raw.pow(2).sum(dim=(1, 2, 3)), rtol=tol(torch.float64),
                               atol=0.0)


def test_source_misuse_is_refused(ds, tmp_path):
    src = _stored(ds, tmp_path).source()
    with pytest.raises(ValueError, match="either features or a band source"):
        ssr_engine.SSRModel(ds.train_graph(), ds.features, source=src)
    other = synthetic_dataset(50, 40, 400, modalities={}, seed=0)
    with pytest.raises(ValueError, match="100 nodes but the graph"):
        ssr_engine.SSRModel(other.train_graph(), source=src)


def test_damaged_store_is_named_at_the_first_step_that_reads_it(ds, tmp_path):
    # before: NaN rows in a band store trained into "loss became nan ... lower the learning
    # rate" at the end of the epoch, after the optimiser had spread the NaN into the weights
    from ssr_engine.train import TrainConfig, Trainer
    store = _stored(ds, tmp_path)
    arr = np.load(tmp_path / "text.npy", mmap_mode="r+")
    arr[:] = np.nan
    arr.flush()
    del arr
    model = ssr_engine.SSRModel(ds.train_graph(), source=store.source(), dim=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"text.npy holds NaN or inf .* delete the band store"):
        Trainer(model, ds, TrainConfig(epochs=1, quiet=True)).fit()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
