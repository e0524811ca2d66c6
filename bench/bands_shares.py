"""Figure 3 of the energy-balanced bands issue: every band's energy share, M = 4.

Signals: MovieLens-100k with its real text and meta item features, and the Amazon Baby and
Clothing training graphs with synthetic planted item features (:func:`planted_item_features`);
users carry the mean of their training items' features (``graph.node_signal``). For each
signal the table lists the shares of ``"chebyshev"`` at orders 16, 32, 64, 128, 256 and at its
default order, and of ``"exact"`` (the dense SVD where the smaller side is at most 8000, the
Gram route above it: about 15 minutes and 9 GB for Clothing on 2 cores). Every row checks that
the shares predicted at fit time (from the moments, or from the exact spectrum) equal the
shares of the filtered signals. The goal: every band ≥ 1/(2M) = 0.125 for the default order
and for ``"exact"``.

Run (from the repository root)::

    flock /tmp/ssr_heavy.lock python bench/bands_shares.py            # the whole table
    python bench/bands_shares.py --exact svd                          # no Gram-route rows
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sizes import have_real, real_dataset  # noqa: E402
from ssr_engine import InteractionGraph, SpectralBands  # noqa: E402
from ssr_engine.spectral import exact_memory_estimate  # noqa: E402

M = 4
ORDERS = (16, 32, 64, 128, 256)


def planted_item_features(graph: InteractionGraph, d: int = 64, rank: int = 8,
                          n_communities: int = 32, seed: int = 0) -> np.ndarray:
    """Seeded synthetic item features for graphs that ship none (Amazon Baby, Clothing).

    ``F = low + 0.7 · community + 0.5 · noise``, each part scaled to unit RMS:

    * ``low``: a graph-smooth low-rank part — ``rank`` Gaussian item signals smoothed twice by
      the item–item operator ``R̃ᵀR̃``, mixed into ``d`` dimensions by a Gaussian
      ``[rank, d]`` matrix (content that follows the co-interaction structure);
    * ``community``: each item draws one of ``n_communities`` labels; the label's Gaussian
      centroid (content the graph does not see);
    * ``noise``: i.i.d. Gaussian.

    Returns:
        ``[n_items, d]`` float32 array.
    """
    rng = np.random.default_rng(seed)
    rt = graph.normalized_bipartite_scipy()
    z = rng.standard_normal((graph.n_items, rank))
    for _ in range(2):
        z = rt.T @ (rt @ z)
    low = z @ rng.standard_normal((rank, d))
    centroid = rng.standard_normal((n_communities, d))[rng.integers(0, n_communities,
                                                                    graph.n_items)]
    noise = rng.standard_normal((graph.n_items, d))
    unit = lambda a: a / np.sqrt((a ** 2).mean())
    return (unit(low) + 0.7 * unit(centroid) + 0.5 * unit(noise)).astype(np.float32)


def signals() -> Dict[str, tuple]:
    """``{label: (graph, X [N, d] float32)}`` for the signals of the table that are at hand."""
    out = {}
    if have_real("movielens-100k"):
        ds = real_dataset("movielens-100k")
        g = ds.train_graph()
        for m in ("text", "meta"):
            out[f"ml-100k {m}"] = (g, g.node_signal(ds.features[m]))
    for name in ("amazon-baby", "amazon-clothing"):
        if have_real(name):
            g = real_dataset(name).train_graph()
            out[f"{name.split('-')[1]} planted"] = (g, g.node_signal(planted_item_features(g)))
    return out


def _row(label: str, sb: SpectralBands, X: torch.Tensor, seconds: float) -> dict:
    shares = sb.energy(X)
    if sb.shares_ is not None and float((shares - sb.shares_).abs().max()) > 1e-4:
        raise AssertionError(f"{label}: predicted shares {sb.shares_.tolist()} differ from the "
                             f"filtered output's {shares.tolist()}")
    return {"signal": label, "method": sb.method_, "order": sb.order_,
            "shares": [round(float(s), 3) for s in shares], "min": round(float(shares.min()), 3),
            "edges": [round(float(e), 4) for e in sb.edges], "fit_s": round(seconds, 1)}


def shares_table(orders=ORDERS, exact: str = "all", log=None) -> List[dict]:
    """Rows of the shares table.

    Args:
        orders: Chebyshev orders listed besides the default.
        exact: ``"all"`` (every graph whose ``"exact"`` fits the memory budget), ``"svd"``
            (only graphs on the dense-SVD route) or ``"none"``.
        log: optional callable receiving each row as it is made.
    """
    rows = []

    def add(label, make, X, method=None):
        t0 = time.perf_counter()
        sb = make().fit(X)
        row = _row(label, sb, X, time.perf_counter() - t0)
        if method:
            row["method"] = method
        rows.append(row)
        if log:
            log(row)

    for label, (g, X) in signals().items():
        for K in orders:
            add(label, lambda: SpectralBands(g, M, method="chebyshev", order=K), X)
        add(label, lambda: SpectralBands(g, M, method="chebyshev"), X, "chebyshev (default)")
        route = exact_memory_estimate(g.n_users, g.n_items)[1]
        if exact == "none" or (exact == "svd" and route != "svd"):
            continue
        try:
            SpectralBands(g, M, method="exact")
        except ValueError as e:
            rows.append({"signal": label, "method": "exact", "order": None, "shares": None,
                         "min": None, "edges": None, "note": str(e).split(". Use")[0]})
            continue
        add(label, lambda: SpectralBands(g, M, method="exact", dtype=torch.float64), X,
            f"exact ({route})")
    return rows


def format_table(rows: List[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| signal | method | K | shares | min | edges (λ) | fit s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["shares"] is None:
            lines.append(f"| {r['signal']} | {r['method']} | – | {r['note']} | – | – | – |")
            continue
        k = "–" if r["order"] is None else str(r["order"])
        shares = " / ".join(f"{s:.3f}" for s in r["shares"])
        edges = ", ".join(f"{e:.3f}" for e in r["edges"])
        lines.append(f"| {r['signal']} | {r['method']} | {k} | {shares} | {r['min']:.3f} | "
                     f"{edges} | {r['fit_s']} |")
    return "\n".join(lines)


def starved(rows: List[dict]) -> List[dict]:
    """Rows of the goal (default order, exact) with a band below 1/(2M)."""
    return [r for r in rows if r["min"] is not None and r["min"] < 1.0 / (2 * M)
            and (r["method"] == "chebyshev (default)" or r["method"].startswith("exact"))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exact", choices=("all", "svd", "none"), default="all",
                    help="which graphs get an 'exact' row (default: all that fit)")
    args = ap.parse_args()
    rows = shares_table(exact=args.exact,
                        log=lambda r: print(f"  {r['signal']:16s} {r['method']:20s} "
                                            f"K={r['order']} shares={r['shares']} "
                                            f"({r['fit_s']} s)", flush=True))
    print(format_table(rows))
    bad = starved(rows)
    print(f"goal (every band >= {1 / (2 * M)} at the default order and for exact): "
          + ("met" if not bad else f"MISSED in {[(r['signal'], r['method']) for r in bad]}"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
