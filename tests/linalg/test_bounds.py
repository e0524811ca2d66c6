import torch

from ssr_engine.linalg.bounds import spectral_bounds


def test_bounds_enclose_the_spectrum():
    g = torch.Generator().manual_seed(0)
    for n, shift in ((400, 0.0), (60, -3.0)):
        M = torch.randn(n, n, generator=g, dtype=torch.float64)
        A = (M + M.mT) / 2 + shift * torch.eye(n, dtype=torch.float64)
        lam = torch.linalg.eigvalsh(A)
        lo, hi = spectral_bounds(lambda X: A @ X, n, dtype=torch.float64,
                                 device=torch.device("cpu"), generator=g)
        assert lo <= float(lam[0]) and hi >= float(lam[-1])
        width = float(lam[-1] - lam[0])
        assert float(lam[0]) - lo <= 0.2 * width and hi - float(lam[-1]) <= 0.2 * width


def test_bounds_on_a_tiny_operator():
    A = torch.diag(torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64))
    lo, hi = spectral_bounds(lambda X: A @ X, 3, dtype=torch.float64,
                             device=torch.device("cpu"))
    assert abs(lo - 1) <= 1e-10 and abs(hi - 5) <= 1e-10
