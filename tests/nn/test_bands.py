"""Band layers: fixed content bands commute with the projection; spectral ID bands are
band-limited, sum to the full embedding and keep the residual outside the basis."""
import pytest
import torch

import ssr_engine
from ssr_engine.nn import FixedBands, SpectralIDBands, reduce_features
from tolerances import tol


@pytest.fixture(scope="module")
def graph():
    g = torch.Generator().manual_seed(0)
    u = torch.randint(0, 30, (200,), generator=g)
    i = torch.randint(0, 20, (200,), generator=g)
    return ssr_engine.InteractionGraph(u, i, 30, 20)


@pytest.fixture(scope="module")
def eig(graph):
    return torch.linalg.eigh(graph.laplacian(dtype=torch.float64).to_dense())


def test_fixed_bands_commute_with_projection(graph, eig):
    lam, U = eig
    X = torch.randn(graph.n_nodes, 5, dtype=torch.float64)
    edges = torch.tensor([0.0, 0.7, 1.3, 2.0], dtype=torch.float64)
    band = torch.bucketize(lam, edges[1:-1], right=True)
    bands = torch.stack([U[:, band == b] @ (U[:, band == b].T @ X) for b in range(3)])
    layer = FixedBands(bands, dim=4).double()
    nodes = torch.tensor([0, 7, 49])
    out = layer(nodes)
    assert out.shape == (3, 3, 4)
    # Σ_b (h_b(L) X) W = X W: the bands of the projected signal sum back to it.
    assert torch.allclose(out.sum(1), X[nodes].float().double() @ layer.proj.weight.T,
                          atol=tol(torch.float32))


def test_fixed_bands_reject_nan():
    with pytest.raises(ValueError, match="NaN"):
        FixedBands(torch.full((2, 3, 4), float("nan")), dim=2)


def test_spectral_id_bands_are_band_limited_and_sum_to_full(graph, eig):
    lam, U = eig
    edges = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0])
    layer = SpectralIDBands(U, lam.clamp(0, 2), edges, dim=6).double()
    out = layer.full()                                   # [N, M, d]
    assert out.shape == (graph.n_nodes, 4, 6)
    band = torch.bucketize(lam.clamp(0, 2), edges[1:-1].double(), right=True)
    for b in range(4):
        Ub = U[:, band == b]
        # band b lies in the span of its eigenvectors
        resid = out[:, b] - Ub @ (Ub.T @ out[:, b])
        assert resid.norm() <= tol(torch.float32) * max(1.0, out[:, b].norm())
    # Full basis: the bands sum to U C (an arbitrary [N, d] table).
    total = out.sum(1)
    assert torch.allclose(total, layer.basis @ layer.coef, atol=tol(torch.float32))
    # A batch equals the corresponding rows of the full computation.
    nodes = torch.tensor([3, 0, 31])
    assert torch.allclose(layer(nodes), out[nodes], atol=tol(torch.float32))


def test_partial_basis_residual_starts_orthogonal(graph, eig):
    lam, U = eig
    k = 5
    idx = torch.cat([torch.arange(k), torch.arange(len(lam) - k, len(lam))])
    edges = torch.tensor([0.0, 0.5, 1.5, 2.0])
    layer = SpectralIDBands(U[:, idx], lam[idx].clamp(0, 2), edges, dim=4, residual=True)
    assert layer.residual_band == 1
    Uk = layer.basis.double()
    r = layer.residual.weight.detach().double()
    assert (Uk.T @ r).norm() <= tol(torch.float32) * r.norm()
    layer(torch.arange(10)).sum().backward()
    assert layer.coef.grad is not None and layer.residual.weight.grad is not None


@pytest.mark.parametrize("sparse", [False, True])
def test_smoothed_residual_is_one_hop_of_the_free_one(graph, eig, sparse):
    """id_residual='smooth': the residual band adds s(1)(I + Â) E_res, with gradients on the
    rows of the nodes and of their neighbours only (sparse when asked)."""
    lam, U = eig
    k = 5
    idx = torch.cat([torch.arange(k), torch.arange(len(lam) - k, len(lam))])
    edges = torch.tensor([0.0, 0.5, 1.5, 2.0])
    A = graph.normalized_adjacency_scipy()
    args = (U[:, idx], lam[idx].clamp(0, 2), edges)
    free = SpectralIDBands(*args, dim=4, residual=True, prior="lightgcn",
                           generator=torch.Generator().manual_seed(3))
    smooth = SpectralIDBands(*args, dim=4, residual=True, prior="lightgcn", sparse=sparse,
                             generator=torch.Generator().manual_seed(3), adjacency=A)
    nodes = torch.tensor([0, 29, 30, 49, 7])
    R = smooth.residual.weight.detach().double()
    Ad = torch.from_numpy(A.toarray())
    want = free(nodes).detach().double()
    want[:, 1] += smooth.residual_scale * (Ad @ R)[nodes]
    assert torch.allclose(smooth(nodes).detach().double(), want, atol=tol(torch.float32))
    smooth(nodes).sum().backward()
    g = smooth.residual.weight.grad
    assert g.is_sparse == sparse
    rows = set(torch.nonzero(g.to_dense().abs().sum(1)).flatten().tolist())
    reach = set(nodes.tolist()) | set(torch.nonzero(Ad[nodes].abs().sum(0)).flatten().tolist())
    assert rows == reach
    with pytest.raises(ValueError, match="there is none"):
        SpectralIDBands(U, lam.clamp(0, 2), edges, dim=4, adjacency=A)


def test_reduce_features_pca():
    x = torch.randn(50, 10, dtype=torch.float64) @ torch.randn(10, 10, dtype=torch.float64)
    r = reduce_features(x, 3)
    assert r.shape == (50, 3)
    # PCA components are uncorrelated, with non-increasing variance.
    cov = r.T @ r
    off = cov - torch.diag(torch.diagonal(cov))
    assert off.abs().max() <= tol(torch.float64) * cov.abs().max() * 10
    assert torch.all(torch.diagonal(cov)[:-1] >= torch.diagonal(cov)[1:])
    assert reduce_features(x, 20).shape == (50, 10)
