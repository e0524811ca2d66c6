"""Train SSR or a baseline on MMRec-format data (or the built-in synthetic set) and report.

Writes ``<out>/metrics.json`` with the validation metrics of the chosen epoch, the test
metrics of that epoch (all test users and cold-start users), the best epoch, epochs run and
wall time; ``<out>/checkpoint.pt`` is saved after every epoch and resumed from when present.

Examples:
    python examples/train_large.py --data ../shared/data/movielens-100k --model ssr --out runs/ml
    python examples/train_large.py --model lightgcn --epochs 20 --out runs/synthetic
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import ssr_engine
from ssr_engine.data import load_mmrec, synthetic_dataset
from ssr_engine.train import TrainConfig, Trainer, seed_everything


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="MMRec folder (default: synthetic dataset)")
    p.add_argument("--modalities", nargs="*", default=None,
                   help="feature modalities to use (default: all *_feat.npy; none = ID-only)")
    p.add_argument("--model", choices=("ssr", "lightgcn", "mf"), default="ssr")
    p.add_argument("--approx", choices=("auto", "exact", "eigen", "chebyshev"), default="auto",
                   help="how SSR computes its bands")
    p.add_argument("--epochs", type=int, default=None,
                   help="maximum epochs (default: 1000 with --data, early stopping decides; "
                        "10 on the built-in synthetic set)")
    p.add_argument("--seed", type=int, default=999)
    p.add_argument("--out", type=Path, default=Path("runs/train_large"),
                   help="output folder (default: runs/train_large)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--report", type=Path, default=None,
                   help="write the band explanation report (PNGs + HTML) here (SSR only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is much faster on a busy shared machine)")
    g = p.add_argument_group("training")
    g.add_argument("--dim", type=int, default=64)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--reg", type=float, default=1e-4)
    g.add_argument("--batch-size", type=int, default=2048)
    g.add_argument("--n-neg", type=int, default=1)
    g.add_argument("--patience", type=int, default=20)
    g.add_argument("--eval-every", type=int, default=1)
    g.add_argument("--loss", choices=("bpr", "bce"), default="bpr")
    g = p.add_argument_group("SSR")
    g.add_argument("--n-bands", type=int, default=4)
    g.add_argument("--rank", type=int, default=16, help="CP rank of the G-HSNO fusion")
    g.add_argument("--order", type=int, default=None, help="Chebyshev order (--approx chebyshev)")
    g.add_argument("--id-basis", type=int, default=None,
                   help="eigenpairs per end for the ID modality (default: full basis on "
                        "small graphs, 256 otherwise)")
    g.add_argument("--id-prior", choices=("none", "lightgcn", "mirror"), default="none")
    g.add_argument("--band-edges", choices=("energy", "uniform"), default="energy")
    g.add_argument("--fusion", choices=("cp", "cp+sum", "sum"), default="cp")
    g.add_argument("--no-mask", action="store_true", help="ablation: no band mask")
    g.add_argument("--mask-p", type=float, default=0.2)
    g.add_argument("--lambda-mask", type=float, default=0.1)
    g.add_argument("--consistency", choices=("representation", "prediction"),
                   default="representation")
    g.add_argument("--no-align", action="store_true", help="ablation: no spectral alignment")
    g.add_argument("--lambda-cl", type=float, default=0.05)
    g.add_argument("--tau", type=float, default=0.2)
    g = p.add_argument_group("baselines")
    g.add_argument("--layers", type=int, default=3, help="LightGCN layers")
    g = p.add_argument_group("synthetic data (without --data)")
    g.add_argument("--users", type=int, default=20_000)
    g.add_argument("--items", type=int, default=10_000)
    g.add_argument("--interactions", type=int, default=300_000)
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 1000 if args.data is not None else 10
    return args


def load_data(args):
    if args.data is None:
        mods = None if args.modalities is None else {m: 64 for m in args.modalities}
        return synthetic_dataset(args.users, args.items, args.interactions, modalities=mods,
                                 seed=args.seed, name="synthetic")
    return load_mmrec(args.data, modalities=args.modalities)


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
        band_edges=args.band_edges, fusion=args.fusion, band_mask=not args.no_mask,
        mask_p=args.mask_p, lambda_mask=args.lambda_mask, consistency=args.consistency,
        align=not args.no_align, lambda_cl=args.lambda_cl, tau=args.tau, reg=args.reg,
        loss=args.loss, seed=args.seed)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ds = load_data(args)
    seed_everything(args.seed)
    model = build_model(args, ds).to(args.device)
    setup = time.perf_counter() - t0
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      n_neg=args.n_neg, patience=args.patience, eval_every=args.eval_every,
                      seed=args.seed, quiet=args.quiet)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "checkpoint.pt"
    if args.fresh and ckpt.exists():
        ckpt.unlink()
    res = Trainer(model, ds, cfg, checkpoint=ckpt).fit()
    out = {"dataset": ds.name, "model": args.model, "seed": args.seed,
           "config": model.config(), "bands": getattr(model, "band_report", None), "train": cfg.identity(), "best_epoch": res.best_epoch,
           "epochs_run": res.epochs_run, "valid": res.valid, "test": res.test,
           "test_cold": res.test_cold, "setup_seconds": setup,
           "train_seconds": res.train_seconds, "eval_seconds": res.eval_seconds,
           "seconds_per_epoch": res.train_seconds / max(1, res.epochs_this_call),
           "wall_seconds": time.perf_counter() - t0, "history": res.history,
           "command": " ".join(sys.argv)}
    (args.out / "metrics.json").write_text(json.dumps(out, indent=1))
    if args.report is not None and args.model == "ssr":
        # the trainer leaves the best-validation state loaded
        from ssr_engine.explain import read_item_names, write_report
        f = args.data / "items.tsv" if args.data is not None else None
        names = read_item_names(f, ds.n_items) if f is not None and f.is_file() else None
        write_report(model, ds, args.report, k=10, item_names=names)
    if not args.quiet:
        print(json.dumps({k: out[k] for k in ("best_epoch", "valid", "test", "test_cold",
                                               "wall_seconds")}, indent=1))
    return out


if __name__ == "__main__":
    main()
