"""Graphs and operators: the interaction graph and ``[N, B]``-block linear operators."""
from .interaction import InteractionGraph
from .operators import FunctionOperator, Operator, as_operator, csr_tensor

__all__ = ["InteractionGraph", "Operator", "FunctionOperator", "as_operator", "csr_tensor"]
