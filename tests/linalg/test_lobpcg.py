import numpy as np
import torch

from ssr_engine.linalg.lobpcg import lobpcg
from tolerances import tol


def problem(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    lam = torch.linspace(0, 1, n, dtype=torch.float64) ** 2
    lam[-3:] = lam[-4] + torch.tensor([0.1, 0.1, 0.2], dtype=torch.float64)   # a double pair
    return U, lam, (U * lam) @ U.mT


def run(A, k, **kw):
    thr = lambda th: 1e-9 * torch.ones_like(th)
    return lobpcg(lambda X: A @ X, A.shape[0], k, threshold=thr, maxiter=2000,
                  dtype=A.dtype, device=A.device, generator=torch.Generator().manual_seed(0),
                  **kw)


def test_largest_pairs_with_a_double_eigenvalue():
    U, lam, A = problem()
    r = run(A, 4)
    assert r.converged
    np.testing.assert_allclose(r.values.numpy(), lam.sort(descending=True)[0][:4].numpy(),
                               atol=tol(torch.float64, "solve"))
    true = (A @ r.vectors - r.vectors * r.values).norm(dim=0)
    assert float(true.max()) <= 1e-8


def test_rank_deficient_start_block_survives():
    U, lam, A = problem()
    x = torch.randn(300, 1, dtype=torch.float64)
    X0 = torch.cat([x, x, 2 * x, x], dim=1)            # four copies of one vector
    r = run(A, 4, X0=X0)
    assert r.converged
    eye = torch.eye(4, dtype=torch.float64)
    assert float((r.vectors.mT @ r.vectors - eye).abs().max()) <= tol(torch.float64, "close")


def test_deflation_and_whole_space():
    U, lam, A = problem(n=40)
    order = torch.argsort(lam, descending=True)
    C = U[:, order[:1]]
    r = run(A, 3, deflate=C)
    np.testing.assert_allclose(r.values.numpy(), lam[order[1:4]].numpy(),
                               atol=tol(torch.float64, "solve"))
    assert float((C.mT @ r.vectors).abs().max()) <= tol(torch.float64, "close")
    r = run(A, 39)                                      # block = the whole space
    assert r.converged
    np.testing.assert_allclose(r.values.numpy(), lam[order[:39]].numpy(), atol=1e-10)
