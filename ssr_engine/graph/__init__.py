"""Graphs and operators: the interaction graph and ``[N, B]``-block linear operators."""
from .interaction import Growth, InteractionGraph
from .operators import FunctionOperator, Operator, as_operator, csr_tensor

__all__ = ["InteractionGraph", "Growth", "Operator", "FunctionOperator", "as_operator",
           "csr_tensor"]
