"""The training loop: Adam on sampled triplets, early stopping on validation, resumable.

Protocol (DESIGN.md §5, MMRec): after every ``eval_every`` epochs the model ranks all items
for the validation users (training items masked); the best ``valid_metric`` (Recall@20 by
default) so far is kept, with a copy of the model state; training stops after ``patience``
evaluations without improvement. The reported test figures are those of the model state of
the best validation epoch — nothing is ever selected on test.
"""
from __future__ import annotations

import random
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import Dataset
from ..metrics import RankingResult, full_ranking
from ..nn.recommender import Recommender
from .checkpoint import load_checkpoint, save_checkpoint
from .sampling import BPRSampler

__all__ = ["TrainConfig", "TrainResult", "Trainer", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's global and torch's RNGs (call before building the model)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainConfig:
    """Settings of a training run (defaults follow the MMRec protocol).

    Attributes:
        epochs: maximum number of epochs.
        batch_size: training interactions per step.
        lr: Adam learning rate.
        weight_decay: Adam weight decay (0: the models regularise their own embeddings).
        n_neg: negatives per positive.
        patience: evaluations without improvement before stopping.
        eval_every: epochs between validation evaluations.
        valid_metric: metric that selects the epoch (``"recall@20"``).
        ks: cut-offs of the reported metrics.
        cold_max: users with at most this many interactions in the whole dataset form the
            cold-start group.
        seed: seed of the sampler's generator (seed the model separately, before building
            it, with :func:`seed_everything`).
        eval_block: users scored per evaluation block.
        quiet: no progress bar.
    """

    epochs: int = 1000
    batch_size: int = 2048
    lr: float = 1e-3
    weight_decay: float = 0.0
    n_neg: int = 1
    patience: int = 20
    eval_every: int = 1
    valid_metric: str = "recall@20"
    ks: Sequence[int] = (10, 20)
    cold_max: int = 5
    seed: int = 999
    eval_block: int = 4096
    quiet: bool = False

    def identity(self) -> Dict:
        """The settings that define the run (a checkpoint must match them to resume)."""
        return _run_identity(self, ("epochs", "patience", "quiet", "eval_block"))


def _run_identity(config, volatile: Sequence[str]) -> Dict:
    """The fields of a training config dataclass that define a run: all but ``volatile``
    (settings a resumed run may change), with ``ks`` as a list (as a saved config has it)."""
    d = asdict(config)
    for k in volatile:
        d.pop(k)
    d["ks"] = list(d["ks"])
    return d


@dataclass
class TrainResult:
    """Outcome of :meth:`Trainer.fit`.

    Attributes:
        best_epoch: epoch chosen on validation.
        valid: validation metrics at ``best_epoch``.
        test: test metrics of the ``best_epoch`` model, all test users.
        test_cold: the same restricted to cold-start users.
        epochs_run: epochs completed (including those before a resume).
        epochs_this_call: epochs run by this call (fewer than ``epochs_run`` after a resume).
        train_seconds: training time (sampling + steps) of the epochs run in this call.
        eval_seconds: validation time of this call.
        history: per evaluated epoch (all of the run, resumes included): epoch, mean
            loss, valid metric.
    """

    best_epoch: int
    valid: Dict[str, float]
    test: Dict[str, float]
    test_cold: Dict[str, float]
    epochs_run: int
    epochs_this_call: int
    train_seconds: float
    eval_seconds: float
    history: List[Dict] = field(default_factory=list)


def _fingerprint(ds: Dataset) -> Dict:
    u, i = ds.interactions("train")
    keys = np.sort(u.astype(np.int64) * ds.n_items + i)
    return {"n_users": int(ds.n_users), "n_items": int(ds.n_items), "n_train": int(u.size),
            "train_crc32": int(zlib.crc32(keys.tobytes()))}


class _EarlyStopping:
    """The validation protocol of the trainers (:class:`Trainer`,
    :class:`~ssr_engine.train.large.LargeTrainer`): after the epochs due, evaluate on
    validation and keep the best state; at the end, test that state.

    Uses the trainer's ``cfg`` (``epochs``, ``eval_every``, ``valid_metric``), ``model``,
    ``epoch``, ``valid_m``, ``test_m``, ``cold`` and :meth:`evaluate`; keeps ``history``,
    ``best`` and ``bad_evals`` (which the trainers' checkpoints save).
    """

    def _truth(self, split: str):
        """The interactions of ``split`` (``"valid"`` or ``"test"``)."""
        truth = {"valid": self.valid_m, "test": self.test_m}.get(split)
        if truth is None:
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        return truth

    def _after_epoch(self, loss: float, bar) -> float:
        """Refuse a non-finite mean training ``loss``; when due, evaluate on validation,
        record it, keep the best state and show it on ``bar``. Returns the seconds spent."""
        cfg = self.cfg
        if not np.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at epoch "
                                     f"{self.epoch}; lower the learning rate")
        if not (self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs):
            return 0.0
        t0 = time.perf_counter()
        valid = self.evaluate("valid").summary()
        seconds = time.perf_counter() - t0
        score = valid[cfg.valid_metric]
        self.history.append({"epoch": self.epoch, "loss": loss, cfg.valid_metric: score})
        if score > self.best["metric"]:
            self.best = {"metric": score, "epoch": self.epoch, "valid": valid,
                         "state": {k: v.detach().clone() for k, v in
                                   self.model.state_dict().items()}}
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        bar.set_postfix(loss=f"{loss:.4f}", valid=f"{score:.4f}",
                        best=f"{self.best['metric']:.4f}@{self.best['epoch']}")
        return seconds

    def _load_best(self) -> None:
        if self.best["state"] is None:
            raise RuntimeError("no validation evaluation was run (epochs < eval_every?)")
        self.model.load_state_dict(self.best["state"])

    def _result(self, test: RankingResult, first_epoch: int, train_seconds: float,
                eval_seconds: float) -> TrainResult:
        return TrainResult(best_epoch=self.best["epoch"], valid=self.best["valid"],
                           test=test.summary(), test_cold=test.summary(self.cold),
                           epochs_run=self.epoch, epochs_this_call=self.epoch - first_epoch,
                           train_seconds=train_seconds, eval_seconds=eval_seconds,
                           history=list(self.history))


class Trainer(_EarlyStopping):
    """Train a :class:`~ssr_engine.nn.Recommender` on a :class:`~ssr_engine.data.Dataset`.

    Args:
        model: the recommender (built on ``dataset.train_graph()``).
        dataset: interactions with train / valid / test labels.
        config: a :class:`TrainConfig`.
        checkpoint: file to save after every epoch and to resume from when it exists
            (``None``: no checkpoints).

    Raises:
        ValueError: when model and dataset sizes disagree, the split has no validation
            users, or the checkpoint comes from another configuration.

    Example:
        >>> import ssr_engine
        >>> from ssr_engine.data import synthetic_dataset
        >>> from ssr_engine.train import Trainer, TrainConfig
        >>> ds = synthetic_dataset(300, 200, 4000, modalities={}, seed=0)
        >>> model = ssr_engine.MFBPR(ds.train_graph(), dim=16)
        >>> res = Trainer(model, ds, TrainConfig(epochs=2, quiet=True)).fit()
        >>> res.epochs_run
        2
    """

    def __init__(self, model: Recommender, dataset: Dataset, config: Optional[TrainConfig] = None,
                 checkpoint: Union[str, Path, None] = None):
        self.model, self.ds = model, dataset
        self.cfg = config or TrainConfig()
        if (model.n_users, model.n_items) != (dataset.n_users, dataset.n_items):
            raise ValueError(f"model is for {model.n_users} users x {model.n_items} items but "
                             f"the dataset has {dataset.n_users} x {dataset.n_items}")
        if self.cfg.valid_metric not in {f"{m}@{k}" for m in ("recall", "ndcg", "precision",
                                                              "map") for k in self.cfg.ks}:
            raise ValueError(f"valid_metric {self.cfg.valid_metric!r} must be one of the "
                             f"reported metrics at ks={list(self.cfg.ks)}")
        self.train_m = dataset.user_item_matrix("train")
        self.valid_m = dataset.user_item_matrix("valid")
        self.test_m = dataset.user_item_matrix("test")
        if self.valid_m.nnz == 0:
            raise ValueError(f"dataset {dataset.name!r} has no validation interactions "
                             "(x_label = 1): early stopping needs validation users")
        if self.test_m.nnz == 0:
            raise ValueError(f"dataset {dataset.name!r} has no test interactions (x_label = 2)")
        self.cold = dataset.cold_users(self.cfg.cold_max)
        self.rng = np.random.default_rng(self.cfg.seed)
        self.sampler = BPRSampler(self.train_m, self.cfg.batch_size, self.cfg.n_neg, self.rng)
        self.opt = torch.optim.Adam(model.parameters(), lr=self.cfg.lr,
                                    weight_decay=self.cfg.weight_decay)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.run_config = {"model": model.config(), "train": self.cfg.identity(),
                           "data": _fingerprint(dataset)}
        self.epoch = 0
        self.best = {"metric": -np.inf, "epoch": 0, "state": None, "valid": {}}
        self.bad_evals = 0
        self.history: List[Dict] = []
        if self.checkpoint is not None and self.checkpoint.exists():
            self._restore(load_checkpoint(self.checkpoint, self.run_config))

    # -- checkpoints -------------------------------------------------------------------
    def _state(self) -> Dict:
        return {"config": self.run_config, "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "epoch": self.epoch,
                "best": self.best, "bad_evals": self.bad_evals, "history": self.history,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": (torch.cuda.get_rng_state_all()
                                 if torch.cuda.is_available() else None),
                        "sampler": self.rng.bit_generator.state}}

    def _restore(self, st: Dict) -> None:
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.epoch, self.best = st["epoch"], st["best"]
        self.bad_evals, self.history = st["bad_evals"], st["history"]
        torch.set_rng_state(st["rng"]["torch"])
        if st["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["rng"]["cuda"])
        self.rng.bit_generator.state = st["rng"]["sampler"]

    # -- evaluation --------------------------------------------------------------------
    def evaluate(self, split: str = "valid") -> RankingResult:
        """Full-ranking evaluation of the current model on ``"valid"`` or ``"test"``.

        Training items are masked in both cases (MMRec's convention); users without
        interactions in the split are skipped.
        """
        truth = self._truth(split)
        was = self.model.training
        self.model.eval()
        try:
            return full_ranking(self.model.scorer(), truth, self.train_m, self.cfg.ks,
                                block=self.cfg.eval_block, device=self.model.device)
        finally:
            self.model.train(was)

    # -- training ----------------------------------------------------------------------
    def train_epoch(self) -> float:
        """One pass over the training interactions; returns the mean total loss."""
        self.model.train()
        dev = self.model.device
        total, n = 0.0, 0
        for u, p, q in self.sampler.epoch():
            losses = self.model.loss(torch.from_numpy(u).to(dev), torch.from_numpy(p).to(dev),
                                     torch.from_numpy(q).to(dev))
            self.opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            self.opt.step()
            total += float(losses["loss"].detach()) * u.size
            n += u.size
        self.epoch += 1
        return total / n

    def fit(self) -> TrainResult:
        """Train until ``epochs`` or early stopping, then evaluate the best state on test."""
        cfg = self.cfg
        t_train = t_eval = 0.0
        first_epoch = self.epoch
        bar = tqdm(total=cfg.epochs, initial=self.epoch, disable=cfg.quiet, desc="epochs",
                   dynamic_ncols=True)
        try:
            while self.epoch < cfg.epochs and self.bad_evals < cfg.patience:
                t0 = time.perf_counter()
                loss = self.train_epoch()
                t_train += time.perf_counter() - t0
                t_eval += self._after_epoch(loss, bar)
                bar.update(1)
                if self.checkpoint is not None:
                    save_checkpoint(self._state(), self.checkpoint)
        finally:
            bar.close()
        self._load_best()
        test = self.evaluate("test")
        return self._result(test, first_epoch, t_train, t_eval)
