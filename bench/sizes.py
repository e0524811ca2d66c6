"""The one registry of benchmark sizes and graphs.

Every benchmark takes its problem sizes from here so that CPU and GPU runs, and the figures
in bench/RESULTS.md, refer to the same problems.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from ssr_engine.data import load_mmrec, synthetic_dataset

# The shared data folder sits beside the repository (../shared/data); SSR_DATA overrides.
DATA_DIR = Path(os.environ.get("SSR_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))

# Synthetic graphs: (users, items, interactions).
SYNTHETIC = {
    "small": (20_000, 10_000, 300_000),
    "1M": (1_000_000, 500_000, 20_000_000),
}

REAL = ("amazon-baby", "amazon-clothing", "movielens-100k")


def have_real(name: str) -> bool:
    return (DATA_DIR / name).is_dir()


@functools.lru_cache(maxsize=None)
def real_dataset(name: str):
    """A real MMRec dataset from the shared data folder."""
    return load_mmrec(DATA_DIR / name)


@functools.lru_cache(maxsize=None)
def synthetic(size: str, seed: int = 0):
    """A synthetic dataset of a registered size (all interactions labelled by split)."""
    n_u, n_i, n_e = SYNTHETIC[size]
    return synthetic_dataset(n_u, n_i, n_e, seed=seed, name=f"synthetic-{size}")
