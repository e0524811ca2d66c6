"""Tests of the row-partitioned operator with halo exchange (ssr_engine.graph.partition).

Multi-rank tests spawn real processes (gloo on localhost, free port) through
``ssr_engine.run_local``; every launch has a join deadline, so a hang fails instead of
blocking CI. The workers are module-level so the spawned processes can import them.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from tolerances import tol

from ssr_engine import (PartitionedOperator, RankFailure, balanced_row_bounds, init_distributed,
                        run_local, shutdown_distributed)
from ssr_engine.data import load_mmrec, synthetic_dataset
from ssr_engine.distributed import free_port
from ssr_engine.ops import chebyshev_bands_reference

JOIN_S = 240.0       # deadline of one multi-process launch (generous: CI boxes may be loaded)
DELTA = 0.01


def band_coefficients(n_bands: int, order: int) -> torch.Tensor:
    """[M, K] Chebyshev coefficients of M bands tiling θ ∈ [0, π] evenly (DESIGN.md §2)."""
    theta = np.linspace(np.pi, 0.0, n_bands + 1)
    k = np.arange(1, order)
    c = np.zeros((n_bands, order))
    for b in range(n_bands):
        ta, tb = theta[b], theta[b + 1]
        c[b, 0] = (ta - tb) / np.pi
        c[b, 1:] = 2.0 * (np.sin(k * ta) - np.sin(k * tb)) / (k * np.pi)
    return torch.from_numpy(c)


def _graph_and_signal(source: str):
    if source == "synthetic":
        ds = synthetic_dataset(300, 200, 3000, modalities={"text": 16}, seed=3)
    else:
        ds = load_mmrec(Path(source))
    graph = ds.train_graph()
    return graph, graph.node_signal(ds.features["text"])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- workers (run in spawned ranks) ----------------------------------------------------------
def _bands_worker(rank: int, source: str, n_bands: int, order: int) -> dict:
    graph, x = _graph_and_signal(source)
    coeffs = band_coefficients(n_bands, order)
    out = {}
    for dtype in (torch.float32, torch.float64):
        name = str(dtype).split(".")[-1]
        op = PartitionedOperator.from_graph(graph, "scaled_laplacian", DELTA, dtype=dtype)
        xd = x.to(dtype)
        x_loc = op.scatter(xd if rank == 0 else None, src=0)
        out[f"scatter_{name}"] = bool(torch.equal(x_loc, op.scatter(xd)))
        bands_loc = chebyshev_bands_reference(op, x_loc, coeffs)              # [M, n_p, d]
        out[f"unity_{name}"] = _rel(bands_loc.sum(0), x_loc)
        bands = op.gather(bands_loc, dst=0, dim=1)                            # [M, N, d]
        # KPM-style reductions on the partitioned blocks.
        mu1 = op.dot(x_loc, op @ x_loc)
        gram = op.gram(x_loc)
        # The Laplacian with its shift, partitioned from a global Operator.
        lap = PartitionedOperator.from_global(graph.laplacian(dtype))
        lx = lap.gather(lap @ lap.scatter(xd))                                 # all ranks get it
        out[f"laplacian_{name}"] = _rel(lx, graph.laplacian(dtype) @ xd)
        if rank == 0:
            ref_op = graph.scaled_laplacian(DELTA, dtype)
            ref = chebyshev_bands_reference(ref_op, xd, coeffs)
            out[f"bands_{name}"] = max(_rel(bands[b], ref[b]) for b in range(n_bands))
            out[f"mu1_{name}"] = float(abs(mu1 - (xd * (ref_op @ xd)).sum()) / xd.square().sum())
            out[f"gram_{name}"] = _rel(gram, xd.T @ xd)
            out["halo"] = op.n_halo
    return out


def _exit_early_worker(rank: int, exit_code: int) -> None:
    graph, _ = _graph_and_signal("synthetic")
    op = PartitionedOperator.from_graph(graph, dtype=torch.float64)
    if rank == 1:
        os._exit(exit_code)
    x = torch.ones(op.n_local, 2, dtype=torch.float64)
    for _ in range(100):                 # the first product after rank 1 is gone must fail
        x = op @ x


def _stall_worker(rank: int, stall_s: float) -> str:
    graph, _ = _graph_and_signal("synthetic")
    op = PartitionedOperator.from_graph(graph, dtype=torch.float64)
    if rank == 1:
        time.sleep(stall_s)
        return "stalled"
    try:
        op @ torch.ones(op.n_local, 2, dtype=torch.float64)
    except RankFailure as e:
        return str(e)
    return "no error"


# -- multi-process agreement with the single-process operator ----------------------------------
@pytest.mark.parametrize("world_size", [2, 3])
def test_chebyshev_bands_match_single_process_synthetic(world_size):
    results = run_local(_bands_worker, world_size, args=("synthetic", 4, 24),
                        join_timeout=JOIN_S)
    _check_bands(results)


def test_chebyshev_bands_match_single_process_movielens(data_dir):
    results = run_local(_bands_worker, 2, args=(str(data_dir / "movielens-100k"), 4, 24),
                        join_timeout=JOIN_S)
    _check_bands(results)


def _check_bands(results):
    assert results[0]["halo"] > 0                # the exchange really carried rows
    for res in results:
        for dtype in (torch.float32, torch.float64):
            name = str(dtype).split(".")[-1]
            assert res[f"scatter_{name}"]
            assert res[f"unity_{name}"] <= tol(dtype, "partition")
            assert res[f"laplacian_{name}"] <= tol(dtype, "partition")
    for dtype in (torch.float32, torch.float64):
        name = str(dtype).split(".")[-1]
        assert results[0][f"bands_{name}"] <= tol(dtype, "partition")
        assert results[0][f"mu1_{name}"] <= tol(dtype, "partition")
        assert results[0][f"gram_{name}"] <= tol(dtype, "partition")


# -- faults -------------------------------------------------------------------------------------
def test_dead_rank_makes_survivor_raise():
    with pytest.raises(RuntimeError) as info:
        run_local(_exit_early_worker, 2, args=(7,), timeout=5.0, join_timeout=JOIN_S)
    msg = str(info.value)
    assert "rank 1 exited with code 7" in msg
    assert "RankFailure: rank 0 of 2: halo" in msg
    assert "did not finish" not in msg


def test_stalled_rank_times_out():
    results = run_local(_stall_worker, 2, args=(3.5,), timeout=2.0, join_timeout=JOIN_S)
    assert results[1] == "stalled"
    assert results[0].startswith("rank 0 of 2: halo exchange failed")
    assert "timeout (2 s)" in results[0]


def test_run_local_reports_raising_rank():
    with pytest.raises(RuntimeError, match=r"(?s)1 of 2 ranks failed.*rank 0 raised.*ZeroDivision"):
        run_local(pow, 2, args=(-1,), join_timeout=JOIN_S)     # rank 0: pow(0, -1)


def test_needs_process_group():
    if torch.distributed.is_initialized():
        pytest.skip("a process group is active in this process")
    with pytest.raises(RuntimeError, match="init_distributed"):
        PartitionedOperator(sp.identity(4, format="csr"), [0, 4])


# -- one-rank group in this process -------------------------------------------------------------
@pytest.fixture(scope="module")
def one_rank():
    init_distributed(0, 1, backend="gloo", master_port=free_port(), timeout=30.0)
    yield
    shutdown_distributed()


@pytest.fixture(scope="module")
def small_graph():
    return _graph_and_signal("synthetic")


@pytest.mark.parametrize("kind", ["adjacency", "laplacian", "scaled_laplacian"])
def test_one_rank_equals_operator(one_rank, small_graph, kind):
    graph, x = small_graph
    x = x.double()
    op = PartitionedOperator.from_graph(graph, kind, 0.05, dtype=torch.float64)
    ref = {"adjacency": graph.adjacency(torch.float64), "laplacian": graph.laplacian(torch.float64),
           "scaled_laplacian": graph.scaled_laplacian(0.05, torch.float64)}[kind]
    assert op.shape == op.global_shape == ref.shape and op.n_halo == 0
    assert op.nnz == ref.nnz
    torch.testing.assert_close(op @ x, ref @ x, rtol=tol(torch.float64), atol=0.0)
    torch.testing.assert_close(op @ x[:, 0], ref @ x[:, 0], rtol=tol(torch.float64), atol=0.0)
    assert (op @ x[:, :0]).shape == (graph.n_nodes, 0)


def test_one_rank_from_global_scipy(one_rank):
    rng = np.random.default_rng(0)
    m = sp.random(50, 50, density=0.1, random_state=1, format="csr")
    x = torch.from_numpy(rng.standard_normal((50, 3)))
    op = PartitionedOperator.from_global(m, scale=2.0, shift=-0.5, dtype=torch.float64)
    ref = torch.from_numpy(2.0 * (m @ x.numpy()) - 0.5 * x.numpy())
    torch.testing.assert_close(op @ x, ref, rtol=tol(torch.float64), atol=0.0)
    assert float(op.norm(x)) == pytest.approx(float(x.norm()), rel=tol(torch.float64))
    torch.testing.assert_close(op.gather(op.scatter(x, src=0)), x)


def test_rejects_bad_input(one_rank, small_graph):
    graph, x = small_graph
    op = PartitionedOperator.from_graph(graph)
    with pytest.raises(ValueError, match="owns"):
        op @ x[:-1]
    with pytest.raises(TypeError):
        op @ x.numpy()
    with pytest.raises(ValueError, match="same shape"):
        op.dot(x, x[:, :2])
    with pytest.raises(ValueError, match="kind"):
        PartitionedOperator.from_graph(graph, "normalized")
    with pytest.raises(ValueError, match="square"):
        PartitionedOperator.from_global(sp.random(4, 5, density=0.5, format="csr"))
    with pytest.raises(ValueError, match="bounds"):
        PartitionedOperator(sp.identity(4, format="csr"), [0, 2, 4])
    with pytest.raises(ValueError, match="rows 0..3"):
        PartitionedOperator(sp.identity(5, format="csr"), [0, 4])
    with pytest.raises(ValueError, match="src"):
        op.scatter(x, src=3)


# -- row balancing ------------------------------------------------------------------------------
@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_balanced_row_bounds(parts):
    rng = np.random.default_rng(parts)
    nnz = rng.zipf(1.8, 500).clip(max=200)
    b = balanced_row_bounds(nnz, parts)
    assert b[0] == 0 and b[-1] == nnz.size and np.all(np.diff(b) > 0)
    work = np.add.reduceat(nnz + 1.0, b[:-1])
    # Every block is within one row's work of the even share.
    assert np.all(np.abs(work - work.sum() / parts) <= (nnz.max() + 1))


def test_balanced_row_bounds_extremes():
    assert balanced_row_bounds([100, 0, 0], 3).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="non-empty"):
        balanced_row_bounds([1, 2], 3)
    with pytest.raises(ValueError, match="counts"):
        balanced_row_bounds([1, -2], 1)
