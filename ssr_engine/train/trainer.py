"""The training loop: one :class:`Trainer` for every recommender and every band source.

Protocol (DESIGN.md §5, MMRec): an epoch visits every training interaction once in shuffled
batches with uniform negatives; after every ``eval_every`` epochs the model ranks all items
for the validation users (training items masked); the best ``valid_metric`` (Recall@20 by
default) so far is kept, with a copy of the model state; training stops after ``patience``
evaluations without improvement. The reported test figures are those of the model state of
the best validation epoch — nothing is ever selected on test.

The same loop trains a model whose bands are held in memory and one that reads them from a
band store (:class:`~ssr_engine.SSRModel` with either source), so that a step's cost does
not grow with the graph when the model's are constant:

* **steps** — a step updates the dense parameters with Adam and the sparse ones (the ID
  residual of a model built with ``sparse_residual``) with ``SparseAdam``, touching only the
  batch's rows.
* **randomness by position** — the epoch's permutation comes from ``(seed, epoch)`` and a
  step's negatives and torch RNG (band mask, alignment subset) from ``(seed, epoch,
  step)``, so a run resumed at any step continues exactly as the uninterrupted one,
  whichever process count or interruption came before.
* **checkpoints** — after every epoch (and every ``checkpoint_every`` steps, and on
  SIGINT/SIGTERM after the current step), written atomically; a run killed outright
  (SIGKILL) resumes from the last one and redoes the lost steps identically.
* **evaluation** — full ranking (training items masked) of all users or a fixed random
  sample of ``eval_users``, in blocks of users sized to the item count; the model embeds
  only the evaluated users and the items (:meth:`~ssr_engine.nn.Recommender.embed`).
* **distributed** — with ``torch.distributed`` initialised (``torchrun`` or
  :func:`~ssr_engine.run_local`), every process draws the same global batch and trains on
  its ``1/P`` share under ``DistributedDataParallel`` (sparse gradients are all-reduced as
  sparse tensors: gloo); evaluation users are split across processes. A peer that dies
  makes the others raise :class:`~ssr_engine.RankFailure` within the process-group timeout.
"""
from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..data import Dataset
from ..distributed import collective
from ..metrics import RankingResult, full_ranking
from ..nn.recommender import Recommender
from .checkpoint import load_checkpoint, save_checkpoint
from .sampling import BPRSampler
from .threads import ThreadPolicy

__all__ = ["TrainConfig", "TrainResult", "Trainer", "Interrupted", "seed_everything",
           "default_batch_size"]

#: the batch size of the MMRec protocol (the validated default of both band sources).
BATCH_SIZE = 2048
#: larger graphs get a larger default batch, so that an epoch has at most this many steps.
MAX_STEPS_PER_EPOCH = 2000


def default_batch_size(n_interactions: int) -> int:
    """The default batch: ``BATCH_SIZE``, doubled while an epoch over ``n_interactions``
    training interactions would take more than ``MAX_STEPS_PER_EPOCH`` steps (a step's cost
    does not grow with the graph, so this bounds an epoch's time: 2048 up to 4.1M training
    interactions, 8192 at 16M). On Amazon Baby the stored source's validation Recall@20 was
    the same at 8192 as at 2048 (0.0788 and 0.0789, seed 1).

    Example:
        >>> default_batch_size(120_000), default_batch_size(16_000_000)
        (2048, 8192)
    """
    b = BATCH_SIZE
    while -(-int(n_interactions) // b) > MAX_STEPS_PER_EPOCH:
        b *= 2
    return b


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
        batch_size: training interactions per (global) step.
        lr: learning rate of Adam (dense parameters) and SparseAdam (sparse ones).
        weight_decay: Adam weight decay (0: the models regularise their own embeddings;
            refused for models with sparse parameters).
        fusion_lr: learning rate of the fusion's own parameters (the G-HSNO factors, the
            model's ``fusion_parameters()``; ``None``: ``lr``).
        fusion_weight_decay: Adam weight decay of the fusion's parameters only.
        n_neg: negatives per positive.
        patience: evaluations without improvement before stopping.
        eval_every: epochs between validation evaluations.
        eval_users: evaluate a fixed random sample of this many users (``None``: all).
        valid_metric: metric that selects the epoch (``"recall@20"``).
        ks: cut-offs of the reported metrics.
        cold_max: users with at most this many interactions in the whole dataset form the
            cold-start group.
        seed: seed of sampling, step randomness and evaluation users (seed the model
            separately, before building it, with :func:`seed_everything`).
        checkpoint_every: also checkpoint every this many steps (0: epoch ends only).
        quiet: no progress bars.
        log: print one line per evaluated epoch (epoch, loss, validation metric, best so
            far, seconds), flushed — what a log file of a ``quiet`` run needs.
        threads: torch threads for training and evaluation: a number, ``"auto"`` (the
            cores other processes leave idle, counted again every few seconds; see
            :mod:`ssr_engine.train.threads`) or ``None`` (torch's setting, untouched).
    """

    epochs: int = 1000
    batch_size: int = BATCH_SIZE
    lr: float = 1e-3
    weight_decay: float = 0.0
    fusion_lr: Optional[float] = None
    fusion_weight_decay: float = 0.0
    n_neg: int = 1
    patience: int = 20
    eval_every: int = 1
    eval_users: Optional[int] = None
    valid_metric: str = "recall@20"
    ks: Sequence[int] = (10, 20)
    cold_max: int = 5
    seed: int = 999
    checkpoint_every: int = 0
    quiet: bool = False
    log: bool = False
    threads: Union[int, str, None] = None

    def identity(self) -> Dict:
        """The settings that define the run (a checkpoint must match them to resume): all but
        ``epochs``, ``patience``, ``quiet``, ``log``, ``checkpoint_every`` and ``threads``.
        The fusion's own settings count only when set (checkpoints from before them resume)."""
        d = asdict(self)
        for k in ("epochs", "patience", "quiet", "log", "checkpoint_every", "threads"):
            d.pop(k)
        for k, default in FUSION_DEFAULTS.items():
            if d[k] == default:
                d.pop(k)
        d["ks"] = list(d["ks"])
        return d


#: defaults of the fusion's own optimiser settings (left out of a run's identity when unset).
FUSION_DEFAULTS = {"fusion_lr": None, "fusion_weight_decay": 0.0}


def _param_groups(model, cfg: TrainConfig) -> List[Dict]:
    """Adam's parameter groups: the dense parameters, and the fusion's apart from them when
    it has its own learning rate or weight decay."""
    dense = list(model.dense_parameters())
    own = cfg.fusion_lr is not None or cfg.fusion_weight_decay != 0.0
    if cfg.fusion_lr is not None and not (math.isfinite(cfg.fusion_lr) and cfg.fusion_lr > 0):
        raise ValueError(f"fusion_lr must be a positive number, got {cfg.fusion_lr}")
    if not (math.isfinite(cfg.fusion_weight_decay) and cfg.fusion_weight_decay >= 0):
        raise ValueError(f"fusion_weight_decay must be >= 0, got {cfg.fusion_weight_decay}")
    if not own:
        return [{"params": dense}]
    fusion = list(model.fusion_parameters())
    if not fusion:
        raise ValueError(f"fusion_lr / fusion_weight_decay set the G-HSNO factors' optimiser; "
                         f"this {type(model).__name__} has none (SSRModel with fusion='cp' or "
                         f"'cp+sum' has)")
    ids = {id(p) for p in fusion}
    return [{"params": [p for p in dense if id(p) not in ids]},
            {"params": fusion, "lr": cfg.lr if cfg.fusion_lr is None else cfg.fusion_lr,
             "weight_decay": cfg.fusion_weight_decay}]


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint.

    Attributes:
        signum: the signal.
        epoch: completed epochs.
        step: steps done in the current epoch.
        checkpoint: the file saved (None when the trainer has no checkpoint).
    """

    def __init__(self, signum: int, epoch: int, step: int, checkpoint: Optional[Path]):
        name = signal.Signals(signum).name
        where = f"after {epoch} epochs and {step} steps of the next"
        saved = (f"checkpoint saved to {checkpoint}; run again with --resume to continue"
                 if checkpoint is not None else "no checkpoint file was configured")
        super().__init__(f"interrupted by {name} {where}; {saved}")
        self.signum, self.epoch, self.step, self.checkpoint = signum, epoch, step, checkpoint


@dataclass
class TrainResult:
    """Outcome of :meth:`Trainer.fit`.

    Attributes:
        best_epoch: epoch chosen on validation.
        valid: validation metrics at ``best_epoch``.
        test: test metrics of the ``best_epoch`` model, all test users.
        test_cold: the same restricted to cold-start users.
        test_groups: the same per group of test users: ``"with_training"`` (users with at
            least one training interaction — MMRec's protocol drops the others, which this
            evaluation ranks and counts; ``"without_training"`` holds their number) and the
            quartiles of training activity (``"activity a-b"``: users with ``a … b`` training
            interactions), each with its ``n_users``.
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
    test_groups: Dict[str, Dict[str, float]]
    epochs_run: int
    epochs_this_call: int
    train_seconds: float
    eval_seconds: float
    history: List[Dict] = field(default_factory=list)


def result_notes(res: TrainResult, cfg: TrainConfig) -> List[str]:
    """What a reader of ``res`` should know: a cold-start group that is nearly every test
    user (its figure then repeats the overall one), and test users without training
    interactions (ranked and counted here; MMRec drops them)."""
    notes = []
    n = max(1, res.test["n_users"])
    share = res.test_cold["n_users"] / n
    if share >= 0.9:
        notes.append(f"{share:.0%} of the test users are cold-start (<= {cfg.cold_max} "
                     "interactions): test_cold is nearly the overall figure; test_groups "
                     "holds the activity quartiles")
    none = res.test_groups.get("without_training", {}).get("n_users", 0)
    if none:
        notes.append(f"{none} test user(s) have no training interactions; they are ranked "
                     "and counted in test (MMRec drops them: see test_groups['with_training'])")
    return notes


def _fingerprint(ds: Dataset) -> Dict:
    u, i = ds.interactions("train")
    keys = np.sort(u.astype(np.int64) * ds.n_items + i)
    return {"n_users": int(ds.n_users), "n_items": int(ds.n_items), "n_train": int(u.size),
            "train_crc32": int(zlib.crc32(keys.tobytes()))}


def _step_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


class _Signals:
    """Catch SIGINT/SIGTERM while training; a second signal interrupts at once."""

    def __init__(self):
        self.caught: Optional[int] = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.caught is not None:
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.caught = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


def _numpy_rng_state() -> Dict:
    """numpy's global RNG state as a tensor and plain numbers (a checkpoint loads with
    ``weights_only=True``, which rebuilds no numpy objects)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _set_numpy_rng_state(st: Dict) -> None:
    np.random.set_state((st["name"], st["keys"].numpy().astype(np.uint32), st["pos"],
                         st["has_gauss"], st["gauss"]))


class Trainer:
    """Train a :class:`~ssr_engine.nn.Recommender` on a :class:`~ssr_engine.data.Dataset`.

    Args:
        model: the recommender (built on ``dataset``'s training interactions): SSR with its
            bands in memory or on a band store, or a baseline.
        dataset: interactions with train / valid / test labels.
        config: a :class:`TrainConfig`.
        checkpoint: file saved after every epoch (and on signals) and resumed from when it
            exists (``None``: no checkpoints).
        distributed: train under ``DistributedDataParallel`` on the default process group
            (every process runs this with the same arguments; process 0 writes the
            checkpoint).
        fresh: start over even when ``checkpoint`` exists; the old file stays until this run
            writes its first checkpoint over it (a run that fails before that loses nothing).

    Raises:
        ValueError: when model and dataset disagree, the split lacks validation or test
            interactions, or the checkpoint comes from another configuration.

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

    def __init__(self, model: Recommender, dataset: Dataset,
                 config: Optional[TrainConfig] = None,
                 checkpoint: Union[str, Path, None] = None, distributed: bool = False,
                 fresh: bool = False):
        self.model, self.ds = model, dataset
        self.cfg = cfg = config or TrainConfig()
        if (model.n_users, model.n_items) != (dataset.n_users, dataset.n_items):
            raise ValueError(f"model is for {model.n_users} users x {model.n_items} items but "
                             f"the dataset has {dataset.n_users} x {dataset.n_items}")
        if cfg.batch_size < 1 or cfg.epochs < 0 or cfg.eval_every < 1 or cfg.patience < 1:
            raise ValueError(f"batch_size, eval_every and patience must be >= 1 and epochs "
                             f">= 0, got {cfg.batch_size}, {cfg.eval_every}, {cfg.patience}, "
                             f"{cfg.epochs}")
        if cfg.eval_users is not None and cfg.eval_users < 1:
            raise ValueError(f"eval_users must be >= 1 or None (all), got {cfg.eval_users}")
        if cfg.valid_metric not in {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map")
                                    for k in cfg.ks}:
            raise ValueError(f"valid_metric {cfg.valid_metric!r} must be one of the reported "
                             f"metrics at ks={list(cfg.ks)}")
        self.distributed = bool(distributed)
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.train_m = model._seen
        self.valid_m = dataset.user_item_matrix("valid")
        self.test_m = dataset.user_item_matrix("test")
        for split, label, m in (("validation", 1, self.valid_m), ("test", 2, self.test_m)):
            if m.nnz == 0:
                raise ValueError(f"dataset {dataset.name!r} has no {split} interactions "
                                 f"(x_label = {label}): early stopping and the report need "
                                 "them")
        self.cold = dataset.cold_users(cfg.cold_max)
        self.sampler = BPRSampler(self.train_m, cfg.batch_size, cfg.n_neg)
        sparse = model.sparse_parameters()
        if self.distributed and sparse and dist.get_backend() != "gloo":
            raise ValueError(f"sparse gradients (the ID residual) are all-reduced by gloo only; "
                             f"the process group uses {dist.get_backend()!r}: build the model "
                             "with sparse_residual=False or use gloo")
        if sparse and cfg.weight_decay:
            raise ValueError("weight_decay needs dense gradients; the model has sparse "
                             "parameters (build it with sparse_residual=False)")
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel
            # Buffers (band edges, priors, a smoothed residual's adjacency) are the same on
            # every rank and never change in training: not broadcast before every step.
            with collective("DistributedDataParallel setup"):
                self.net = DistributedDataParallel(model, broadcast_buffers=False)
        else:
            self.net = model
        self.opt = torch.optim.Adam(_param_groups(model, cfg), lr=cfg.lr,
                                    weight_decay=cfg.weight_decay)
        self.sparse_opt = torch.optim.SparseAdam(sparse, lr=cfg.lr) if sparse else None
        self.eval_users = self._sample_eval_users()
        self.threads = ThreadPolicy(cfg.threads)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.run_config = {"model": model.config(), "train": cfg.identity(),
                           "data": _fingerprint(dataset)}
        self.epoch, self.step = 0, 0
        self.partial = [0.0, 0]                    # loss sum and count of the running epoch
        self.best = {"metric": -np.inf, "epoch": 0, "state": None, "valid": {}}
        self.bad_evals = 0
        self.history: List[Dict] = []
        self.test_result: Optional[RankingResult] = None        # set by fit()
        if self.checkpoint is not None and self.checkpoint.exists() and not fresh:
            self._restore(load_checkpoint(self.checkpoint, self.run_config))

    # -- helpers --------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return -(-self.sampler.users.size // self.cfg.batch_size)

    def plan_lines(self) -> List[str]:
        """What the run is about to do, as log lines: where a resumed run continues, and the
        steps per epoch, processes and users evaluated."""
        lines = []
        if self.epoch or self.step:
            lines.append(f"[train] resuming after epoch {self.epoch}, step {self.step}")
        procs = f" over {self.world} processes" if self.world > 1 else ""
        n_eval = "all" if self.eval_users is None else str(self.eval_users.size)
        lines.append(f"[train] {self.steps_per_epoch} steps of {self.cfg.batch_size} per epoch"
                     f"{procs}; evaluating {n_eval} users")
        return lines

    def _sample_eval_users(self) -> Optional[np.ndarray]:
        n = self.cfg.eval_users
        if n is None:
            return None
        cand = np.flatnonzero((np.diff(self.valid_m.indptr) > 0)
                              | (np.diff(self.test_m.indptr) > 0))
        if cand.size <= n:
            return cand
        rng = np.random.default_rng([int(self.cfg.seed), 0xE7A1])
        return np.sort(rng.choice(cand, n, replace=False))

    def _collective(self, what: str):
        return collective(what) if self.distributed else contextlib.nullcontext()

    def _state(self) -> Dict:
        return {"config": self.run_config, "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "sparse_optimizer": self.sparse_opt.state_dict() if self.sparse_opt else None,
                "epoch": self.epoch, "step": self.step, "partial": list(self.partial),
                "best": self.best, "bad_evals": self.bad_evals, "history": self.history,
                "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(),
                        "python": random.getstate()}}

    def _restore(self, st: Dict) -> None:
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        if self.sparse_opt is not None:
            self.sparse_opt.load_state_dict(st["sparse_optimizer"])
        self.epoch, self.step = st["epoch"], st["step"]
        # The saved loss sum covers every process: process 0 carries it on.
        self.partial = list(st["partial"]) if self.rank == 0 else [0.0, 0]
        self.best, self.bad_evals, self.history = st["best"], st["bad_evals"], st["history"]
        torch.set_rng_state(st["rng"]["torch"])
        _set_numpy_rng_state(st["rng"]["numpy"])
        random.setstate(st["rng"]["python"])

    def save(self) -> None:
        """Write the checkpoint (process 0; the others wait for it)."""
        if self.checkpoint is None:
            return
        state_partial = list(self.partial)
        if self.distributed:                     # the running epoch's loss over all processes
            t = torch.tensor(self.partial, dtype=torch.float64)
            with self._collective("checkpoint loss sum"):
                dist.all_reduce(t)
            state_partial = [float(t[0]), int(t[1])]
        if self.rank == 0:
            state = self._state()
            state["partial"] = state_partial
            save_checkpoint(state, self.checkpoint)
        if self.distributed:
            with self._collective("checkpoint barrier"):
                dist.barrier()

    # -- early stopping ----------------------------------------------------------------------------
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
        if cfg.log and self.rank == 0:
            print(f"[epoch {self.epoch}] loss {loss:.4f}, valid {cfg.valid_metric} "
                  f"{score:.4f} (best {self.best['metric']:.4f} at epoch "
                  f"{self.best['epoch']}), evaluated in {seconds:.1f} s", flush=True)
        return seconds

    def _load_best(self) -> None:
        if self.best["state"] is None:
            raise RuntimeError("no validation evaluation was run (epochs < eval_every?)")
        self.model.load_state_dict(self.best["state"])

    def _result(self, test: RankingResult, first_epoch: int, train_seconds: float,
                eval_seconds: float) -> TrainResult:
        return TrainResult(best_epoch=self.best["epoch"], valid=self.best["valid"],
                           test=test.summary(), test_cold=test.summary(self.cold),
                           test_groups=self._groups(test), epochs_run=self.epoch,
                           epochs_this_call=self.epoch - first_epoch,
                           train_seconds=train_seconds, eval_seconds=eval_seconds,
                           history=list(self.history))

    def _groups(self, test: RankingResult) -> Dict[str, Dict[str, float]]:
        """Test metrics per group of users (see :class:`TrainResult`)."""
        counts = np.diff(self.train_m.indptr)[test.users]
        groups = {"with_training": test.summary(test.users[counts > 0]),
                  "without_training": {"n_users": int((counts == 0).sum())}}
        if counts.size:
            cuts = np.unique(np.quantile(counts, [0.0, 0.25, 0.5, 0.75, 1.0]).round())
            lo = int(counts.min())
            for hi in cuts[1:] if cuts.size > 1 else cuts:
                sel = (counts >= lo) & (counts <= hi)
                if sel.any():
                    groups[f"activity {lo}-{int(hi)}"] = test.summary(test.users[sel])
                lo = int(hi) + 1
        return groups

    # -- training ---------------------------------------------------------------------------------
    def _batch(self, perm: np.ndarray, epoch: int, step: int):
        B = self.cfg.batch_size
        idx = perm[step * B:(step + 1) * B]
        u, p = self.sampler.users[idx], self.sampler.items[idx]
        self.sampler.rng = np.random.default_rng([int(self.cfg.seed), 2, epoch, step])
        q = self.sampler.negatives(u)
        if self.world > 1:
            u, p, q = u[self.rank::self.world], p[self.rank::self.world], q[self.rank::self.world]
        return u, p, q

    def _stop_requested(self, signals: _Signals) -> bool:
        flag = 1 if signals.caught is not None else 0
        if self.distributed:
            t = torch.tensor([flag], dtype=torch.int64)
            with self._collective("stop flag"):
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = int(t)
        return bool(flag)

    def _non_finite(self, loss: float, u, p, q) -> None:
        """A step's loss is NaN/inf: name damaged inputs if there are any, else the loss."""
        nu = self.model.n_users
        nodes = torch.from_numpy(np.concatenate([u, nu + p, nu + q.reshape(-1)]))
        self.model.check_inputs(nodes)
        raise FloatingPointError(f"training loss became {loss} at epoch {self.epoch + 1}, "
                                 f"step {self.step}; lower the learning rate")

    def train_epoch(self, signals: Optional[_Signals] = None) -> float:
        """Run (the rest of) one epoch; returns its mean training loss."""
        signals = signals or _Signals()
        cfg, e = self.cfg, self.epoch
        self.model.train()
        dev = self.model.device
        perm = np.random.default_rng([int(cfg.seed), 1, e]).permutation(self.sampler.users.size)
        steps = self.steps_per_epoch
        if self.world > 1 and perm.size - (steps - 1) * cfg.batch_size < self.world:
            steps -= 1                              # a last batch too small to share
        bar = tqdm(total=steps, initial=self.step, desc=f"epoch {e + 1}", unit="step",
                   disable=cfg.quiet or self.rank != 0, dynamic_ncols=True, leave=False)
        try:
            while self.step < steps:
                self.threads.apply()
                u, p, q = self._batch(perm, e, self.step)
                torch.manual_seed(_step_seed(cfg.seed, 3, e, self.step))
                with self._collective(f"training step {self.step} of epoch {e + 1}"):
                    losses = self.net(torch.from_numpy(u).to(dev), torch.from_numpy(p).to(dev),
                                      torch.from_numpy(q).to(dev))
                    self.opt.zero_grad(set_to_none=True)
                    if self.sparse_opt is not None:
                        self.sparse_opt.zero_grad(set_to_none=True)
                    losses["loss"].backward()
                loss = float(losses["loss"].detach())
                if not np.isfinite(loss):               # before the step spoils the weights
                    self._non_finite(loss, u, p, q)
                self.opt.step()
                if self.sparse_opt is not None:
                    self.sparse_opt.step()
                self.partial[0] += loss * u.size
                self.partial[1] += u.size
                self.step += 1
                bar.update(1)
                if self.step % 20 == 0:
                    bar.set_postfix(loss=f"{self.partial[0] / self.partial[1]:.4f}")
                if self._stop_requested(signals):
                    self.save()
                    raise Interrupted(signals.caught or signal.SIGTERM, self.epoch, self.step,
                                      self.checkpoint)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 \
                        and self.step < steps:
                    self.save()
        finally:
            bar.close()
        total = torch.tensor(self.partial, dtype=torch.float64)
        if self.distributed:
            with self._collective("epoch loss"):
                dist.all_reduce(total)
        self.epoch, self.step, self.partial = e + 1, 0, [0.0, 0]
        return float(total[0] / max(total[1], 1))

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, split: str = "valid") -> RankingResult:
        """Full ranking (training items masked) of the evaluation users on ``split``.

        Training items are masked (MMRec's convention); users without interactions in the
        split are skipped. Every process ranks its share of the users; the per-user metrics
        are gathered.
        """
        self.threads.apply(force=True)
        truth = self._truth(split)
        users = np.flatnonzero(np.diff(truth.indptr) > 0)
        if self.eval_users is not None:
            users = np.intersect1d(users, self.eval_users)
        mine = users[self.rank::self.world]
        model, nu, ni = self.model, self.model.n_users, self.model.n_items
        was = model.training
        model.eval()
        show = not self.cfg.quiet and self.rank == 0
        try:
            with tqdm(total=ni + mine.size, desc=f"embed ({split})", unit="node",
                      disable=not show, dynamic_ncols=True, leave=False) as bar:
                items = model.embed(torch.arange(nu, nu + ni), progress=bar)
                u_emb = model.embed(torch.from_numpy(mine), progress=bar)
            block = max(1, min(4096, (1 << 25) // max(ni, 1)))
            per_user: Dict[str, List[np.ndarray]] = {}
            with tqdm(total=mine.size, desc=f"rank ({split})", unit="user", disable=not show,
                      dynamic_ncols=True, leave=False) as bar:
                for lo in range(0, mine.size, block):
                    part = mine[lo:lo + block]
                    # mine is sorted and every user has a relevant item: ub == part.
                    res = full_ranking(lambda ub, lo=lo: u_emb[lo:lo + ub.numel()] @ items.T,
                                       truth, self.train_m, self.cfg.ks, users=part,
                                       block=part.size, device=model.device)
                    for k, v in res.per_user.items():
                        per_user.setdefault(k, []).append(v)
                    bar.update(part.size)
        finally:
            model.train(was)
        local = (mine, {k: np.concatenate(v) for k, v in per_user.items()})
        if self.distributed:
            parts = [None] * self.world
            with self._collective(f"{split} evaluation gather"):
                dist.all_gather_object(parts, local)
        else:
            parts = [local]
        all_users = np.concatenate([p[0] for p in parts])
        order = np.argsort(all_users, kind="stable")
        keys = [k for p in parts for k in p[1]]
        merged = {k: np.concatenate([p[1][k] for p in parts if k in p[1]])[order]
                  for k in dict.fromkeys(keys)}
        return RankingResult(users=all_users[order], per_user=merged)

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until ``epochs`` or early stopping, then evaluate the best state on test.

        Raises:
            Interrupted: on SIGINT/SIGTERM, after saving the checkpoint.
            RankFailure: when a peer process failed (distributed).
        """
        cfg = self.cfg
        t_train = t_eval = 0.0
        first = self.epoch
        bar = tqdm(total=cfg.epochs, initial=self.epoch, desc="epochs", unit="epoch",
                   disable=cfg.quiet or self.rank != 0, dynamic_ncols=True)
        try:
            with _Signals() as signals:
                while self.epoch < cfg.epochs and self.bad_evals < cfg.patience:
                    t0 = time.perf_counter()
                    loss = self.train_epoch(signals)
                    t_train += time.perf_counter() - t0
                    t_eval += self._after_epoch(loss, bar)
                    bar.update(1)
                    self.save()
                    if self._stop_requested(signals):      # a signal during evaluation/save
                        raise Interrupted(signals.caught or signal.SIGTERM, self.epoch, 0,
                                          self.checkpoint)
        finally:
            bar.close()
        self._load_best()
        t0 = time.perf_counter()
        test = self.evaluate("test")
        t_eval += time.perf_counter() - t0
        self.test_result = test
        return self._result(test, first, t_train, t_eval)
