"""Band profile: spectra vs an exact eigendecomposition, energies and maps vs direct sums."""
import numpy as np
import pytest
import torch

from ssr_engine.data import synthetic_dataset
from ssr_engine.explain import (band_interaction, band_usage, modality_spectra, reliabilities,
                                slot_energy)
from ssr_engine.nn import SSRModel
from tolerances import tol


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(80, 50, 700, modalities={"text": 10}, seed=1)


@pytest.fixture(scope="module")
def model(ds):
    torch.manual_seed(0)
    m = SSRModel(ds.train_graph(), ds.features, n_bands=3, dim=8, rank=4, approx="exact",
                 fusion="cp")
    with torch.no_grad():  # move the parameters off their initial values
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m.eval()


def _close(a, b, dtype=torch.float64):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64),
                          torch.as_tensor(b, dtype=torch.float64), rtol=tol(dtype),
                          atol=tol(dtype))


def test_spectra_account_for_all_energy(model, ds):
    spectra = modality_spectra(model, ds)
    assert [s.name for s in spectra] == ["id", "text"]
    for s in spectra:
        sp = s.spectrum
        dlam = float(sp.lam[1] - sp.lam[0])
        mass = float(sp.density.sum()) * dlam + sum(a.fraction for a in sp.atoms) + sp.uncovered
        assert mass == pytest.approx(1.0, abs=tol(torch.float32))
        assert bool((sp.density >= 0).all())
        assert _close(s.band_shares.sum(), 1.0)


def test_band_shares_match_the_exact_spectrum(model, ds):
    """Content: energy of the centred signal per ideal band; ID: learned coefficients per band."""
    g = ds.train_graph()
    lam, U = torch.linalg.eigh(g.laplacian(dtype=torch.float64).to_dense())
    v = g.trivial_vector(torch.float64)
    edges = torch.tensor(model.band_report["edges"], dtype=torch.float64)
    band = torch.bucketize(lam.clamp(0, 2), edges[1:-1], right=True)

    def shares(X):
        X = X - torch.outer(v, v @ X)
        e = (U.T @ X).pow(2).sum(1)
        E = torch.zeros(model.n_bands, dtype=torch.float64).index_add_(0, band, e)
        return E / E.sum()

    spectra = {s.name: s for s in modality_spectra(model, ds)}
    x_text = model.content["text"].bands.double().sum(0)
    assert _close(spectra["text"].band_shares, shares(x_text), torch.float32)
    ids = model.id_bands
    E_id = ids.basis.double() @ ids.coef.detach().double()                 # [N, d]
    assert _close(spectra["id"].band_shares, shares(E_id), torch.float32)


def test_reliabilities_and_slot_energy(model):
    alpha = reliabilities(model)
    assert _close(alpha, torch.nn.functional.softplus(model.reliability.rho.detach()))
    n = model.n_users + model.n_items
    with torch.no_grad():
        H = model.slots(torch.arange(n)).double()                          # [n, m, M, d]
    ref = alpha ** 2 * H.pow(2).sum(-1).mean(0)
    assert _close(slot_energy(model), ref, torch.float32)


@pytest.mark.parametrize("residual", ["free", "smooth"])
def test_id_energy_with_a_prior_and_a_partial_basis(ds, residual):
    """The ID spectrum and slot energy are those of the vectors the model computes: prior
    ``s(λ)`` on the coefficients, residual (free or smoothed) as uncovered energy."""
    g = ds.train_graph()
    torch.manual_seed(0)
    m = SSRModel(g, None, n_bands=3, dim=8, id_basis=12, id_prior="lightgcn",
                 id_residual=residual).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    n = m.n_users + m.n_items
    with torch.no_grad():
        H = m.slots(torch.arange(n)).double()                              # [n, 1, M, d]
    ref = reliabilities(m) ** 2 * H.pow(2).sum(-1).mean(0)
    assert _close(slot_energy(m), ref, torch.float32)

    v = g.trivial_vector(torch.float64)
    E = H[:, 0].sum(1)
    E = E - torch.outer(v, v @ E)
    Uk = m.id_bands.basis.double()
    covered = float((Uk.T @ E).pow(2).sum())
    spec = modality_spectra(m, ds)[0]
    total = float(E.pow(2).sum())
    assert spec.spectrum.uncovered == pytest.approx((total - covered) / total,
                                                    abs=tol(torch.float32))
    edges = torch.tensor(m.band_report["edges"], dtype=torch.float64)
    e = (Uk.T @ E).pow(2).sum(1)
    kb = torch.bucketize(m.id_bands.eigenvalues.double(), edges[1:-1], right=True)
    want = torch.zeros(3, dtype=torch.float64).index_add_(0, kb, e)
    want[m.id_bands.residual_band] += total - covered
    assert _close(spec.band_shares, want / want.sum(), torch.float32)


def test_band_interaction_is_the_dense_block_norm(model, ds):
    inter = band_interaction(model)
    f = model.fusion
    a = reliabilities(model).flatten()
    O, S = f.V.shape[:2]
    assert inter["v_sum"].shape == inter["norm"].shape == (O, S)
    assert _close(inter["v_sum"], f.V.detach().double().sum(-1))
    for o in range(O):
        for s in range(S):
            W = a[s] * f.Q[o].detach().double() @ torch.diag(f.V[o, s].detach().double()) \
                @ f.K[s].detach().double().T
            assert float(inter["norm"][o, s]) == pytest.approx(float(W.norm()),
                                                              rel=tol(torch.float64))
    torch.manual_seed(0)
    plain = SSRModel(ds.train_graph(), ds.features, n_bands=3, dim=8, rank=4, fusion="sum")
    assert band_interaction(plain) is None
    skip = SSRModel(ds.train_graph(), ds.features, n_bands=3, dim=8, rank=4, fusion="cp+sum")
    with torch.no_grad():
        skip.fusion.gamma.fill_(-0.5)
    half = band_interaction(skip)
    with torch.no_grad():
        skip.fusion.gamma.fill_(1.0)
    assert _close(half["norm"], 0.5 * band_interaction(skip)["norm"])


def test_band_usage_groups(model, ds):
    u = band_usage(model, ds, k=5, max_users=15, n_groups=2)
    counts = ds.user_counts()
    assert u.groups[0].startswith("cold")
    assert u.shares.shape == (len(u.groups), 2, 3)
    assert _close(u.shares.sum(dim=(1, 2)), torch.ones(len(u.groups)))
    assert all(n <= 15 for n in u.n_users)
    assert u.counts[0][1] == 5 and u.counts[1][0] > 5
    assert counts.max() == u.counts[-1][1]
    assert u.max_relative_error <= tol(torch.float32, "attribution")


def test_mismatched_dataset(model):
    other = synthetic_dataset(81, 50, 700, modalities={"text": 10}, seed=1)
    with pytest.raises(ValueError, match="81 x 50"):
        modality_spectra(model, other)
    with pytest.raises(TypeError, match="Dataset"):
        band_usage(model, np.zeros(3))
