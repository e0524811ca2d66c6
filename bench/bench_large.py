"""Training at scale: time per training step against the graph size (DESIGN.md §3).

``test_step_time_flat_in_n`` times one training step of
:class:`~ssr_engine.train.stored_model.StoredSSR` (sampling the batch and its negatives,
reading the band rows, forward, backward, Adam + SparseAdam) at the same batch size and
dimensions on synthetic graphs of 100k, 300k and 1M users (``SCALE`` of the registry's
``"1M"`` graph). In the same run it times the alternative that a step without precomputed
bands could not avoid: one sparse product of the normalised adjacency with an ``[N, d]``
block (a propagating model does several per step; a Chebyshev filter ``K``). The ratio
step / product goes to ``extra_info``, with the step time relative to the smallest graph.

Accuracy gate (before timing): on sampled nodes the model's fused vectors equal the
explicit slots passed through ``ops.cp_fusion_reference``, and the stored ID bands sum back
to the ID projection (partition of unity). The store is built with Chebyshev order 16: the
step reads the same rows whatever the order.

Run: ``python -m pytest bench/bench_large.py --benchmark-only``
(about 4 minutes and 6 GB peak RSS for the three sizes on 2 cores).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from tolerances import tol

from sizes import SYNTHETIC
from ssr_engine import ops
from ssr_engine.data import synthetic_dataset
from ssr_engine.train.large import LargeConfig, LargeTrainer
from ssr_engine.train.precompute import id_projection, precompute_bands
from ssr_engine.train.stored_model import StoredSSR

SCALE = {"100k": 0.1, "300k": 0.3, "1M": 1.0}
if __import__("os").environ.get("SSR_BENCH_LARGE_TINY"):
    SCALE = {"100k": 0.005, "300k": 0.015}
BATCH, D0, DIM, RANK, ORDER, SEED = 8192, 32, 64, 16, 16, 0
_first: dict = {}


def _size(name):
    u, i, e = SYNTHETIC["1M"]
    s = SCALE[name]
    return int(u * s), int(i * s), int(e * s)


def _gate(model, store, n_nodes):
    rng = np.random.default_rng(0)
    nodes = torch.from_numpy(np.sort(rng.choice(n_nodes, 256, replace=False)))
    with torch.no_grad():
        H = model.slots(nodes) * model.reliability.alpha[None, :, :, None]
        f = model.fusion
        ref = ops.cp_fusion_reference(H.flatten(1, 2), f.K, f.V, f.Q, f.w, f.eps)
        got = model.embed(nodes)
    err = float((got - ref).norm() / ref.norm())
    if not err <= tol(torch.float32, "close"):
        pytest.fail(f"fused vectors differ from the explicit reference: rel {err:.2e}")
    bands = store.rows(nodes)["id"].sum(1)
    want = torch.cat([id_projection(int(v), int(v) + 1, D0, SEED) for v in nodes])
    err = float((bands - want).norm() / want.norm())
    if not err <= tol(torch.float32, "unity"):
        pytest.fail(f"stored ID bands do not sum to the projection: rel {err:.2e}")


@pytest.fixture
def one_thread():
    # One torch thread: on the shared 2-core machine a second OpenMP thread mostly waits for
    # a busy core (and the step time would measure the neighbours, not the graph size).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("size", list(SCALE))
def test_step_time_flat_in_n(benchmark, size, tmp_path_factory, one_thread):
    n_u, n_i, n_e = _size(size)
    ds = synthetic_dataset(n_u, n_i, n_e, seed=SEED, name=f"synthetic-{size}")
    graph = ds.train_graph()
    store, _ = precompute_bands(graph, ds.features, tmp_path_factory.mktemp(f"bands{size}"),
                                order=ORDER, d0=D0, seed=SEED, quiet=True)
    # The alternative: one full-graph sparse product with a [N, d] block.
    A = graph.adjacency()
    X = torch.randn(graph.n_nodes, DIM)
    A @ X
    t0 = time.perf_counter()
    for _ in range(3):
        A @ X
    spmm = (time.perf_counter() - t0) / 3
    del graph, A, X
    model = StoredSSR(store, ds.user_item_matrix("train"), dim=DIM, rank=RANK, seed=SEED)
    _gate(model, store, n_u + n_i)
    tr = LargeTrainer(model, ds, LargeConfig(batch_size=BATCH, quiet=True, seed=SEED))
    perm = np.random.default_rng([SEED, 1, 0]).permutation(tr.sampler.users.size)
    state = {"step": 0}
    full_steps = max(1, perm.size // BATCH)

    def step():
        u, p, q = tr._batch(perm, 0, state["step"] % full_steps)
        state["step"] += 1
        losses = model(torch.from_numpy(u), torch.from_numpy(p), torch.from_numpy(q))
        tr.opt.zero_grad(set_to_none=True)
        tr.sparse_opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        tr.opt.step()
        tr.sparse_opt.step()
        return float(losses["loss"].detach())

    benchmark.pedantic(step, rounds=40, iterations=1, warmup_rounds=5)
    mean = benchmark.stats.stats.mean
    _first.setdefault("mean", mean)
    benchmark.extra_info.update({
        "users": n_u, "items": n_i, "interactions": n_e, "batch": BATCH, "d0": D0,
        "dim": DIM, "rank": RANK, "threads": torch.get_num_threads(),
        "steps_per_epoch": tr.steps_per_epoch, "step_seconds": mean,
        "full_graph_spmm_seconds": spmm, "ratio_step_to_spmm": mean / spmm,
        "ratio_to_first_size": mean / _first["mean"]})
