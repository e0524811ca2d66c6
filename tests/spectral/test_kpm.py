"""KPM moments, density, cumulative energy and atoms against exact spectra."""
import math

import numpy as np
import pytest
import torch

from ssr_engine import as_operator
from ssr_engine.spectral import (kpm_atoms, kpm_cumulative, kpm_density, kpm_moments)
from tolerances import tol

DELTA = 0.01


def _exact_moments(case, name, n):
    t = np.clip((case.w - 1.0) / (1.0 + DELTA), -1.0, 1.0)
    e = case.energies(name)
    return np.cos(np.outer(np.arange(n), np.arccos(t))) @ e, t, e


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_moments_match_exact_spectrum(ml, dtype):
    op = ml.graph.scaled_laplacian(DELTA, dtype=dtype)
    X = torch.from_numpy(ml.centred("text")).to(dtype)
    mu = kpm_moments(op, X, 64).numpy()
    want, _, _ = _exact_moments(ml, "text", 128)
    assert mu.shape == (128,)
    assert np.abs(mu - want).max() / want[0] <= tol(dtype)


def test_doubling_equals_direct_moments(small):
    # μ_k = ⟨X, T_k X⟩ by the plain recurrence (2K products) vs the doubling identities (K).
    op = small.graph.scaled_laplacian(DELTA, dtype=torch.float64)
    X = small.signals["image"]
    K = 12
    direct, prev, cur = [float((X * X).sum())], X, op @ X
    for _ in range(1, 2 * K):
        direct.append(float((X * cur).sum()))
        prev, cur = cur, 2.0 * (op @ cur) - prev
    mu = kpm_moments(op, X, K).numpy()
    np.testing.assert_allclose(mu, direct, rtol=0, atol=tol(torch.float64) * direct[0])


def test_any_symmetric_operator():
    A = torch.tensor([[0.0, 0.5, 0.0], [0.5, 0.0, 0.3], [0.0, 0.3, 0.0]], dtype=torch.float64)
    X = torch.tensor([[1.0], [2.0], [-1.0]], dtype=torch.float64)
    w, U = torch.linalg.eigh(A)
    e = (U.T @ X).pow(2).sum(1)
    mu = kpm_moments(as_operator(A, symmetric=True), X, 4)
    want = torch.stack([(e * torch.cos(k * torch.arccos(w))).sum() for k in range(8)])
    assert float((mu - want).abs().max()) <= tol(torch.float64) * float(mu[0])


def test_cumulative_brackets_exact(ml):
    # The damped cumulative at θ lies between the exact cumulative a few kernel widths
    # (π/n) either side; it runs from 0 to μ_0 and never decreases.
    n = 256
    mu, t, e = _exact_moments(ml, "meta", n)
    theta = np.linspace(math.pi, 0.0, 1001)
    F = kpm_cumulative(mu, np.cos(theta)).numpy()
    assert F[0] == 0.0 and F[-1] == pytest.approx(mu[0], rel=1e-12)
    assert np.all(np.diff(F) >= -1e-9 * mu[0])
    width = 6 * math.pi / n
    exact = lambda th: np.array([e[t <= math.cos(x)].sum() for x in np.clip(th, 0, math.pi)])
    slack = 2e-3 * mu[0]
    assert np.all(F >= exact(theta + width) - slack)
    assert np.all(F <= exact(theta - width) + slack)


def test_density_integrates_to_total(ml):
    mu, _, _ = _exact_moments(ml, "text", 128)
    m = 20000
    theta = (np.arange(m) + 0.5) * math.pi / m
    # ∫ ρ(t) dt = ∫ ρ(cos θ) sin θ dθ
    integral = (kpm_density(mu, np.cos(theta)).numpy() * np.sin(theta)).sum() * math.pi / m
    assert integral == pytest.approx(mu[0], rel=1e-6)


def test_atoms_of_a_planted_spectrum():
    # 30% of the energy in a point mass at t = 0.3; the rest spread over [−0.9, 0.9].
    t = np.r_[np.full(60, 0.3), np.linspace(-0.9, 0.9, 1400)]
    e = np.r_[np.full(60, 0.3 / 60), np.full(1400, 0.7 / 1400)]
    mu = np.cos(np.outer(np.arange(256), np.arccos(t))) @ e
    atoms = kpm_atoms(mu, min_fraction=0.02)
    assert len(atoms) == 1
    assert atoms[0].t == pytest.approx(0.3, abs=2e-3)
    assert atoms[0].fraction == pytest.approx(0.3, abs=0.01)
    assert kpm_atoms(mu, at=[0.3])[0].fraction == pytest.approx(0.3, abs=0.01)


def test_bipartite_null_space_atom(ml):
    # MovieLens text: 739 eigenvectors at λ = 1 hold 36% of the non-trivial energy.
    mu, t, e = _exact_moments(ml, "text", 128)
    exact = e[np.abs(ml.w - 1.0) < 1e-8].sum() / e.sum()
    found = [a for a in kpm_atoms(mu) if abs(a.t) < 1e-2]
    assert len(found) == 1
    assert found[0].fraction == pytest.approx(exact, abs=0.05)


def test_errors(small):
    op = small.graph.scaled_laplacian(DELTA, dtype=torch.float64)
    X = small.signals["image"]
    with pytest.raises(ValueError, match="K"):
        kpm_moments(op, X, 0)
    with pytest.raises(ValueError, match="square"):
        kpm_moments(small.graph.bipartite(torch.float64), X, 4)
    with pytest.raises(ValueError, match="float32"):
        kpm_moments(op, X.float(), 4)
    bad = X.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        kpm_moments(op, bad, 4)
    with pytest.raises(TypeError, match="Operator"):
        kpm_moments(op.to_dense(), X, 4)
    with pytest.raises(ValueError, match="moments"):
        kpm_cumulative([1.0, float("nan")], [0.0])
    with pytest.raises(ValueError, match="strictly inside"):
        kpm_density([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="16 moments"):
        kpm_atoms(np.ones(8))
