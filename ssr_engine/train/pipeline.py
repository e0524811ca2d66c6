"""The large-scale pipeline: data -> feasibility -> graph -> band store -> training -> report.

:func:`run_large` is what ``python examples/train_large.py --approx chebyshev`` runs (and
``torchrun --nproc_per_node=P examples/train_large.py --approx chebyshev --distributed``):

1. **data** — an MMRec folder, or the built-in synthetic multimodal generator at any size;
2. **feasibility** — the band method's memory and time are estimated from the sizes alone
   and a hopeless choice (e.g. ``exact`` on a million users) is refused before any work,
   with the estimate and the alternative;
3. **graph** and **band store** — band features of every modality computed once
   (:func:`~ssr_engine.train.precompute.precompute_bands`, progress bars with rates and
   ETA) or reused when the store in the output folder was computed from the same inputs;
   a full disk is refused before writing, and the checkpoint is left as it was;
4. **training** — :class:`~ssr_engine.train.Trainer` (constant-cost steps,
   checkpoint every epoch and on SIGINT/SIGTERM, exact resume, sampled full ranking);
5. **report** — ``<out>/metrics.json`` and ``<out>/test_per_user.npz`` (the test metrics of
   every user), written atomically by process 0, and a summary.

A run killed in the middle of writing a file leaves at most a temporary file beside it
(:func:`~ssr_engine.train.checkpoint.atomic_write`; SIGTERM there is turned into an exception
that removes it), which the next run in the same folder removes.
"""
from __future__ import annotations

import contextlib
import errno
import gc
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist

from ..data import Dataset, load_mmrec, synthetic_dataset
from ..distributed import init_distributed, shutdown_distributed
from ..metrics import RankingResult, summary_problem
from ..nn import SSRModel
from ..nn.model import check_id_residual
from ..nn.sources import id_basis_k
from .checkpoint import atomic_write, out_folder, read_checkpoint, remove_leftovers
from .precompute import check_feasible, precompute_bands
from .store import check_space
from .threads import ThreadPolicy
from .trainer import TrainConfig, Trainer, default_batch_size, result_notes

__all__ = ["LargeRun", "run_large", "DEFAULT_SYNTHETIC", "SYNTHETIC_MODALITIES",
           "synthetic_modalities", "PER_USER_FILE", "NEW_USERS_FILE", "REPORT_FILES",
           "write_results", "keep_timings", "TIMING_FIELDS"]

#: the test metrics of every test user, beside ``metrics.json``
#: (:meth:`ssr_engine.metrics.RankingResult.save`), for comparisons on any group of users.
PER_USER_FILE = "test_per_user.npz"
#: what every finished run writes into its folder (:func:`write_results`).
REPORT_FILES = ("metrics.json", PER_USER_FILE)
#: what an update records before training (the carry-over, the test ranking before any
#: training), read back when the update is resumed.
UPDATE_START_FILE = "update_start.json"
#: the users whose first training interactions an update brought (``int64`` ids, ``.npy``).
NEW_USERS_FILE = "new_users.npy"

#: the built-in synthetic graph of the default run: (users, items, interactions).
DEFAULT_SYNTHETIC = (120_000, 60_000, 2_400_000)
#: feature widths of the synthetic modalities.
SYNTHETIC_MODALITIES = {"image": 64, "text": 32}


def synthetic_modalities(names: Optional[Sequence[str]] = None) -> Dict[str, int]:
    """Feature widths of the synthetic modalities ``names`` (``None``: the default ones;
    a name not in :data:`SYNTHETIC_MODALITIES` gets 64 columns).

    Example:
        >>> synthetic_modalities(["text", "audio"])
        {'text': 32, 'audio': 64}
    """
    if names is None:
        return dict(SYNTHETIC_MODALITIES)
    return {m: SYNTHETIC_MODALITIES.get(m, 64) for m in names}


@dataclass
class LargeRun:
    """Options of :func:`run_large` (the command-line flags of ``train_large.py``).

    Attributes:
        out: output folder (checkpoint, metrics, band store).
        data: MMRec folder (``None``: synthetic).
        synthetic: ``(users, items, interactions)`` of the synthetic graph.
        modalities: feature modalities to use (``None``: all; ``[]``: ID only).
        approx: band method (``auto``, ``exact``, ``eigen``, ``lobpcg``, ``chebyshev``).
        resume: continue from ``out/checkpoint.pt`` (required when it exists, unless
            ``fresh``).
        fresh: start over; an existing checkpoint is replaced when this run writes its
            first one (a run refused or failing before that leaves it as it was).
        distributed: one process per rank (``torchrun``): row-partitioned band
            precompute and DDP training.
        timeout: seconds a collective may wait for a peer (distributed).
        store_dir: band store folder (default ``out/bands``).
        seed, quiet, device: run settings.
        threads: torch threads: a positive int or ``"auto"`` (the idle cores, counted again
            every few seconds); default ``"auto"``, 1 per process when distributed.
        n_bands, order, k, d0, reduce, store_dtype, delta, id_basis: band settings
            (:func:`~ssr_engine.train.precompute.precompute_bands`; ``id_basis`` is its
            ``id_k``).
        dim, rank, id_prior, id_residual, fusion, n_out, fusion_init, fusion_gates, fusion_norm,
            lambda_fusion, lambda_dec, band_mask, mask_p, mask_scope, lambda_mask, consistency,
            align, lambda_cl, tau, reg, loss: model settings (:class:`~ssr_engine.SSRModel`,
            which reads its band slots from the store and updates its ID residual sparsely).
        epochs, batch_size, lr, fusion_lr, fusion_weight_decay, n_neg, patience, eval_every,
            eval_users, checkpoint_every: training settings
            (:class:`~ssr_engine.train.TrainConfig`; ``batch_size`` ``None``:
            :func:`~ssr_engine.train.trainer.default_batch_size`).
        update, update_from, shrink: a file of new training interactions, the folder of the
            run to continue with them, and the scale of the carried-over vectors
            (:mod:`ssr_engine.train.update`; build these options with
            :func:`~ssr_engine.train.update.update_options`).
    """

    out: Path = Path("runs/train_large")
    data: Optional[Path] = None
    synthetic: Tuple[int, int, int] = DEFAULT_SYNTHETIC
    modalities: Optional[Sequence[str]] = None
    approx: str = "chebyshev"
    resume: bool = False
    fresh: bool = False
    distributed: bool = False
    timeout: float = 300.0
    store_dir: Optional[Path] = None
    seed: int = 0
    quiet: bool = False
    device: str = "cpu"
    threads: Union[int, str, None] = None
    n_bands: int = 4
    order: Optional[int] = None
    k: Optional[int] = None
    d0: int = 64
    reduce: str = "pca"
    store_dtype: str = "float32"
    delta: float = 0.01
    id_basis: Optional[int] = None
    dim: int = 64
    rank: int = 16
    id_prior: str = "none"
    id_residual: str = "free"
    fusion: str = "sum"
    n_out: Optional[int] = None
    fusion_init: str = "random"
    fusion_gates: bool = True
    fusion_norm: bool = True
    lambda_fusion: float = 0.0
    lambda_dec: float = 0.0
    band_mask: bool = True
    mask_p: float = 0.4
    mask_scope: str = "batch"
    lambda_mask: float = 0.1
    consistency: str = "representation"
    align: bool = True
    lambda_cl: float = 0.05
    tau: float = 0.2
    reg: float = 1e-4
    loss: str = "bpr"
    epochs: int = 5
    batch_size: Optional[int] = None
    lr: float = 1e-3
    fusion_lr: Optional[float] = None
    fusion_weight_decay: float = 0.0
    n_neg: int = 1
    patience: int = 20
    eval_every: int = 1
    eval_users: Optional[int] = 20000
    checkpoint_every: int = 0
    update: Optional[Path] = None
    update_from: Optional[Path] = None
    shrink: float = 1.0


class _Log:
    """Phase lines on process 0 (``[phase] ... done in X s``)."""

    def __init__(self, rank: int):
        self.on = rank == 0

    def __call__(self, msg: str) -> None:
        if self.on:
            print(msg, flush=True)

    @contextlib.contextmanager
    def phase(self, name: str, what: str) -> Iterator[None]:
        self(f"[{name}] {what} ...")
        t0 = time.perf_counter()
        yield
        self(f"[{name}] done in {time.perf_counter() - t0:.1f} s")


def write_results(out: Path, report: Dict, test: RankingResult) -> None:
    """A finished run's :data:`REPORT_FILES` in ``out``, each written atomically: the test
    metrics of every user (``test``), then ``metrics.json`` (``report``)."""
    with atomic_write(out / PER_USER_FILE, "wb") as fh:
        test.save(fh)
    with atomic_write(out / "metrics.json", "w") as fh:
        fh.write(json.dumps(report, indent=1))


def _start_problem(start: Dict) -> Optional[str]:
    """What is wrong with an update's start record (``None``: nothing)."""
    before = start.get("before_training")
    if not isinstance(before, dict):
        return "'before_training' is not a record"
    for key in ("test", "test_new_users"):
        problem = summary_problem(before.get(key))
        if problem:
            return f"'before_training.{key}': {problem}"
    seconds = start.get("seconds", {})
    if not isinstance(seconds, dict) or any(
            k not in ("carry_over", "before_training") or isinstance(v, bool)
            or not isinstance(v, (int, float)) or not v >= 0 for k, v in seconds.items()):
        return "'seconds' is not a record of the carry-over's and ranking's seconds"
    if not isinstance(start.get("carried_over"), (dict, type(None))):
        return "'carried_over' is not a record"
    return None


def _update_start(out: Path, log) -> Dict:
    """What a resumed update recorded before its training: ``update_start.json``, else the
    ``update`` section of the report an earlier call of the run wrote (updates made before
    that file existed; the seconds from its timings); ``{}`` with a warning when neither can
    be read or holds a sound record."""
    def from_report(d: Dict) -> Dict:
        found = dict(d.get("update") or {})
        timings = d.get("timings") if isinstance(d.get("timings"), dict) else {}
        found["seconds"] = {k: timings[k] for k in ("carry_over", "before_training")
                            if k in timings}
        return found

    for path, pick in ((out / UPDATE_START_FILE, lambda d: d), (out / "metrics.json", from_report)):
        if not path.is_file():
            continue
        try:
            found = json.loads(path.read_text())
            if not isinstance(found, dict):
                raise ValueError("not a JSON object")
            found = pick(found)
            problem = _start_problem(found)
            if problem is None:
                return found
            log(f"[update] {path} holds no sound record of the start ({problem}); trying the "
                "next record")
        except (OSError, ValueError, AttributeError, TypeError) as e:
            log(f"[update] {path} could not be read ({e}); trying the next record")
    log(f"[update] no record of the ranking before training in {out}: the report of this "
        "resumed update leaves it empty")
    return {}


#: the report's fields that time the call of a run that trained it.
TIMING_FIELDS = ("timings", "setup_seconds", "train_seconds", "eval_seconds",
                 "seconds_per_epoch", "seconds_per_step", "wall_seconds", "threads")


def keep_timings(out: Path, report: Dict, epochs_this_call: int) -> None:
    """Timings of a finished run resumed (a call that trained no epoch, e.g. to write a
    report file again): ``report`` keeps those of the call that trained the run, from the
    ``metrics.json`` in ``out`` when it reports the same epochs; without one, its per-epoch
    figures are ``None`` (not measured) instead of 0. A call that trained does nothing."""
    if epochs_this_call:
        return
    try:
        old = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and all(old.get(k) == report.get(k)
                                     for k in ("epochs_run", "best_epoch")):
        report.update({k: old[k] for k in TIMING_FIELDS if k in old and k in report})
        report["notes"].append("a finished run resumed: no epoch was trained in this call; "
                               "the timings are those of the call that trained it")
    else:
        report.update({k: None for k in ("seconds_per_epoch", "seconds_per_step")
                       if k in report})
        report["notes"].append("a finished run resumed without its earlier report: no epoch "
                               "was trained in this call, so there is no per-epoch time")


def _load(opts: LargeRun) -> Dataset:
    if opts.data is not None:
        return load_mmrec(opts.data, modalities=opts.modalities)
    U, I, E = opts.synthetic
    mods = synthetic_modalities(opts.modalities)
    return synthetic_dataset(U, I, E, modalities=mods, seed=opts.seed,
                             name=f"synthetic-{U}x{I}x{E}", progress=not opts.quiet)


def _kept(e: OSError, ckpt: Path) -> OSError:
    kept = f"the checkpoint {ckpt} is untouched" if ckpt.exists() else \
        "no checkpoint was written yet"
    return OSError(e.errno, f"{e.strerror}; {kept}")


def _check_store_space(store_dir: Path, nbytes: int, ckpt: Path) -> None:
    # A store computed earlier from the same inputs is reused and needs no new space.
    old = sum(p.stat().st_size for p in store_dir.glob("*.npy*")) if store_dir.is_dir() else 0
    try:
        check_space(store_dir, nbytes, reclaimable=old)
    except OSError as e:
        raise _kept(e, ckpt) from e


def _checkpoint_store_key(ckpt: Path) -> Dict:
    """The key of the band store the checkpoint's model was trained on (read before any
    precompute, so that a refused resume changes no file)."""
    state = read_checkpoint(ckpt, mmap=True)
    source = state.get("config", {}).get("model", {}).get("source")
    if not isinstance(source, dict) or "store" not in source:
        raise ValueError(f"the checkpoint {ckpt} was not written by the stored pipeline (its "
                         "model holds its bands in memory): resume it with --pipeline memory, "
                         "or start over with --fresh")
    return source["store"]


def _threads(opts: "LargeRun") -> Union[int, str]:
    """Torch threads: as requested (a positive int or ``"auto"``); by default ``"auto"`` (the
    idle cores, :mod:`~ssr_engine.train.threads`), or 1 per process in a distributed run,
    whose processes share the machine's cores."""
    if opts.threads is not None:
        return opts.threads                 # ThreadPolicy refuses anything else
    return 1 if opts.distributed else "auto"


def _check_id_residual(opts: LargeRun, n_nodes: int) -> None:
    """:func:`~ssr_engine.nn.model.check_id_residual` for the basis the run will compute."""
    check_id_residual(opts.id_residual, n_nodes, id_basis_k(n_nodes, opts.id_basis) is not None)


def run_large(opts: LargeRun, dataset: Optional[Dataset] = None) -> Dict:
    """Run the large-scale pipeline; returns (and writes to ``out/metrics.json``) the report.

    Args:
        opts: the options.
        dataset: the data, when already loaded (else loaded from ``opts``).

    Raises:
        ValueError: on bad options, a graph too large for ``approx`` (before any work), or
            an existing checkpoint without ``resume``/``fresh``.
        OSError: ``errno.ENOSPC`` when the band store does not fit (checkpoint untouched).
        Interrupted: on SIGINT/SIGTERM during training, after the checkpoint was saved.
        SystemExit: status 143 on SIGTERM in the middle of writing a file outside training,
            after removing its temporary file.
        RankFailure: when a peer process failed (distributed).
    """
    t_start = time.perf_counter()
    if opts.resume and opts.fresh:
        raise ValueError("--resume and --fresh contradict each other; pick one")
    joined = False
    if opts.distributed and not dist.is_initialized():
        init_distributed(timeout=opts.timeout)
        joined = True
    try:
        with out_folder(opts.out):          # a refused run leaves no empty folder behind
            return _run(opts, t_start, dataset)
    finally:
        if joined:
            shutdown_distributed()


def _run(opts: LargeRun, t_start: float, dataset: Optional[Dataset]) -> Dict:
    rank = dist.get_rank() if opts.distributed else 0
    world = dist.get_world_size() if opts.distributed else 1
    log = _Log(rank)
    threads = ThreadPolicy(_threads(opts))
    threads.apply(force=True)
    log(f"[setup] {threads.describe()}, device {opts.device}"
        + (f", {world} processes" if world > 1 else ""))
    out = Path(opts.out)                # made by run_large
    ckpt = out / "checkpoint.pt"
    if ckpt.exists() and not (opts.resume or opts.fresh):
        raise ValueError(f"{out} already holds a checkpoint ({ckpt}); pass --resume to "
                         "continue that run or --fresh to start over")
    if opts.resume and not ckpt.exists():
        raise ValueError(f"--resume: there is no checkpoint in {out} to continue")
    if rank == 0:
        left = remove_leftovers(ckpt, *(out / f for f in REPORT_FILES),
                                out / UPDATE_START_FILE, out / NEW_USERS_FILE)
        if left:
            log(f"[setup] removed {left} temporary file(s) left by a killed run in {out}")
    if opts.distributed:
        dist.barrier()
    timings = {}
    store_dir = Path(opts.store_dir) if opts.store_dir is not None else out / "bands"
    if opts.data is None and dataset is None:     # refuse before generating anything
        U, I, E = opts.synthetic
        mods = synthetic_modalities(opts.modalities)
        est = check_feasible(opts.approx, U, I, int(0.8 * E), sum(
            min(d, opts.d0) for d in mods.values()), opts.n_bands, opts.order, opts.k,
            store_dtype=opts.store_dtype, id_k=opts.id_basis)
        _check_store_space(store_dir, est.store_bytes, ckpt)
        _check_id_residual(opts, U + I)

    t0 = time.perf_counter()
    what = str(opts.data) if opts.data is not None else \
        "synthetic {} users x {} items x {} interactions".format(*opts.synthetic)
    with log.phase("data", what):
        ds = _load(opts) if dataset is None else dataset
    timings["data"] = time.perf_counter() - t0
    log(f"[data] {ds}")
    upd = None
    if opts.update is not None:
        from .update import Update
        with log.phase("update", f"new interactions from {opts.update}"):
            upd = Update(opts, ds)
            ds = upd.dataset
        log(f"[update] {upd.describe()}")
    n_train = int((ds.split == 0).sum())
    widths = sum(min(int(f.shape[1]), opts.d0) for f in ds.features.values())
    est = check_feasible(opts.approx, ds.n_users, ds.n_items, n_train, widths, opts.n_bands,
                         opts.order, opts.k, store_dtype=opts.store_dtype, id_k=opts.id_basis)
    log(f"[plan] {est}")
    _check_store_space(store_dir, est.store_bytes, ckpt)
    _check_id_residual(opts, ds.n_users + ds.n_items)

    t0 = time.perf_counter()
    with log.phase("graph", f"{n_train} training interactions"):
        graph = ds.train_graph()
    timings["graph"] = time.perf_counter() - t0

    saved_key = _checkpoint_store_key(ckpt) if opts.resume else None
    threads.apply(force=True)
    t0 = time.perf_counter()
    with log.phase("bands", f"{est.approx} band features -> {store_dir}"):
        try:
            store, plan = precompute_bands(
                graph, ds.features, store_dir, approx=opts.approx, n_bands=opts.n_bands,
                order=opts.order, k=opts.k, d0=opts.d0, reduce=opts.reduce, seed=opts.seed,
                delta=opts.delta, store_dtype=opts.store_dtype, distributed=opts.distributed,
                quiet=opts.quiet, id_k=opts.id_basis, expect_key=saved_key,
                keep_edges=None if upd is None else upd.old_plan())
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise _kept(e, ckpt) from e
            raise
    timings["bands"] = time.perf_counter() - t0
    threads_before_training = threads.usage()
    log(f"[bands] {plan.method}, order {plan.order}, edges "
        + ", ".join(f"{x:.3f}" for x in plan.edges) + (" (kept from the updated run)"
                                                        if plan.kept else "")
        + ("" if plan.shares is None else "; shares " + ", ".join(f"{x:.2f}" for x in plan.shares)))
    # Sparse gradients keep a step's cost independent of N; NCCL cannot all-reduce them, so
    # a distributed run on GPUs updates the ID residual densely.
    sparse = not (opts.distributed and dist.get_backend() != "gloo")

    def build(g, source):
        torch.manual_seed(opts.seed)
        return SSRModel(g, source=source, dim=opts.dim, rank=opts.rank,
                        id_prior=opts.id_prior, id_residual=opts.id_residual,
                        fusion=opts.fusion, n_out=opts.n_out,
                        fusion_init=opts.fusion_init, fusion_gates=opts.fusion_gates,
                        fusion_norm=opts.fusion_norm, lambda_fusion=opts.lambda_fusion,
                        lambda_dec=opts.lambda_dec, band_mask=opts.band_mask,
                        mask_p=opts.mask_p, mask_scope=opts.mask_scope,
                        lambda_mask=opts.lambda_mask,
                        consistency=opts.consistency, align=opts.align,
                        lambda_cl=opts.lambda_cl, tau=opts.tau, reg=opts.reg, loss=opts.loss,
                        seed=opts.seed, sparse_residual=sparse).to(opts.device)

    with torch.random.fork_rng(devices=[]):
        model = build(graph, store.source())
    carried = None
    if upd is not None and not opts.resume:
        t0 = time.perf_counter()
        with log.phase("update", f"carrying the model of {opts.update_from} over"):
            carried = upd.carry_over(model, graph, build)
        timings["carry_over"] = time.perf_counter() - t0
    del graph
    gc.collect()
    batch = default_batch_size(n_train) if opts.batch_size is None else opts.batch_size
    cfg = TrainConfig(epochs=opts.epochs, batch_size=batch, lr=opts.lr,
                      fusion_lr=opts.fusion_lr, fusion_weight_decay=opts.fusion_weight_decay,
                      n_neg=opts.n_neg, patience=opts.patience, eval_every=opts.eval_every,
                      eval_users=opts.eval_users, seed=opts.seed,
                      checkpoint_every=opts.checkpoint_every, quiet=opts.quiet,
                      log=opts.quiet, threads=threads.threads)
    trainer = Trainer(model, ds, cfg, checkpoint=ckpt, distributed=opts.distributed,
                      fresh=opts.fresh)
    for line in trainer.plan_lines():
        log(line)
    before = None
    if carried is not None:
        t0 = time.perf_counter()
        with log.phase("update", "ranking the test users before training"):
            first = trainer.evaluate("test")
        timings["before_training"] = time.perf_counter() - t0
        before = {"test": first.summary(), "test_new_users": upd.group(first)}
        news = before["test_new_users"]
        log(f"[update] before training: test recall@20 {before['test']['recall@20']:.4f}"
            + (f", {news['n_users']} new users {news['recall@20']:.4f}" if news["n_users"]
               else ", no new users among the test users"))
        if rank == 0:
            with atomic_write(out / UPDATE_START_FILE, "w") as fh:
                fh.write(json.dumps({"carried_over": carried, "before_training": before,
                                     "seconds": {k: timings[k] for k in
                                                 ("carry_over", "before_training")}}))
    elif upd is not None:
        # a resumed update: the carry-over and the ranking before training happened in the
        # run that started it
        start = _update_start(out, log)
        carried, before = start.get("carried_over"), start.get("before_training")
        timings.update(start.get("seconds", {}))
    if upd is not None and rank == 0:
        with atomic_write(out / NEW_USERS_FILE, "wb") as fh:
            np.save(fh, upd.new_users.astype(np.int64))
    res = trainer.fit()
    report = {
        "dataset": ds.name, "pipeline": "stored", "n_users": ds.n_users, "n_items": ds.n_items,
        "n_train": n_train, "world_size": world, "seed": opts.seed,
        "options": json.loads(json.dumps(asdict(opts), default=str)),
        "estimate": str(est), "bands": plan.to_dict(), "best_epoch": res.best_epoch,
        "epochs_run": res.epochs_run, "valid": res.valid, "test": res.test,
        "test_cold": res.test_cold, "test_groups": res.test_groups,
        "notes": result_notes(res, cfg),
        "test_standard_error": {k: float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else
                                float("nan") for k, v in trainer.test_result.per_user.items()},
        "timings": timings, "threads": {"until_training": threads_before_training,
                                        "training_and_evaluation": trainer.threads.usage()},
        "train_seconds": res.train_seconds,
        "eval_seconds": res.eval_seconds,
        "seconds_per_epoch": res.train_seconds / max(1, res.epochs_this_call),
        "seconds_per_step": res.train_seconds / max(1, res.epochs_this_call
                                                    * trainer.steps_per_epoch),
        "wall_seconds": time.perf_counter() - t_start, "history": res.history,
        "command": " ".join(sys.argv)}
    if upd is not None:
        g = upd.growth
        report["update"] = {
            "from": str(opts.update_from), "file": str(opts.update), "added": g.added,
            "users": int(g.users.size), "items": int(g.items.size), "new_user_ids": g.new_users,
            "new_item_ids": g.new_items, "new_users": int(upd.new_users.size),
            "carried_over": carried, "before_training": before,
            "test_new_users": upd.group(trainer.test_result)}
    keep_timings(out, report, res.epochs_this_call)
    if rank == 0:
        write_results(out, report, trainer.test_result)
        keys = ("best_epoch", "valid", "test", "test_cold", "seconds_per_epoch",
                "wall_seconds")
        log(json.dumps({k: report[k] for k in keys}, indent=1))
        for note in report["notes"]:
            log(f"[note] {note}")
    return report
