"""Test metrics of the users an update brought their first interactions, in several runs.

An updated run (``train_large.py --update``) lists those users in ``new_users.npy`` and
scores them before and after its training (``metrics.json``). This prints those two
figures, then the same users' figures in each run given (e.g. LightGCN and SSR retrained on
the whole data), read from the runs' ``test_per_user.npz``:

    python examples/update_split.py --data ../shared/data/amazon-baby --seed 1 \\
        --new-users 0.1 --out runs/u1
    python examples/train_large.py --data runs/u1/base --pipeline stored --approx chebyshev \\
        --id-prior lightgcn --seed 1 --out runs/u1/run90
    python examples/train_large.py --update runs/u1/new.inter --from runs/u1/run90 \\
        --out runs/u1/updated
    python examples/new_users.py runs/u1/updated runs/baby-lightgcn runs/baby-ssr

The runs must rank the same test users (the same dataset's validation and test split).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ssr_engine.metrics import RankingResult
from ssr_engine.train.pipeline import NEW_USERS_FILE, PER_USER_FILE

METRICS = ("recall@20", "ndcg@20")


def rows(updated: Path, others) -> list:
    """``(name, n_users, recall@20, ndcg@20)`` per line of the table."""
    up = json.loads((updated / "metrics.json").read_text()).get("update")
    if up is None or not (updated / NEW_USERS_FILE).is_file():
        raise ValueError(f"{updated} is not an updated run (no 'update' in its metrics.json, "
                         f"or no {NEW_USERS_FILE}; updates before 2026-12-07 did not write it)")
    users = np.load(updated / NEW_USERS_FILE, allow_pickle=False)
    out = [(f"{updated} before training", *_pick(up["before_training"]["test_new_users"])),
           (f"{updated} after the update", *_pick(up["test_new_users"]))]
    for run in others:
        f = run / PER_USER_FILE
        if not f.is_file():
            raise ValueError(f"{run}: no {PER_USER_FILE} (runs before 2026-12-07 did not write "
                             "it; resume the finished run with --resume to write it)")
        row = (str(run), *_pick(RankingResult.load(f).summary(users)))
        if row[1] != out[1][1]:
            raise ValueError(f"{run} ranked {row[1]} of these users where {updated} ranked "
                             f"{out[1][1]}: not the same test users (another dataset or split?)")
        out.append(row)
    return out


def _pick(summary: dict):
    return (summary["n_users"], *(summary.get(k, float("nan")) for k in METRICS))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("updated", type=Path, help="the updated run's folder")
    p.add_argument("runs", type=Path, nargs="*", help="other run folders to compare")
    a = p.parse_args(argv)
    try:
        table = rows(a.updated, a.runs)
    except (OSError, ValueError) as e:
        p.error(str(e))
    print(f"| run | new users | {' | '.join(f'test {k}' for k in METRICS)} |")
    print("|---|---|" + "---|" * len(METRICS))
    for name, n, *vals in table:
        print(f"| {name} | {n} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")


if __name__ == "__main__":
    main()
