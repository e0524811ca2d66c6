"""Fold new interactions into a trained run without starting over (``train_large.py --update``).

``python examples/train_large.py --update NEW.inter --from RUN --out NEW_DIR``:

1. reads ``RUN/metrics.json`` (the run's options) and checks that ``RUN`` is a finished run
   of the stored pipeline (its checkpoint the one its metrics report) whose training data
   and item features have not changed since; an updated run's chain of files is replayed;
2. appends the new training interactions (:func:`~ssr_engine.data.read_new_interactions`,
   :meth:`~ssr_engine.data.Dataset.add_training`: duplicates, pairs of the validation or
   test split, ids of another dataset and new items without features are refused);
3. computes the band store of the grown graph in ``NEW_DIR/bands`` (the run's band settings;
   the run's Chebyshev band edges are kept when the spectrum has not moved, see
   :func:`~ssr_engine.train.precompute.kept_plan`);
4. carries the trained model over (:func:`~ssr_engine.nn.transfer.transfer_ssr`: what it
   learned stays, new users and items start from their neighbours' band vectors, and every
   vector is scaled by ``--shrink``, default :data:`UPDATE_SHRINK`), ranks the
   test users once before any training (``update.before_training`` in the metrics, with the
   users that the update brought their first interactions, listed in
   ``NEW_DIR/new_users.npy``; also written to ``NEW_DIR/update_start.json``, which a resumed
   update reads back), and
5. trains on at ``--lr`` (default :data:`UPDATE_LR`) for at most ``--epochs`` (default
   :data:`UPDATE_EPOCHS`), evaluating every ``--eval-every`` epochs (default
   :data:`UPDATE_EVAL_EVERY`), with early stopping (``--patience`` evaluations, default
   :data:`UPDATE_PATIENCE`).

``RUN`` is only read: its checkpoint, metrics and band store are never written.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from ..data import Dataset, read_new_interactions
from ..nn.transfer import transfer_ssr
from .checkpoint import check_finished, read_checkpoint
from .store import BandStore

__all__ = ["Update", "replay", "update_options", "UPDATE_EPOCHS", "UPDATE_PATIENCE",
           "UPDATE_EVAL_EVERY", "UPDATE_SHRINK", "UPDATE_LR", "UPDATE_FLAGS"]

#: default bound on the epochs of an update; early stopping (``UPDATE_PATIENCE``) ends it
#: sooner where validation stops improving (Baby at p = 0.4: after 32–50 epochs, Clothing:
#: 49–60; README).
UPDATE_EPOCHS = 60
#: default early-stopping patience of an update, in evaluations: 5 evaluations every
#: ``UPDATE_EVAL_EVERY`` = 2 epochs, the same 10 epochs without improvement as the patience of
#: 10 evaluations every epoch that ends within 2% of a retrain (Baby 0.987 x, Clothing
#: 0.992 x, seeds 1–3; a patience of 5 epochs, the default until 2026-12-07, stopped on
#: noisy plateaus 4–6% below it). README.
UPDATE_PATIENCE = 5
#: default evaluation interval of an update (epochs): ranking every validation user costs
#: about 0.7 s of Baby's 2.0 s update epoch and 4.3 s of Clothing's 7.3 s at one thread;
#: evaluating every second epoch picked the same epoch (seed 1) and cut the update's wall
#: time from 102 to 85 s on Baby and from 369 to 265 s on Clothing (README).
UPDATE_EVAL_EVERY = 2
#: default scale of the carried-over vectors (``transfer_ssr``'s ``shrink``), chosen on
#: validation with ``UPDATE_LR`` (see the README).
UPDATE_SHRINK = 0.1
#: default learning rate of an update (the run's own is not used: a carried-over model
#: learns the new interactions too slowly at a fresh run's rate), chosen on validation.
UPDATE_LR = 3e-3
#: options an update may set; the others are those of the run it updates.
UPDATE_FLAGS = ("out", "resume", "fresh", "quiet", "threads", "device", "epochs", "patience",
                "eval_every", "eval_users", "checkpoint_every", "lr", "data", "shrink")


def _read_json(path: Path) -> Dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read as the metrics of a finished run ({e})")


def chain(run_dir) -> List[Path]:
    """The run folders an update run descends from: ``run_dir``, the run it updated, …, back
    to the run trained from scratch (absolute paths).

    Raises:
        ValueError: when a run of the chain is missing or unreadable, or the chain loops.
    """
    runs = [Path(run_dir).resolve()]
    while True:
        options = _read_json(runs[-1] / "metrics.json").get("options", {})
        if options.get("update") is None:
            return runs
        prev = Path(options["update_from"]).resolve()
        if prev in runs:
            raise ValueError(f"the runs {' <- '.join(map(str, runs + [prev]))} form a loop (a "
                             "run of the chain was overwritten by a later update)")
        runs.append(prev)


def _check_finished(from_dir: Path, saved: Dict) -> None:
    """The checkpoint in ``from_dir`` is the one its ``metrics.json`` reports (a later run in
    the folder, e.g. an interrupted ``--fresh`` one, would have replaced it)."""
    try:
        state = check_finished(from_dir, saved)
    except ValueError as e:
        raise ValueError(f"--from {e}") from e
    model = state.get("config", {}).get("model", {})
    options = saved.get("options", {})
    if not all(model.get(k) == options.get(k) for k in ("dim", "rank", "fusion", "id_prior")):
        raise ValueError(f"--from {from_dir}: its checkpoint is not the one its metrics.json "
                         "reports (another model); a later run in that folder did not finish? "
                         "Finish that run with --resume first")


def update_options(new_file, from_dir, **given):
    """The :class:`~ssr_engine.train.pipeline.LargeRun` of an update: the options of the run
    in ``from_dir`` with those of ``given`` (names in :data:`UPDATE_FLAGS`) replaced. Paths
    are made absolute, so that the update can itself be updated from another folder.

    Raises:
        ValueError: when ``from_dir`` is not a finished run of the stored pipeline, when an
            option outside :data:`UPDATE_FLAGS` is given, when ``out`` is (inside) a run of
            ``from_dir``'s chain, or when the run's data folder is not where it was.
    """
    from .pipeline import LargeRun

    from_dir = Path(from_dir)
    if not (from_dir / "checkpoint.pt").is_file():
        raise ValueError(f"--from {from_dir}: no checkpoint.pt there; --from takes the output "
                         "folder of a finished run")
    metrics = from_dir / "metrics.json"
    if not metrics.is_file():
        raise ValueError(f"--from {from_dir}: no metrics.json there (the run did not finish); "
                         "finish it with --resume first")
    saved = _read_json(metrics)
    if saved.get("pipeline") != "stored" or "options" not in saved:
        raise ValueError(f"--from {from_dir}: that run trained {saved.get('model', 'SSR')} "
                         f"{saved.get('pipeline', '?')}; --update continues SSR runs of the "
                         "stored pipeline (--pipeline stored)")
    extra = sorted(set(given) - set(UPDATE_FLAGS))
    if extra:
        raise ValueError("--" + ", --".join(e.replace("_", "-") for e in extra) + " cannot be "
                         "changed by an update: the model and its bands keep the settings of "
                         f"the run in {from_dir}")
    _check_finished(from_dir, saved)
    runs = chain(from_dir)
    opts = dict(saved["options"])
    for name in ("out", "data", "store_dir", "update", "update_from"):
        if opts.get(name) is not None:
            opts[name] = Path(opts[name])
    if isinstance(opts.get("synthetic"), list):
        opts["synthetic"] = tuple(opts["synthetic"])
    # threads are the machine's, not the run's: the update takes the default unless given
    opts.update(resume=False, fresh=False, store_dir=None, epochs=UPDATE_EPOCHS,
                patience=UPDATE_PATIENCE, eval_every=UPDATE_EVAL_EVERY, shrink=UPDATE_SHRINK,
                lr=UPDATE_LR, threads=None)
    opts.update({k: v for k, v in given.items() if v is not None})
    out = Path(opts["out"]).resolve()
    for run in runs:
        if out == run or run in out.parents:
            raise ValueError(f"--out {opts['out']} is (inside) the run {run}, which this update "
                             "descends from; the update writes a new folder and leaves the "
                             "runs it builds on as they are")
    if opts.get("data") is not None:
        if not Path(opts["data"]).is_dir():
            raise ValueError(f"the data folder of the run in {from_dir}, {opts['data']}, is not "
                             "there (seen from this folder); pass --data with its place")
        opts["data"] = Path(opts["data"]).resolve()
    opts.update(update=Path(new_file).resolve(), update_from=runs[0], out=out)
    known = set(LargeRun.__dataclass_fields__)
    return LargeRun(**{k: v for k, v in opts.items() if k in known})


def replay(ds: Dataset, run_dir: Path) -> Dataset:
    """The dataset the run in ``run_dir`` trained on: ``ds`` (its data folder's) plus the
    new interactions of the updates that led to it, oldest first."""
    for run in reversed(chain(run_dir)[:-1]):
        new = Path(_read_json(run / "metrics.json")["options"]["update"])
        if not new.is_file():
            raise ValueError(f"the run {run} was updated with {new}, which is gone; the "
                             "update chain needs every file of new interactions it used")
        ds = ds.add_training(*read_new_interactions(new))[0]
    return ds


class Update:
    """The data and the trained model of the run being updated.

    Args:
        opts: the update's options (:func:`update_options`).
        old: the run's dataset (loaded from its data folder).

    Attributes:
        dataset: the dataset with the new training interactions.
        growth: what changed in the training graph (:class:`~ssr_engine.graph.Growth`).
        new_users: users whose first training interactions the update brought.

    Raises:
        ValueError: on a bad file of new interactions, or data that changed since the run.
    """

    def __init__(self, opts, old: Dataset):
        from .precompute import features_key
        from .trainer import _fingerprint

        old = replay(old, Path(opts.update_from))
        self.opts, self.old = opts, old
        self.ckpt = read_checkpoint(Path(opts.update_from) / "checkpoint.pt")
        saved = self.ckpt.get("config", {}).get("data")
        if saved != _fingerprint(old):
            raise ValueError(f"the data of {opts.update_from} changed since it was trained "
                             f"(checkpoint {saved}, now {_fingerprint(old)}): --update needs "
                             "the data the run was trained on")
        store_key = self.ckpt["config"]["model"].get("source", {}).get("store", {})
        if store_key.get("features") != features_key(old.features):
            raise ValueError(f"the item features differ from those the run in "
                             f"{opts.update_from} was trained on (modalities "
                             f"{sorted(store_key.get('features', {}))}, now "
                             f"{sorted(old.features)}, or their values): --update needs the "
                             "data the run was trained on")
        users, items = read_new_interactions(opts.update)
        self.dataset, self.growth = old.add_training(users, items)
        before = np.bincount(old.interactions("train")[0], minlength=self.dataset.n_users)
        touched = np.unique(users)
        self.new_users = touched[before[touched] == 0]

    def group(self, result) -> Dict:
        """Test metrics of :attr:`new_users` in a ranking result (``{"n_users": 0}`` when none
        of them is a test user: no NaN in the metrics file)."""
        out = result.summary(self.new_users)
        return out if out["n_users"] else {"n_users": 0}

    def describe(self) -> str:
        g = self.growth
        return (f"{g.added} new training interactions: {g.users.size} users ({g.new_users} new "
                f"ids, {self.new_users.size} without earlier interactions) and {g.items.size} "
                f"items ({g.new_items} new ids)")

    @functools.cached_property
    def old_store(self) -> BandStore:
        """The run's band store (checked against the key its checkpoint was trained on)."""
        from_dir = Path(self.opts.update_from)
        saved_dir = _read_json(from_dir / "metrics.json")["options"].get("store_dir")
        store_dir = Path(saved_dir) if saved_dir else from_dir / "bands"
        try:
            return BandStore.open(store_dir, self.ckpt["config"]["model"]["source"]["store"])
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"--update needs the band store the run in {from_dir} was "
                             f"trained on: {e}") from e

    def old_plan(self):
        """The band plan of the run's store: the grown graph keeps its edges when the
        spectrum has not moved (:func:`~ssr_engine.train.precompute.kept_plan`)."""
        from .precompute import BandPlan
        return BandPlan(**self.old_store.meta["info"]["plan"])

    def carry_over(self, model, graph, build) -> Dict:
        """Initialise ``model`` (built on the grown ``graph``) from the run's best state.

        Args:
            model: the new :class:`~ssr_engine.SSRModel`.
            graph: the grown training graph.
            build: ``build(graph, source)`` -> a model with the run's settings.
        """
        from_dir = Path(self.opts.update_from)
        store = self.old_store
        source = store.source()
        if source.identity != self.ckpt["config"]["model"]["source"]:
            raise ValueError(f"the band store {store.root} is not the one the run was trained "
                             "on (its basis checksum differs)")
        old_graph = self.old.train_graph()
        with torch.random.fork_rng(devices=[]):
            old = build(old_graph, source)
        best = self.ckpt["best"]["state"]
        if best is None:
            raise ValueError(f"{from_dir}: the checkpoint holds no best state (no evaluation "
                             "was run)")
        old.load_state_dict(best)
        old.to(model.device)
        return transfer_ssr(old.eval(), old_graph, model, graph, shrink=self.opts.shrink)

