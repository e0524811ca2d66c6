"""Backend choice for fused ops: Triton kernels on CUDA, numba kernels on the CPU, torch
everywhere.

``"auto"`` picks Triton for CUDA tensors, numba for CPU tensors of ops that have a numba
kernel (when numba is installed), torch otherwise; it keeps float64 work off Triton (the
kernels accumulate in float32). The environment variable ``SSR_BACKEND`` (``torch``,
``triton`` or ``numba``) overrides ``"auto"`` where the named backend can run the op.
"""
from __future__ import annotations

import functools
import os

import torch

__all__ = ["resolve_backend", "numba_usable", "BACKENDS", "TRITON_DTYPES", "NUMBA_DTYPES"]

BACKENDS = ("auto", "torch", "triton", "numba")
# input dtypes the Triton kernels take (they accumulate in float32)
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# input dtypes the numba kernels take
NUMBA_DTYPES = (torch.float32, torch.float64)


def _triton_usable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def numba_usable() -> bool:
    """Whether numba can be imported here (the CPU kernels' optional dependency; asked once,
    ``numba_usable.cache_clear()`` asks again)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _refuse_dtypes(backend: str, floats, allowed) -> None:
    bad = sorted({str(t.dtype) for t in floats if t.dtype not in allowed})
    if bad:
        takes = "/".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"backend={backend!r} takes {takes} tensors, got {', '.join(bad)}; "
                        "use backend='torch' for these")


def _resolve_auto(numba: bool, triton: bool, tens) -> str:
    env = os.environ.get("SSR_BACKEND", "").strip().lower()
    if env and env not in ("torch", "triton", "numba"):
        raise ValueError(f"SSR_BACKEND must be 'torch', 'triton' or 'numba', got {env!r}")
    floats = [t for t in tens if t.is_floating_point()]
    on_cuda = any(t.is_cuda for t in tens)
    triton_ok = triton and all(t.dtype in TRITON_DTYPES for t in floats)
    numba_ok = (numba and not on_cuda and all(t.dtype in NUMBA_DTYPES for t in floats)
                and numba_usable())
    if env == "torch":
        return "torch"
    if env == "triton" and triton_ok:
        return "triton"
    if env == "numba" and numba_ok:
        return "numba"
    # no override, or one this op cannot take (float64 for Triton, say): the default choice
    if on_cuda:
        return "triton" if triton_ok and _triton_usable() else "torch"
    return "numba" if numba_ok else "torch"


def resolve_backend(backend: str, *tensors: torch.Tensor, numba: bool = False,
                    triton: bool = True) -> str:
    """Return ``"torch"``, ``"triton"`` or ``"numba"`` for ``backend`` and the op's inputs.

    Args:
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"numba"``.
        tensors: the op's input tensors (others are ignored).
        numba: whether the op has a numba kernel (``"auto"`` then takes it for CPU tensors).
        triton: whether the op has a Triton kernel.

    ``"auto"`` (and ``SSR_BACKEND=triton``) keep float64 inputs off Triton; without numba
    installed ``"auto"`` falls back to torch; an ``SSR_BACKEND`` naming a backend the op does
    not have is ignored.

    Raises:
        ValueError: for an unknown backend name, or ``"numba"`` / ``"triton"`` for an op
            without such a kernel.
        TypeError: when ``"triton"`` or ``"numba"`` is asked for with inputs of a dtype it
            does not take.
        RuntimeError: when ``"triton"`` or ``"numba"`` is asked for but cannot run here.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    tens = [t for t in tensors if isinstance(t, torch.Tensor)]
    if backend == "auto":
        backend = _resolve_auto(numba, triton, tens)
        if backend != "triton":                 # SSR_BACKEND=triton is checked below
            return backend
    floats = [t for t in tens if t.is_floating_point()]
    if backend == "triton":
        if not triton:
            raise ValueError("this op has no Triton kernel; use backend='torch' (or 'auto')")
        interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
        if not _triton_usable():
            raise RuntimeError("backend='triton' needs the triton package; install it or use "
                               "backend='torch'")
        _refuse_dtypes("triton", floats, TRITON_DTYPES)
        if not interpret and not all(t.is_cuda for t in tens):
            raise RuntimeError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 "
                               "for the CPU interpreter); use backend='torch' on the CPU")
    elif backend == "numba":
        if not numba:
            raise ValueError("this op has no numba kernel; use backend='torch' (or 'auto')")
        if not numba_usable():
            raise RuntimeError("backend='numba' needs the numba package (pip install numba); "
                               "or use backend='torch'")
        _refuse_dtypes("numba", floats, NUMBA_DTYPES)
        if any(t.is_cuda for t in tens):
            raise RuntimeError("backend='numba' runs on the CPU; these tensors are on CUDA "
                               "(use backend='triton', 'torch' or 'auto')")
    return backend
