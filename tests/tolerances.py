"""The one tolerance table of the test and benchmark suites, keyed by dtype."""
import torch

# The one tolerance table, keyed by dtype.
#   close: relative error between results of the same quantity computed two ways
#   solve: relative residual that iterative solvers must reach at their default tolerance
TOL = {
    torch.float64: {"close": 1e-10, "solve": 1e-8},
    torch.float32: {"close": 1e-4, "solve": 1e-4},
    torch.bfloat16: {"close": 2e-2, "solve": 5e-2},
}


def tol(dtype: torch.dtype, kind: str = "close") -> float:
    """Tolerance of ``kind`` for ``dtype`` (see ``TOL``)."""
    return TOL[dtype][kind]
