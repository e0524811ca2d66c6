"""The one tolerance table of the test and benchmark suites, keyed by dtype."""
import torch

# The one tolerance table, keyed by dtype.
#   close: relative error between results of the same quantity computed two ways
#   solve: relative residual that iterative solvers must reach at their default tolerance
#   partition: relative error of a result on a row-partitioned (multi-rank) operator vs one process
#   unity: relative error of Σ_b band_b(X) vs X (filter banks that partition unity)
#   attribution: relative error of Σ contributions vs the model's score (exact attributions)
TOL = {
    torch.float64: {"close": 1e-10, "solve": 1e-8, "partition": 1e-10, "unity": 1e-10,
                    "attribution": 1e-10},
    torch.float32: {"close": 1e-4, "solve": 1e-4, "partition": 1e-5, "unity": 1e-5,
                    "attribution": 1e-5},
    torch.bfloat16: {"close": 2e-2, "solve": 5e-2, "partition": 2e-2, "unity": 2e-2,
                     "attribution": 2e-2},
}


def tol(dtype: torch.dtype, kind: str = "close") -> float:
    """Tolerance of ``kind`` for ``dtype`` (see ``TOL``)."""
    return TOL[dtype][kind]
