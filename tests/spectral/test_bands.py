"""SpectralBands against the exact spectrum: partition of unity, edges, shares, signals."""
import numpy as np
import pytest
import torch

import ssr_engine
import ssr_engine.linalg
from ssr_engine import EigResult, InteractionGraph, SpectralBands
from ssr_engine.data import synthetic_dataset
from ssr_engine.spectral import filter_response
from tolerances import tol

DTYPES = [torch.float64, torch.float32]


def _dense_graph_eigs(graph, k, which="both", tol=None, dtype=torch.float32, device=None,
                      method="auto"):
    """Dense stand-in for ssr_engine.graph_eigs: the k lowest and k highest eigenpairs."""
    L = np.eye(graph.n_nodes) - graph.normalized_adjacency_scipy().toarray()
    w, U = np.linalg.eigh(L)
    idx = np.r_[np.arange(k), np.arange(graph.n_nodes - k, graph.n_nodes)]
    w, U = torch.from_numpy(w[idx]).to(dtype), torch.from_numpy(U[:, idx]).to(dtype)
    return EigResult(w, U, torch.zeros(2 * k, dtype=dtype), 0, True, "dense")


@pytest.fixture
def dense_eigs(monkeypatch):
    monkeypatch.setattr(ssr_engine.linalg, "graph_eigs", _dense_graph_eigs, raising=False)


@pytest.fixture(scope="module")
def exact_ml(ml):
    """One exact SpectralBands per dtype on MovieLens (the SVD is computed once; tests refit)."""
    cache = {}

    def get(dtype=torch.float32):
        if dtype not in cache:
            cache[dtype] = SpectralBands(ml.graph, 4, method="exact", dtype=dtype)
        return cache[dtype]
    return get


def _bands(ml, exact_ml, method, dtype=torch.float32, **kw):
    return exact_ml(dtype) if method == "exact" else SpectralBands(ml.graph, 4, method=method,
                                                                   dtype=dtype, **kw)


def _unity_error(sb, X):
    Y = sb.transform(X)
    x = torch.as_tensor(X).to(sb.dtype)
    return float((Y.sum(0) - x).norm() / x.norm())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["exact", "chebyshev"])
def test_partition_of_unity(ml, exact_ml, method, dtype):
    X = ml.signals["text"]
    sb = _bands(ml, exact_ml, method, dtype).fit(X)
    assert _unity_error(sb, X) <= tol(dtype, "unity")
    assert _unity_error(sb, X[:, :7] * 3.0 + 1.0) <= tol(dtype, "unity")


@pytest.mark.parametrize("dtype", DTYPES)
def test_partition_of_unity_eigen(small, dense_eigs, dtype):
    X = small.signals["image"]
    sb = SpectralBands(small.graph, 4, method="eigen", k=30, dtype=dtype).fit(X)
    assert _unity_error(sb, X) <= tol(dtype, "unity")
    assert _unity_error(sb.fit_uniform(), X) <= tol(dtype, "unity")


@pytest.mark.parametrize("method", ["exact", "chebyshev"])
def test_partition_of_unity_uniform(small, method):
    sb = SpectralBands(small.graph, 3, method=method, dtype=torch.float64).fit_uniform()
    assert sb.edges.tolist() == pytest.approx([0.0, 2 / 3, 4 / 3, 2.0])
    assert sb.shares_ is None
    assert _unity_error(sb, small.signals["image"]) <= tol(torch.float64, "unity")


def _assert_spectral_projections(sb, ref, X):
    """Each band signal is the projection of X on the eigenvectors of L (``ref.w``,
    ``ref.U``) whose eigenvalues fall in the band; returns the band of every eigenvalue."""
    Y = sb.transform(X).numpy()
    band = np.searchsorted(sb.edges.numpy()[1:-1], ref.w, side="right")
    for b in range(sb.n_bands):
        Ub = ref.U[:, band == b]
        want = Ub @ (Ub.T @ X.numpy())
        assert np.linalg.norm(Y[b] - want) <= tol(torch.float64) * np.linalg.norm(X.numpy())
    return band


@pytest.mark.parametrize("name", ["text", "meta"])
def test_exact_bands_are_spectral_projections(ml, exact_ml, name):
    X = ml.signals[name]
    sb = exact_ml(torch.float64).fit(X)
    band = _assert_spectral_projections(sb, ml, X)
    e = ml.energies(name)
    shares = np.bincount(band, weights=e, minlength=4) / e.sum()
    np.testing.assert_allclose(sb.shares_.numpy(), shares, atol=tol(torch.float64))
    np.testing.assert_allclose(sb.energy(X).numpy(), shares, atol=tol(torch.float64))
    # No eigenvalue cluster straddles an edge, the λ = 1 atom included.
    atom = np.abs(ml.w - 1.0) < 1e-8
    assert len(set(band[atom])) == 1
    assert any(abs(a.lam - 1.0) < 1e-8 and a.fraction > 0.2 for a in sb.atoms_)


@pytest.mark.parametrize("dtype", DTYPES)
def test_chebyshev_bands_match_exact_damped_response(ml, dtype):
    X = ml.signals["meta"]
    sb = SpectralBands(ml.graph, 4, method="chebyshev", order=48, dtype=dtype).fit(X)
    Y = sb.transform(X).double().numpy()
    t = np.clip((ml.w - 1.0) / (1.0 + sb.delta), -1.0, 1.0)
    h = filter_response(sb.coeffs_, t).numpy()
    C = ml.U.T @ X.numpy()
    for b in range(4):
        want = ml.U @ (h[b][:, None] * C)
        assert np.linalg.norm(Y[b] - want) <= tol(dtype) * np.linalg.norm(want)
    # The shares predicted from the moments at fit are those of the filtered output.
    np.testing.assert_allclose(sb.energy(X).numpy(), sb.shares_.numpy(), atol=tol(dtype))


@pytest.mark.parametrize("name", ["text", "meta"])
@pytest.mark.parametrize("method", ["exact", "chebyshev"])
def test_no_starved_band(ml, exact_ml, name, method):
    X = ml.signals[name]
    sb = _bands(ml, exact_ml, method).fit(X)
    shares = sb.energy(X)
    assert float(shares.min()) >= 1.0 / 8
    assert sb.edges[0] == 0.0 and sb.edges[-1] == 2.0 and bool((sb.edges.diff() > 0).all())
    assert float(shares.sum()) == pytest.approx(1.0)


def test_eigen_bands(small, dense_eigs):
    X = small.signals["image"]
    k, M = 30, 4
    sb = SpectralBands(small.graph, M, method="eigen", k=k, dtype=torch.float64).fit(X)
    Y = sb.transform(X).numpy()
    N = small.graph.n_nodes
    idx = np.r_[np.arange(k), np.arange(N - k, N)]
    w, V = small.w[idx], small.U[:, idx]
    # Covered bands are projections on the basis vectors whose eigenvalues they hold.
    band = np.searchsorted(sb.edges.numpy()[1:-1], w, side="right")
    covered = V @ V.T @ X.numpy()
    rest = [b for b in range(M) if not np.any(band == b)]
    for b in range(M):
        Vb = V[:, band == b]
        want = Vb @ Vb.T @ X.numpy()
        if b in rest or b == sb._rest:
            want = want + X.numpy() - covered
        assert np.linalg.norm(Y[b] - want) <= tol(torch.float64) * np.linalg.norm(X.numpy())
    # The residual is its own band, between the low and the high ends.
    assert 0.0 < sb.uncovered_ < 1.0
    assert float(sb.shares_.sum()) == pytest.approx(1.0)
    sp = sb.spectrum(X)
    assert sp.uncovered == pytest.approx(sb.uncovered_, rel=1e-9)


def test_eigen_bands_with_graph_eigs(small):
    X = small.signals["image"]
    sb = SpectralBands(small.graph, 4, method="eigen", k=16, dtype=torch.float64).fit(X)
    assert _unity_error(sb, X) <= tol(torch.float64, "unity")
    assert float(sb.shares_.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["exact", "chebyshev"])
def test_spectrum(ml, exact_ml, method):
    X = ml.signals["text"]
    sb = _bands(ml, exact_ml, method, order=64).fit(X)
    sp = sb.spectrum(X, grid=400)
    dlam = float(sp.lam[1] - sp.lam[0])
    total = float(sp.density.sum()) * dlam + sum(a.fraction for a in sp.atoms)
    assert sp.lam.shape == sp.density.shape == (400,)
    assert total == pytest.approx(1.0, abs=1e-9 if method == "exact" else 0.02)
    near_one = [a for a in sp.atoms if abs(a.lam - 1.0) < 0.01]
    assert len(near_one) == 1 and near_one[0].fraction == pytest.approx(0.363, abs=0.05)


@pytest.mark.parametrize("case, dtype", [("ml", torch.float64), ("small_wide", torch.float64),
                                         ("small_wide", torch.float32),
                                         ("small_tall", torch.float64),
                                         ("small_tall", torch.float32)])
def test_exact_gram_route_matches_svd(ml, exact_ml, small, case, dtype):
    """The Gram route (smaller side above exact_max) against the dense-SVD route."""
    svd = None
    if case == "ml":              # 943 users < 1682 items: user-side Gram, 739-dim atom
        graph, X = ml.graph, ml.signals["text"]
        svd = exact_ml(dtype).fit(X)
    elif case == "small_tall":    # 240 users > 150 items: item-side Gram
        graph, X = small.graph, small.signals["image"]
    else:                         # 150 users < 240 items
        ds = synthetic_dataset(150, 240, 2400, modalities={"image": 5}, seed=4)
        graph = ds.train_graph()
        X = graph.node_signal(ds.features["image"].astype(np.float64))
    if svd is None:
        svd = SpectralBands(graph, 4, method="exact", dtype=dtype).fit(X)
    gram = SpectralBands(graph, 4, method="exact", dtype=dtype, exact_max=10).fit(X)
    assert svd._route == "svd" and gram._route == "gram"
    t = tol(torch.float64)  # both fit in float64 whatever the bands' dtype
    np.testing.assert_allclose(gram.edges.numpy(), svd.edges.numpy(), atol=t)
    np.testing.assert_allclose(gram.shares_.numpy(), svd.shares_.numpy(), atol=t)
    assert [round(a.lam, 8) for a in gram.atoms_] == [round(a.lam, 8) for a in svd.atoms_]
    np.testing.assert_allclose([a.fraction for a in gram.atoms_],
                               [a.fraction for a in svd.atoms_], atol=t)
    Ys, Yg = svd.transform(X), gram.transform(X)
    x = X.to(dtype)
    assert float((Yg - Ys).norm() / x.norm()) <= tol(dtype)
    assert _unity_error(gram, X) <= tol(dtype, "unity")
    np.testing.assert_allclose(gram.energy(X).numpy(), svd.energy(X).numpy(), atol=tol(dtype))
    sg, ss = gram.spectrum(X, grid=200), svd.spectrum(X, grid=200)
    np.testing.assert_allclose(sg.density.numpy(), ss.density.numpy(), atol=1e-8)
    Ys, Yg = svd.fit_uniform().transform(X), gram.fit_uniform().transform(X)
    assert float((Yg - Ys).norm() / x.norm()) <= tol(dtype)


def test_exact_gram_bands_are_spectral_projections(small):
    """Gram-route bands against the dense eigendecomposition of L (independent reference)."""
    X = small.signals["image"]
    sb = SpectralBands(small.graph, 4, method="exact", dtype=torch.float64, exact_max=10).fit(X)
    band = _assert_spectral_projections(sb, small, X)
    e = small.energies("image")
    np.testing.assert_allclose(sb.shares_.numpy(),
                               np.bincount(band, weights=e, minlength=4) / e.sum(),
                               atol=tol(torch.float64))


def test_exact_memory_estimate():
    from ssr_engine.spectral import exact_memory_estimate
    assert exact_memory_estimate(943, 1682) == (8 * (3 * 943 * 1682 + 4 * 943 ** 2), "svd")
    # Amazon Clothing: the Gram route on the 23,033 items, about 8 GB.
    b, route = exact_memory_estimate(39387, 23033)
    assert route == "gram" and b == 8 * (2 * 23033 ** 2 + 64 * (39387 + 23033))
    assert exact_memory_estimate(39387, 23033, exact_max=30000)[1] == "svd"


def test_auto_method():
    rng = np.random.default_rng(0)
    u, i = rng.integers(0, 5000, 20000), rng.integers(0, 4000, 20000)
    big = InteractionGraph(u, i, 5000, 4000)
    assert SpectralBands(big).method_ == "chebyshev"
    assert SpectralBands(big, k=8).method_ == "eigen"
    small = InteractionGraph([0, 1, 1], [0, 0, 1])
    assert SpectralBands(small).method_ == "exact"


def test_errors(ml):
    g, X = ml.graph, ml.signals["meta"]
    with pytest.raises(ValueError, match="n_bands"):
        SpectralBands(g, 0)
    with pytest.raises(ValueError, match="method"):
        SpectralBands(g, 4, method="lanczos")
    with pytest.raises(ValueError, match="solver"):
        SpectralBands(g, 4, method="eigen", solver="arpack")
    with pytest.raises(ValueError, match=r"N=2625.*943x1682 bipartite block.*GiB.*"
                                         r"exact_memory=0\.0 GiB.*chebyshev"):
        SpectralBands(g, 4, method="exact", exact_memory=10**6)
    with pytest.raises(ValueError, match=r"943x943 Gram matrix.*exact_memory"):
        SpectralBands(g, 4, method="exact", exact_max=500, exact_memory=10**6)
    with pytest.raises(TypeError, match="InteractionGraph"):
        SpectralBands(X, 4)
    sb = SpectralBands(g, 4, method="chebyshev", order=32)
    with pytest.raises(RuntimeError, match="fit"):
        sb.transform(X)
    with pytest.raises(RuntimeError, match="fit"):
        sb.energy(X)
    with pytest.raises(ValueError, match=r"X must be \[N=2625, d\]"):
        sb.fit(X[:100])
    with pytest.raises(ValueError, match=r"X must be \[N=2625, d\]"):
        sb.fit(X[:, 0])
    bad = X.clone()
    bad[5, 2] = float("nan")
    with pytest.raises(ValueError, match="row 5, column 2"):
        sb.fit(bad)
    trivial = g.trivial_vector(torch.float64)[:, None] * 3.0
    with pytest.raises(ValueError, match="trivial"):
        sb.fit(trivial)
    sb.fit(X)
    with pytest.raises(ValueError, match="NaN"):
        sb.transform(bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["exact", "chebyshev"])
def test_cuda_matches_cpu(ml, method):
    X = ml.signals["meta"]
    cpu = SpectralBands(ml.graph, 4, method=method, order=48, dtype=torch.float64).fit(X)
    gpu = SpectralBands(ml.graph, 4, method=method, order=48, dtype=torch.float64,
                        device="cuda").fit(X.cuda())
    np.testing.assert_allclose(gpu.edges.numpy(), cpu.edges.numpy(), atol=1e-9)
    Yc, Yg = cpu.transform(X), gpu.transform(X.cuda()).cpu()
    assert float((Yg - Yc).norm() / Yc.norm()) <= tol(torch.float64)
    assert _unity_error(gpu, X.cuda()) <= tol(torch.float64, "unity")
    gf = SpectralBands(ml.graph, 4, method=method, order=48, device="cuda").fit(X.cuda())
    assert _unity_error(gf, X.float().cuda()) <= tol(torch.float32, "unity")


def test_auto_order_resolves_the_atom_on_movielens(ml, exact_ml):
    # The old rule stopped at K = 32 once every band held 1/(2M): the λ = 1 atom (35% of the
    # text energy) then dragged a slice of its neighbours into its band (55%), and SSR on
    # these bands lost 8% test Recall@20 against exact bands. The order is now the lowest
    # whose shares are within ORDER_SHARE_TOL / M of those at the highest order tried.
    from ssr_engine.spectral.bands import AUTO_ORDERS, ORDER_SHARE_TOL, chebyshev_plan
    X = ml.signals["text"]
    sb = SpectralBands(ml.graph, 4, method="chebyshev", dtype=torch.float64).fit(X)
    assert sb.order_ > 32
    finest = SpectralBands(ml.graph, 4, method="chebyshev", order=AUTO_ORDERS[-1],
                           dtype=torch.float64).fit(X)
    assert np.abs(sb.shares_.numpy() - finest.shares_.numpy()).max() <= ORDER_SHARE_TOL / 4
    # and no lower order would have done: the rule keeps the lowest converged one
    lower = [K for K in AUTO_ORDERS if K < sb.order_]
    mom = sb.moments_.numpy()
    for K in lower:
        p = chebyshev_plan(finest.moments_.numpy(), 4, (K,))
        assert np.abs(p.shares - finest.shares_.numpy()).max() > ORDER_SHARE_TOL / 4
    # the band holding λ = 1 is close to the exact method's atom band, not twice its share
    ex = exact_ml(torch.float64).fit(X)
    atom_band = lambda b: int(np.searchsorted(b.edges.numpy()[1:-1], 1.0, side="right"))
    assert abs(float(sb.shares_[atom_band(sb)]) - float(ex.shares_[atom_band(ex)])) < 0.1
    assert mom.size == 2 * sb.order_


@pytest.mark.parametrize("method", ["exact", "chebyshev"])
def test_folded_atom_shares_the_bands_off_the_atom(ml, method):
    """MovieLens-100k text: counted, the λ = 1 atom (35% of the energy) gets a band of its
    own; folded, the bands share the energy off the atom and λ = 1 lies inside a wider band."""
    x = ml.signals["text"]
    order = 128 if method == "chebyshev" else None
    fits = {a: SpectralBands(ml.graph, 4, method=method, order=order, dtype=torch.float64,
                             atom=a).fit(x) for a in ("slot", "fold")}
    w, e = ml.w, ml.energies("text")
    atom = np.abs(w - 1.0) < 1e-6
    for a, sb in fits.items():
        edges = sb.edges.numpy()
        b = np.clip(np.searchsorted(edges[1:-1], w, side="right"), 0, 3)
        home = int(b[atom][0])                                   # the band holding λ = 1
        assert (b[atom] == home).all()
        others = b[~atom] == home                                # other eigenvalues in it
        width = edges[home + 1] - edges[home]
        if a == "slot":
            # (a damped filter of order K cannot be narrower than about π/K in θ)
            assert width < 0.06 and e[~atom][others].sum() < 0.05 * e.sum(), (method, edges)
        else:
            assert width > 0.1, (method, edges)
            off = np.bincount(b[~atom], weights=e[~atom], minlength=4)
            # the off-atom energy is balanced: every band within a factor 1.6 of the mean
            # (Chebyshev: damped filters leak across the nominal edges)
            assert off.max() / off.min() < (1.3 if method == "exact" else 1.6), (method, off)
        torch.testing.assert_close(sb.shares_.sum(), torch.tensor(1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="atom must be"):
        SpectralBands(ml.graph, 4, atom="drop")
    with pytest.raises(ValueError, match="needs balance='filter'"):
        SpectralBands(ml.graph, 4, atom="fold", balance="quantile")
