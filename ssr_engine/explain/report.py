"""Self-contained HTML report (PNG figures embedded as base64) and per-user explanations."""
from __future__ import annotations

import base64
import csv
import html
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import Dataset
from ..nn.model import SSRModel
from .attribution import Attribution, attribute, band_edges_of, check_ssr_model
from .plots import (plot_interaction, plot_reliability, plot_spectra, plot_usage, plot_user,
                    save_png)
from .profile import (band_interaction, band_usage, check_dataset, modality_spectra,
                      reliabilities, slot_energy)

__all__ = ["write_report", "explain_user", "user_table", "default_users", "read_item_names"]

PathLike = Union[str, os.PathLike]


def read_item_names(path: PathLike, n_items: int) -> List[str]:
    """Item names from a TSV with ``itemID`` and ``title`` columns (missing ids: ``"item <id>"``).

    E.g. MovieLens-100k's ``items.tsv``. Raises ``ValueError`` when the columns are missing.
    """
    names = [f"item {i}" for i in range(n_items)]
    csv.field_size_limit(1 << 24)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        if not {"itemID", "title"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path} needs columns itemID and title, has {reader.fieldnames}")
        for row in reader:
            i = int(row["itemID"])
            if 0 <= i < n_items:
                names[i] = row["title"]
    return names


def default_users(dataset: Dataset) -> List[int]:
    """The least active, the median and the most active user with training interactions."""
    u, _ = dataset.interactions("train")
    train = np.bincount(u, minlength=dataset.n_users)
    counts = dataset.user_counts()
    active = np.flatnonzero(train > 0)
    order = active[np.argsort(counts[active], kind="stable")]
    pick = [order[0], order[order.size // 2], order[-1]]
    return list(dict.fromkeys(int(p) for p in pick))


def user_table(att: Attribution, row: int, item_names: Optional[Sequence[str]] = None,
               top: int = 3) -> List[Dict]:
    """One user's explained items as rows: rank, item, score, top slots, modality shares.

    Returns:
        A list of dicts with ``rank``, ``item``, ``name``, ``score``, ``top_slots``
        (``[(slot, contribution, share of score)]``, largest ``|contribution|`` first),
        ``by_modality`` and ``by_band`` (``{name: share of score}``).
    """
    labels = att.slot_labels()
    A = att.by_slot()[row].reshape(att.items.shape[1], -1)
    Am, Ab = att.by_modality()[row], att.by_band()[row]
    rows = []
    for r in range(A.shape[0]):
        item = int(att.items[row, r])
        s = float(att.scores[row, r])
        order = torch.argsort(A[r].abs(), descending=True)[:top].tolist()
        rows.append({
            "rank": r + 1, "item": item,
            "name": None if item_names is None else str(item_names[item]),
            "score": s,
            "top_slots": [(labels[j], float(A[r, j]), float(A[r, j]) / s) for j in order],
            "by_modality": {m: float(Am[r, j]) / s for j, m in enumerate(att.modalities)},
            "by_band": {f"b{b + 1}": float(Ab[r, b]) / s for b in range(att.n_bands)}})
    return rows


def _check_names(item_names, n_items: int):
    if item_names is not None and len(item_names) != n_items:
        raise ValueError(f"item_names has {len(item_names)} entries; the model has {n_items} "
                         "items (one name per item id)")


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<img src="data:image/png;base64,{data}" data-file="{html.escape(path.name)}" '
            f'alt="{html.escape(alt)}">')


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _pct(x: float) -> str:
    return f"{100 * x:+.0f}%"


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:left}th{background:#f4f4f4}
.cap{color:#444;font-size:.92em}.ok{color:#2a7a2a}.bad{color:#b22}
"""


def write_report(model: SSRModel, dataset: Dataset, out_dir: PathLike,
                 users: Optional[Sequence[int]] = None, k: int = 10,
                 item_names: Optional[Sequence[str]] = None, side: str = "item",
                 max_users: int = 300, cold_max: int = 5) -> Path:
    """Write PNG figures and a self-contained ``report.html`` explaining a trained SSR model.

    Contents: the energy spectrum of each modality with the band edges and atoms; the learned
    band reliabilities and the slot energies fed to the fusion; the CP band-interaction
    maps; band usage of cold-start vs more active users; and, for each of ``users``, the
    top-``k`` items with every score split exactly into (modality, band) and output-band
    contributions (the largest ``|Σ A − score| / |score|`` is reported). Also writes
    ``summary.json`` with the numbers behind the figures. Runs on the model's device; plots
    on the CPU.

    Args:
        model: a trained :class:`~ssr_engine.SSRModel`.
        dataset: the dataset it was trained on.
        out_dir: output folder (created).
        users: users to explain (default: least active, median, most active).
        k: list length.
        item_names: optional names, one per item id.
        side: attribution side (``"item"``, ``"user"``, ``"symmetric"``).
        max_users: users sampled per activity group for the band-usage figure.
        cold_max: cold-start threshold (interactions in the whole dataset).

    Returns:
        Path of ``report.html``.

    Raises:
        TypeError: when ``model`` is not an SSR model.
        ValueError: on a dataset of another size, bad user ids or ``item_names`` length.

    Example:
        >>> import tempfile
        >>> from ssr_engine.data import synthetic_dataset
        >>> from ssr_engine.nn import SSRModel
        >>> from ssr_engine.explain import write_report
        >>> ds = synthetic_dataset(60, 30, 400, modalities={"text": 6}, seed=0)
        >>> m = SSRModel(ds.train_graph(), ds.features, n_bands=2, dim=8, rank=4)
        >>> write_report(m, ds, tempfile.mkdtemp(), k=3, max_users=10).name
        'report.html'
    """
    check_ssr_model(model, stored=False)
    check_dataset(model, dataset)
    _check_names(item_names, model.n_items)
    users = default_users(dataset) if users is None else [int(u) for u in users]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config()
    edges = list(model.band_report["edges"])
    steps = tqdm(total=5 + len(users), desc="report", leave=False)

    att = attribute(model, users, k=k, side=side)
    band_labels = att.band_labels()
    short_bands = [f"b{b + 1}" for b in range(model.n_bands)]
    spectra = modality_spectra(model, dataset)
    save_png(plot_spectra(spectra, edges), out / "spectra.png")
    steps.update()
    alpha, energy = reliabilities(model), slot_energy(model)
    save_png(plot_reliability(alpha, energy, model.modalities, band_labels),
             out / "reliability.png")
    steps.update()
    inter = band_interaction(model)
    save_png(plot_interaction(inter, att.slot_labels(), att.output_labels), out / "interaction.png")
    steps.update()
    usage = band_usage(model, dataset, k=k, cold_max=cold_max, max_users=max_users, side=side)
    save_png(plot_usage(usage, model.modalities, short_bands), out / "usage.png")
    steps.update()
    user_files = []
    for row, u in enumerate(users):
        user_files.append(save_png(plot_user(att, row, item_names), out / f"user_{u}.png"))
        steps.update()
    max_err = max(float(att.relative_error().max()), usage.max_relative_error)
    n_pairs = att.items.numel() + sum(usage.n_users) * k

    summary = {
        "dataset": dataset.name, "modalities": model.modalities, "n_bands": model.n_bands,
        "edges": edges, "method": model.band_report["method"], "fusion": cfg["fusion"],
        "side": side, "k": k, "pairs_checked": n_pairs, "max_relative_error": max_err,
        "spectra": [{"modality": s.name, "source": s.source,
                     "band_shares": s.band_shares.tolist(),
                     "atoms": [{"lam": a.lam, "fraction": a.fraction} for a in s.spectrum.atoms],
                     "uncovered": s.spectrum.uncovered} for s in spectra],
        "reliability": alpha.tolist(), "slot_energy": energy.tolist(),
        "interaction": None if inter is None else {k_: v.tolist() for k_, v in inter.items()},
        "usage": {"groups": usage.groups, "n_users": usage.n_users, "counts": usage.counts,
                  "shares": usage.shares.tolist(), "signed": usage.signed.tolist()},
        "users": {str(u): user_table(att, r, item_names) for r, u in enumerate(users)},
        "figures": ["spectra.png", "reliability.png", "interaction.png", "usage.png"]
                   + [p.name for p in user_files]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))

    h = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
         f"<title>SSR explanation report: {html.escape(dataset.name)}</title>",
         f"<style>{CSS}</style></head><body>",
         f"<h1>Which frequency bands drive the recommendations — {html.escape(dataset.name)}</h1>"]
    h.append(_table(["setting", "value"], [
        ("dataset", repr(dataset)), ("modalities", ", ".join(model.modalities)),
        ("bands M", model.n_bands), ("band edges λ", ", ".join(f"{e:.3f}" for e in edges)),
        ("band method", model.band_report["method"]), ("fusion", cfg["fusion"]),
        ("dim d / rank r", f"{cfg['dim']} / {cfg['rank']}"),
        ("fusion outputs", ", ".join(att.output_labels)
         + (f" (G-HSNO weight γ = {float(inter['gamma']):.3f})"
            if inter is not None and cfg["fusion"] == "cp+sum" else ""))]))
    ok = max_err <= 1e-5
    h.append(f"<p class='{'ok' if ok else 'bad'}'>Attribution check: on {n_pairs} (user, item) "
             f"pairs the contributions sum to the model's score with max relative error "
             f"{max_err:.2e} ({'within' if ok else 'above'} 1e-5).</p>")
    h.append("<p class='cap'>Every score <i>h<sub>u</sub><sup>T</sup>h<sub>i</sub></i> is split "
             "exactly: the fused item vector is a sum of terms c<sub>o,s</sub>(i), one per "
             "output band o of the G-HSNO fusion and input slot s = (modality, band), with the "
             "node's gate and scale norm held at their values; contribution A[o,s] = "
             f"h<sub>u</sub><sup>T</sup>c<sub>o,s</sub>(i) ({side} side). The contributions "
             "sum to the score; they can be negative.</p>")

    h.append("<h2>1. Energy spectrum per modality</h2>" + _img(out / "spectra.png", "spectra"))
    h.append("<p class='cap'>Energy density of each modality's signal over the eigenvalues λ "
             "of the normalised Laplacian (trivial component removed; low λ = smooth over the "
             "graph, high λ = varies between neighbours). Shaded regions are the model's bands "
             "(edges dashed) with the share of the modality's energy in each; red lines are "
             "atoms — point masses of energy at one eigenvalue (λ = 1 for the null space of the "
             "bipartite graph).</p>")
    rows = []
    for s in spectra:
        atoms = "; ".join(f"λ={a.lam:.2f}: {100 * a.fraction:.1f}%" for a in s.spectrum.atoms)
        rows.append([s.name, " / ".join(f"{100 * x:.1f}%" for x in s.band_shares.tolist()),
                     atoms or "none", f"{100 * s.spectrum.uncovered:.1f}%"])
    h.append(_table(["modality", "energy share per band " + " / ".join(short_bands),
                     "atoms (≥2%)", "outside basis"], rows))

    h.append("<h2>2. Band reliabilities and slot energies</h2>"
             + _img(out / "reliability.png", "reliability"))
    h.append("<p class='cap'>Left: the learned reliability α<sub>m,b</sub> that scales band b "
             "of modality m (1 at initialisation; larger = trusted more). Right: the energy each "
             "slot actually feeds the fusion, α² times the mean squared norm of the projected "
             "band signal, as a share of all slots.</p>")

    h.append("<h2>3. CP band-interaction map</h2>" + _img(out / "interaction.png", "interaction"))
    h.append("<p class='cap'>G-HSNO maps every input slot s into every output band o through "
             "W[o,s] = Q<sub>o</sub> diag(V<sub>o,s</sub>) K<sub>s</sub><sup>T</sup>. Left: the "
             "band-interaction weights V summed over the CP rank (sign shows whether slot s "
             "enters output o with or against the shared query map). Right: the Frobenius norm "
             "of α<sub>s</sub>W[o,s], the actual gain from slot s into output band o.</p>")

    h.append("<h2>4. Band usage: cold-start vs active users</h2>"
             + _img(out / "usage.png", "usage"))
    cold_note = ("" if any(g.startswith("cold") for g in usage.groups) else
                 f" This dataset has no cold-start users (≤ {cold_max} interactions); the groups "
                 "are activity terciles.")
    h.append("<p class='cap'>For users drawn from each activity group (interactions in the whole "
             f"dataset), the mean share |A<sub>slot</sub>| / Σ|A| over their top-{k} items: which "
             f"(modality, band) slots the recommendations rest on.{cold_note}</p>")
    rows = [[g, n, f"{lo}–{hi}"] + [" / ".join(f"{100 * x:.1f}%" for x in
                                               usage.shares[j, mi].tolist())
                                    for mi in range(len(model.modalities))]
            for j, (g, n, (lo, hi)) in enumerate(zip(usage.groups, usage.n_users, usage.counts))]
    h.append(_table(["group", "users", "interactions"]
                    + [f"{m} share per band" for m in model.modalities], rows))

    h.append("<h2>5. Example users: the bands behind each recommendation</h2>")
    h.append("<p class='cap'>Each bar is one recommended item (best first); its coloured "
             "segments are the contributions of the (modality, band) slots (a hue per modality, "
             "darker = higher-frequency band; positive to the right, negative to the left), the "
             "black diamond is the score. The right panel splits the same score by the fusion's "
             "output band.</p>")
    counts = dataset.user_counts()
    for r, (u, path) in enumerate(zip(users, user_files)):
        h.append(f"<h3>user {u} ({int(counts[u])} interactions)</h3>" + _img(path, path.stem))
        trows = [[t["rank"], t["item"] if t["name"] is None else f"{t['item']}: {t['name']}",
                  f"{t['score']:.3f}",
                  ", ".join(f"{n} {_pct(sh)}" for n, _, sh in t["top_slots"]),
                  ", ".join(f"{m} {_pct(v)}" for m, v in t["by_modality"].items())]
                 for t in summary["users"][str(u)]]
        h.append(_table(["rank", "item", "score", "top slots (share of score)",
                         "by modality"], trows))
    h.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(h), encoding="utf-8")
    steps.update()
    steps.close()
    return path


def explain_user(model: SSRModel, dataset: Dataset, user: int, out_dir: PathLike,
                 k: int = 10, item_names: Optional[Sequence[str]] = None,
                 side: str = "item") -> Dict:
    """Explain one user's top-``k``: writes ``user_<u>.png`` and ``user_<u>.json``.

    Returns:
        ``{"user", "interactions", "max_relative_error", "items": user_table(...)}``.

    Raises:
        ValueError: on a bad user id (naming the valid range) or dataset size.
    """
    check_ssr_model(model)
    check_dataset(model, dataset)
    _check_names(item_names, model.n_items)
    if isinstance(user, bool) or int(user) != user or not 0 <= int(user) < model.n_users:
        raise ValueError(f"user must be an id in [0, {model.n_users}), got {user!r}")
    user = int(user)
    att = attribute(model, [user], k=k, side=side)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_png(plot_user(att, 0, item_names), out / f"user_{user}.png")
    res = {"user": user, "interactions": int(dataset.user_counts()[user]), "side": side,
           "band_edges": band_edges_of(model),
           "max_relative_error": float(att.relative_error().max()),
           "items": user_table(att, 0, item_names)}
    (out / f"user_{user}.json").write_text(json.dumps(res, indent=1))
    return res
