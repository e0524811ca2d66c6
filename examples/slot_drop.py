"""Which band slots a trained SSR model uses: validation Recall@20 with each slot zeroed.

Loads a ``train_large.py`` run (its ``checkpoint.pt``, best epoch), recomputes the inference
vectors with one slot (modality, band) — or one modality, or one band in every modality —
scaled to zero, and ranks every validation user (the MMRec protocol). A slot whose removal
leaves Recall@20 unchanged carries nothing inference uses, whatever its reliability.

Usage::

    python examples/slot_drop.py --data ../shared/data/movielens-100k --run runs/results/ml/ssr-s1

Prints the reliabilities ``α``, the mean slot norms of users and items, and one line per
removal. Needs a run whose bands fit in memory (the in-memory pipeline).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ssr_engine.data import load_mmrec
from ssr_engine.explain import load_trained_model
from ssr_engine.metrics import full_ranking


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the run's MMRec folder")
    p.add_argument("--run", type=Path, required=True, help="the run folder (checkpoint.pt)")
    p.add_argument("--split", choices=("valid", "test"), default="valid")
    args = p.parse_args(argv)
    ckpt = args.run / "checkpoint.pt"
    if not ckpt.is_file():
        sys.exit(f"error: {ckpt} does not exist (pass the folder given to --out)")
    ds = load_mmrec(args.data)
    try:
        model = load_trained_model(ckpt, ds)
    except (TypeError, ValueError) as e:
        sys.exit(f"error: {e}")
    truth, seen = ds.user_item_matrix(args.split), ds.user_item_matrix("train")
    nu = model.n_users
    with torch.no_grad():
        raw = model.slots(torch.arange(nu + model.n_items))             # [N, m, M, d]
        alpha = model.reliability.alpha.clone()                         # [m, M]

        def recall(scale: torch.Tensor) -> float:
            h = model.fuse(raw, scale)
            hu, hi = h[:nu], h[nu:]
            return full_ranking(lambda u: hu[u] @ hi.T, truth, seen).summary()["recall@20"]

        norms = raw.norm(dim=-1)
        print("alpha (modality x band):", alpha.numpy().round(3).tolist())
        print("mean slot norm, users:  ", norms[:nu].mean(0).numpy().round(3).tolist())
        print("mean slot norm, items:  ", norms[nu:].mean(0).numpy().round(3).tolist())
        print(f"{args.split} recall@20, all slots: {recall(alpha):.4f}")
        for j, name in enumerate(model.modalities):
            z = alpha.clone()
            z[j] = 0
            print(f"  without modality {name}: {recall(z):.4f}")
            for b in range(model.n_bands):
                z = alpha.clone()
                z[j, b] = 0
                print(f"    without {name} band {b}: {recall(z):.4f}")
        for b in range(model.n_bands):
            z = alpha.clone()
            z[:, b] = 0
            print(f"  without band {b} (every modality): {recall(z):.4f}")


if __name__ == "__main__":
    main()
