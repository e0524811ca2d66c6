"""Spectral bands: Chebyshev filters, KPM moments, energy-balanced band edges (DESIGN.md §2)."""
from .bands import SpectralBands, Spectrum, exact_memory_estimate
from .edges import band_edges, band_energies, default_min_width, spectrum_edges
from .filters import band_coefficients, chebyshev_filter, filter_response, jackson_damping
from .kpm import Atom, kpm_atoms, kpm_cumulative, kpm_density, kpm_moments

__all__ = ["SpectralBands", "Spectrum", "exact_memory_estimate",
           "band_edges", "band_energies", "default_min_width", "spectrum_edges",
           "band_coefficients", "chebyshev_filter", "filter_response", "jackson_damping",
           "Atom", "kpm_atoms", "kpm_cumulative", "kpm_density", "kpm_moments"]
