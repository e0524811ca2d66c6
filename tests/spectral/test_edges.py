"""Band edges: filter energies from moments, balanced placement, quantiles, exact spectra."""
import math

import numpy as np
import pytest
import torch

from ssr_engine.spectral import (band_coefficients, band_edges, band_energies, chebyshev_filter,
                                 filter_response, kpm_atoms, kpm_moments, spectrum_edges)
from tolerances import tol

DELTA = 0.01


def _moments(case, name, K):
    op = case.graph.scaled_laplacian(DELTA, dtype=torch.float64)
    return kpm_moments(op, torch.from_numpy(case.centred(name)), K)


def _exact_band_energies(case, name, coeffs):
    t = np.clip((case.w - 1.0) / (1.0 + DELTA), -1.0, 1.0)
    return filter_response(coeffs, t).numpy() ** 2 @ case.energies(name)


def test_energies_from_moments_equal_filtered_output(small):
    op = small.graph.scaled_laplacian(DELTA, dtype=torch.float64)
    X = small.signals["image"]
    coeffs = band_coefficients([-1.0, -0.3, 0.2, 1.0], 24)
    Y = chebyshev_filter(op, X, coeffs)
    E = band_energies(kpm_moments(op, X, 24), coeffs)
    np.testing.assert_allclose(E.numpy(), Y.pow(2).sum((1, 2)).numpy(),
                               rtol=tol(torch.float64))
    assert float(band_energies(kpm_moments(op, X, 24), coeffs[0])) == pytest.approx(float(E[0]))


@pytest.mark.parametrize("name", ["text", "meta"])
def test_filter_balanced_edges(ml, name):
    K, M = 64, 4
    mu = _moments(ml, name, K)
    edges = band_edges(mu, M, order=K).numpy()
    assert edges[0] == -1.0 and edges[-1] == 1.0 and np.all(np.diff(edges) > 0)
    theta = np.arccos(edges)
    assert np.all(-np.diff(theta) >= math.pi / K - 1e-12)          # minimum resolvable width
    for atom in kpm_atoms(mu.numpy()):                               # no edge on an atom
        assert np.all(np.abs(theta[1:-1] - math.acos(atom.t)) >= math.pi / K - 1e-12)
    coeffs = band_coefficients(edges, K)
    E = band_energies(mu, coeffs).numpy()
    np.testing.assert_allclose(E, _exact_band_energies(ml, name, coeffs), rtol=1e-9)
    assert (E / E.sum()).min() >= 1.0 / (2 * M)


@pytest.mark.parametrize("name", ["text", "meta"])
def test_quantile_edges_match_exact_quantiles(ml, name):
    # Figure 1: moment-based quantile edges vs exact energy quantiles, within 0.02 in λ.
    M = 4
    e = ml.energies(name)
    F = np.cumsum(e) / e.sum()
    exact = np.array([ml.w[np.searchsorted(F, b / M)] for b in range(1, M)])
    edges = band_edges(_moments(ml, name, 64), M, balance="quantile").numpy()
    lam = 1.0 + (1.0 + DELTA) * edges[1:-1]
    assert np.abs(lam - exact).max() <= 0.02


def test_one_band_and_errors(small):
    mu = _moments(small, "image", 16)
    assert band_edges(mu, 1).tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match="n_bands"):
        band_edges(mu, 0)
    with pytest.raises(ValueError, match="balance"):
        band_edges(mu, 2, balance="median")
    with pytest.raises(ValueError, match="moments"):
        band_edges(mu, 2, order=40)
    with pytest.raises(ValueError, match="do not fit"):
        band_edges(mu, 4, order=16, min_width=1.0)
    with pytest.raises(ValueError, match="no energy"):
        band_edges(np.zeros(32), 2)
    with pytest.raises(ValueError, match="NaN"):
        band_edges(np.r_[1.0, np.nan], 2)


def test_spectrum_edges_keep_clusters_whole():
    # Energy 1 at λ = 0.2, 0.4, 0.6, a 5-fold cluster at λ = 1 holding 5 and 2 at λ = 1.5:
    # the cluster is one band, the rest lie on either side of it.
    lam = np.r_[0.2, 0.4, 0.6, np.ones(5), 1.5]
    e = np.r_[1.0, 1.0, 1.0, np.ones(5), 2.0]
    edges = spectrum_edges(lam, e, 3).numpy()
    band = np.searchsorted(edges[1:-1], lam, side="right")
    assert len(set(band[3:8])) == 1
    E = np.bincount(band, weights=e, minlength=3)
    assert E.tolist() == [3.0, 5.0, 2.0]
    assert edges[0] == 0.0 and edges[-1] == 2.0


def test_spectrum_edges_balance_exact(ml):
    e = ml.energies("meta")
    edges = spectrum_edges(ml.w, e, 4).numpy()
    band = np.searchsorted(edges[1:-1], ml.w, side="right")
    shares = np.bincount(band, weights=e, minlength=4) / e.sum()
    assert np.abs(shares - 0.25).max() < 0.01
    with pytest.raises(ValueError, match="distinct"):
        spectrum_edges([0.5, 0.5], [1.0, 1.0], 2)
    with pytest.raises(ValueError, match="non-negative"):
        spectrum_edges([0.5, 1.0], [1.0, -1.0], 2)
    with pytest.raises(ValueError, match="outside"):
        spectrum_edges([0.5, 2.5], [1.0, 1.0], 2)


def test_folded_atom_balances_the_energy_off_the_atom():
    """Folding an atom removes exactly its part of every band's energy: the edges equal those
    of the same spectrum without the atom (both keep edges clear of it)."""
    from ssr_engine.spectral.kpm import Atom
    t = np.linspace(-0.95, 0.95, 301)
    t = t[np.abs(t) > 0.02]
    e = 1.0 + 0.6 * t + 0.3 * np.cos(3 * t)            # a smooth density, not symmetric
    K = 64
    T = np.cos(np.outer(np.arange(2 * K), np.arccos(t)))
    mu_off = T @ e
    mass = float(e.sum())                              # the atom holds half the energy
    mu_on = mu_off + mass * np.cos(np.arange(2 * K) * math.acos(0.0))
    atom = Atom(t=0.0, mass=mass, fraction=0.5)
    want = band_edges(mu_off, 4, order=K, atoms=[atom])
    got = band_edges(mu_on, 4, order=K, atoms=[atom], fold=[atom])
    torch.testing.assert_close(got, want, atol=1e-9, rtol=0)
    # counted in the balance (no fold), the atom claims a band of its own: two interior
    # edges sit next to it, one on each side
    slot = band_edges(mu_on, 4, order=K, atoms=[atom]).numpy()
    assert ((slot[1:-1] > -0.2) & (slot[1:-1] < 0.2)).sum() == 2
    with pytest.raises(ValueError, match="fold needs balance='filter'"):
        band_edges(mu_on, 4, order=K, balance="quantile", fold=[atom])
    from ssr_engine.spectral.bands import chebyshev_plan
    with pytest.raises(ValueError, match="needs order >= 8"):
        chebyshev_plan(mu_on, 2, (6,), atom="fold")
    # through the plan (atoms found in the moments, not given): with the fold the atom no
    # longer gets a band of its own
    near = {a: int(((e[1:-1] > -0.2) & (e[1:-1] < 0.2)).sum()) for a in ("slot", "fold")
            for e in [np.asarray(chebyshev_plan(mu_on, 4, (K,), atom=a).t_edges)]}
    assert near == {"slot": 2, "fold": 1}, near
