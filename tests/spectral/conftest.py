"""Fixtures of the spectral tests: MovieLens-100k and a small synthetic graph, each with its
exact spectrum from a dense eigendecomposition (the independent reference)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import numpy as np
import pytest
import torch

from ssr_engine.data import load_mmrec, synthetic_dataset
from ssr_engine.graph import InteractionGraph


@dataclass
class Case:
    graph: InteractionGraph
    signals: Dict[str, torch.Tensor]   # [N, d] float64 node signals
    w: np.ndarray                      # [N] eigenvalues of L, ascending
    U: np.ndarray                      # [N, N] eigenvectors

    def centred(self, name: str) -> np.ndarray:
        v = self.graph.trivial_vector(torch.float64).numpy()
        x = self.signals[name].numpy()
        return x - np.outer(v, v @ x)

    def energies(self, name: str) -> np.ndarray:
        return ((self.U.T @ self.centred(name)) ** 2).sum(axis=1)


def _case(graph: InteractionGraph, signals) -> Case:
    L = np.eye(graph.n_nodes) - graph.normalized_adjacency_scipy().toarray()
    w, U = np.linalg.eigh(L)
    return Case(graph, signals, w, U)


@pytest.fixture(scope="session")
def ml(data_dir) -> Case:
    ds = load_mmrec(data_dir / "movielens-100k")
    g = ds.train_graph()
    return _case(g, {m: g.node_signal(ds.features[m].astype(np.float64)) for m in ("text", "meta")})


@pytest.fixture(scope="session")
def small() -> Case:
    ds = synthetic_dataset(240, 150, 2400, modalities={"image": 6}, seed=3)
    g = ds.train_graph()
    return _case(g, {"image": g.node_signal(ds.features["image"].astype(np.float64))})
