"""Fused Triton kernels against their plain torch references, on synthetic problems (CUDA only).

* ``chebyshev``: all M bands of a K-order Chebyshev filter bank on a power-law bipartite graph
  (1.5M nodes, 40M nonzeros, symmetric normalised, generated on the GPU). Ours: one fused
  pass per order (SpMM + recurrence + band updates). Reference: ``chebyshev_bands_reference``
  (cuSPARSE SpMM, then the band updates). Also timed: the K - 1 bare cuSPARSE SpMMs the
  recurrence needs. Targets: ≥ 1.3x the reference, within 1.2x of the bare SpMMs.
* ``band_fusion``: basis slots (N = 1.5M, k = 256 split in 4 bands, 3 modalities: S = 12,
  d = 64, r = 16, O = 4) formed on the fly and fused; forward + backward. Reference:
  ``band_cp_fusion_reference`` (forms the slots, then ``cp_fusion_reference``). Target ≥ 2x.
* ``cp_fusion``: precomputed slots ``H [1.5M, 12, 64]``. Target ≥ 1.5x.

Every timing is gated on accuracy first: errors are relative (‖ours − ref‖ / ‖ref‖, the largest
over outputs and gradients) against a float64 computation from the same (rounded) inputs;
≤ 1e-5 for float32 inputs, ≤ 1e-2 for bfloat16. Times are CUDA-event medians after warm-up
(compilation included in the warm-up).

Run: ``python -m pytest bench/bench_kernels.py --benchmark-only`` (pytest-benchmark), or
``python bench/bench_kernels.py [--quick] [--table FILE]`` for the summary table
(``bench/gpu_check.sh``).
"""
from __future__ import annotations

import math
import statistics
import sys
import warnings
from typing import Callable, Dict, List

import pytest
import torch

from ssr_engine.graph.operators import Operator
from ssr_engine.ops import (band_cp_fusion, band_cp_fusion_reference, chebyshev_bands,
                            chebyshev_bands_reference, cp_fusion, cp_fusion_reference)
from ssr_engine.spectral import band_coefficients

# Problem sizes of this suite (DESIGN.md §4 targets); QUICK is a small smoke-test variant.
SIZES = {
    "chebyshev": dict(n_users=1_000_000, n_items=500_000, n_edges=20_000_000, K=32, M=4, d=64),
    "band_fusion": dict(N=1_500_000, k=256, bands=4, modalities=3, d=64, r=16, O=4),
    "cp_fusion": dict(n=1_500_000, S=12, d=64, r=16, O=4),
}
QUICK = {
    "chebyshev": dict(n_users=40_000, n_items=20_000, n_edges=400_000, K=12, M=4, d=64),
    "band_fusion": dict(N=50_000, k=256, bands=4, modalities=3, d=64, r=16, O=4),
    "cp_fusion": dict(n=50_000, S=12, d=64, r=16, O=4),
}
TARGETS = {"chebyshev": 1.3, "chebyshev_vs_spmm": 1 / 1.2, "band_fusion": 2.0,
           "cp_fusion": 1.5}
MAX_ERR = {torch.float32: 1e-5, torch.bfloat16: 1e-2}

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# -- timing and errors ---------------------------------------------------------------------
def cuda_time(fn: Callable[[], object], reps: int = 5, warmup: int = 2) -> float:
    """Median milliseconds of ``fn`` over ``reps`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# -- problems --------------------------------------------------------------------------------
def power_law_graph(n_users: int, n_items: int, n_edges: int, device, seed: int = 0,
                    skew: float = 1.6, delta: float = 0.02) -> Operator:
    """Scaled Laplacian ``-Â/(1+δ)`` of a random bipartite graph with power-law degrees.

    Users and items are drawn as ``floor(n · u^skew)`` (heavy low ids), relabelled at random;
    duplicate pairs are dropped, so there are slightly fewer than ``n_edges`` edges.
    """
    g = torch.Generator(device=device).manual_seed(seed)
    draw = lambda n, m: torch.floor(n * torch.rand(m, device=device, generator=g) ** skew).long()
    m = int(n_edges * 1.1)
    perm_u = torch.randperm(n_users, device=device, generator=g)
    perm_i = torch.randperm(n_items, device=device, generator=g)
    u, i = perm_u[draw(n_users, m).clamp_max(n_users - 1)], perm_i[draw(n_items, m).clamp_max(n_items - 1)]
    key = torch.unique(u * n_items + i)
    key = key[torch.randperm(key.numel(), device=device, generator=g)[:n_edges]]
    u, i = key // n_items, key % n_items + n_users
    N = n_users + n_items
    rows, cols = torch.cat([u, i]), torch.cat([i, u])
    deg = torch.bincount(rows, minlength=N).double()
    inv = torch.where(deg > 0, deg.clamp_min(1).rsqrt(), torch.zeros_like(deg))
    order = torch.argsort(rows * N + cols)
    rows, cols = rows[order], cols[order]
    vals = (inv[rows] * inv[cols]).float()
    crow = torch.zeros(N + 1, dtype=torch.int64, device=device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=N), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        A = torch.sparse_csr_tensor(crow.int(), cols.int(), vals, size=(N, N))
    return Operator(A, scale=-1.0 / (1.0 + delta), symmetric=True)


def jackson_band_coeffs(M: int, K: int) -> torch.Tensor:
    """The library's Jackson-damped coefficients ``[M, K]`` of M equal-width bands tiling
    [-1, 1] (``band_coefficients``, whose g_0 = 1, so the bands sum to the identity and the
    Triton kernel takes the path the library takes: M-1 accumulators plus ``X - Σ``)."""
    return band_coefficients(torch.linspace(-1.0, 1.0, M + 1, dtype=torch.float64), K)


def fusion_factors(S, d, r, O, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    f = lambda *s: torch.randn(*s, device=device, generator=g)
    return dict(K=(f(S, d, r) / d ** 0.5).to(dtype), V=(f(O, S, r) / S ** 0.5).to(dtype),
                Q=(f(O, d, r) / r ** 0.5).to(dtype), w=f(d).to(dtype))


def _chunked_reference(n: int, fwd: Callable, inputs: Dict[str, torch.Tensor],
                       node_inputs: Dict[str, int], grad_out: torch.Tensor, chunk: int):
    """float64 outputs and gradients of a per-node op, computed over chunks of nodes.

    ``node_inputs`` names the inputs indexed by node (and along which axis); their gradients
    are assembled chunk by chunk, the others summed.
    """
    p64 = {k: v.detach().double() for k, v in inputs.items()}
    grads = {k: torch.zeros_like(v) for k, v in p64.items()}
    outs = []
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        ins = {k: (v.narrow(node_inputs[k], a, b - a) if k in node_inputs else v)
               .clone().requires_grad_() for k, v in p64.items()}
        out = fwd(ins, a, b)
        gs = torch.autograd.grad(out, list(ins.values()), grad_out[a:b].double())
        for (k, _), gk in zip(ins.items(), gs):
            if k in node_inputs:
                grads[k].narrow(node_inputs[k], a, b - a).copy_(gk)
            else:
                grads[k] += gk
        outs.append(out.detach())
    return torch.cat(outs), grads


# -- benchmarks -----------------------------------------------------------------------------
def run_chebyshev(sizes: dict, device="cuda", dtype=torch.float32) -> dict:
    op32 = power_law_graph(sizes["n_users"], sizes["n_items"], sizes["n_edges"], device)
    N, d, K, M = op32.shape[0], sizes["d"], sizes["K"], sizes["M"]
    op = op32.to(dtype) if dtype != torch.float32 else op32
    X = torch.randn(N, d, device=device, generator=torch.Generator(device=device).manual_seed(1))
    X = X.to(dtype)
    coeffs = jackson_band_coeffs(M, K).float()
    ours = lambda: chebyshev_bands(op, X, coeffs, backend="triton")
    out = ours()
    ref64 = chebyshev_bands_reference(op.to(torch.float64), X.double(), coeffs.double().to(device))
    err = max(rel_err(out[b], ref64[b]) for b in range(M))
    del ref64, out
    ref_op = op if dtype == torch.float32 else op32   # cuSPARSE SpMM in float32
    ref_X = X.float()
    c_dev = coeffs.to(device)
    reference = lambda: chebyshev_bands_reference(ref_op, ref_X, c_dev)
    A = ref_op.matrix
    spmm = lambda: [torch.mm(A, ref_X) for _ in range(K - 1)]
    res = dict(op=f"chebyshev K={K} M={M} d={d} ({dtype_name(dtype)})", err=err,
               max_err=MAX_ERR[dtype], nnz=op.nnz, N=N, ours=ours)
    if err <= MAX_ERR[dtype]:
        res["ours_ms"] = cuda_time(ours)
        res["ref_ms"] = cuda_time(reference, reps=3)
        res["spmm_ms"] = cuda_time(spmm, reps=3)
    return res


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _fusion_timings(ours_fwd, ref_fwd, inputs: List[torch.Tensor], grad_out) -> dict:
    """fwd, bwd and fwd+bwd times of ours and the reference (``ours``: our fwd+bwd)."""
    res = dict(ours=lambda: torch.autograd.grad(ours_fwd(), inputs, grad_out))
    for name, fwd in (("ours", ours_fwd), ("ref", ref_fwd)):
        with torch.no_grad():
            res[f"{name}_fwd_ms"] = cuda_time(fwd, reps=3)
        out = fwd()
        res[f"{name}_bwd_ms"] = cuda_time(
            lambda: torch.autograd.grad(out, inputs, grad_out, retain_graph=True), reps=3)
        del out
        res[f"{name}_ms"] = cuda_time(lambda: torch.autograd.grad(fwd(), inputs, grad_out), reps=3)
    return res


def run_cp_fusion(sizes: dict, device="cuda", dtype=torch.float32) -> dict:
    n, S, d, r, O = (sizes[k] for k in ("n", "S", "d", "r", "O"))
    g = torch.Generator(device=device).manual_seed(2)
    p = dict(H=torch.randn(n, S, d, device=device, generator=g).to(dtype),
             **fusion_factors(S, d, r, O, dtype, device))
    names = ["H", "K", "V", "Q", "w"]
    ins = [p[k].requires_grad_() for k in names]
    grad_out = torch.randn(n, d, device=device, generator=g).to(dtype)
    out = cp_fusion(*ins, backend="triton")
    grads = torch.autograd.grad(out, ins, grad_out)
    ref_out, ref_g = _chunked_reference(
        n, lambda t, a, b: cp_fusion_reference(*(t[k] for k in names)), dict(zip(names, ins)),
        {"H": 0}, grad_out, chunk=200_000)
    errs = {"h": rel_err(out, ref_out)}
    errs.update({k: rel_err(gk, ref_g[k]) for k, gk in zip(names, grads)})
    del out, grads, ref_out, ref_g
    res = dict(op=f"cp_fusion n={n} S={S} d={d} r={r} ({dtype_name(dtype)})",
               err=max(errs.values()), errs=errs, max_err=MAX_ERR[dtype])
    if res["err"] <= MAX_ERR[dtype]:
        res.update(_fusion_timings(lambda: cp_fusion(*ins, backend="triton"),
                                   lambda: cp_fusion_reference(*ins), ins, grad_out))
    return res


def run_band_fusion(sizes: dict, device="cuda", dtype=torch.float32) -> dict:
    N, k, B, Mb, d, r, O = (sizes[x] for x in ("N", "k", "bands", "modalities", "d", "r", "O"))
    S = Mb * B
    g = torch.Generator(device=device).manual_seed(3)
    U = (torch.randn(N, k, device=device, generator=g) / math.sqrt(k)).to(dtype)
    band_ptr = [round(b * k / B) for b in range(B + 1)]
    p = dict(coef=torch.randn(Mb, k, d, device=device, generator=g).to(dtype),
             **fusion_factors(S, d, r, O, dtype, device))
    names = ["coef", "K", "V", "Q", "w"]
    ins = [p[x].requires_grad_() for x in names]
    grad_out = torch.randn(N, d, device=device, generator=g).to(dtype)
    call = lambda fn, t, **kw: fn(t["K"], t["V"], t["Q"], t["w"], coef=t["coef"],
                                  band_ptr=band_ptr, **kw)
    ins_d = dict(zip(names, ins))
    out = call(band_cp_fusion, ins_d, basis=U, backend="triton")
    grads = torch.autograd.grad(out, ins, grad_out)
    U64 = U.double()
    ref_out, ref_g = _chunked_reference(
        N, lambda t, a, b: call(band_cp_fusion_reference, t, basis=U64[a:b]), ins_d, {},
        grad_out, chunk=200_000)
    del U64
    errs = {"h": rel_err(out, ref_out)}
    errs.update({x: rel_err(gx, ref_g[x]) for x, gx in zip(names, grads)})
    del out, grads, ref_out, ref_g
    res = dict(op=f"band_fusion N={N} k={k} S={S} d={d} r={r} ({dtype_name(dtype)})",
               err=max(errs.values()), errs=errs, max_err=MAX_ERR[dtype])
    if res["err"] <= MAX_ERR[dtype]:
        res.update(_fusion_timings(lambda: call(band_cp_fusion, ins_d, basis=U, backend="triton"),
                                   lambda: call(band_cp_fusion_reference, ins_d, basis=U),
                                   ins, grad_out))
    return res


# -- pytest-benchmark entry points ------------------------------------------------------------
def _record(benchmark, res: dict):
    """Time ours with pytest-benchmark (after the accuracy gate); ratios go to extra_info."""
    if res["err"] > res["max_err"]:
        pytest.fail(f"{res['op']}: relative error {res['err']:.2e} > {res['max_err']:.0e}; "
                    "no time reported")
    ours = res.pop("ours")
    benchmark.pedantic(lambda: (ours(), torch.cuda.synchronize()), rounds=3, warmup_rounds=1)
    benchmark.extra_info.update({k: v for k, v in res.items() if not callable(v)})
    benchmark.extra_info["ratio"] = res["ref_ms"] / res["ours_ms"]
    if "spmm_ms" in res:
        benchmark.extra_info["ratio_vs_spmm"] = res["spmm_ms"] / res["ours_ms"]


@needs_cuda
def test_chebyshev_bands(benchmark):
    _record(benchmark, run_chebyshev(SIZES["chebyshev"]))


@needs_cuda
def test_cp_fusion(benchmark):
    _record(benchmark, run_cp_fusion(SIZES["cp_fusion"]))


@needs_cuda
def test_band_fusion(benchmark):
    _record(benchmark, run_band_fusion(SIZES["band_fusion"]))


# -- summary table ------------------------------------------------------------------------------
def _rows(res: dict) -> list:
    """Table rows ``(op, ours ms, ref ms, ratio, err, verdict)``."""
    ok_err = res["err"] <= res["max_err"]
    if not ok_err:
        return [(res["op"], None, None, None, res["err"], "FAIL (accuracy)")]
    rows = []
    if "spmm_ms" in res:
        pairs = [("", "ref_ms", "chebyshev"), (" vs K-1 SpMMs", "spmm_ms", "chebyshev_vs_spmm")]
    else:
        kind = "band_fusion" if res["op"].startswith("band") else "cp_fusion"
        pairs = [(" fwd", "ref_fwd_ms", None), (" bwd", "ref_bwd_ms", None),
                 (" fwd+bwd", "ref_ms", kind)]
    for suffix, ref_key, target in pairs:
        ours_key = ref_key.replace("ref", "ours") if ref_key != "spmm_ms" else "ours_ms"
        ratio = res[ref_key] / res[ours_key]
        verdict = "pass" if target is None or ratio >= TARGETS[target] else "FAIL (speed)"
        if target is not None:
            verdict += f" (target {TARGETS[target]:.2f}x)"
        rows.append((res["op"] + suffix, res[ours_key], res[ref_key], ratio, res["err"], verdict))
    return rows


def _table(results: list) -> list:
    fmt = lambda v, f: "-" if v is None else format(v, f)
    lines = [f"{'op':<58} {'ours ms':>9} {'ref ms':>9} {'ratio':>7} {'max rel err':>12}  verdict"]
    for op, ours, ref, ratio, err, verdict in results:
        lines.append(f"{op:<58} {fmt(ours, '9.2f')} {fmt(ref, '9.2f')} {fmt(ratio, '7.2f')} "
                     f"{fmt(err, '12.2e')}  {verdict}")
    return lines


def main(argv: list) -> int:
    quick = "--quick" in argv
    sizes = QUICK if quick else SIZES
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA device; nothing to measure")
        return 0
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    results = []
    jobs = [("chebyshev", run_chebyshev, torch.float32), ("chebyshev", run_chebyshev, torch.bfloat16),
            ("cp_fusion", run_cp_fusion, torch.float32), ("cp_fusion", run_cp_fusion, torch.bfloat16),
            ("band_fusion", run_band_fusion, torch.float32),
            ("band_fusion", run_band_fusion, torch.bfloat16)]
    table = argv[argv.index("--table") + 1] if "--table" in argv else None
    for name, fn, dtype in jobs:
        try:
            res = fn(sizes[name], dtype=dtype)
            res.pop("ours", None)
            print(f"{res['op']}: {res}", flush=True)
            results.extend(_rows(res))
        except Exception as e:                           # report and go on with the others
            print(f"{name} ({dtype}) failed: {type(e).__name__}: {e}", flush=True)
            results.append((f"{name} ({dtype_name(dtype)})", None, None, None, float("nan"),
                            f"ERROR {type(e).__name__}"))
        torch.cuda.empty_cache()
        lines = _table(results)
        if table:                                        # rewritten after each job
            with open(table, "w") as f:
                f.write(f"{torch.cuda.get_device_name()}\n" + "\n".join(lines) + "\n")
    print("\n".join(_table(results)))
    return 0 if all("FAIL" not in r[5] and "ERROR" not in r[5] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
