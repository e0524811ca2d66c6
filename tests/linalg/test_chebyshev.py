import math

import numpy as np
import torch

from ssr_engine.linalg.chebyshev import chebyshev_filter, chebyshev_subspace
from tolerances import tol


def test_filter_is_the_scaled_chebyshev_polynomial():
    lam = torch.linspace(-1, 3, 50, dtype=torch.float64)
    X = torch.ones(50, 1, dtype=torch.float64)
    lo, cut, top, d = -1.0, 1.0, 3.0, 9
    Y = chebyshev_filter(lambda Z: lam[:, None] * Z, X, d, lo, cut, top)
    s = lambda t: (t - (cut + lo) / 2) / ((cut - lo) / 2)
    ref = np.polynomial.chebyshev.chebval(s(lam.numpy()), [0] * d + [1]) / \
        np.polynomial.chebyshev.chebval(s(top), [0] * d + [1])
    np.testing.assert_allclose(Y[:, 0].numpy(), ref, atol=tol(torch.float64, "close"))
    inside = (lam >= lo) & (lam <= cut)
    assert float(Y[inside].abs().max()) <= 1 / math.cosh(d * math.acosh(s(top))) + 1e-12


def test_float32_high_degree_does_not_overflow():
    lam = torch.linspace(0, 1, 100)
    Y = chebyshev_filter(lambda Z: lam[:, None] * Z, torch.ones(100, 2), 200, 0.0, 0.5, 1.0)
    assert bool(torch.isfinite(Y).all()) and abs(float(Y[-1, 0]) - 1) <= tol(torch.float32)


def test_subspace_iteration_locks_and_deflates():
    g = torch.Generator().manual_seed(0)
    n = 300
    U = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    lam = torch.linspace(0, 1, n, dtype=torch.float64) ** 2
    A = (U * lam) @ U.mT
    thr = lambda th: 1e-9 * torch.ones_like(th)
    counts = []
    r = chebyshev_subspace(lambda X: A @ X, n, 6, threshold=thr, maxiter=200,
                           dtype=torch.float64, device=torch.device("cpu"), bounds=(0.0, 1.0),
                           deflate=U[:, -1:], generator=g, monitor=counts.append)
    assert r.converged and counts[-1] == 6 and counts == sorted(counts)
    np.testing.assert_allclose(r.values.numpy(), lam.flip(0)[1:7].numpy(),
                               atol=tol(torch.float64, "solve"))
    assert float((U[:, -1:].mT @ r.vectors).abs().max()) <= tol(torch.float64, "close")
