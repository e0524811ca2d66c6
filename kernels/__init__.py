"""Triton kernels and their launchers (installed as ``ssr_engine.kernels``).

Only ``@triton.jit`` kernels and the functions that launch them live here: no autograd and no
modules. ``ssr_engine.ops`` wraps them with references, autograd and backend dispatch.
"""
