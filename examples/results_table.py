"""Aggregate ``train_large.py`` runs into the results tables (mean ± sample std over seeds).

Runs are folders ``<root>/<dataset>/<name>-s<seed>/metrics.json`` as written by
``examples/results.sh``. Prints one Markdown table per dataset: validation Recall@20, test
Recall/NDCG@10/20 overall and for cold-start users (≤ 5 interactions in the whole dataset),
the chosen epochs and the training seconds per epoch.

Usage: ``python examples/results_table.py ROOT [DATASET ...]``
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

KEYS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def _fmt(values) -> str:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return "—"
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if v.size > 1 else f"{v[0]:.4f}"


def table(folder: Path) -> str:
    runs = {}
    for f in sorted(folder.glob("*-s*/metrics.json")):
        try:
            m = json.loads(f.read_text())
            m["valid"]["recall@20"], m["test"]["recall@20"], m["test_cold"]["n_users"]
        except (ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"error: {f} is not a metrics.json of train_large.py "
                             f"({type(e).__name__}: {e})")
        runs.setdefault(f.parent.name.rsplit("-s", 1)[0], []).append(m)
    if not runs:
        raise SystemExit(f"error: {folder} holds no runs: expected "
                         f"{folder}/<name>-s<seed>/metrics.json (the layout of "
                         f"examples/results.sh), e.g. {folder}/ssr-s1/metrics.json")
    head = (["run", "seeds", "valid R@20"] + [f"test {k}" for k in KEYS]
            + [f"cold {k}" for k in KEYS] + ["best epochs", "s/epoch"])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rs in runs.items():
        cold = [r["test_cold"] for r in rs if r["test_cold"]["n_users"]]
        row = [name, str(len(rs)), _fmt([r["valid"]["recall@20"] for r in rs])]
        row += [_fmt([r["test"][k] for r in rs]) for k in KEYS]
        row += [_fmt([c[k] for c in cold]) for k in KEYS]
        timed = [r["seconds_per_epoch"] for r in rs if r.get("seconds_per_epoch") is not None]
        row += [",".join(str(r["best_epoch"]) for r in rs),
                f"{np.mean(timed):.2f}" if timed else "—"]
        rows.append("| " + " | ".join(row) + " |")
    n_cold = {r["test_cold"]["n_users"] for rs in runs.values() for r in rs}
    return "\n".join(rows) + f"\n\ncold-start test users: {sorted(n_cold)}"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        raise SystemExit(__doc__.strip().splitlines()[-1])
    root = Path(argv[0])
    if not root.is_dir():
        raise SystemExit(f"error: {root}: no such folder")
    names = argv[1:] or sorted(p.name for p in root.iterdir() if p.is_dir())
    if not names:
        raise SystemExit(f"error: {root} holds no dataset folders: expected "
                         f"{root}/<dataset>/<name>-s<seed>/metrics.json (the layout of "
                         "examples/results.sh)")
    for name in names:
        print(f"## {name}\n\n{table(root / name)}\n")


if __name__ == "__main__":
    main()
