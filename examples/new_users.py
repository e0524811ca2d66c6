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

from ssr_engine.metrics import RankingResult, summary_problem
from ssr_engine.train.checkpoint import check_finished
from ssr_engine.train.pipeline import NEW_USERS_FILE, PER_USER_FILE

METRICS = ("recall@20", "ndcg@20")


def _metrics(run: Path) -> dict:
    if not run.is_dir():
        raise ValueError(f"{run}: no such run folder")
    path = run / "metrics.json"
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read ({e}); is {run} a finished run?") from None
    if not isinstance(m, dict) or "test" not in m:
        raise ValueError(f"{path} is not the report of a train_large.py run")
    if (run / "checkpoint.pt").is_file():
        check_finished(run, m)        # a later run in the folder that did not finish
    return m


def _new_users(updated: Path, up: dict) -> np.ndarray:
    path = updated / NEW_USERS_FILE
    if not path.is_file():
        raise ValueError(f"{updated}: no {NEW_USERS_FILE} (updates before 2026-12-07 did not "
                         "write it; resume the update with --resume and the options it was "
                         "started with to write it)")
    try:
        users = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path} cannot be read ({e})") from None
    if (not isinstance(users, np.ndarray) or users.ndim != 1 or users.dtype.kind not in "iu"
            or users.size != up.get("new_users") or np.unique(users).size != users.size):
        raise ValueError(f"{path} does not list the {up.get('new_users')} new users its "
                         "metrics.json counts (a damaged file, or left by another run)")
    return users.astype(np.int64)


def _summary(x, where: str) -> dict:
    """A recorded summary (``n_users`` and figures), checked."""
    problem = summary_problem(x)
    if problem:
        raise ValueError(f"{where} is not a summary of test figures: {problem}")
    return x


def rows(updated: Path, others) -> list:
    """``(name, n_users, recall@20, ndcg@20)`` per line of the table (``None`` figures where
    the updated run did not record its ranking before training)."""
    m = _metrics(updated)
    up = m.get("update")
    if not isinstance(up, dict) or "test_new_users" not in up:
        raise ValueError(f"{updated} is not an updated run (no 'update' in its metrics.json)")
    users = _new_users(updated, up)
    after = _summary(up["test_new_users"], f"{updated}: update.test_new_users")
    # the reference: the new users the updated run ranked (its own per-user file); their
    # figures must be the ones its report recorded, or the list is not this run's
    own = _per_user(updated)
    ranked = own.users[np.isin(own.users, users)]
    mine = own.summary(users)
    if ranked.size != after["n_users"] or any(
            not np.isclose(mine[k], after[k], rtol=1e-9, atol=1e-12, equal_nan=True)
            for k in METRICS if k in after):
        raise ValueError(f"{updated}: its {NEW_USERS_FILE} and {PER_USER_FILE} give "
                         f"{ranked.size} ranked new users with other figures than the "
                         f"{after['n_users']} its metrics.json records (a damaged or "
                         "replaced file)")
    if ranked.size == 0:
        raise ValueError(f"{updated}: none of the {users.size} users the update brought is a "
                         "ranked test user; there is nothing to compare")
    before = up.get("before_training")
    if before is not None:          # None: a resumed update that lost its start record
        if not isinstance(before, dict):
            raise ValueError(f"{updated}: update.before_training in its metrics.json is not "
                             f"a record ({before!r:.80})")
        before = _summary(before.get("test_new_users"),
                          f"{updated}: update.before_training.test_new_users")
    out = [(f"{updated} before training", *_pick(before)),
           (f"{updated} after the update", *_pick(after))]
    for run in others:
        other = _metrics(run)
        if other.get("dataset") != m.get("dataset"):
            raise ValueError(f"{run} is a run on {other.get('dataset')!r}, {updated} on "
                             f"{m.get('dataset')!r}")
        result = _per_user(run)
        seen = result.users[np.isin(result.users, users)]
        if not np.array_equal(seen, ranked):
            raise ValueError(f"{run} ranked {seen.size} of these users, {updated} "
                             f"{ranked.size}, not the same ones (another split, or a sample "
                             "of test users: use --eval-users 0)")
        out.append((str(run), *_pick(result.summary(users))))
    return out


def _per_user(run: Path) -> RankingResult:
    f = run / PER_USER_FILE
    if not f.is_file():
        raise ValueError(f"{run}: no {PER_USER_FILE} (runs before 2026-12-07 did not write "
                         "it; resume the finished run with --resume and the options it was "
                         "started with to write it)")
    return RankingResult.load(f)


def _pick(summary):
    if summary is None:
        return (None,) * (1 + len(METRICS))
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
        cells = ["not recorded" if v is None else f"{v:.4f}" for v in vals]
        print(f"| {name} | {'—' if n is None else n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
