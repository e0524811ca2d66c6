"""Partial eigensolvers: ours vs scipy / torch, accuracy-gated, side by side.

Problems (sizes from bench/sizes.py):

* ``amazon-baby`` training graph, the k = 64 lowest eigenpairs of L, float64, every relative
  residual ``||L v - λ v|| / ||L||`` at most 1e-6. Ours: ``graph_eigs``. Comparisons, each
  checked to reach the same residual: scipy ``eigsh`` (ARPACK, ``which="LA"`` on Â — the fair
  ARPACK call, since the low end of L is the top of Â), scipy ``svds`` on R̃ (ARPACK on the
  smaller Gram), and — reported with whatever residual they reach in a bounded budget —
  scipy ``lobpcg`` and ``torch.lobpcg`` on the Gram operator R̃ᵀR̃.

  **Same tolerance semantics.** Each ARPACK baseline gets the loosest ``tol`` whose own
  stopping test already implies the gate (the residual vector is the same, only the scale
  differs), and is tightened tenfold only if the measured residual still misses the gate:
  ``eigsh`` on Â stops at ``||Â v - θ v|| <= tol |θ|`` with ``|θ| <= 1`` and
  ``L v - λ v = -(Â v - θ v)``, so ``tol = 2 * 1e-6`` gives ``||L v - λ v|| / 2 <= 1e-6``;
  ``svds`` runs ARPACK on the Gram with ``tol**2`` (``||G q - σ² q|| <= tol² σ²``), and the
  L pair built from it has ``||L v - λ v|| = ||G q - σ² q|| / (σ √2)``, so
  ``tol = sqrt(2 √2 * 1e-6)`` gives the gate (ours stops on the same Gram residual).
  ``eigsh`` at ARPACK's default ``tol=0`` (machine precision) is timed once more for
  reference, without a ratio.
  Everything runs in one process with the same thread settings (torch and BLAS threads are
  recorded; scipy's sparse products are single-threaded by design, its BLAS is not).
* ``amazon-clothing`` grown graph (the "Living graphs" update experiment): the training
  interactions split at random 90 / 10 (seed 1, like ``examples/update_split.py``); the old graph
  holds the 90 % on the same user and item ids, the grown graph all of them. The k = 64 lowest
  pairs, float64, residual at most 1e-6: a cold ``graph_eigs`` on the grown graph (the
  default call) against a warm one, ``v0=`` the old graph's result, both gated on their
  residuals before any ratio. The ratio is reported, not asserted: the warm start's goal
  (3x) is not reached on this update (see ``graph_eigs``'s ``v0``).
* ``synthetic("1M")`` (1M users, 500k items, 20M interactions, graph from all of them),
  k = 64, float32, residual at most 1e-4: ours alone (nothing else finishes in reasonable
  time), with solver time and peak memory.

Run: ``pytest bench/bench_eigs.py --benchmark-only -s``; the 1M case
also runs standalone in a fresh process (clean peak RSS): ``python bench/bench_eigs.py 1M``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import threading
import time

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from ssr_engine import InteractionGraph, graph_eigs
from sizes import have_real, real_dataset, synthetic

K = 64
BABY_TOL = 1e-6
CLOTHING_TOL = 1e-6
# The update experiment's split: share of the training interactions that arrive later, seed.
GROWN_SHARE, GROWN_SEED = 0.1, 1
SYNTH_TOL = 1e-4
# Every method is timed the same way: one warm-up run, then the best of ROUNDS.
ROUNDS = 3


def blas_threads() -> str:
    """numpy's BLAS thread setting as the environment states it (``default`` = all cores)."""
    keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    return ",".join(f"{k}={os.environ[k]}" for k in keys if k in os.environ) or "default"


def laplacian_residuals(graph: InteractionGraph, lam: np.ndarray, V: np.ndarray) -> np.ndarray:
    """``||L v - λ v|| / ||L||`` (``||L|| = 2``) per column, in float64 with scipy."""
    ahat = graph.normalized_adjacency_scipy()
    V = np.asarray(V, dtype=np.float64)
    LV = V - ahat @ V
    return np.linalg.norm(LV - V * np.asarray(lam, dtype=np.float64), axis=0) / 2.0


def from_singular(u: np.ndarray, s: np.ndarray, vt: np.ndarray, k: int):
    """The k lowest L pairs from singular triplets of R̃: λ = 1 - σ, v = [u; v] / √2."""
    order = np.argsort(-s)[:k]
    V = np.vstack([u[:, order], vt[order].T]) / np.sqrt(2.0)
    return 1.0 - s[order], V


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# -- scipy / torch baselines on the Baby graph --------------------------------------------------
def scipy_eigsh(graph, k, tol):
    """ARPACK on Â, largest algebraic: the k lowest of L."""
    theta, V = spla.eigsh(graph.normalized_adjacency_scipy(), k=k, which="LA", tol=tol)
    return 1.0 - theta, V


def scipy_svds(graph, k, tol):
    """ARPACK on R̃ (scipy picks the smaller Gram), recovering the other side itself."""
    u, s, vt = spla.svds(graph.normalized_bipartite_scipy(), k=k, tol=tol)
    return from_singular(u, s, vt, k)


def gram_pairs_to_laplacian(graph, q: np.ndarray, k: int):
    """Top Gram eigenvectors on the item side -> the k lowest L pairs."""
    rt = graph.normalized_bipartite_scipy()
    p = rt @ q
    s = np.linalg.norm(p, axis=0)
    return from_singular(p / s, s, q.T, k)


def scipy_lobpcg(graph, k, tol, maxiter):
    rt = graph.normalized_bipartite_scipy()
    gram = spla.LinearOperator((rt.shape[1],) * 2, matvec=lambda x: rt.T @ (rt @ x),
                               matmat=lambda X: rt.T @ (rt @ X), dtype=np.float64)
    X = np.random.default_rng(0).standard_normal((rt.shape[1], k))
    _, q = spla.lobpcg(gram, X, largest=True, tol=tol, maxiter=maxiter)
    return gram_pairs_to_laplacian(graph, q, k)


def torch_lobpcg(graph, k, tol, niter):
    rt = graph.normalized_bipartite_scipy()
    g = (rt.T @ rt).tocoo()
    G = torch.sparse_coo_tensor(np.vstack([g.row, g.col]), g.data, g.shape).coalesce()
    X = torch.randn(g.shape[0], k, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _, q = torch.lobpcg(G, k=k, X=X, largest=True, tol=tol, niter=niter)
    return gram_pairs_to_laplacian(graph, q.numpy(), k)


@pytest.fixture(scope="module")
def baby():
    if not have_real("amazon-baby"):
        pytest.skip("amazon-baby is not in the shared data folder")
    return real_dataset("amazon-baby").train_graph()


def test_baby_low64_float64(benchmark, baby):
    """graph_eigs vs scipy eigsh / svds (and lobpcg variants) at residual <= 1e-6."""
    run = lambda: graph_eigs(baby, K, which="low", tol=BABY_TOL, dtype=torch.float64)
    run()                                                      # warm-up
    result = benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    ours_res = laplacian_residuals(baby, result.eigenvalues.numpy(), result.eigenvectors.numpy())
    assert ours_res.max() <= BABY_TOL, f"ours missed the residual: {ours_res.max():.2e}"
    ours = benchmark.stats.stats.min
    info = {"ours_s": ours, "ours_max_residual": float(ours_res.max()), "k": K,
            "tol": BABY_TOL, "machine": f"{os.cpu_count()} CPUs, torch threads "
                                       f"{torch.get_num_threads()}, BLAS threads "
                                       f"{blas_threads()}"}
    ref = np.sort(result.eigenvalues.numpy())

    # The two ARPACK baselines must reach the same residual and spectrum (gates), at the
    # loosest tol that does (module docstring); the run that finds that tol is the warm-up,
    # then the best of ROUNDS is timed, as for ours.
    for name, fn, tol in (("scipy_eigsh", scipy_eigsh, 2 * BABY_TOL),
                          ("scipy_svds", scipy_svds, np.sqrt(2 * np.sqrt(2) * BABY_TOL))):
        for _ in range(3):
            lam, V = fn(baby, K, tol)
            res = laplacian_residuals(baby, lam, V)
            if res.max() <= BABY_TOL:
                break
            tol /= 10 if name == "scipy_eigsh" else np.sqrt(10)
        assert res.max() <= BABY_TOL, f"{name} missed the residual: {res.max():.2e}"
        runs = [timed(lambda: fn(baby, K, tol)) for _ in range(ROUNDS)]
        (lam, V), _ = runs[-1]
        res = laplacian_residuals(baby, lam, V)
        np.testing.assert_allclose(np.sort(lam), ref, atol=10 * BABY_TOL)
        secs = min(t for _, t in runs)
        info[f"{name}_s"] = secs
        info[f"{name}_tol"] = float(tol)
        info[f"{name}_max_residual"] = float(res.max())
        info[f"speedup_vs_{name}"] = secs / ours
    # For reference, eigsh at ARPACK's own default (tol=0, machine precision): not the gate
    # comparison (it solves a harder problem), but the figure a default call gives.
    (lam, V), secs = timed(lambda: scipy_eigsh(baby, K, 0))
    info["scipy_eigsh_default_tol_s"] = secs
    info["scipy_eigsh_default_tol_max_residual"] = float(laplacian_residuals(baby, lam, V).max())
    # LOBPCG variants on the Gram operator, no preconditioner: bounded budget, reported with
    # the residual they reach (a ratio only when they reach ours).
    for name, fn in (("scipy_lobpcg", lambda: scipy_lobpcg(baby, K, tol=BABY_TOL, maxiter=300)),
                     ("torch_lobpcg", lambda: torch_lobpcg(baby, K, tol=BABY_TOL, niter=300))):
        (lam, V), secs = timed(fn)
        res = laplacian_residuals(baby, lam, V)
        info[f"{name}_s"] = secs
        info[f"{name}_max_residual"] = float(res.max())
        if res.max() <= BABY_TOL:
            info[f"speedup_vs_{name}"] = secs / ours
    benchmark.extra_info.update(info)
    print("\n" + json.dumps(info, indent=1))


# -- warm start on the grown Clothing graph ---------------------------------------------------
def grown_pair(graph: InteractionGraph, share: float = GROWN_SHARE, seed: int = GROWN_SEED):
    """``(old, grown)``: ``graph`` without a random ``share`` of its interactions (same user
    and item ids; some nodes may lose every edge), and ``graph`` itself: a seeded random
    split like ``examples/update_split.py``'s (that script draws from the dataset's rows, so
    the held edges are not the same ones)."""
    u, i = graph.edges()
    rng = np.random.default_rng([seed, 0x5B1])
    held = rng.choice(u.size, int(round(share * u.size)), replace=False)
    keep = np.ones(u.size, dtype=bool)
    keep[held] = False
    return InteractionGraph(u[keep], i[keep], graph.n_users, graph.n_items), graph


@pytest.fixture(scope="module")
def clothing_grown():
    if not have_real("amazon-clothing"):
        pytest.skip("amazon-clothing is not in the shared data folder")
    return grown_pair(real_dataset("amazon-clothing").train_graph())


def test_clothing_warm_start_low64_float64(benchmark, clothing_grown):
    """Cold vs warm-started graph_eigs on the grown Clothing graph at residual <= 1e-6."""
    old, grown = clothing_grown
    previous, old_s = timed(lambda: graph_eigs(old, K, which="low", tol=CLOTHING_TOL,
                                               dtype=torch.float64))
    solve = lambda **kw: graph_eigs(grown, K, which="low", tol=CLOTHING_TOL,
                                    dtype=torch.float64, **kw)
    info = {"k": K, "tol": CLOTHING_TOL, "old_graph": repr(old), "grown_graph": repr(grown),
            "old_solve_s": old_s, "machine": f"{os.cpu_count()} CPUs, torch threads "
                                             f"{torch.get_num_threads()}, BLAS threads "
                                             f"{blas_threads()}, load average "
                                             f"{os.getloadavg()[0]:.2f} at start"}
    results = {}
    for name, kw in (("cold", {}), ("warm", {"v0": previous})):
        solve(**kw)                                            # warm-up
        if name == "warm":
            result = benchmark.pedantic(lambda: solve(**kw), rounds=ROUNDS, iterations=1)
            secs = benchmark.stats.stats.min
        else:
            runs = [timed(lambda: solve(**kw)) for _ in range(ROUNDS)]
            result, secs = runs[-1][0], min(t for _, t in runs)
        res = laplacian_residuals(grown, result.eigenvalues.numpy(),
                                  result.eigenvectors.numpy())
        assert float(result.residuals.max()) <= CLOTHING_TOL, f"{name}: reported residual"
        assert res.max() <= CLOTHING_TOL, f"{name} missed the residual: {res.max():.2e}"
        results[name] = result
        info.update({f"{name}_s": secs, f"{name}_max_residual": float(res.max()),
                     f"{name}_reported_max_residual": float(result.residuals.max()),
                     f"{name}_iterations": result.iterations, f"{name}_method": result.method})
    np.testing.assert_allclose(results["warm"].eigenvalues.numpy(),
                               results["cold"].eigenvalues.numpy(), atol=10 * CLOTHING_TOL)
    info["speedup_warm_vs_cold"] = info["cold_s"] / info["warm_s"]
    info["load_average_at_end"] = os.getloadavg()[0]
    benchmark.extra_info.update(info)
    print("\n" + json.dumps(info, indent=1))


# -- the 1M synthetic graph -------------------------------------------------------------------
class PeakRSS:
    """Samples this process's resident set size every 20 ms while active."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def synthetic_graph(size: str) -> InteractionGraph:
    ds = synthetic(size)
    return InteractionGraph(ds.user_ids, ds.item_ids, ds.n_users, ds.n_items)


def solve_synthetic(graph: InteractionGraph) -> dict:
    """Time graph_eigs at k=64, float32, tol 1e-4 and check every residual in float64."""
    with PeakRSS() as mem:
        result, secs = timed(lambda: graph_eigs(graph, K, which="low", tol=SYNTH_TOL,
                                                dtype=torch.float32))
    res = laplacian_residuals(graph, result.eigenvalues.double().numpy(),
                              result.eigenvectors.double().numpy())
    assert res.max() <= SYNTH_TOL, f"ours missed the residual: {res.max():.2e}"
    return {"solve_s": secs, "max_residual_float64_check": float(res.max()),
            "reported_max_residual": float(result.residuals.max()),
            "iterations": result.iterations, "method": result.method,
            "peak_rss_during_solve_GB": mem.peak / 1e9,
            "process_peak_rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
            "lambda_range": [float(result.eigenvalues[0]), float(result.eigenvalues[-1])]}


@pytest.mark.slow
def test_synthetic_1m_low64_float32(benchmark):
    """graph_eigs on the 1M synthetic graph (~80 s to generate, excluded from the time)."""
    graph = synthetic_graph("1M")
    info = {}

    def run():
        info.update(solve_synthetic(graph))

    benchmark.pedantic(run, rounds=1, iterations=1)
    assert info["solve_s"] <= 120, f"1M solve took {info['solve_s']:.1f} s"
    assert info["process_peak_rss_GB"] <= 8
    benchmark.extra_info.update(info)
    print("\n" + json.dumps(info, indent=1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="graph_eigs on a synthetic graph in a fresh "
                                                 "process (solver time and peak memory)")
    parser.add_argument("size", nargs="?", default="1M", help="a size from bench/sizes.py")
    args = parser.parse_args(argv)
    graph, gen_s = timed(lambda: synthetic_graph(args.size))
    gen_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    print(f"{args.size}: {graph} generated in {gen_s:.1f} s (peak RSS so far {gen_rss:.2f} GB)",
          flush=True)
    info = solve_synthetic(graph)
    info.update({"size": args.size, "generate_s": gen_s, "peak_rss_after_generation_GB": gen_rss,
                 "torch_threads": torch.get_num_threads()})
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
