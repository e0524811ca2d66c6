"""Fused ops with backend dispatch: torch references everywhere, Triton kernels on CUDA,
numba kernels on the CPU."""
from .band_fusion import band_cp_fusion, band_cp_fusion_reference
from .chebyshev import (chebyshev_bands, chebyshev_bands_reference, chebyshev_moments,
                        tiles_unity)
from .cp_fusion import cp_fusion, cp_fusion_reference
from .dispatch import numba_usable, resolve_backend
from .ranking import masked_topk, masked_topk_reference

__all__ = ["chebyshev_bands", "chebyshev_bands_reference", "chebyshev_moments", "tiles_unity",
           "cp_fusion",
           "cp_fusion_reference", "band_cp_fusion", "band_cp_fusion_reference",
           "masked_topk", "masked_topk_reference", "resolve_backend", "numba_usable"]
