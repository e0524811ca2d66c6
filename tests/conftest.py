"""Shared test fixtures and the one tolerance table (keyed by dtype)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Multi-process tests spawn workers that import test modules by name ("tests.graph...");
# spawned children inherit sys.path, so the repository root must be on it also when pytest
# is started as a script (``pytest``) rather than as ``python -m pytest``.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Real data lives beside the repository (../shared/data); SSR_DATA overrides.
DATA_DIR = Path(os.environ.get("SSR_DATA",
                               Path(__file__).resolve().parents[1].parent / "shared" / "data"))

@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.fail(f"shared data folder {DATA_DIR} is missing (set SSR_DATA)")
    return DATA_DIR


@pytest.fixture
def disk_fills_after(monkeypatch):
    """``disk_fills_after(n)``: files that :func:`atomic_write` opens for binary writing raise
    ENOSPC once ``n`` bytes have been written (a disk that fills up)."""
    def fill(nbytes):
        import errno
        import io
        import os
        from ssr_engine.train import checkpoint as mod
        real = os.fdopen

        class Full(io.BufferedWriter):
            written = 0

            def write(self, b):
                Full.written += len(b)
                if Full.written > nbytes:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return super().write(b)

        def fdopen(fd, mode="r", *a, **k):
            fh = real(fd, mode, *a, **k)
            return Full(fh.detach()) if mode == "wb" else fh

        monkeypatch.setattr(mod.os, "fdopen", fdopen)
        return Full

    return fill
