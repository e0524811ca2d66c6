import numpy as np
import pytest
import torch

from ssr_engine.linalg.lanczos import block_lanczos
from tolerances import tol


def problem(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    lam = torch.linspace(0, 1, n, dtype=torch.float64) ** 3
    return U, lam, (U * lam) @ U.mT


def run(A, k, **kw):
    thr = lambda th: 1e-9 * torch.ones_like(th)
    return block_lanczos(lambda X: A @ X, A.shape[0], k, threshold=thr, maxiter=500,
                         dtype=A.dtype, device=A.device,
                         generator=torch.Generator().manual_seed(0), **kw)


@pytest.mark.parametrize("block", [1, 3, 8])
def test_largest_pairs_any_block_size(block):
    U, lam, A = problem()
    r = run(A, 5, block=block)
    assert r.converged
    np.testing.assert_allclose(r.values.numpy(), lam.flip(0)[:5].numpy(),
                               atol=tol(torch.float64, "solve"))
    true = (A @ r.vectors - r.vectors * r.values).norm(dim=0)
    assert float(true.max()) <= 1e-8
    # the cheap residual estimates track the true ones
    assert float((true - r.residuals).abs().max()) <= 1e-9


def test_deflation_stays_orthogonal():
    U, lam, A = problem()
    C = U[:, -2:]                                        # the top two eigenvectors
    r = run(A, 4, deflate=C)
    np.testing.assert_allclose(r.values.numpy(), lam.flip(0)[2:6].numpy(),
                               atol=tol(torch.float64, "solve"))
    assert float((C.mT @ r.vectors).abs().max()) <= tol(torch.float64, "close")


def test_low_rank_operator_exhausts_the_krylov_space():
    g = torch.Generator().manual_seed(3)
    B = torch.randn(200, 3, generator=g, dtype=torch.float64)
    A = B @ B.mT                                         # rank 3: invariant subspaces early
    r = run(A, 6, block=4)
    ref = torch.linalg.eigvalsh(A).flip(0)[:6]
    np.testing.assert_allclose(r.values.numpy(), ref.numpy(), atol=1e-9 * float(ref[0]))
    eye = torch.eye(6, dtype=torch.float64)
    assert float((r.vectors.mT @ r.vectors - eye).abs().max()) <= tol(torch.float64, "close")


def test_whole_space_small_operator():
    U, lam, A = problem(n=12)
    r = run(A, 12, block=4)
    assert r.converged
    np.testing.assert_allclose(r.values.numpy(), lam.flip(0).numpy(), atol=1e-12)


def test_deflated_gram_of_a_real_graph_stays_orthogonal(data_dir):
    # Regression: Q's rounding along a deflated top eigenvector used to spread through the
    # reorthogonalisation coefficients and grow by ~1.5x per block on this graph.
    from ssr_engine.data import load_mmrec
    from ssr_engine.linalg.bipartite import component_vectors
    g = load_mmrec(data_dir / "amazon-baby").train_graph()
    R = g.bipartite(torch.float64)
    T = torch.from_numpy(component_vectors(g)[1]) * 2 ** 0.5
    thr = lambda th: 2e-6 * th.clamp_min(0).sqrt()
    r = block_lanczos(lambda X: R.T @ (R @ X), g.n_items, 63, threshold=thr, maxiter=100,
                      dtype=torch.float64, device=torch.device("cpu"), deflate=T,
                      generator=torch.Generator().manual_seed(0))
    assert r.converged
    assert float((T.mT @ r.vectors).abs().max()) <= tol(torch.float64, "close")
