"""Training at scale: time per training step against the graph size (DESIGN.md §3).

``test_step_time_flat_in_n`` times one training step of :class:`~ssr_engine.SSRModel` on a
band store (sampling the batch and its negatives, reading the band and ID-basis rows,
forward, backward, Adam + SparseAdam on the ID residual) at the 1M run's default batch
size and the pipeline's default widths on synthetic graphs of 100k, 300k and 1M users (``SCALE`` of the registry's
``"1M"`` graph), with the ID basis of the 1M graph's default width at every size (so the
model is the same and only ``N`` changes). In the same run it times the alternative that a
step without precomputed bands could not avoid: one sparse product of the normalised
adjacency with an ``[N, d]`` block (a propagating model does several per step). Goal,
asserted: the step time at every size within 1.5× that of the smallest graph, which is
timed first whatever the test order.

Accuracy gate (before timing): on sampled nodes the model's fused vectors equal those of the
same model with its band slots held in memory (the store's rows copied into tensors), and
the stored ID basis rows are eigenvectors of ``L`` (relative residual of ``L U - U Λ`` on the
sampled rows, from their neighbours' rows).

Run: ``python -m pytest bench/bench_large.py --benchmark-only``
(about 6 minutes and 7 GB peak RSS for the three sizes on 2 cores).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from tolerances import tol

from sizes import SYNTHETIC
from ssr_engine import SSRModel
from ssr_engine.data import synthetic_dataset
from ssr_engine.nn.sources import BandSource, default_id_basis
from ssr_engine.train import TrainConfig, Trainer, default_batch_size
from ssr_engine.train.pipeline import LargeRun
from ssr_engine.train.precompute import precompute_bands

SCALE = {"100k": 0.1, "300k": 0.3, "1M": 1.0}
#: a quick smoke run at tiny sizes, where a batch covers much of the graph: the step-time
#: goal is not asserted there.
TINY = bool(__import__("os").environ.get("SSR_BENCH_LARGE_TINY"))
if TINY:
    SCALE = {"100k": 0.005, "300k": 0.015}
DEFAULTS = LargeRun()
#: the 1M run's default batch (the synthetic split trains on 80% of the interactions).
BATCH = default_batch_size(int(0.8 * SYNTHETIC["1M"][2]))
D0, DIM, ORDER, SEED = DEFAULTS.d0, DEFAULTS.dim, 16, 0
GOAL = 1.5
_state: dict = {}                 # the first size's step time


def _size(name):
    u, i, e = SYNTHETIC["1M"]
    s = SCALE[name]
    return int(u * s), int(i * s), int(e * s)


def _id_k():
    """The default ID basis of the largest graph, used at every size."""
    u, i, _ = _size(list(SCALE)[-1])
    return default_id_basis(u + i)


def _in_memory(src: BandSource) -> BandSource:
    """The same source with every row copied into memory (tensors)."""
    n = src.n_nodes
    content = {k: v.block(0, n).transpose(0, 1).contiguous() for k, v in src.content.items()}
    return BandSource(n, src.edges, content, src.eigenvalues, src.basis.block(0, n),
                      src.partial, src.report, src.identity)


def _gate(model, src, graph):
    rng = np.random.default_rng(0)
    nodes = torch.from_numpy(np.sort(rng.choice(graph.n_nodes, 256, replace=False)))
    ref = SSRModel(graph, source=_in_memory(src), dim=DIM, sparse_residual=True)
    ref.load_state_dict(model.state_dict(), strict=False)       # its own band buffers stay
    got, want = model.embed(nodes), ref.embed(nodes)
    err = float((got - want).norm() / want.norm())
    if not err <= tol(torch.float32, "close"):
        pytest.fail(f"fused vectors from the store differ from in-memory slots: rel {err:.2e}")
    # (L U)[rows] = U[rows] − Â[rows] U[neighbours]
    A = graph.normalized_adjacency_scipy()[nodes.numpy()]
    nbrs = np.unique(A.indices)
    U, U_n = src.basis[nodes].double(), src.basis[torch.from_numpy(nbrs)].double()
    res = U - torch.from_numpy(A[:, nbrs].toarray()) @ U_n - U * src.eigenvalues
    err = float(res.norm() / U.norm())
    if not err <= tol(torch.float32, "solve"):
        pytest.fail(f"stored ID basis rows are not eigenvectors of L: rel residual {err:.2e}")


@pytest.fixture
def one_thread():
    # One torch thread: on the shared 2-core machine a second OpenMP thread mostly waits for
    # a busy core (and the step time would measure the neighbours, not the graph size).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _time_step(size, tmp_path_factory):
    n_u, n_i, n_e = _size(size)
    ds = synthetic_dataset(n_u, n_i, n_e, seed=SEED, name=f"synthetic-{size}")
    graph = ds.train_graph()
    store, _ = precompute_bands(graph, ds.features, tmp_path_factory.mktemp(f"bands{size}"),
                                order=ORDER, d0=D0, seed=SEED, quiet=True, id_k=_id_k())
    A = graph.adjacency()
    X = torch.randn(graph.n_nodes, DIM)
    A @ X
    t0 = time.perf_counter()
    for _ in range(3):
        A @ X
    spmm = (time.perf_counter() - t0) / 3
    del A, X
    src = store.source()
    torch.manual_seed(SEED)
    model = SSRModel(graph, source=src, dim=DIM, seed=SEED, sparse_residual=True)
    return ds, graph, src, model, spmm


@pytest.mark.parametrize("size", list(SCALE))
def test_step_time_flat_in_n(benchmark, size, tmp_path_factory, one_thread):
    first = list(SCALE)[0]
    if size != first and "first" not in _state:
        pytest.skip(f"needs the {first} run first (same session) for the ratio")
    ds, graph, src, model, spmm = _time_step(size, tmp_path_factory)
    _gate(model, src, graph)
    del graph, src
    tr = Trainer(model, ds, TrainConfig(batch_size=BATCH, quiet=True, seed=SEED))
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
    if size == first:
        _state["first"] = mean
    ratio = mean / _state["first"]
    benchmark.extra_info.update({
        "users": ds.n_users, "items": ds.n_items, "interactions": int(ds.split.size),
        "batch": BATCH, "d0": D0, "dim": DIM, "id_basis": 2 * _id_k(),
        "threads": torch.get_num_threads(), "steps_per_epoch": tr.steps_per_epoch,
        "step_seconds": mean, "full_graph_spmm_seconds": spmm,
        "ratio_step_to_spmm": mean / spmm, "ratio_to_first_size": ratio})
    assert TINY or ratio <= GOAL, (f"a step at {size} takes {ratio:.2f}x the {first} step "
                           f"(goal <= {GOAL})")
