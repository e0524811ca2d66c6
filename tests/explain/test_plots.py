"""Figures: one panel per modality / slot, PNG files that open."""
import matplotlib.image as mpimg
import pytest
import torch

from ssr_engine.data import synthetic_dataset
from ssr_engine.explain import (attribute, band_interaction, band_usage, modality_spectra,
                                reliabilities, slot_energy)
from ssr_engine.explain.plots import (plot_interaction, plot_reliability, plot_spectra,
                                      plot_usage, plot_user, save_png, slot_colors)
from ssr_engine.nn import SSRModel


@pytest.fixture(scope="module")
def setup():
    ds = synthetic_dataset(60, 40, 600, modalities={"text": 8}, seed=0)
    torch.manual_seed(0)
    return ds, SSRModel(ds.train_graph(), ds.features, n_bands=3, dim=8, rank=4,
                        fusion="cp").eval()


def test_figures_have_expected_panels_and_save(setup, tmp_path):
    ds, m = setup
    att = attribute(m, [0, 1], k=4)
    figs = {"spectra": (plot_spectra(modality_spectra(m, ds), m.band_report["edges"]), 2),
            "reliability": (plot_reliability(reliabilities(m), slot_energy(m), m.modalities,
                                             att.band_labels()), 4),
            "interaction": (plot_interaction(band_interaction(m), att.slot_labels(),
                                             att.output_labels), 4),
            "usage": (plot_usage(band_usage(m, ds, k=4, max_users=8), m.modalities,
                                 ["b1", "b2", "b3"]), 1),
            "user": (plot_user(att, 1), 2)}
    for name, (fig, n_axes) in figs.items():
        assert len(fig.axes) == n_axes, name
        img = mpimg.imread(save_png(fig, tmp_path / f"{name}.png"))
        assert img.shape[0] > 100 and img.shape[1] > 300, name


def test_slot_colors_distinct():
    cols = slot_colors(["id", "text", "image"], 4)
    assert len(cols) == 12 and len(set(cols)) == 12
