"""Fused ops with backend dispatch: torch references everywhere, Triton kernels on CUDA."""
from .chebyshev import chebyshev_bands, chebyshev_bands_reference
from .cp_fusion import cp_fusion, cp_fusion_reference
from .dispatch import resolve_backend

__all__ = ["chebyshev_bands", "chebyshev_bands_reference", "cp_fusion", "cp_fusion_reference",
           "resolve_backend"]
