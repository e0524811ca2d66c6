"""Chebyshev band filters: fused Triton kernel and lean torch path against the reference."""
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ssr_engine.graph.operators import Operator
from ssr_engine.ops import (chebyshev_bands, chebyshev_bands_reference, chebyshev_moments,
                            tiles_unity)
from tolerances import tol

triton = pytest.importorskip("triton")


def band_coeffs(M: int, K: int, seed: int = 0) -> torch.Tensor:
    """Damped-free coefficients of M bands tiling [-1, 1] (DESIGN.md §2), float64 [M, K]."""
    rng = np.random.default_rng(seed)
    t = np.concatenate([[-1.0], np.sort(rng.uniform(-0.9, 0.9, M - 1)), [1.0]])
    th = np.arccos(t)
    k = np.arange(1, K)
    c = np.zeros((M, K))
    for b in range(M):
        a, z = th[b], th[b + 1]
        c[b, 0] = (a - z) / np.pi
        c[b, 1:] = 2 * (np.sin(k * a) - np.sin(k * z)) / (k * np.pi)
    return torch.from_numpy(c)


def graph_operator(N: int, seed: int, hub: bool, index64: bool, shift: float = 0.0,
                   dtype=torch.float64, device="cpu") -> Operator:
    """Symmetric normalised random graph with isolated nodes (empty rows) and optionally a hub;
    ``scale * Â + shift * I`` with spectrum inside [-1, 1]."""
    rng = np.random.default_rng(seed)
    nnz = 3 * N
    r, c = rng.integers(0, N, nnz), rng.integers(0, N, nnz)
    if hub and N > 2:
        r = np.concatenate([r, np.zeros(N - 1, dtype=int)])
        c = np.concatenate([c, np.arange(1, N)])
    keep = (r % 7 != 3) & (c % 7 != 3) & (r != c)          # nodes 3, 10, ... isolated
    A = sp.coo_matrix((np.ones(keep.sum()), (r[keep], c[keep])), shape=(N, N)).tocsr()
    A = ((A + A.T) > 0).astype(np.float64)
    deg = np.asarray(A.sum(1)).ravel()
    inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1)), 0.0)
    A = sp.csr_matrix(sp.diags(inv) @ A @ sp.diags(inv))
    A.sort_indices()
    idx = torch.int64 if index64 else torch.int32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = torch.sparse_csr_tensor(torch.from_numpy(A.indptr).to(idx),
                                    torch.from_numpy(A.indices).to(idx),
                                    torch.from_numpy(A.data).to(dtype), size=(N, N))
    scale = -(1.0 - abs(shift)) / 1.02
    return Operator(m.to(device), scale=scale, shift=shift, symmetric=True)


CASES = [  # N, d, M, K, shift, index64, hub, tiled coefficients
    (1, 3, 2, 4, 0.0, False, False, False),
    (63, 5, 3, 6, 0.0, False, True, True),
    (63, 16, 4, 7, 0.1, True, False, False),
    (300, 8, 3, 5, 0.0, False, True, True),
]


@pytest.mark.parametrize("N,d,M,K,shift,index64,hub,tiled", CASES)
def test_kernel_matches_reference(N, d, M, K, shift, index64, hub, tiled, device, rel_err,
                                  monkeypatch):
    from ssr_engine.kernels import chebyshev as kc
    monkeypatch.setattr(kc, "HEAVY", 12)          # the hub row takes the segmented path
    monkeypatch.setattr(kc, "SEG", 5)
    op = graph_operator(N, seed=N + K, hub=hub, index64=index64, shift=shift)
    X = torch.randn(N, d, dtype=torch.float64, generator=torch.Generator().manual_seed(K))
    coeffs = band_coeffs(M, K) if tiled else torch.randn(M, K, dtype=torch.float64)
    ref = chebyshev_bands_reference(op, X, coeffs)
    op32 = op.to(torch.float32, device)
    out = torch.full((M, N, d), float("nan"), device=device)
    kc.chebyshev_bands_fused(op32.matrix, op32.scale, op32.shift, X.float().to(device),
                             coeffs.float(), unity=tiles_unity(coeffs), out=out)
    assert not out.isnan().any()
    assert rel_err(out, ref) < tol(torch.float32)
    api = chebyshev_bands(op32, X.float().to(device), coeffs.float(), backend="triton")
    assert api.dtype == torch.float32 and rel_err(api, ref) < tol(torch.float32)


@pytest.mark.parametrize("unity", [True, False])
def test_kernel_bfloat16(unity, device, rel_err):
    op = graph_operator(63, seed=1, hub=True, index64=False)
    X = torch.randn(63, 8, dtype=torch.float64).bfloat16()
    coeffs = band_coeffs(4, 6) if unity else torch.randn(4, 6, dtype=torch.float64)
    opb = op.to(torch.bfloat16)
    ref = chebyshev_bands_reference(opb.to(torch.float64), X.double(), coeffs)
    out = chebyshev_bands(opb.to(device=device), X.to(device), coeffs.float(), backend="triton")
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) < tol(torch.bfloat16)


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("K", [1, 2, 7])
@pytest.mark.parametrize("tiled", [False, True])
def test_torch_path_matches_reference(dense, K, tiled, rel_err):
    op = graph_operator(40, seed=K, hub=True, index64=False, shift=0.05)
    if dense:
        op = Operator(op.matrix.to_dense(), op.scale, op.shift, symmetric=True)
    X = torch.randn(40, 6, dtype=torch.float64)
    coeffs = band_coeffs(3, K) if tiled else torch.randn(3, K, dtype=torch.float64)
    ref = chebyshev_bands_reference(op, X, coeffs)
    out = chebyshev_bands(op, X, coeffs, backend="torch")
    assert out.dtype == torch.float64
    assert rel_err(out, ref) < tol(torch.float64)
    out32 = chebyshev_bands(op.to(torch.float32), X.float(), coeffs.float(), backend="torch")
    assert rel_err(out32, ref) < tol(torch.float32)


def test_torch_path_bfloat16(rel_err):
    op = graph_operator(40, seed=0, hub=False, index64=False)
    X = torch.randn(40, 4).bfloat16()
    coeffs = band_coeffs(3, 5)
    ref = chebyshev_bands_reference(op, X.double(), coeffs)
    out = chebyshev_bands(op.to(torch.bfloat16), X, coeffs.float(), backend="torch")
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < tol(torch.bfloat16)


def test_bands_sum_to_signal_when_tiled():
    op = graph_operator(50, seed=2, hub=False, index64=False)
    X = torch.randn(50, 3, dtype=torch.float64)
    coeffs = band_coeffs(4, 9)
    assert tiles_unity(coeffs) and not tiles_unity(torch.randn(4, 9))
    bands = chebyshev_bands(op, X, coeffs, backend="torch")
    assert torch.allclose(bands.sum(0), X, atol=tol(torch.float64))


def test_schedule_covers_every_row_and_nonzero(monkeypatch):
    from ssr_engine.kernels import chebyshev as kc
    monkeypatch.setattr(kc, "HEAVY", 20)
    monkeypatch.setattr(kc, "SEG", 7)
    op = graph_operator(200, seed=3, hub=True, index64=False)
    sched = kc.csr_schedule(op.matrix)
    crow = op.matrix.crow_indices().long()
    deg = crow[1:] - crow[:-1]
    rows = torch.cat([sched.heavy_rows] + [o for o, _, _ in sched.bins]).long()
    assert torch.equal(rows.sort().values, torch.arange(200))
    for order, r, bn in sched.bins:
        assert r * bn == 64 and (deg[order.long()] <= kc.HEAVY).all()
    assert sched.heavy_rows.numel() >= 1 and (deg[sched.heavy_rows.long()] > kc.HEAVY).all()
    for h, row in enumerate(sched.heavy_rows.long()):
        a, b = sched.heavy_ptr[h].item(), sched.heavy_ptr[h + 1].item()
        starts, lens = sched.seg_start[a:b], sched.seg_len[a:b].long()
        assert starts[0] == crow[row] and (starts[1:] == starts[:-1] + lens[:-1]).all()
        assert lens.sum() == deg[row] and (lens <= kc.SEG).all()
    assert kc.csr_schedule(op.matrix) is sched                # cached per matrix


@pytest.mark.parametrize("unity", [True, False])
def test_band_schedule_adds_each_term_once(unity):
    from ssr_engine.kernels.chebyshev import band_schedule
    for K in range(2, 14):
        coeffs = np.arange(1.0, 3 * K + 1).reshape(3, K)
        passes, table = band_schedule(coeffs, unity)
        m_acc = 2 if unity else 3
        assert table.shape == (K - 1, m_acc, 3)
        seen = np.zeros((m_acc, K))
        modes = [mode for mode, _ in passes if mode]
        assert modes[0] == 1 and all(m == 2 for m in modes[1:])
        for p, (mode, load_cur) in enumerate(passes, start=1):
            for slot, term in enumerate((p - 2, p - 1, p)):
                if table[p - 1, 0, slot] != 0:
                    assert mode and (slot != 1 or load_cur) and term >= 0
                    seen[:, term] += table[p - 1, :, slot]
        assert np.allclose(seen, coeffs[:m_acc])


def test_gradients_stay_on_the_reference(device):
    op = graph_operator(30, seed=0, hub=False, index64=False)
    X = torch.randn(30, 2, dtype=torch.float64, requires_grad=True)
    coeffs = band_coeffs(2, 4)
    out = chebyshev_bands(op, X, coeffs)
    out.sum().backward()
    assert X.grad is not None and X.grad.shape == X.shape
    with pytest.raises(ValueError, match="no backward"):
        chebyshev_bands(op.to(torch.float32, device), X.detach().float().to(device).requires_grad_(),
                        coeffs.float().to(device), backend="triton")


def test_validation():
    op = graph_operator(10, seed=0, hub=False, index64=False)
    with pytest.raises(ValueError, match="X must be"):
        chebyshev_bands(op, torch.randn(9, 2, dtype=torch.float64), band_coeffs(2, 3))
    with pytest.raises(ValueError, match="coeffs must be"):
        chebyshev_bands(op, torch.randn(10, 2, dtype=torch.float64), torch.randn(3))
    rect = Operator(torch.randn(4, 5))
    with pytest.raises(ValueError, match="square"):
        chebyshev_bands(rect, torch.randn(5, 2), torch.randn(2, 3))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moments_match_dense_spectrum(backend, dtype, device, monkeypatch):
    from ssr_engine.kernels import chebyshev as kc
    monkeypatch.setattr(kc, "HEAVY", 12)
    monkeypatch.setattr(kc, "SEG", 5)
    op = graph_operator(63, seed=5, hub=True, index64=False, shift=0.05).to(dtype)
    X = torch.randn(63, 4, dtype=torch.float64).to(dtype)
    lam, U = torch.linalg.eigh(op.to(torch.float64).to_dense())   # of the rounded operator
    e = (U.T @ X.double()).pow(2).sum(1)                      # energy per eigenvalue
    K = 6
    want = torch.stack([(e * torch.cos(k * torch.arccos(lam.clamp(-1, 1)))).sum()
                        for k in range(2 * K)])
    got = chebyshev_moments(op.to(device=device), X.to(device), K, backend=backend)
    assert got.dtype == torch.float64 and got.shape == (2 * K,)
    work = torch.float32                                      # bf16 inputs, float32 work
    assert (got - want).abs().max() < 10 * tol(work) * want[0]
