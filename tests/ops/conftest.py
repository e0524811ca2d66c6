"""Fixtures of the fused-op tests.

Without CUDA the Triton kernels run in Triton's CPU interpreter, which must be switched on
before the kernels are decorated; the ops import ``ssr_engine.kernels`` lazily, so setting the
variable here (when pytest collects this folder) is early enough.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> torch.device:
    """CUDA when present (kernels compiled), else the CPU (kernels interpreted)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def rel_err():
    """``rel_err(a, b)``: relative RMS error ``||a - b|| / ||b||``, computed in float64."""
    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        return float((a - b).norm() / b.norm().clamp_min(1e-300))
    return rel
