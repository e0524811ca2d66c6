"""Fused ops with backend dispatch: torch references everywhere, Triton kernels on CUDA."""
from .band_fusion import band_cp_fusion, band_cp_fusion_reference
from .chebyshev import (chebyshev_bands, chebyshev_bands_reference, chebyshev_moments,
                        tiles_unity)
from .cp_fusion import cp_fusion, cp_fusion_reference
from .dispatch import resolve_backend

__all__ = ["chebyshev_bands", "chebyshev_bands_reference", "chebyshev_moments", "tiles_unity",
           "cp_fusion",
           "cp_fusion_reference", "band_cp_fusion", "band_cp_fusion_reference",
           "resolve_backend"]
