import pytest
import torch

from ssr_engine.linalg.subspace import column_norms, orthonormalize, project_out, rayleigh_ritz, \
    start_block
from tolerances import tol

DTYPES = [torch.float64, torch.float32]


def orth_error(Q):
    return float((Q.mT @ Q - torch.eye(Q.shape[1], dtype=Q.dtype)).abs().max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_orthonormal_and_orthogonal_to_against(dtype):
    g = torch.Generator().manual_seed(0)
    C = torch.linalg.qr(torch.randn(500, 6, generator=g, dtype=torch.float64))[0].to(dtype)
    W = torch.randn(500, 8, generator=g, dtype=torch.float64).to(dtype)
    Q = orthonormalize(W.clone(), [C])
    assert Q.shape == (500, 8)
    assert orth_error(Q) <= tol(dtype, "close")
    assert float((C.mT @ Q).abs().max()) <= tol(dtype, "close")
    # Q spans the projected W.
    Wp = project_out(project_out(W.clone(), [C]), [C])
    assert float((Wp - Q @ (Q.mT @ Wp)).norm() / Wp.norm()) <= tol(dtype, "close")


@pytest.mark.parametrize("dtype", DTYPES)
def test_rank_loss_is_dropped_or_filled(dtype):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(300, 3, generator=g, dtype=torch.float64)
    W = torch.cat([base, base @ torch.randn(3, 4, generator=g, dtype=torch.float64)],
                  dim=1).to(dtype)                       # rank 3 in 7 columns
    Q = orthonormalize(W.clone())
    assert Q.shape[1] == 3 and orth_error(Q) <= tol(dtype, "close")
    Wd = W.double()
    assert float((Wd - Q.double() @ (Q.double().mT @ Wd)).norm() / Wd.norm()) <= \
        tol(dtype, "close")
    F = orthonormalize(W.clone(), fill=True, generator=g)
    assert F.shape[1] == 7 and orth_error(F) <= tol(dtype, "close")


def test_ill_conditioned_block_takes_the_householder_path():
    g = torch.Generator().manual_seed(2)
    U = torch.linalg.qr(torch.randn(400, 6, generator=g, dtype=torch.float64))[0]
    W = U * torch.logspace(0, -11, 6, dtype=torch.float64)      # cond 1e11
    Q = orthonormalize(W.clone())
    assert Q.shape[1] == 6 and orth_error(Q) <= tol(torch.float64, "close")
    assert float((U - Q @ (Q.mT @ U)).norm()) <= 1e-3


def test_zero_block_and_fill_respects_room():
    W = torch.zeros(5, 3, dtype=torch.float64)
    assert orthonormalize(W.clone()).shape[1] == 0
    C = torch.eye(5, dtype=torch.float64)[:, :4]
    F = orthonormalize(torch.randn(5, 3, dtype=torch.float64), [C], fill=True)
    assert F.shape[1] == 1 and abs(abs(float(F[4, 0])) - 1) <= tol(torch.float64, "close")


def test_start_block_uses_x0_and_rayleigh_ritz_sorts():
    x0 = torch.zeros(10, 1, dtype=torch.float64)
    x0[3] = 2.0
    X = start_block(10, 3, x0, torch.float64, torch.device("cpu"), torch.Generator())
    assert X.shape == (10, 3) and abs(float(X[3, 0]).__abs__() - 1) <= 1e-12
    H = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float32)
    w, S = rayleigh_ritz(H)
    assert w.dtype == torch.float64 and torch.allclose(w, torch.tensor([1.0, 3.0],
                                                                     dtype=torch.float64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_column_norms_of_long_columns(dtype):
    # 4M rows: a float32 row-after-row sum (CPU ``X.norm(dim=0)``) is off by ~1e-3 here.
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1 << 22, 2, generator=g, dtype=torch.float64)
    X[:, 1] = 1 + 0.1 * X[:, 1].abs()                  # one column with same-sign entries
    X = X.to(dtype)
    ref = X.double().square().sum(0).sqrt()
    got = column_norms(X)
    assert got.dtype == dtype and got.shape == (2,)
    assert float(((got.double() - ref) / ref).abs().max()) <= tol(dtype, "close")
