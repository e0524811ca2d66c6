"""Chebyshev band filters: damping, coefficients, responses and the filtering itself."""
import math

import numpy as np
import pytest
import torch

from ssr_engine.spectral import (band_coefficients, chebyshev_filter, filter_response,
                                 jackson_damping)
from tolerances import tol

DELTA = 0.01


def test_jackson_kernel_is_positive():
    # The damped delta series Σ_k (2 − δ_k0) g_k cos kθ is the Jackson kernel: never negative.
    for K in (1, 2, 7, 64):
        g = jackson_damping(K).numpy()
        assert g[0] == pytest.approx(1.0, abs=1e-15)
        theta = np.linspace(0.0, math.pi, 4001)
        w = np.full(K, 2.0)
        w[0] = 1.0
        kernel = np.cos(np.outer(theta, np.arange(K))) @ (w * g)
        assert kernel.min() >= -1e-12 * K


def test_coefficients_tile_the_interval():
    rng = np.random.default_rng(0)
    for K in (1, 3, 32, 257):
        for damping in ("jackson", None):
            inner = np.sort(rng.uniform(-0.99, 0.99, 5))
            c = band_coefficients(np.r_[-1.0, inner, 1.0], K, damping=damping)
            total = c.sum(0).numpy()
            assert c.shape == (6, K)
            assert abs(total[0] - 1.0) < 1e-14 and np.all(np.abs(total[1:]) < 1e-14)


def test_coefficients_are_the_chebyshev_projection_of_the_indicator():
    # c_k = (2 − δ_k0)/π ∫_0^π 1[θ_b ≤ θ ≤ θ_a] cos kθ dθ, by midpoint quadrature.
    ta, tb, K = -0.3, 0.55, 24
    c = band_coefficients([ta, tb], K, damping=None)[0].numpy()
    n = 400_000
    theta = (np.arange(n) + 0.5) * math.pi / n
    inside = (theta >= math.acos(tb)) & (theta <= math.acos(ta))
    k = np.arange(K)
    quad = (np.cos(np.outer(k, theta[inside])).sum(1) * math.pi / n) * np.where(k == 0, 1, 2) / math.pi
    np.testing.assert_allclose(c, quad, atol=5e-5)


def test_damped_step_stays_within_unit_interval():
    # A positive kernel smooths the step without Gibbs over- or undershoot; far from the edge
    # (several π/K in θ) the step is reached.
    theta = np.linspace(0.0, math.pi, 2001)
    for K in (8, 64):
        low = filter_response(band_coefficients([-1.0, 0.2, 1.0], K)[0], np.cos(theta)).numpy()
        assert low.min() >= -1e-12 and low.max() <= 1.0 + 1e-12
        far = np.abs(theta - math.acos(0.2)) > 6 * math.pi / K
        inside = theta > math.acos(0.2)
        assert np.all(low[far & inside] > 0.98) and np.all(low[far & ~inside] < 0.02)


def test_filter_response_is_chebyshev_series():
    t = np.linspace(-1.0, 1.0, 101)
    for k in (0, 1, 5, 30):
        e = torch.zeros(31, dtype=torch.float64)
        e[k] = 1.0
        np.testing.assert_allclose(filter_response(e, t).numpy(), np.cos(k * np.arccos(t)),
                                   atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_filtering_matches_exact_response(small, dtype):
    g = small.graph
    op = g.scaled_laplacian(DELTA, dtype=dtype)
    X = small.signals["image"].to(dtype)
    coeffs = band_coefficients([-1.0, -0.4, 0.1, 0.5, 1.0], 40)
    Y = chebyshev_filter(op, X, coeffs)
    t = np.clip((small.w - 1.0) / (1.0 + DELTA), -1.0, 1.0)
    h = filter_response(coeffs, t).numpy()                         # [M, N]
    Uc = small.U.T @ small.signals["image"].numpy()
    want = np.stack([small.U @ (hb[:, None] * Uc) for hb in h])
    err = np.linalg.norm(Y.double().numpy() - want) / np.linalg.norm(want)
    assert err <= tol(dtype)
    # One filter ([K] coefficients) gives one [N, d] output.
    one = chebyshev_filter(op, X, coeffs[1])
    assert one.shape == X.shape
    assert float((one - Y[1]).norm() / Y[1].norm()) <= tol(dtype)


def test_errors(small):
    op = small.graph.scaled_laplacian(DELTA, dtype=torch.float64)
    X = small.signals["image"]
    with pytest.raises(ValueError, match="ascending"):
        band_coefficients([-1.0, 0.5, 0.2, 1.0], 8)
    with pytest.raises(ValueError, match="ascending"):
        band_coefficients([-1.5, 1.0], 8)
    with pytest.raises(ValueError, match="order"):
        band_coefficients([-1.0, 1.0], 0)
    with pytest.raises(ValueError, match="damping"):
        band_coefficients([-1.0, 1.0], 4, damping="lanczos")
    with pytest.raises(ValueError, match="t must lie"):
        filter_response(torch.ones(3), [1.5])
    bad = X.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="row 3, column 1"):
        chebyshev_filter(op, bad, band_coefficients([-1.0, 1.0], 4))
    with pytest.raises(ValueError, match=r"X must be \[N="):
        chebyshev_filter(op, X[:-1], band_coefficients([-1.0, 1.0], 4))
    with pytest.raises(ValueError, match="float32"):
        chebyshev_filter(op, X.float(), band_coefficients([-1.0, 1.0], 4))
    with pytest.raises(ValueError, match="coeffs"):
        chebyshev_filter(op, X, torch.ones(2, 2, 2))
    with pytest.raises(TypeError, match="Operator"):
        chebyshev_filter(op.to_dense(), X, band_coefficients([-1.0, 1.0], 4))
