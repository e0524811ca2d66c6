import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from ssr_engine import EigResult, InteractionGraph, NoConvergence, graph_eigs
from ssr_engine.data import load_mmrec
from ssr_engine.linalg.bipartite import component_vectors
from tolerances import tol

METHODS = ["lanczos", "lobpcg", "chebyshev", "dense"]
DTYPES = [torch.float64, torch.float32]


def laplacian_dense(g: InteractionGraph) -> torch.Tensor:
    return g.laplacian(torch.float64).to_dense()


def check_result(g, r, dtype, expected_values):
    """Eigenvalues, residuals on L (recomputed here), orthonormality."""
    w, V = r
    assert V.shape == (g.n_nodes, len(expected_values)) and V.dtype == dtype
    np.testing.assert_allclose(w.double().numpy(), expected_values,
                               atol=tol(dtype, "solve") * 2)
    L = laplacian_dense(g)
    res = (L @ V.double() - V.double() * w.double()).norm(dim=0) / 2
    assert float(res.max()) <= tol(dtype, "solve")
    np.testing.assert_allclose(r.residuals.numpy(), res.numpy(),
                               atol=10 * tol(dtype, "close"))
    eye = torch.eye(V.shape[1], dtype=torch.float64)
    assert float((V.double().mT @ V.double() - eye).abs().max()) <= 10 * tol(dtype, "close")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("which", ["low", "high", "both"])
def test_path_closed_form(cases, method, dtype, which):
    n = 121
    g = cases.path_graph(n)
    spec = cases.path_spectrum(n)
    k = 5
    r = graph_eigs(g, k, which=which, dtype=dtype, method=method)
    assert isinstance(r, EigResult) and r.converged and r.method == f"bipartite-{method}"
    exp = {"low": spec[:k], "high": spec[-k:], "both": np.concatenate([spec[:k], spec[-k:]])}
    check_result(g, r, dtype, exp[which])


@pytest.mark.parametrize("method", METHODS)
def test_cycle_and_torus_repeated_eigenvalues(cases, method):
    for g, spec in ((cases.cycle_graph(60), cases.cycle_spectrum(60)),
                    (cases.torus_graph(10, 12), cases.torus_spectrum(10, 12))):
        k = 9 if g.n_nodes == 60 else 11   # whole clusters: 0, (a, a), (b, b), ...
        assert spec[k] - spec[k - 1] > 1e-3
        r = graph_eigs(g, k, which="low", dtype=torch.float64, method=method)
        check_result(g, r, torch.float64, spec[:k])
        lam, U = torch.linalg.eigh(laplacian_dense(g))
        assert cases.projector_distance(r.eigenvectors, U[:, :k]) <= \
            1e3 * tol(torch.float64, "solve")


@pytest.mark.parametrize("method", METHODS)
def test_disconnected_graph_has_every_zero(cases, method):
    # three components plus two isolated items: λ = 0 three times, λ = 1 for the isolated.
    g = cases.disjoint_union(cases.path_graph(21), cases.cycle_graph(20),
                             cases.torus_graph(6, 8), extra_items=2)
    spec = np.sort(np.linalg.eigvalsh(laplacian_dense(g).numpy()))
    assert np.sum(spec < 1e-12) == 3
    k = 6
    r = graph_eigs(g, k, which="both", dtype=torch.float64, method=method)
    check_result(g, r, torch.float64, np.concatenate([spec[:k], spec[-k:]]))
    zero = r.eigenvectors[:, :3]
    cu, ci = component_vectors(g)
    U = torch.from_numpy(np.vstack([cu, ci]))
    assert cases.projector_distance(zero, U) <= 1e3 * tol(torch.float64, "solve")


@pytest.mark.parametrize("method", METHODS)
def test_complete_bipartite_null_space(cases, method):
    # K_{3,7}: rank 1, so L = 0, 1 (8 times), 2; k reaches into the λ = 1 null space.
    g = cases.complete_bipartite(3, 7)
    for which, k, exp in (("low", 4, [0, 1, 1, 1]), ("high", 3, [1, 1, 2]),
                          ("both", 5, [0, 1, 1, 1, 1, 1, 1, 1, 1, 2]),
                          ("low", 10, [0] + [1] * 8 + [2])):
        r = graph_eigs(g, k, which=which, dtype=torch.float64, method=method)
        check_result(g, r, torch.float64, np.array(exp, dtype=float))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_k_one_and_k_near_n(cases, method, dtype):
    g = cases.torus_graph(6, 6)                    # N = 36, 18 + 18
    spec = cases.torus_spectrum(6, 6)
    r = graph_eigs(g, 1, dtype=dtype, method=method)
    check_result(g, r, dtype, spec[:1])
    r = graph_eigs(g, 34, which="low", dtype=dtype, method=method)
    check_result(g, r, dtype, spec[:34])


def test_more_users_than_items_and_the_reverse():
    rng = np.random.default_rng(0)
    for n_u, n_i in ((300, 120), (120, 300)):
        u = np.concatenate([np.arange(n_u), rng.integers(0, n_u, 1500)])
        i = np.concatenate([rng.integers(0, n_i, n_u), rng.integers(0, n_i, 1500)])
        g = InteractionGraph(u, i, n_u, n_i)
        spec = np.linalg.eigvalsh(laplacian_dense(g).numpy())
        for method in ("lanczos", "dense"):
            r = graph_eigs(g, 8, which="both", dtype=torch.float64, method=method)
            check_result(g, r, torch.float64, np.concatenate([spec[:8], spec[-8:]]))


def check_float32_in_float64(g: InteractionGraph, k: int) -> None:
    """A float32 low-end solve: every residual, recomputed in float64 with scipy, within the
    tolerance and equal to the reported one."""
    r = graph_eigs(g, k, which="low", dtype=torch.float32)
    V = r.eigenvectors.double().numpy()
    lam = r.eigenvalues.double().numpy()
    res = np.linalg.norm(V - g.normalized_adjacency_scipy() @ V - V * lam, axis=0) / 2
    assert res.max() <= tol(torch.float32, "solve")
    np.testing.assert_allclose(r.residuals.numpy(), res, atol=tol(torch.float32, "close") / 10)


def test_float32_two_million_users():
    # σ = ||R̃ q|| and p = R̃ q / σ come from 2M-long float32 columns, where a row-after-row
    # float32 sum (CPU ``.norm(dim=0)``) misses σ by ~1e-3 and the pairs by 15x the 1e-4
    # tolerance. Users in 8 planted clusters of items (512 each) give 7 well-separated pairs.
    rng = np.random.default_rng(0)
    n_u, c, per, k = 2_000_000, 8, 512, 8
    cluster = np.repeat(rng.integers(0, c, n_u), 2)
    own = rng.random(2 * n_u) < 0.9
    items = np.where(own, cluster * per + rng.integers(0, per, 2 * n_u),
                     rng.integers(0, c * per, 2 * n_u))
    g = InteractionGraph(np.repeat(np.arange(n_u), 2), items, n_u, c * per)
    check_float32_in_float64(g, k)


def test_float32_items_with_a_hundred_thousand_users():
    # R̃^T p sums over an item's users: 100k-long float32 rows, summed one after another,
    # lose ~1e-4 relative, and residuals evaluated with them read as a missed 1e-4 although
    # the vectors were accurate (2M users on 64 items: 1.7e-4 reported, 5.2e-6 in float64).
    # The final products now accumulate in float64.
    rng = np.random.default_rng(1)
    n_u, n_i, k = 800_000, 16, 16
    g = InteractionGraph(np.repeat(np.arange(n_u), 2), rng.integers(0, n_i, 2 * n_u), n_u, n_i)
    check_float32_in_float64(g, k)


def test_agrees_with_scipy_on_movielens(data_dir):
    g = load_mmrec(data_dir / "movielens-100k").train_graph()
    k = 16
    r = graph_eigs(g, k, which="low", dtype=torch.float64)
    ahat = g.normalized_adjacency_scipy()
    ref = np.sort(1 - spla.eigsh(ahat, k=k, which="LA", tol=1e-12)[0])
    np.testing.assert_allclose(r.eigenvalues.numpy(), ref, atol=tol(torch.float64, "solve"))
    L = sp.identity(g.n_nodes) - ahat
    V = r.eigenvectors.numpy()
    res = np.linalg.norm(L @ V - V * r.eigenvalues.numpy(), axis=0) / 2
    assert res.max() <= tol(torch.float64, "solve")
    r32 = graph_eigs(g, k, which="low", dtype=torch.float32)
    np.testing.assert_allclose(r32.eigenvalues.double().numpy(), ref,
                               atol=tol(torch.float32, "solve") * 2)


def test_no_convergence_carries_partial_result(cases):
    g = cases.torus_graph(30, 30)
    with pytest.raises(NoConvergence) as info:
        graph_eigs(g, 10, dtype=torch.float64, method="lanczos", maxiter=1, tol=1e-12)
    res = info.value.result
    assert not res.converged and res.eigenvectors.shape == (900, 10)
    assert "missed tol" in str(info.value)


def test_errors_name_the_values(cases):
    g = cases.path_graph(10)
    with pytest.raises(ValueError, match="k = 0"):
        graph_eigs(g, 0)
    with pytest.raises(ValueError, match="k = 11"):
        graph_eigs(g, 11)
    with pytest.raises(ValueError, match="N/2 = 5"):
        graph_eigs(g, 6, which="both")
    with pytest.raises(ValueError, match="'middle'"):
        graph_eigs(g, 2, which="middle")
    with pytest.raises(ValueError, match="'svd'"):
        graph_eigs(g, 2, method="svd")
    with pytest.raises(ValueError, match="float16"):
        graph_eigs(g, 2, dtype=torch.float16)
    with pytest.raises(TypeError, match="InteractionGraph"):
        graph_eigs(sp.identity(4), 2)
    big = InteractionGraph(np.arange(9000), np.arange(9000))
    with pytest.raises(ValueError, match="9000.*lanczos"):
        graph_eigs(big, 2, method="dense")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_closed_form(cases):
    g = cases.torus_graph(20, 30)
    r = graph_eigs(g, 9, device="cuda", method="lanczos")
    assert r.eigenvectors.device.type == "cuda"
    np.testing.assert_allclose(r.eigenvalues.cpu().double().numpy(),
                               cases.torus_spectrum(20, 30)[:9],
                               atol=tol(torch.float32, "solve") * 2)


@pytest.mark.parametrize("method", ["lanczos", "lobpcg", "chebyshev"])
def test_warm_start_from_a_smaller_graph(method):
    # a previous result on the first users/items warm-starts the solve on the grown graph
    rng = np.random.default_rng(5)
    u, i = rng.integers(0, 300, 4000), rng.integers(0, 200, 4000)
    old = (u < 280) & (i < 190) & (rng.random(u.size) < 0.95)
    with pytest.warns(UserWarning):
        g0 = InteractionGraph(u[old], i[old], 280, 190)
        g1 = InteractionGraph(u, i, 300, 200)
    r0 = graph_eigs(g0, 12, which="both", dtype=torch.float64, method="lanczos")
    assert r0.n_users == 280
    cold = graph_eigs(g1, 12, which="both", dtype=torch.float64, method=method)
    warm = graph_eigs(g1, 12, which="both", dtype=torch.float64, method=method, v0=r0)
    assert warm.converged and float(warm.residuals.max()) <= tol(torch.float64, "solve")
    np.testing.assert_allclose(warm.eigenvalues.numpy(), cold.eigenvalues.numpy(), atol=1e-7)
    with pytest.raises(ValueError, match="larger than this one"):
        graph_eigs(g0, 4, dtype=torch.float64, v0=cold)
    with pytest.raises(ValueError, match="result of graph_eigs"):
        graph_eigs(g1, 4, dtype=torch.float64, v0=cold.eigenvectors)
