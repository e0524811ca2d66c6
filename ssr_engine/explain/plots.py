"""Matplotlib figures of SSR explanations (Agg backend, PNG; everything on the CPU).

Each ``plot_*`` function returns a :class:`matplotlib.figure.Figure`; :func:`save_png` writes
and closes it. matplotlib is imported on first use, so the rest of the package works
without it.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from .attribution import Attribution
from .profile import BandUsage, ModalitySpectrum

__all__ = ["plot_spectra", "plot_reliability", "plot_interaction", "plot_usage",
           "plot_user", "save_png", "slot_colors"]

_MODALITY_MAPS = ("Blues", "Oranges", "Greens", "Purples", "Reds", "Greys")
DPI = 110
#: atoms labelled per spectrum panel (largest first).
MAX_ATOM_LABELS = 3


def _plt():
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ssr_engine.explain plots need matplotlib: pip install "
                          "'matplotlib>=3.7'") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def save_png(fig, path) -> Path:
    """Write ``fig`` to ``path`` as PNG and close it."""
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def slot_colors(modalities: Sequence[str], n_bands: int) -> List:
    """One colour per ``(modality, band)`` slot: a hue per modality, darker = higher band."""
    plt = _plt()
    out = []
    for j, _ in enumerate(modalities):
        cmap = plt.get_cmap(_MODALITY_MAPS[j % len(_MODALITY_MAPS)])
        out += [cmap(0.35 + 0.55 * (b / max(1, n_bands - 1))) for b in range(n_bands)]
    return out


#: light band backgrounds, cycled.
_BAND_COLORS = ("#eeeeee", "#dce7f5", "#fbe4d5", "#e1f0da", "#ece1f4", "#fdf3cf")
#: smallest horizontal gap between band labels, in λ.
_LABEL_GAP = 0.14


def _label_positions(centers: Sequence[float]) -> List[float]:
    # Push labels of narrow neighbouring bands apart, keeping them inside [0, 2].
    x = list(centers)
    for j in range(1, len(x)):
        x[j] = max(x[j], x[j - 1] + _LABEL_GAP)
    x[-1] = min(x[-1], 2.0 - _LABEL_GAP / 2)
    for j in range(len(x) - 2, -1, -1):
        x[j] = min(x[j], x[j + 1] - _LABEL_GAP)
    return x


def _band_spans(ax, edges: Sequence[float], shares: Optional[Sequence[float]] = None):
    M = len(edges) - 1
    centers = [0.5 * (edges[b] + edges[b + 1]) for b in range(M)]
    for b, x in enumerate(_label_positions(centers)):
        ax.axvspan(edges[b], edges[b + 1], color=_BAND_COLORS[b % len(_BAND_COLORS)], zorder=0)
        label = f"b{b + 1}" + ("" if shares is None else f"\n{100 * shares[b]:.0f}%")
        ax.text(x, 0.97, label, transform=ax.get_xaxis_transform(), ha="center", va="top",
                fontsize=8, color="#333333")
        if abs(x - centers[b]) > 1e-9:
            ax.plot([x, centers[b]], [0.84, 0.78], transform=ax.get_xaxis_transform(),
                    color="#777777", lw=0.6)
    for e in edges[1:-1]:
        ax.axvline(e, color="#555555", lw=0.8, ls="--", zorder=1)


def plot_spectra(spectra: Sequence[ModalitySpectrum], edges: Sequence[float]):
    """Energy density over ``λ`` per modality, the model's bands and their shares, atoms.

    Shapes:
        one panel per modality.
    """
    plt = _plt()
    n = len(spectra)
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.4 * n), squeeze=False, sharex=True)
    for ax, ms in zip(axes[:, 0], spectra):
        s = ms.spectrum
        lam, dens = s.lam.numpy(), s.density.numpy()
        _band_spans(ax, edges, ms.band_shares.tolist())
        ax.fill_between(lam, dens, color="#1f77b4", alpha=0.35, lw=0, zorder=2)
        ax.plot(lam, dens, color="#1f77b4", lw=1.2, zorder=3)
        top = float(np.max(dens)) if dens.size and np.max(dens) > 0 else 1.0
        ax.set_ylim(0, top * 1.5)
        for a in s.atoms:
            ax.axvline(a.lam, color="#d62728", lw=0.8 + 6.0 * a.fraction, alpha=0.8, zorder=4)
        if s.atoms:
            big = sorted(s.atoms, key=lambda a: -a.fraction)[:MAX_ATOM_LABELS]
            rest = sum(a.fraction for a in s.atoms) - sum(a.fraction for a in big)
            text = "atoms (red): " + ", ".join(f"λ={a.lam:.2f} {100 * a.fraction:.0f}%"
                                               for a in big)
            if len(s.atoms) > len(big):
                text += f" (+{len(s.atoms) - len(big)} more, {100 * rest:.0f}%)"
            ax.text(0.99, 0.74, text, transform=ax.transAxes, ha="right", va="top", fontsize=8,
                    color="#d62728", zorder=6,
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1.5))
        extra = f"; {100 * s.uncovered:.0f}% outside the basis" if s.uncovered > 1e-3 else ""
        ax.set_title(f"{ms.name}: {ms.source}{extra}", fontsize=9, loc="left")
        ax.set_ylabel("energy / unit λ", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.set_xlim(0.0, 2.0)
    axes[-1, 0].set_xlabel("λ (eigenvalue of the normalised Laplacian; low = smooth)")
    fig.suptitle("Energy spectrum per modality, band edges (dashed) and band energy shares",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _heat(ax, M: np.ndarray, xlabels, ylabels, title, cmap="viridis", center=False, fmt=".2f"):
    if center:
        v = float(np.max(np.abs(M))) or 1.0
        im = ax.imshow(M, cmap=cmap, vmin=-v, vmax=v, aspect="auto")
    else:
        im = ax.imshow(M, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(xlabels)), xlabels, rotation=45 if len(xlabels) > 6 else 0,
                  ha="right" if len(xlabels) > 6 else "center", fontsize=8)
    ax.set_yticks(range(len(ylabels)), ylabels, fontsize=8)
    ax.set_title(title, fontsize=9)
    if M.size <= 96:
        lo, hi = im.get_clim()
        for (r, c), val in np.ndenumerate(M):
            frac = (val - lo) / (hi - lo) if hi > lo else 0.5
            ax.text(c, r, format(val, fmt), ha="center", va="center", fontsize=7,
                    color="white" if (frac < 0.5 if not center else abs(frac - 0.5) > 0.3)
                    else "black")
    return im


def plot_reliability(alpha: torch.Tensor, energy: torch.Tensor, modalities: Sequence[str],
                     band_labels: Sequence[str]):
    """Heat maps of the reliabilities ``α [m, M]`` and the slot energy shares ``[m, M]``."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.8 + 0.6 * len(modalities) + 1.2))
    band_labels = [lab.replace(" ", "\n", 1) for lab in band_labels]     # "b1\n[0.000, 0.846)"
    im = _heat(axes[0], alpha.numpy(), band_labels, modalities,
               "learned band reliability α (softplus; 1 at init)")
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    E = energy.numpy()
    share = E / max(float(E.sum()), 1e-300)
    im = _heat(axes[1], 100 * share, band_labels, modalities,
               "slot energy fed to the fusion, % of all slots (α² ‖H‖²)", cmap="magma", fmt=".1f")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    fig.tight_layout()
    return fig


def plot_interaction(inter: Optional[dict], slot_labels: Sequence[str],
                     output_labels: Sequence[str]):
    """The CP band-interaction maps ``Σ_r V [O, S]`` and ``‖α_s W[o, s]‖_F [O, S]``."""
    plt = _plt()
    if inter is None:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "plain-sum fusion: every slot enters h with weight α_s\n"
                "(no band-interaction tensor)", ha="center", va="center")
        return fig
    S = len(slot_labels)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.7 * S * 2), 1.6 + 0.45 * len(output_labels)))
    im = _heat(axes[0], inter["v_sum"].numpy(), slot_labels, output_labels,
               "Σ_r V[o, s, r] (CP band-interaction weights)", cmap="RdBu_r", center=True)
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    im = _heat(axes[1], inter["norm"].numpy(), slot_labels, output_labels,
               "‖α_s Q_o diag(V_os) K_sᵀ‖_F (slot s → output band o)"
               if float(inter.get("gamma", 1.0)) == 1.0 else
               f"‖γ α_s Q_o diag(V_os) K_sᵀ‖_F, γ = {float(inter['gamma']):.3f} "
               "(beside the sum path)",
               cmap="viridis")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    for ax in axes:
        ax.set_xlabel("input slot (modality:band)", fontsize=8)
        ax.set_ylabel("output band", fontsize=8)
    fig.tight_layout()
    return fig


def plot_usage(usage: BandUsage, modalities: Sequence[str], band_labels: Sequence[str]):
    """Mean attribution share per slot for each user group (grouped bars)."""
    plt = _plt()
    G, m, M = usage.shares.shape
    x = np.arange(m * M)
    width = 0.8 / max(1, G)
    fig, ax = plt.subplots(figsize=(max(7, 0.75 * m * M + 2), 3.6))
    cmap = plt.get_cmap("viridis")
    for g in range(G):
        ax.bar(x - 0.4 + width * (g + 0.5), 100 * usage.shares[g].flatten().numpy(), width,
               label=f"{usage.groups[g]} ({usage.n_users[g]} users)",
               color=cmap(g / max(1, G - 1) * 0.85))
    ax.set_xticks(x, [f"{mod}:{bl}" for mod in modalities for bl in band_labels],
                  rotation=45 if m * M > 4 else 0, ha="right" if m * M > 4 else "center",
                  fontsize=8)
    for j in range(1, m):
        ax.axvline(j * M - 0.5, color="#888888", lw=0.8)
    ax.set_ylabel("mean |attribution| share, %", fontsize=8)
    ax.set_title("Band usage: which slots drive the top-k lists, by user activity",
                 fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def plot_user(att: Attribution, row: int = 0, item_names: Optional[Sequence[str]] = None,
              max_name: int = 38):
    """One user's top-``k`` items, each score split into (modality, band) contributions.

    Left: signed stacked bars per slot (positive to the right of 0, negative to the left),
    the score as a black diamond. Right: the same scores split by the fusion's output band.
    """
    plt = _plt()
    A = att.by_slot()[row].reshape(att.items.shape[1], -1).numpy()         # [k, S]
    Ao = att.by_output()[row].numpy()                                      # [k, O]
    scores = att.scores[row].to(torch.float64).numpy()
    items = att.items[row].tolist()
    k, S = A.shape

    def name(i):
        if item_names is None:
            return f"item {i}"
        s = str(item_names[i])
        return s if len(s) <= max_name else s[:max_name - 1] + "…"

    labels = [f"{r + 1}. {name(i)}" for r, i in enumerate(items)]
    y = np.arange(k)[::-1]
    O = Ao.shape[1]
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.2 + 0.42 * k),
                             gridspec_kw={"width_ratios": [3, 1.2] if O > 1 else [3, 0.001]})

    def stacked(ax, parts, colors, legend):
        pos = np.zeros(k)
        neg = np.zeros(k)
        for s in range(parts.shape[1]):
            v = parts[:, s]
            left = np.where(v >= 0, pos, neg)
            ax.barh(y, v, left=left, color=colors[s], edgecolor="white", lw=0.4,
                    label=legend[s], height=0.75)
            pos += np.maximum(v, 0)
            neg += np.minimum(v, 0)
        ax.scatter(scores, y, marker="D", color="black", s=22, zorder=5, label="score")
        ax.axvline(0, color="black", lw=0.8)
        ax.tick_params(labelsize=8)

    stacked(axes[0], A, slot_colors(att.modalities, att.n_bands), att.slot_labels())
    axes[0].set_yticks(y, labels, fontsize=8)
    axes[0].set_xlabel("contribution to score h_uᵀh_i", fontsize=8)
    axes[0].set_title(f"user {int(att.users[row])}: top-{k} items, score split by "
                      f"(modality, band) [{att.side} side]", fontsize=9, loc="left")
    axes[0].legend(fontsize=7, ncol=min(4, S + 1), loc="lower left",
                   bbox_to_anchor=(0.0, 1.06), frameon=False)
    if O > 1:
        cmap = plt.get_cmap("cool")
        stacked(axes[1], Ao, [cmap(o / max(1, O - 1)) for o in range(O)], att.output_labels)
        axes[1].set_yticks(y, [""] * k)
        axes[1].set_title("by fusion output band", fontsize=9, loc="left")
        axes[1].legend(fontsize=7, ncol=min(3, O + 1), loc="lower left",
                       bbox_to_anchor=(0.0, 1.06), frameon=False)
        axes[1].set_xlabel("contribution", fontsize=8)
    else:
        axes[1].axis("off")
    fig.tight_layout()
    return fig
