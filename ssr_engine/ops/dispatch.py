"""Backend choice for fused ops: ``"auto"`` picks Triton for CUDA tensors, torch elsewhere.

``"auto"`` also keeps float64 work on torch (the kernels accumulate in float32). The
environment variable ``SSR_BACKEND`` (``torch`` or ``triton``) overrides ``"auto"``.
"""
from __future__ import annotations

import os

import torch

__all__ = ["resolve_backend", "BACKENDS", "TRITON_DTYPES"]

BACKENDS = ("auto", "torch", "triton")
# input dtypes the Triton kernels take (they accumulate in float32)
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _triton_usable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    """Return ``"torch"`` or ``"triton"`` for ``backend`` and the op's input tensors.

    ``"auto"`` (and ``SSR_BACKEND=triton``) keep float64 inputs on torch.

    Raises:
        ValueError: for an unknown backend name.
        TypeError: when ``"triton"`` is asked for with float64 (or other unsupported) inputs.
        RuntimeError: when ``"triton"`` is asked for but cannot run here.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    tens = [t for t in tensors if isinstance(t, torch.Tensor)]
    supported = all(t.dtype in TRITON_DTYPES for t in tens if t.is_floating_point())
    if backend == "auto":
        env = os.environ.get("SSR_BACKEND", "").strip().lower()
        if env:
            if env not in ("torch", "triton"):
                raise ValueError(f"SSR_BACKEND must be 'torch' or 'triton', got {env!r}")
            backend = env if supported else "torch"
        else:
            on_cuda = any(t.is_cuda for t in tens)
            backend = "triton" if on_cuda and supported and _triton_usable() else "torch"
    if backend == "triton":
        interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
        if not _triton_usable():
            raise RuntimeError("backend='triton' needs the triton package; install it or use "
                               "backend='torch'")
        if not supported:
            bad = sorted({str(t.dtype) for t in tens if t.is_floating_point()
                          and t.dtype not in TRITON_DTYPES})
            raise TypeError(f"backend='triton' takes float32/bfloat16/float16 tensors, got "
                            f"{', '.join(bad)}; use backend='torch' for these")
        if not interpret and not all(t.is_cuda for t in tens):
            raise RuntimeError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 "
                               "for the CPU interpreter); use backend='torch' on the CPU")
    return backend
