"""Backend choice for fused ops: ``"auto"`` picks Triton for CUDA tensors, torch elsewhere.

The environment variable ``SSR_BACKEND`` (``torch`` or ``triton``) overrides ``"auto"``.
"""
from __future__ import annotations

import os

import torch

__all__ = ["resolve_backend", "BACKENDS"]

BACKENDS = ("auto", "torch", "triton")


def _triton_usable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    """Return ``"torch"`` or ``"triton"`` for ``backend`` and the op's input tensors.

    Raises:
        ValueError: for an unknown backend name.
        RuntimeError: when ``"triton"`` is asked for but cannot run here.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("SSR_BACKEND", "").strip().lower()
        if env:
            if env not in ("torch", "triton"):
                raise ValueError(f"SSR_BACKEND must be 'torch' or 'triton', got {env!r}")
            backend = env
        else:
            on_cuda = any(t.is_cuda for t in tensors if isinstance(t, torch.Tensor))
            backend = "triton" if on_cuda and _triton_usable() else "torch"
    if backend == "triton":
        interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
        if not _triton_usable():
            raise RuntimeError("backend='triton' needs the triton package; install it or use "
                               "backend='torch'")
        if not interpret and not all(t.is_cuda for t in tensors if isinstance(t, torch.Tensor)):
            raise RuntimeError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 "
                               "for the CPU interpreter); use backend='torch' on the CPU")
    return backend
