"""Partial eigensolvers: block Lanczos, LOBPCG, Chebyshev-filtered subspace iteration, a dense
reference, and the bipartite route to both ends of a graph Laplacian."""
from .bipartite import graph_eigs
from .eigsh import eigsh
from .result import EigResult, NoConvergence

__all__ = ["eigsh", "graph_eigs", "EigResult", "NoConvergence"]
