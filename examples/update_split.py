"""Hold out a random share of an MMRec dataset's training interactions, for ``--update``.

Writes ``OUT/base/<name>.inter`` (the dataset without the held-out rows; validation and test
unchanged; the feature files are linked) and ``OUT/new.inter`` (the held-out training rows).
Train on ``OUT/base``, then fold ``OUT/new.inter`` in with ``train_large.py --update``, and
compare with a run on the whole dataset:

    python examples/update_split.py --data ../shared/data/amazon-baby --seed 1 --out runs/u1
    python examples/train_large.py --data runs/u1/base --pipeline stored --approx chebyshev \\
        --id-prior lightgcn --seed 1 --out runs/u1/run90
    python examples/train_large.py --update runs/u1/new.inter --from runs/u1/run90 \\
        --out runs/u1/updated
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from ssr_engine.data import load_mmrec


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="MMRec folder")
    p.add_argument("--fraction", type=float, default=0.1,
                   help="share of the training interactions to hold out (default 0.1)")
    p.add_argument("--new-users", type=float, default=0.0,
                   help="also hold out every training interaction of this share of the users "
                        "with at most 5 interactions, who come back as new users (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if not 0.0 < a.fraction < 1.0:
        p.error(f"--fraction must be in (0, 1), got {a.fraction}")
    if not 0.0 <= a.new_users < 1.0:
        p.error(f"--new-users must be in [0, 1), got {a.new_users}")
    ds = load_mmrec(a.data, modalities=[])
    train = np.flatnonzero(ds.split == 0)
    rng = np.random.default_rng([a.seed, 0x5B1])
    held = rng.choice(train, int(round(a.fraction * train.size)), replace=False)
    cold = ds.cold_users(5)
    gone = rng.choice(cold, int(round(a.new_users * cold.size)), replace=False)
    held = np.union1d(held, train[np.isin(ds.user_ids[train], gone)])
    keep = np.ones(ds.split.size, dtype=bool)
    keep[held] = False
    base = a.out / "base"
    base.mkdir(parents=True, exist_ok=True)
    rows = np.stack([ds.user_ids, ds.item_ids, ds.split.astype(np.int64)], axis=1)
    header = "userID\titemID\tx_label"
    np.savetxt(base / f"{ds.name}.inter", rows[keep], fmt="%d", delimiter="\t", header=header,
               comments="")
    np.savetxt(a.out / "new.inter", rows[held], fmt="%d", delimiter="\t", header=header,
               comments="")
    for f in Path(a.data).glob("*_feat.npy"):
        link = base / f.name
        if not link.exists():
            os.symlink(f.resolve(), link)
    print(f"{held.size} of {train.size} training interactions held out ({gone.size} users "
          f"with all of theirs) -> {a.out / 'new.inter'}; the rest -> {base}")


if __name__ == "__main__":
    main()
