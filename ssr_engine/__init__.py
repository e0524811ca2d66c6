"""ssr_engine: Structured Spectral Reasoning for multimodal recommendation, built to scale.

The public API: graphs and operators, eigensolvers, spectral bands, fused ops and the model.
"""
from .graph import InteractionGraph, Operator, as_operator
from .graph.partition import PartitionedOperator, balanced_row_bounds
from .distributed import RankFailure, init_distributed, run_local, shutdown_distributed
from .linalg import EigResult, NoConvergence, eigsh, graph_eigs
from .spectral import (SpectralBands, Spectrum, band_coefficients, band_edges, band_energies,
                       chebyshev_filter, jackson_damping, kpm_moments)
from .nn import LightGCN, MFBPR, SSRModel
from .ops import band_cp_fusion, chebyshev_bands, chebyshev_moments, cp_fusion, masked_topk
from .explain import Attribution, attribute, write_report

__version__ = "0.1.0"

__all__ = [
    "InteractionGraph", "Operator", "as_operator",
    "PartitionedOperator", "balanced_row_bounds",
    "RankFailure", "init_distributed", "shutdown_distributed", "run_local",
    "EigResult", "NoConvergence", "eigsh", "graph_eigs",
    "SpectralBands", "Spectrum", "band_coefficients", "band_edges", "band_energies",
    "chebyshev_filter", "jackson_damping", "kpm_moments",
    "MFBPR", "LightGCN", "SSRModel",
    "chebyshev_bands", "chebyshev_moments", "cp_fusion", "band_cp_fusion", "masked_topk",
    "Attribution", "attribute", "write_report",
]
