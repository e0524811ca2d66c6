"""Band precompute: signals, the band plan, stored bands vs references, reuse, refusal,
and the row-partitioned (2-process) precompute against the single-process one."""
import math

import numpy as np
import pytest
import torch
from tolerances import tol

import ssr_engine
from ssr_engine import ops
from ssr_engine.data import synthetic_dataset
from ssr_engine.distributed import run_local
from ssr_engine.train import precompute as pre
from ssr_engine.nn import reduce_features
from ssr_engine.nn.sources import PROBE_BLOCK, white_probe
from ssr_engine.train.precompute import band_plan, check_feasible, precompute_bands

JOIN_S = 90.0


def _ds():
    return synthetic_dataset(300, 200, 3000, modalities={"image": 12, "text": 6}, seed=3)


@pytest.fixture(scope="module")
def ds():
    return _ds()


def _rel(a, b):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm())


def test_white_probe_is_layout_free():
    d0 = 3
    full = white_probe(0, 2 * PROBE_BLOCK + 5, 4, d0)
    assert full.shape == (2 * PROBE_BLOCK + 5, d0) and full.dtype == torch.float32
    lo, hi = PROBE_BLOCK - 2, PROBE_BLOCK + 7          # across a block boundary
    assert torch.equal(white_probe(lo, hi, 4, d0), full[lo:hi])
    assert white_probe(5, 5, 4, d0).shape == (0, d0)
    assert abs(float(full.std()) - 1.0) < 0.01
    assert not torch.equal(white_probe(0, 10, 5, d0), full[:10])


def test_reduce_features_sign_convention():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 10)) @ rng.standard_normal((10, 10))
    p = reduce_features(x, 4)
    # PCA: orthogonal components, variance ordered, sign convention independent of input sign.
    gram = p.T @ p
    off = gram - torch.diag(torch.diag(gram))
    assert float(off.abs().max()) <= tol(torch.float64, "close") * float(gram.abs().max())
    assert bool((torch.diff(torch.diag(gram)) <= 0).all())
    torch.testing.assert_close(reduce_features(-x, 4), -p)
    assert torch.equal(reduce_features(x[:, :3], 4), torch.from_numpy(x[:, :3]))
    r = reduce_features(x, 4, "random", seed=1)
    assert r.shape == (80, 4) and torch.equal(r, reduce_features(x, 4, "random", seed=1))
    with pytest.raises(ValueError, match="reduce"):
        reduce_features(x, 4, "svd")


def test_moments_match_ops(ds):
    g = ds.train_graph()
    op = g.scaled_laplacian(0.01, dtype=torch.float64)
    x = torch.randn(g.n_nodes, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mine = pre._moments(op, x, 12, pre._Rows(0, g.n_nodes), lambda: None)
    ref = ops.chebyshev_moments(op, x, 12, backend="torch").numpy()
    np.testing.assert_allclose(mine, ref, rtol=tol(torch.float64), atol=tol(torch.float64) * ref[0])


def test_plan_equals_spectral_bands(ds):
    """The plan from moments is SpectralBands(method="chebyshev")'s fit on the same signal."""
    g = ds.train_graph()
    x = g.node_signal(torch.from_numpy(ds.features["image"]).double())
    v = g.trivial_vector(torch.float64)
    xc = x - torch.outer(v, v @ x)
    K, M = 32, 3
    sb = ssr_engine.SpectralBands(g, n_bands=M, method="chebyshev", order=K,
                                  dtype=torch.float64).fit(x)
    mom = ssr_engine.kpm_moments(g.scaled_laplacian(0.01, dtype=torch.float64), xc, K).numpy()
    plan = band_plan(mom, M, (K,), 0.01)
    np.testing.assert_allclose(plan.edges, sb.edges.numpy(), atol=1e-12)
    np.testing.assert_allclose(np.array(plan.coeffs), sb.coeffs_.numpy(), atol=1e-12)
    np.testing.assert_allclose(plan.shares, sb.shares_.numpy(), atol=1e-10)


def _check_basis(store, g, partial):
    """The stored ID basis is an orthonormal eigenbasis of L with the stored eigenvalues."""
    U = store.basis_rows(np.arange(g.n_nodes)).double()
    info = store.meta["info"]["id"]
    lam = torch.tensor(info["eigenvalues"], dtype=torch.float64)
    assert info["partial"] is partial and U.shape == (g.n_nodes, lam.numel())
    assert bool((lam[1:] >= lam[:-1]).all())
    L = g.laplacian(dtype=torch.float64)
    res = (L @ U - U * lam).norm(dim=0)
    assert float(res.max()) <= tol(torch.float32, "solve")
    eye = torch.eye(lam.numel(), dtype=torch.float64)
    assert float((U.T @ U - eye).abs().max()) <= tol(torch.float32, "solve")


def test_chebyshev_store_matches_filters(ds, tmp_path):
    g = ds.train_graph()
    store, plan = precompute_bands(g, ds.features, tmp_path, n_bands=4, order=24, d0=8,
                                   seed=5, compute_dtype=torch.float64, quiet=True)
    assert store.modalities == ["image", "text"]
    assert store.dims == {"image": 8, "text": 6} and store.basis_width == g.n_nodes
    assert plan.method == "chebyshev" and plan.order == 24 and len(plan.edges) == 5
    assert abs(sum(plan.shares) - 1.0) < 1e-12
    coeffs = torch.tensor(plan.coeffs, dtype=torch.float64)
    op = g.scaled_laplacian(0.01, dtype=torch.float64)
    _check_basis(store, g, partial=False)                  # 500 nodes: the full basis
    # Content: the PCA-reduced node signal at unit RMS.
    x = g.node_signal(reduce_features(ds.features["image"], 8))
    x = x / x.pow(2).mean().sqrt()
    stored = torch.from_numpy(np.array(store.array("image"))).transpose(0, 1)
    assert _rel(stored, ops.chebyshev_bands_reference(op, x, coeffs)) <= tol(torch.float32)


def test_exact_store_matches_spectral_bands(ds, tmp_path):
    g = ds.train_graph()
    store, plan = precompute_bands(g, {"text": ds.features["text"]}, tmp_path, approx="exact",
                                   n_bands=3, d0=6, seed=1, quiet=True)
    assert plan.method == "exact" and plan.order is None
    sb = ssr_engine.SpectralBands(g, n_bands=3, method="exact", dtype=torch.float64)
    assert np.allclose(plan.edges, sb.fit(g.node_signal(torch.from_numpy(
        ds.features["text"]).double())).edges.numpy())
    x = g.node_signal(torch.from_numpy(ds.features["text"]).double())
    x = x / x.pow(2).mean().sqrt()
    stored = torch.from_numpy(np.array(store.array("text"))).transpose(0, 1)
    assert _rel(stored, sb.transform(x)) <= tol(torch.float32)


def test_partial_id_basis(ds, tmp_path):
    g = ds.train_graph()
    store, _ = precompute_bands(g, {}, tmp_path, n_bands=3, order=16, quiet=True, id_k=20)
    assert store.modalities == [] and store.basis_width == 40
    _check_basis(store, g, partial=True)
    lam = store.meta["info"]["id"]["eigenvalues"]
    assert lam[19] < 1.0 < lam[20]                         # 20 at each end of [0, 2]
    with pytest.raises(ValueError, match="id_basis"):
        precompute_bands(g, {}, tmp_path / "bad", quiet=True, id_k=0)


def test_lobpcg_store_matches_eigen(ds, tmp_path):
    g = ds.train_graph()
    kw = dict(n_bands=3, d0=6, k=16, seed=1, quiet=True)
    feats = {"text": ds.features["text"]}
    lanczos, plan_l = precompute_bands(g, feats, tmp_path / "l", approx="eigen", **kw)
    lobpcg, plan_b = precompute_bands(g, feats, tmp_path / "b", approx="lobpcg", **kw)
    assert plan_b.method == "lobpcg" and np.allclose(plan_l.edges, plan_b.edges, atol=1e-4)
    a, b = (torch.from_numpy(np.array(s.array("text"))) for s in (lanczos, lobpcg))
    assert _rel(b, a) <= tol(torch.float32, "solve")


def test_store_is_reused(ds, tmp_path, monkeypatch):
    g = ds.train_graph()
    first, _ = precompute_bands(g, ds.features, tmp_path, n_bands=2, order=16, d0=4, quiet=True)
    monkeypatch.setattr(pre.ops, "chebyshev_bands",
                        lambda *a, **k: pytest.fail("the store should have been reused"))
    again, plan = precompute_bands(g, ds.features, tmp_path, n_bands=2, order=16, d0=4,
                                   quiet=True)
    assert again.meta == first.meta and plan.order == 16
    monkeypatch.undo()
    other, _ = precompute_bands(g, ds.features, tmp_path, n_bands=2, order=16, d0=4, seed=9,
                                quiet=True)                       # other inputs: recomputed
    assert other.meta["key"]["seed"] == 9


def test_edges_are_kept_when_the_spectrum_has_not_moved(ds, tmp_path):
    # the plan of a graph that grew by 3% keeps the old edges; a graph of another shape
    # (a sparse ring-like graph instead of the power-law one) does not
    g = ds.train_graph()
    _, old = precompute_bands(g, ds.features, tmp_path / "a", n_bands=3, order=16, d0=4,
                              quiet=True)
    free = np.argwhere(g.interaction_matrix().toarray() == 0)
    pick = np.random.default_rng(0).choice(free.shape[0], int(0.03 * g.n_edges), replace=False)
    g2, _ = g.grow(free[pick, 0], free[pick, 1])
    _, plan = precompute_bands(g2, ds.features, tmp_path / "b", n_bands=3, order=16, d0=4,
                               quiet=True, keep_edges=old)
    assert plan.kept and plan.edges == old.edges and plan.order == old.order
    assert max(abs(a - b) for a, b in zip(plan.shares, old.shares)) <= 0.25 / 3
    u = np.arange(300)
    ring = ssr_engine.InteractionGraph(np.r_[u, u], np.r_[u % 200, (u + 1) % 200], 300, 200)
    _, other = precompute_bands(ring, ds.features, tmp_path / "c", n_bands=3, order=16, d0=4,
                                quiet=True, keep_edges=old)
    assert not other.kept and other.edges != old.edges
    probe = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    mom = pre._moments(ring.scaled_laplacian(0.01), probe, 16, pre._Rows(0, 500), lambda: None)
    moved = pre.kept_plan(np.asarray(mom), old, 3, 0.01)[1]
    assert moved > 0.25 / 3


def test_white_probe_without_content(ds, tmp_path):
    store, plan = precompute_bands(ds.train_graph(), {}, tmp_path, n_bands=3, order=16, d0=4,
                                   quiet=True)
    assert store.modalities == [] and len(plan.shares) == 3


def test_refuses_hopeless_methods():
    with pytest.raises(ValueError) as info:
        check_feasible("exact", 1_000_000, 500_000, 16_000_000, widths=96)
    msg = str(info.value)
    assert "too large for --approx exact: ~4e+03 GB of memory" in msg       # Gram route
    assert "500000x500000 Gram matrix" in msg and "more than the 24.0 h allowed" in msg
    assert "Use instead --approx chebyshev: ~6.14 GB of memory" in msg    # the ID basis
    est = check_feasible("chebyshev", 1_000_000, 500_000, 16_000_000, widths=96,
                         memory=64e9)
    assert est.approx == "chebyshev" and est.store_bytes == 1_500_000 * (4 * 96 + 128) * 4
    assert "ID basis of 128 eigenvectors" in est.detail
    assert check_feasible("auto", 300, 200, 3000, widths=8).approx == "exact"
    with pytest.raises(ValueError, match="memory is available"):
        check_feasible("chebyshev", 1_000_000, 500_000, 16_000_000, widths=96, memory=1e8)
    with pytest.raises(ValueError, match="approx"):
        check_feasible("lanczos", 10, 10, 20, widths=4)


def test_distributed_needs_chebyshev(ds, tmp_path):
    with pytest.raises(ValueError, match="chebyshev"):
        precompute_bands(ds.train_graph(), ds.features, tmp_path, approx="exact",
                         distributed=True, quiet=True)


# -- two processes, rows partitioned, halo exchange --------------------------------------------
def _store_worker(rank: int, root: str, dtype_name: str):
    ds = _ds()
    dtype = getattr(torch, dtype_name)
    store, plan = precompute_bands(ds.train_graph(), ds.features, root, n_bands=4, order=32,
                                   d0=8, seed=2, compute_dtype=dtype, distributed=True,
                                   quiet=True)
    arrays = {k: np.asarray(store.array(k)).copy() for k in store.modalities}
    arrays["basis"] = store.basis_rows(np.arange(store.n_nodes)).numpy()
    return arrays, plan.coeffs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_two_processes_equal_one(ds, tmp_path, dtype):
    name = str(dtype).split(".")[-1]
    results = run_local(_store_worker, 2, args=(str(tmp_path / "dist"), name),
                        join_timeout=JOIN_S)
    single, plan = precompute_bands(ds.train_graph(), ds.features, tmp_path / "one", n_bands=4,
                                    order=32, d0=8, seed=2, compute_dtype=dtype, quiet=True)
    for arrays, coeffs in results:
        np.testing.assert_allclose(np.array(coeffs), np.array(plan.coeffs),
                                   atol=1e3 * tol(dtype))
        for k, arr in arrays.items():
            if k == "basis":       # eigenvectors: compare the band subspaces, not entries
                lam = np.array(single.meta["info"]["id"]["eigenvalues"])
                ref = single.basis_rows(np.arange(single.n_nodes)).numpy()
                band = np.searchsorted(plan.edges[1:-1], lam, side="right")
                for b in range(len(plan.edges) - 1):
                    u, v = arr[:, band == b].astype(np.float64), ref[:, band == b]
                    assert _rel(u @ u.T, v @ v.T) <= tol(torch.float32, "solve"), b
                continue
            assert _rel(arr, np.array(single.array(k))) <= tol(dtype, "partition"), k
    assert math.isclose(sum(plan.shares), 1.0)
