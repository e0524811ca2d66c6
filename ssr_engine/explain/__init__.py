"""Interpretability: which frequency bands drive each recommendation (exact attributions).

* :func:`attribute` — split scores ``h_uᵀ h_i`` exactly over (output band, modality, band);
* :mod:`~ssr_engine.explain.profile` — modality spectra, reliabilities, slot energies, the
  CP band-interaction map, band usage of cold-start vs active users;
* :func:`write_report` — PNG figures and a self-contained HTML report;
* ``python -m ssr_engine.explain --checkpoint PATH --data DIR --user U --out DIR``.
"""
from .attribution import Attribution, FusionTerms, attribute, fusion_terms
from .profile import (BandUsage, ModalitySpectrum, band_interaction, band_usage,
                      modality_spectra, reliabilities, slot_energy)
from .report import explain_user, read_item_names, write_report
from .restore import load_trained_model

__all__ = ["Attribution", "FusionTerms", "attribute", "fusion_terms", "BandUsage",
           "ModalitySpectrum", "band_interaction", "band_usage", "modality_spectra",
           "reliabilities", "slot_energy", "explain_user", "read_item_names", "write_report",
           "load_trained_model"]
