import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

import ssr_engine
from ssr_engine import EigResult, NoConvergence, eigsh
from tolerances import tol

METHODS = ["lanczos", "lobpcg", "chebyshev", "dense"]
DTYPES = [torch.float64, torch.float32]
NP = {torch.float64: np.float64, torch.float32: np.float32}


def expected(spectrum, k, which):
    s = np.sort(spectrum)
    if which == "SA":
        return s[:k]
    if which == "LA":
        return s[-k:]
    hi = (k + 1) // 2
    return np.concatenate([s[:k - hi], s[-hi:]])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("which", ["SA", "LA", "BE"])
def test_grid_laplacian_closed_form(cases, method, dtype, which):
    A = cases.grid_laplacian(12, 9).astype(NP[dtype])          # N = 108, repeated eigenvalues
    spec = cases.grid_spectrum(12, 9)
    k = 7
    r = eigsh(A, k, which=which, method=method)
    assert isinstance(r, EigResult) and r.converged and r.method == method
    w, V = r
    assert w.shape == (k,) and V.shape == (108, k) and w.dtype == dtype and V.dtype == dtype
    assert bool(torch.all(w[1:] >= w[:-1]))
    norm = float(np.max(spec))
    np.testing.assert_allclose(w.double().numpy(), expected(spec, k, which),
                               atol=tol(dtype, "solve") * norm)
    assert float(r.residuals.max()) <= tol(dtype, "solve")
    cases.check_pairs(torch.from_numpy(A.toarray()), w, V, dtype, norm)


@pytest.mark.parametrize("method", METHODS)
def test_repeated_eigenvalues_span_the_eigenspace(cases, method):
    # Grid 8 x 8: eigenvalues 2 - 2cos(pi i/8) + 2 - 2cos(pi j/8) are double for i != j.
    A = cases.grid_laplacian(8, 8)
    dense = torch.from_numpy(A.toarray())
    lam, U = torch.linalg.eigh(dense)
    k = 6                                 # 0, (a, a), 2a, (b, b): ends after a whole cluster
    assert float(lam[k] - lam[k - 1]) > 1e-3
    w, V = eigsh(A, k, which="SA", method=method)
    assert cases.projector_distance(V, U[:, :k]) <= 1e3 * tol(torch.float64, "solve")


@pytest.mark.parametrize("method", ["lanczos", "lobpcg", "chebyshev"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_agrees_with_scipy_and_dense(method, dtype):
    rng = np.random.default_rng(0)
    B = sp.random(300, 300, density=0.02, random_state=1)
    A = ((B + B.T) / 2 + sp.diags(rng.random(300))).tocsr().astype(NP[dtype])
    ref = spla.eigsh(A.astype(np.float64), k=6, which="LA", tol=1e-12)[0]
    dense = eigsh(A, 6, which="LA", method="dense").eigenvalues
    w = eigsh(A, 6, which="LA", method=method).eigenvalues
    norm = float(np.abs(spla.eigsh(A.astype(np.float64), k=1, which="LM")[0]).max())
    np.testing.assert_allclose(w.double().numpy(), np.sort(ref),
                               atol=tol(dtype, "solve") * norm)
    np.testing.assert_allclose(dense.double().numpy(), np.sort(ref),
                               atol=tol(dtype, "close") * norm)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [1, 38])
def test_k_one_and_near_n(method, k):
    rng = np.random.default_rng(3)
    M = rng.standard_normal((40, 40))
    A = torch.from_numpy(M + M.T)
    lam = torch.linalg.eigvalsh(A)
    r = eigsh(A, k, which="SA", method=method)
    np.testing.assert_allclose(r.eigenvalues.numpy(), lam[:k].numpy(),
                               atol=tol(torch.float64, "solve") * float(lam.abs().max()))
    assert float((r.eigenvectors.mT @ r.eigenvectors - torch.eye(k, dtype=A.dtype)).abs().max()
                 ) <= 10 * tol(torch.float64, "close")


@pytest.mark.parametrize("method", METHODS)
def test_input_kinds(method):
    n = 60
    lap = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n), format="csr")
    ref = 2 - 2 * np.cos(np.pi * np.arange(1, 4) / (n + 1))
    for A in (lap, lap.toarray(), torch.from_numpy(lap.toarray()),
              torch.from_numpy(lap.toarray()).to_sparse_csr(),
              torch.from_numpy(lap.toarray()).to_sparse(), ssr_engine.as_operator(lap)):
        w, _ = eigsh(A, 3, method=method)
        np.testing.assert_allclose(w.numpy(), ref, atol=tol(torch.float64, "solve") * 4)


def test_auto_picks_dense_small_and_lanczos_large(cases):
    assert eigsh(cases.grid_laplacian(10, 10), 3).method == "dense"
    assert eigsh(cases.grid_laplacian(30, 30), 3).method == "lanczos"


def test_v0_and_generator_reproducible(cases):
    A = cases.grid_laplacian(30, 30)
    r1 = eigsh(A, 4, method="lanczos", generator=torch.Generator().manual_seed(5))
    r2 = eigsh(A, 4, method="lanczos", generator=torch.Generator().manual_seed(5))
    assert torch.equal(r1.eigenvectors, r2.eigenvectors)
    r3 = eigsh(A, 4, method="lanczos", v0=r1.eigenvectors[:, 0].numpy())
    np.testing.assert_allclose(r3.eigenvalues.numpy(), r1.eigenvalues.numpy(),
                               atol=tol(torch.float64, "solve") * 8)


@pytest.mark.parametrize("method", ["lanczos", "lobpcg", "chebyshev"])
def test_no_convergence_carries_partial_result(method):
    n = 400
    A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n), format="csr")
    with pytest.raises(NoConvergence) as info:
        eigsh(A, 6, method=method, maxiter=1, tol=1e-12)
    res = info.value.result
    assert isinstance(res, EigResult) and not res.converged
    assert res.eigenvectors.shape == (n, 6) and res.residuals.shape == (6,)
    assert float(res.residuals.max()) > 1e-12
    assert "missed tol" in str(info.value)


def test_unpacks_and_repr(cases):
    r = eigsh(cases.grid_laplacian(5, 5), 2, method="dense")
    w, V = r
    assert w is r.eigenvalues and V is r.eigenvectors
    assert "dense" in repr(r) and "k=2" in repr(r)


def test_errors_name_the_values():
    A = sp.identity(10, format="csr")
    with pytest.raises(ValueError, match="k = 0"):
        eigsh(A, 0)
    with pytest.raises(ValueError, match="k = 11"):
        eigsh(A, 11)
    with pytest.raises(ValueError, match=r"\(10, 12\)"):
        eigsh(sp.random(10, 12, density=0.5, format="csr"), 2)
    with pytest.raises(ValueError, match="not symmetric"):
        eigsh(sp.csr_matrix(np.triu(np.ones((10, 10)))), 2)
    v0 = np.ones(10)
    v0[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        eigsh(A, 2, v0=v0)
    with pytest.raises(ValueError, match="'XX'"):
        eigsh(A, 2, which="XX")
    with pytest.raises(ValueError, match="'arpack'"):
        eigsh(A, 2, method="arpack")
    with pytest.raises(ValueError, match="tol"):
        eigsh(A, 2, tol=-1.0)
    with pytest.raises(ValueError, match="maxiter"):
        eigsh(A, 2, maxiter=0)
    big = sp.identity(9000, format="csr")
    with pytest.raises(ValueError, match="N = 9000.*lanczos"):
        eigsh(big, 2, method="dense")
    with pytest.raises(TypeError):
        eigsh("not a matrix", 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(cases, method):
    A = cases.grid_laplacian(20, 15).astype(np.float32)
    op = ssr_engine.as_operator(A, device="cuda")
    r = eigsh(op, 5, method=method)
    assert r.eigenvectors.device.type == "cuda"
    ref = cases.grid_spectrum(20, 15)[:5]
    np.testing.assert_allclose(r.eigenvalues.cpu().double().numpy(), ref,
                               atol=tol(torch.float32, "solve") * 8)
