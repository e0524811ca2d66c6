"""Train SSR (or a baseline) on MMRec data or a synthetic graph of any size, and report.

One SSR model (:class:`~ssr_engine.SSRModel`) with two band sources, picked by the flags:

* **stored** (SSR with ``--approx chebyshev``, graphs above ``IN_MEMORY_MAX_NODES`` nodes,
  and every ``--distributed`` run): the content band features and the ID modality's
  eigenbasis are computed once into a band store under the output folder (Chebyshev filters
  and KPM edges, or an exact / partial eigenbasis), the ID residual is updated sparsely, and
  each training step reads the rows of its batch only — its cost does not grow with the
  graph (:mod:`ssr_engine.train.pipeline`);
* **in memory** (SSR with ``--approx auto|exact|eigen|lobpcg`` on smaller graphs, and the
  ``lightgcn`` / ``mf`` baselines): the model holds the same bands in memory and trains with
  :class:`~ssr_engine.train.Trainer`.

Both write ``<out>/metrics.json`` (validation metrics of the chosen epoch, test metrics of
that epoch for all and for cold-start users, timings), ``<out>/test_per_user.npz`` (the
test metrics of every user: ``RankingResult.load``) and ``<out>/checkpoint.pt`` after
every epoch; an existing checkpoint is continued with ``--resume`` or discarded with
``--fresh``. Long phases show progress bars with rates and ETA (``--quiet`` for logs).
Both checkpoint on SIGINT/SIGTERM during training (exit status 128 + signal), and a resumed
run ends with the same metrics as an uninterrupted one. A SIGTERM in the middle of
writing a file exits with status 143 after removing the temporary file, and what a run killed
outright (SIGKILL) left is removed when the next run in the folder starts.

Examples:
    python examples/train_large.py --approx chebyshev
    python examples/train_large.py --approx chebyshev --synthetic 1000000,500000,20000000
    python examples/train_large.py --data ../shared/data/amazon-baby --approx exact
    python examples/train_large.py --model lightgcn --synthetic 20000,10000,300000 --epochs 20
    torchrun --nproc_per_node=2 examples/train_large.py --approx chebyshev --distributed
    python examples/train_large.py --update new.inter --from runs/baby --out runs/baby-2

``--update NEW --from RUN --out NEW_DIR`` folds the new training interactions of the MMRec
file ``NEW`` into the finished stored-pipeline run in ``RUN``: the band store of the grown
graph is computed in ``NEW_DIR``, the trained model is carried over (new users and items
start from their neighbours) and trained on for a few epochs (:mod:`ssr_engine.train.update`);
``RUN`` is left as it is.
"""
from __future__ import annotations

import argparse
import errno
import json
import sys
import time
from pathlib import Path

import torch

import ssr_engine
from ssr_engine.data import load_mmrec, synthetic_dataset
from ssr_engine.distributed import RankFailure
from ssr_engine.train import (Interrupted, TrainConfig, Trainer, default_batch_size,
                              result_notes, seed_everything)
from ssr_engine.train.checkpoint import out_folder, remove_leftovers
from ssr_engine.train.pipeline import (DEFAULT_SYNTHETIC, REPORT_FILES, LargeRun,
                                       keep_timings, run_large, synthetic_modalities,
                                       write_results)
from ssr_engine.train.precompute import check_feasible
from ssr_engine.train.threads import ThreadPolicy
from ssr_engine.train.update import (UPDATE_EPOCHS, UPDATE_EVAL_EVERY, UPDATE_LR,
                                     UPDATE_PATIENCE, UPDATE_SHRINK, update_options)

#: SSR graphs above this many nodes train on the stored pipeline whatever ``--approx``.
IN_MEMORY_MAX_NODES = 100_000


def _triple(text: str):
    try:
        u, i, e = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected USERS,ITEMS,INTERACTIONS, got {text!r}")
    if min(u, i, e) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return u, i, e


def _number(kind, lo=None, hi=None, lo_open=False, hi_open=False):
    """argparse type: a ``kind`` (int/float) inside the given range, else a one-line error."""
    def parse(text: str):
        try:
            x = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        below = lo is not None and (x <= lo if lo_open else x < lo)
        above = hi is not None and (x >= hi if hi_open else x > hi)
        if x != x or abs(x) == float("inf") or below or above:
            rng = ("(" if lo_open else "[") + ("-inf" if lo is None else f"{lo:g}") + ", " + \
                  ("inf" if hi is None else f"{hi:g}") + (")" if hi_open or hi is None else "]")
            raise argparse.ArgumentTypeError(f"must be in {rng}, got {text}")
        return x
    parse.__name__ = kind.__name__
    return parse


POS_INT, NONNEG_INT = _number(int, 1), _number(int, 0)
POS_FLOAT, NONNEG_FLOAT = _number(float, 0, lo_open=True), _number(float, 0)


def parse_args(argv=None) -> argparse.Namespace:
    p = _parser()
    args = p.parse_args(argv)
    # the flags given on the command line (not defaults), for refuse_unused
    for a in p._actions:
        a.default = argparse.SUPPRESS
    args.given = set(vars(p.parse_args(argv)))
    return args


#: flags that only some runs use: dest -> (what uses it, predicate on (args, stored)).
_ONLY = {
    **{d: ("SSR", lambda a, st: a.model == "ssr") for d in (
        "modalities", "approx", "n_bands", "rank", "order", "id_basis", "id_prior", "d0",
        "fusion", "n_out", "fusion_init", "no_fusion_gates", "no_fusion_norm", "lambda_fusion",
        "lambda_dec", "id_residual", "no_mask", "mask_p", "mask_scope", "lambda_mask",
        "consistency", "no_align", "lambda_cl", "tau")},
    **{d: ("the stored pipeline", lambda a, st: st) for d in (
        "reduce", "store_dtype", "store_dir", "distributed", "timeout")},
    "k": ("the stored pipeline with --approx eigen or lobpcg",
          lambda a, st: st and a.approx in ("eigen", "lobpcg")),
    "band_edges": ("SSR in memory", lambda a, st: a.model == "ssr" and not st),
    "atom": ("SSR in memory", lambda a, st: a.model == "ssr" and not st),
    "report": ("SSR in memory", lambda a, st: a.model == "ssr" and not st),
    **{d: ("SSR with --fusion cp or cp+sum", lambda a, st: a.model == "ssr" and a.fusion != "sum")
       for d in ("fusion_lr", "fusion_wd")},
    "layers": ("LightGCN", lambda a, st: a.model == "lightgcn"),
    "shrink": ("--update", lambda a, st: False),
}


def refuse_unused(args, stored: bool) -> None:
    """Refuse a flag the chosen run would ignore, naming what uses it (a silently ignored
    flag makes a user believe a setting was applied)."""
    run = "the stored pipeline" if stored else f"{args.model} in memory"
    for dest in sorted(getattr(args, "given", ())):
        if dest in _ONLY and not _ONLY[dest][1](args, stored):
            flag = "--" + dest.replace("_", "-")
            raise ValueError(f"{flag} is used by {_ONLY[dest][0]} only and this run trains "
                             f"{run}; remove it (or choose --pipeline / --model to match)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", type=Path, help="MMRec folder")
    src.add_argument("--synthetic", type=_triple, metavar="USERS,ITEMS,INTERACTIONS",
                     help="built-in synthetic multimodal graph of this size (default "
                          "{},{},{})".format(*DEFAULT_SYNTHETIC))
    p.add_argument("--modalities", nargs="*", default=None,
                   help="feature modalities to use (default: all; none = ID-only)")
    p.add_argument("--model", choices=("ssr", "lightgcn", "mf"), default="ssr")
    p.add_argument("--approx", choices=("auto", "exact", "eigen", "lobpcg", "chebyshev"),
                   default="auto", help="how SSR computes its bands (auto: exact on small "
                                        "graphs, else chebyshev)")
    p.add_argument("--pipeline", choices=("auto", "stored", "memory"), default="auto",
                   help="stored band features or in-memory model (auto: see above)")
    p.add_argument("--epochs", type=POS_INT, default=None,
                   help="maximum epochs; training stops earlier when validation stops "
                        "improving (default: 1000 with --data, 5 on the synthetic graph, "
                        f"{UPDATE_EPOCHS} with --update)")
    p.add_argument("--seed", type=NONNEG_INT, default=999)
    p.add_argument("--out", type=Path, default=Path("runs/train_large"))
    run = p.add_mutually_exclusive_group()
    run.add_argument("--resume", action="store_true", help="continue <out>/checkpoint.pt")
    run.add_argument("--fresh", action="store_true",
                     help="start over; <out>/checkpoint.pt is replaced when the new run writes "
                          "its first checkpoint")
    p.add_argument("--quiet", action="store_true",
                   help="log lines instead of progress bars: one per phase and per evaluated "
                        "epoch, then the final metrics")
    p.add_argument("--update", type=Path, metavar="NEW",
                   help="MMRec file of new training interactions to fold into the run given "
                        "by --from (written to --out, which must be a new folder)")
    p.add_argument("--from", dest="from_run", type=Path, metavar="RUN",
                   help="with --update: the output folder of the finished stored-pipeline run "
                        "to continue")
    p.add_argument("--shrink", type=_number(float, 0, 1, lo_open=True), default=None,
                   help=f"with --update: scale of the carried-over vectors (default "
                        f"{UPDATE_SHRINK}; 1 keeps the model as it was)")
    p.add_argument("--report", type=Path, default=None,
                   help="write the band explanation report (PNGs + HTML) here (SSR in memory)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=POS_INT, default=None,
                   help="torch CPU threads (default: the cores other processes leave idle, "
                        "counted again every few seconds while training; 1 per process "
                        "with --distributed)")
    g = p.add_argument_group("training")
    g.add_argument("--dim", type=POS_INT, default=64)
    g.add_argument("--lr", type=POS_FLOAT, default=1e-3,
                   help=f"learning rate (default %(default)g; --update: {UPDATE_LR:g})")
    g.add_argument("--reg", type=NONNEG_FLOAT, default=1e-4)
    g.add_argument("--batch-size", type=POS_INT, default=None,
                   help="interactions per step (default: 2048, doubled while an epoch would "
                        "take over 2000 steps)")
    g.add_argument("--n-neg", type=POS_INT, default=1)
    g.add_argument("--patience", type=POS_INT, default=20,
                   help=f"evaluations without improvement before stopping (--update: "
                        f"{UPDATE_PATIENCE})")
    g.add_argument("--eval-every", type=POS_INT, default=1,
                   help=f"epochs between evaluations (--update: {UPDATE_EVAL_EVERY})")
    g.add_argument("--eval-users", type=NONNEG_INT, default=20000,
                   help="rank all items for a fixed sample of this many users, in validation "
                        "and test (0: all users)")
    g.add_argument("--loss", choices=("bpr", "bce"), default="bpr")
    g.add_argument("--checkpoint-every", type=NONNEG_INT, default=0,
                   help="also checkpoint every this many steps")
    g = p.add_argument_group("SSR")
    g.add_argument("--n-bands", type=POS_INT, default=4)
    g.add_argument("--rank", type=POS_INT, default=16, help="CP rank of the G-HSNO fusion")
    g.add_argument("--order", type=_number(int, 2), default=None, help="Chebyshev order")
    g.add_argument("--id-basis", type=POS_INT, default=None,
                   help="eigenpairs per end for the ID modality (default: full basis on "
                        "small graphs, else 256, halved while computing it would take over "
                        "~6 GB)")
    g.add_argument("--id-prior", choices=("none", "lightgcn", "mirror"), default="none",
                   help="spectral prior of the ID coefficients")
    g.add_argument("--id-residual", choices=("free", "smooth"), default="free",
                   help="with a partial ID basis: the per-node residual free (default) or "
                        "smoothed over each node's neighbours, s(1)(I + Â) E_res")
    g.add_argument("--d0", type=POS_INT, default=64, help="width of the reduced content features")
    g.add_argument("--band-edges", choices=("energy", "uniform"), default="energy",
                   help="in memory: energy-balanced or uniform edges")
    g.add_argument("--atom", choices=("slot", "fold"), default="slot",
                   help="in memory: whether the energy balance counts the λ = 1 atom (slot) "
                        "or not (fold: the bands share the energy off the atom)")
    g.add_argument("--fusion", choices=("sum", "cp", "cp+sum"), default="sum",
                   help="plain sum (default, chosen on validation), G-HSNO (cp), or G-HSNO "
                        "on a sum skip path")
    g.add_argument("--n-out", type=POS_INT, default=None,
                   help="output bands of G-HSNO (default: --n-bands)")
    g.add_argument("--fusion-init", choices=("random", "identity"), default="random",
                   help="G-HSNO initialisation: random (the paper's) or the identity band map "
                        "(needs --rank >= --dim)")
    g.add_argument("--no-fusion-gates", action="store_true", help="G-HSNO without its gates")
    g.add_argument("--no-fusion-norm", action="store_true",
                   help="G-HSNO without its scale normalisation")
    g.add_argument("--lambda-fusion", type=NONNEG_FLOAT, default=0.0,
                   help="weight of the G-HSNO fusion regularisation")
    g.add_argument("--fusion-lr", type=POS_FLOAT, default=None,
                   help="learning rate of the G-HSNO factors (default: --lr)")
    g.add_argument("--fusion-wd", type=NONNEG_FLOAT, default=0.0,
                   help="Adam weight decay of the G-HSNO factors only")
    g.add_argument("--lambda-dec", type=NONNEG_FLOAT, default=0.0,
                   help="weight of the decomposition loss (cross-band correlation)")
    g.add_argument("--no-mask", action="store_true", help="ablation: no band mask")
    g.add_argument("--mask-p", type=_number(float, 0, 1, hi_open=True), default=0.4,
                   help="band drop probability (0.4, chosen on validation; runs from before "
                        "2026-12-06 used 0.2: resume them with --mask-p 0.2)")
    g.add_argument("--mask-scope", choices=("batch", "node"), default="batch",
                   help="one band mask per step for the whole batch, or one per node")
    g.add_argument("--lambda-mask", type=NONNEG_FLOAT, default=0.1)
    g.add_argument("--consistency", choices=("representation", "prediction"),
                   default="representation")
    g.add_argument("--no-align", action="store_true", help="ablation: no spectral alignment")
    g.add_argument("--lambda-cl", type=NONNEG_FLOAT, default=0.05)
    g.add_argument("--tau", type=POS_FLOAT, default=0.2)
    g = p.add_argument_group("stored pipeline")
    g.add_argument("--reduce", choices=("pca", "random"), default="pca")
    g.add_argument("--k", type=POS_INT, default=None, help="eigenpairs per end for --approx eigen")
    g.add_argument("--store-dtype", choices=("float32", "float16"), default="float32")
    g.add_argument("--store-dir", type=Path, default=None, help="default <out>/bands")
    g.add_argument("--distributed", action="store_true",
                   help="one process per rank (torchrun): row-partitioned bands, DDP")
    g.add_argument("--timeout", type=POS_FLOAT, default=300.0,
                   help="seconds a collective waits for a peer before failing")
    g = p.add_argument_group("baselines")
    g.add_argument("--layers", type=NONNEG_INT, default=3, help="LightGCN layers")
    return p


def load_data(args):
    if args.data is not None:
        return load_mmrec(args.data, modalities=args.modalities)
    u, i, e = args.synthetic or DEFAULT_SYNTHETIC
    return synthetic_dataset(u, i, e, modalities=synthetic_modalities(args.modalities),
                             seed=args.seed, name=f"synthetic-{u}x{i}x{e}",
                             progress=not args.quiet)


def default_epochs(args) -> int:
    """``--epochs``, else 1000 on real data (early stopping ends the run) and 5 on the
    synthetic graph, whose random interactions leave nothing to learn beyond a few epochs."""
    if args.epochs is not None:
        return args.epochs
    return 1000 if args.data is not None else 5


def use_stored(args, n_nodes: int) -> bool:
    if args.pipeline != "auto":
        return args.pipeline == "stored"
    return args.model == "ssr" and (args.distributed or args.approx == "chebyshev"
                                    or n_nodes > IN_MEMORY_MAX_NODES)


def fusion_options(args) -> dict:
    """The fusion, decomposition and ID-residual settings of SSR, as
    :class:`~ssr_engine.SSRModel` names them."""
    return dict(fusion=args.fusion, n_out=args.n_out, fusion_init=args.fusion_init,
                fusion_gates=not args.no_fusion_gates, fusion_norm=not args.no_fusion_norm,
                lambda_fusion=args.lambda_fusion, lambda_dec=args.lambda_dec,
                id_residual=args.id_residual)


def stored_options(args) -> LargeRun:
    return LargeRun(
        out=args.out, data=args.data, synthetic=args.synthetic or DEFAULT_SYNTHETIC,
        modalities=args.modalities, approx=args.approx, resume=args.resume, fresh=args.fresh,
        distributed=args.distributed, timeout=args.timeout, store_dir=args.store_dir,
        seed=args.seed, quiet=args.quiet, device=args.device, threads=args.threads,
        n_bands=args.n_bands, order=args.order, k=args.k, d0=args.d0, reduce=args.reduce,
        store_dtype=args.store_dtype, id_basis=args.id_basis, dim=args.dim, rank=args.rank,
        id_prior=args.id_prior, **fusion_options(args), band_mask=not args.no_mask,
        mask_p=args.mask_p, mask_scope=args.mask_scope, lambda_mask=args.lambda_mask,
        consistency=args.consistency, align=not args.no_align, lambda_cl=args.lambda_cl,
        tau=args.tau, reg=args.reg, loss=args.loss, epochs=default_epochs(args),
        batch_size=args.batch_size, lr=args.lr, fusion_lr=args.fusion_lr,
        fusion_weight_decay=args.fusion_wd, n_neg=args.n_neg, patience=args.patience,
        eval_every=args.eval_every, eval_users=args.eval_users or None,
        checkpoint_every=args.checkpoint_every)


def build_model(args, ds):
    graph = ds.train_graph()
    if args.model == "mf":
        return ssr_engine.MFBPR(graph, dim=args.dim, reg=args.reg, loss=args.loss)
    if args.model == "lightgcn":
        return ssr_engine.LightGCN(graph, dim=args.dim, n_layers=args.layers, reg=args.reg,
                                   loss=args.loss)
    return ssr_engine.SSRModel(
        graph, ds.features, n_bands=args.n_bands, dim=args.dim, rank=args.rank,
        approx=args.approx, order=args.order, id_basis=args.id_basis, id_prior=args.id_prior,
        d0=args.d0, band_edges=args.band_edges, atom=args.atom, **fusion_options(args),
        band_mask=not args.no_mask, mask_p=args.mask_p, mask_scope=args.mask_scope,
        lambda_mask=args.lambda_mask, consistency=args.consistency, align=not args.no_align,
        lambda_cl=args.lambda_cl, tau=args.tau, reg=args.reg, loss=args.loss, seed=args.seed)


def run_in_memory(args, ds, t0: float) -> dict:
    threads = ThreadPolicy(args.threads or "auto")
    threads.apply(force=True)
    print(f"[setup] {threads.describe()}", flush=True)
    if args.model == "ssr":
        n_train = int((ds.split == 0).sum())
        widths = sum(min(int(f.shape[1]), args.d0) for f in ds.features.values())
        check_feasible(args.approx, ds.n_users, ds.n_items, n_train, widths, args.n_bands,
                       args.order, id_k=args.id_basis)
    print(f"[data] {ds}", flush=True)
    seed_everything(args.seed)
    t1 = time.perf_counter()
    print(f"[model] {args.model} ...", flush=True)
    model = build_model(args, ds).to(args.device)
    print(f"[model] built in {time.perf_counter() - t1:.1f} s", flush=True)
    setup = time.perf_counter() - t0
    batch = (default_batch_size(int((ds.split == 0).sum())) if args.batch_size is None
             else args.batch_size)
    cfg = TrainConfig(epochs=default_epochs(args), batch_size=batch, lr=args.lr,
                      fusion_lr=args.fusion_lr, fusion_weight_decay=args.fusion_wd,
                      n_neg=args.n_neg, patience=args.patience, eval_every=args.eval_every,
                      eval_users=args.eval_users or None, seed=args.seed,
                      checkpoint_every=args.checkpoint_every, quiet=args.quiet,
                      log=args.quiet, threads=threads.threads)
    with out_folder(args.out):          # a refused run leaves no empty folder behind
        ckpt = args.out / "checkpoint.pt"
        if ckpt.exists() and not (args.resume or args.fresh):
            raise ValueError(f"{args.out} already holds a checkpoint ({ckpt}); pass --resume "
                             "to continue that run or --fresh to start over")
        if args.resume and not ckpt.exists():
            raise ValueError(f"--resume: there is no checkpoint in {args.out} to continue")
        remove_leftovers(ckpt, *(args.out / f for f in REPORT_FILES))
        trainer = Trainer(model, ds, cfg, checkpoint=ckpt, fresh=args.fresh)
        for line in trainer.plan_lines():
            print(line, flush=True)
        res = trainer.fit()
        out = {"dataset": ds.name, "model": args.model, "pipeline": "memory",
               "seed": args.seed,
               "config": model.config(), "bands": getattr(model, "band_report", None),
               "train": cfg.identity(), "best_epoch": res.best_epoch,
               "epochs_run": res.epochs_run, "valid": res.valid, "test": res.test,
               "test_cold": res.test_cold, "test_groups": res.test_groups,
               "notes": result_notes(res, cfg), "setup_seconds": setup,
               "train_seconds": res.train_seconds, "eval_seconds": res.eval_seconds,
               "threads": trainer.threads.usage(),
               "seconds_per_epoch": res.train_seconds / max(1, res.epochs_this_call),
               "wall_seconds": time.perf_counter() - t0, "history": res.history,
               "command": " ".join(sys.argv)}
        keep_timings(args.out, out, res.epochs_this_call)
        write_results(args.out, out, trainer.test_result)
        if args.report is not None and args.model == "ssr":
            # the trainer leaves the best-validation state loaded
            from ssr_engine.explain import read_item_names, write_report
            f = args.data / "items.tsv" if args.data is not None else None
            names = read_item_names(f, ds.n_items) if f is not None and f.is_file() else None
            write_report(model, ds, args.report, k=10, item_names=names)
    print(json.dumps({k: out[k] for k in ("best_epoch", "valid", "test", "test_cold",
                                           "wall_seconds")}, indent=1), flush=True)
    for note in out["notes"]:
        print(f"[note] {note}", flush=True)
    return out


def run_update(args) -> dict:
    """``--update NEW --from RUN``: the update's options are the run's, except the flags
    given here (those of :data:`~ssr_engine.train.update.UPDATE_FLAGS`)."""
    if args.update is None or args.from_run is None:
        raise ValueError("--update and --from go together: --update NEW --from RUN --out NEW_DIR")
    if "out" not in args.given:
        raise ValueError("--update needs --out: a new folder for the updated run")
    given = {d: getattr(args, d) for d in args.given if d not in ("update", "from_run")}
    if "eval_users" in given:
        given["eval_users"] = given["eval_users"] or None
    return run_large(update_options(args.update, args.from_run, **given))


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        if args.update is not None or args.from_run is not None:
            return run_update(args)
        if args.data is None:                  # synthetic: sizes known before generating
            u, i, e = args.synthetic or DEFAULT_SYNTHETIC
            refuse_unused(args, use_stored(args, u + i))
            if use_stored(args, u + i):
                return run_large(stored_options(args))
            if args.model == "ssr":
                widths = sum(min(d, args.d0)
                             for d in synthetic_modalities(args.modalities).values())
                check_feasible(args.approx, u, i, int(0.8 * e), widths, args.n_bands,
                               args.order, id_k=args.id_basis)
            return run_in_memory(args, load_data(args), t0)
        if not args.data.is_dir():
            raise ValueError(f"--data {args.data}: no such folder")
        ds = load_data(args)
        refuse_unused(args, use_stored(args, ds.n_users + ds.n_items))
        if use_stored(args, ds.n_users + ds.n_items):
            return run_large(stored_options(args), dataset=ds)
        return run_in_memory(args, ds, t0)
    except Interrupted as e:
        print(f"\n{e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        # outside training (loading, band precompute, the final test ranking): what was
        # saved stays, the band store's finished parts and the last checkpoint included
        print("\ninterrupted by SIGINT outside training; files written so far are kept: "
              "run the same command again (with --resume where the output folder holds a "
              "checkpoint)", file=sys.stderr)
        sys.exit(130)
    except RankFailure as e:
        print(f"\nerror: {e}", file=sys.stderr)
        sys.exit(1)
    except FileNotFoundError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            print(f"\nerror: {e}", file=sys.stderr)
            sys.exit(1)
        raise
    except ValueError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
