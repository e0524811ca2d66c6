"""GPU benchmark: ``graph_eigs`` on CUDA vs ``cupyx.scipy.sparse.linalg.eigsh``.

The synthetic 1M graph (1M users, 500k items, 20M interactions; generated here on the CPU,
about a minute), the k = 64 lowest eigenpairs of L in float32, every relative residual
``||L v - λ v|| / ||L||`` at most 1e-4 — checked for both solvers in float64 on the device.
cupyx runs ARPACK-style thick-restart Lanczos on Â (``which="LA"``: the low end of L); its
``tol`` is tightened until it reaches the residual. Prints one table.

    python bench/gpu_eigs.py                              # on an H100 (about 2 minutes)
    python bench/gpu_eigs.py --device cpu --size small    # check the script on a CPU
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sizes import SYNTHETIC, synthetic  # noqa: E402

from ssr_engine import InteractionGraph, graph_eigs  # noqa: E402
from ssr_engine.graph import csr_tensor  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def residuals(ahat64: torch.Tensor, lam: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``||L v - λ v|| / 2`` per column, in float64 on the device."""
    V = V.double()
    return (V - ahat64 @ V - V * lam.double()).norm(dim=0) / 2


def run_ours(graph, args, device, ahat64):
    kw = dict(which="low", tol=args.tol, dtype=torch.float32, device=device)
    sync(device)
    t0 = time.perf_counter()
    graph_eigs(graph, args.k, **kw)                    # first call: uploads R̃, components
    sync(device)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        sync(device)
        t0 = time.perf_counter()
        r = graph_eigs(graph, args.k, **kw)
        sync(device)
        times.append(time.perf_counter() - t0)
    res = residuals(ahat64, r.eigenvalues, r.eigenvectors)
    return min(times), float(res.max()), first, r


def run_cupyx(graph, args, ahat64):
    import cupy
    import cupyx.scipy.sparse as csp
    import cupyx.scipy.sparse.linalg as csla
    A = csp.csr_matrix(graph.normalized_adjacency_scipy().astype(np.float32))
    csla.eigsh(A, k=4, which="LA", maxiter=20)        # warm-up: kernel compilation
    cupy.cuda.Device().synchronize()
    rows = []
    for tol in (args.tol, args.tol / 10, args.tol / 100):
        t0 = time.perf_counter()
        w, V = csla.eigsh(A, k=args.k, which="LA", tol=tol)
        cupy.cuda.Device().synchronize()
        secs = time.perf_counter() - t0
        lam = 1.0 - torch.from_dlpack(w)
        res = float(residuals(ahat64, lam, torch.from_dlpack(V)).max())
        rows.append((tol, secs, res))
        print(f"  cupyx eigsh tol={tol:g}: {secs:.2f} s, max residual {res:.2e}", flush=True)
        if res <= args.tol:
            break
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1M", choices=sorted(SYNTHETIC))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cupy", action="store_true", help="time ours only")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available on this machine; run on a GPU, or check the script "
              "with --device cpu --size small", file=sys.stderr)
        return 2
    use_cupy = device.type == "cuda" and not args.no_cupy
    if use_cupy:
        try:
            import cupy  # noqa: F401
            import cupyx.scipy.sparse.linalg  # noqa: F401
        except ImportError as e:
            print(f"cupy is missing ({e}); install cupy-cuda13x (or cupy-cuda12x), or pass "
                  "--no-cupy to time ours alone", file=sys.stderr)
            return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    print(f"device: {name}; torch {torch.__version__}", flush=True)

    t0 = time.perf_counter()
    ds = synthetic(args.size)
    graph = InteractionGraph(ds.user_ids, ds.item_ids, ds.n_users, ds.n_items)
    del ds
    print(f"{args.size}: {graph} built in {time.perf_counter() - t0:.1f} s", flush=True)
    ahat64 = csr_tensor(graph.normalized_adjacency_scipy(), torch.float64, device)

    ours, ours_res, first, r = run_ours(graph, args, device, ahat64)
    print(f"  ours: first call {first:.2f} s (with setup), best of {args.repeats} {ours:.3f} s, "
          f"{r.method}, {r.iterations} restarts", flush=True)
    table = [("ssr_engine.graph_eigs", ours, ours_res, 1.0)]
    if use_cupy:
        for tol, secs, res in run_cupyx(graph, args, ahat64):
            table.append((f"cupyx eigsh (tol={tol:g})", secs, res, secs / ours))
    elif device.type != "cuda":
        print("  (cupyx comparison needs CUDA; skipped)")

    print(f"\nk={args.k}, float32, target residual {args.tol:g}, graph {args.size}, {name}")
    print(f"{'method':<28}{'time [s]':>10}{'max residual':>14}{'ratio':>8}")
    for method, secs, res, ratio in table:
        flag = "" if res <= args.tol else "  (missed the residual)"
        print(f"{method:<28}{secs:>10.3f}{res:>14.2e}{ratio:>8.1f}{flag}")
    print(f"total script time {time.perf_counter() - start:.0f} s")
    return 0 if ours_res <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
