"""ssr_engine: Structured Spectral Reasoning for multimodal recommendation, built to scale.

The public API: graphs and operators, eigensolvers, spectral bands, fused ops and the model.
"""
from .graph import InteractionGraph, Operator, as_operator
from .linalg.result import EigResult, NoConvergence

__version__ = "0.1.0"

__all__ = [
    "InteractionGraph", "Operator", "as_operator",
    "EigResult", "NoConvergence",
]
