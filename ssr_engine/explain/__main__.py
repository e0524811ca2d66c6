"""Explain one user's top-k recommendations from a training checkpoint.

Examples:
    python -m ssr_engine.explain --checkpoint runs/ml/checkpoint.pt \\
        --data ../shared/data/movielens-100k --user 7 --out runs/ml/explain
    python -m ssr_engine.explain --checkpoint runs/ml/checkpoint.pt \\
        --data ../shared/data/movielens-100k --user 7 --out runs/ml/explain --report
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

import torch

from ..data import load_mmrec
from .report import explain_user, read_item_names, write_report
from .restore import load_trained_model


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ssr_engine.explain",
                                description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="trainer's checkpoint.pt")
    p.add_argument("--data", type=Path, required=True, help="MMRec folder the model was trained on")
    p.add_argument("--modalities", nargs="*", default=None,
                   help="feature modalities to load (default: all *_feat.npy)")
    p.add_argument("--user", type=int, nargs="+", required=True, help="user id(s) to explain")
    p.add_argument("--k", type=_positive, default=10, help="list length")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--side", choices=("item", "user", "symmetric"), default="item",
                   help="attribution side (default: item)")
    p.add_argument("--which", choices=("best", "last"), default="best",
                   help="model state: best validation epoch or last epoch")
    p.add_argument("--item-names", type=Path, default=None,
                   help="TSV with columns itemID and title (default: <data>/items.tsv if present)")
    p.add_argument("--report", action="store_true",
                   help="also write the full HTML report for these users")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    try:
        ds = load_mmrec(args.data, modalities=args.modalities)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: cannot read the dataset in {args.data}: {e}") from None
    bad = [u for u in args.user if not 0 <= u < ds.n_users]
    if bad:
        raise SystemExit(f"error: user id(s) {bad} out of range [0, {ds.n_users}) for "
                         f"dataset {ds.name!r}")
    try:
        model = load_trained_model(args.checkpoint, ds, which=args.which, device=args.device)
    except (OSError, ValueError, TypeError) as e:
        # a missing or damaged checkpoint, another dataset's, a band-store or baseline model
        raise SystemExit(f"error: {e}") from None
    names_path: Optional[Path] = args.item_names
    if names_path is None and (args.data / "items.tsv").is_file():
        names_path = args.data / "items.tsv"
    names = read_item_names(names_path, ds.n_items) if names_path is not None else None
    results = []
    for u in args.user:
        res = explain_user(model, ds, u, args.out, k=args.k, item_names=names, side=args.side)
        results.append(res)
        edges = res["band_edges"]
        print(f"user {u} ({res['interactions']} interactions); band edges λ = "
              + ("unknown" if edges is None else ", ".join(f"{e:.3f}" for e in edges))
              + f"; max relative error of the split {res['max_relative_error']:.1e}")
        for t in res["items"]:
            label = t["name"] or f"item {t['item']}"
            slots = ", ".join(f"{n} {100 * sh:+.0f}%" for n, _, sh in t["top_slots"])
            bands = " ".join(f"{b} {100 * v:+.0f}%" for b, v in t["by_band"].items())
            print(f"  {t['rank']:>2}. {label[:40]:<40} score {t['score']:8.3f} | {slots} | {bands}")
        print(f"  -> {args.out / f'user_{u}.png'}, {args.out / f'user_{u}.json'}")
    if args.report:
        path = write_report(model, ds, args.out, users=args.user, k=args.k, item_names=names,
                            side=args.side)
        print(f"report: {path}")
    return results


if __name__ == "__main__":
    main()
