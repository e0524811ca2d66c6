"""Shared test fixtures and the one tolerance table (keyed by dtype)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Real data lives beside the repository (../shared/data); SSR_DATA overrides.
DATA_DIR = Path(os.environ.get("SSR_DATA",
                               Path(__file__).resolve().parents[1].parent / "shared" / "data"))

@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.fail(f"shared data folder {DATA_DIR} is missing (set SSR_DATA)")
    return DATA_DIR
