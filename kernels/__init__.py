"""Compute kernels and their launchers (installed as ``ssr_engine.kernels``): Triton for CUDA,
numba for the CPU.

Only ``@triton.jit`` / ``@numba.njit`` kernels and the functions that launch them live here: no
autograd and no modules. ``ssr_engine.ops`` wraps them with references, autograd and backend
dispatch.

* :mod:`.chebyshev` — fused Chebyshev step (CSR SpMM + recurrence + band accumulators, or the
  KPM inner products), rows binned by degree, long rows split into segments;
* :mod:`.cp_fusion` — G-HSNO CP fusion with slots read as rows (``[n, S, d]`` or gathered
  ``[S, N, d]`` bands) or formed from a partial basis; forward, gate and slot backward;
* :mod:`.topk_cpu` — (numba, CPU) the top-k of score rows leaving out excluded items, for
  the full-ranking evaluation.
"""
