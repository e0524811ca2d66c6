"""Training and evaluation speed on the real datasets.

* ``test_eval_clothing_full_ranking``: full-ranking evaluation of every Clothing test user
  (embeddings + scores against all 23k items + training-item mask + top-20 + metrics).
  Accuracy gate: the blocked evaluation equals an independent numpy ranking on a sample of
  users. Goal: ≤ 10 s on the 2-core development machine.
* ``test_eval_topk_numba_vs_torch``: the same evaluation with the top-20 selection on each
  backend of :func:`ssr_engine.ops.masked_topk` (``SSR_BACKEND=torch``: ``-inf`` on the
  training items, then ``torch.topk``; ``numba``: the CPU kernel), interleaved rounds, at one
  torch thread (the training protocol's ``--threads 1``) and at the machine's default; and
  the selection alone on one block of 1456 users x 23,033 items (the block the trainer
  scores). Accuracy gate: both give the same per-user metrics and the same indices. The
  ratios go to ``extra_info`` and stdout.
* ``test_epoch_ssr_vs_lightgcn_baby``: one training epoch of SSR (ID-only, default settings)
  and of LightGCN (3 layers) on Amazon Baby in the same run; the ratio goes to
  ``extra_info``. Accuracy gate: both epochs lower the loss on a fixed held-out batch.
  Goal: ratio ≤ 2.

Run: ``python -m pytest bench/bench_train.py --benchmark-only``.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

import ssr_engine
from sizes import have_real, real_dataset
from ssr_engine.metrics import full_ranking
from ssr_engine.train import BPRSampler, TrainConfig, Trainer, seed_everything


def _numpy_recall(score_fn, truth, train, users, k):
    out = []
    for u in users:
        s = score_fn(torch.tensor([u]))[0].double().numpy()
        s[train[u].indices] = -np.inf
        top = np.argsort(-s, kind="stable")[:k]
        rel = set(truth[u].indices.tolist())
        out.append(len(rel.intersection(top.tolist())) / len(rel))
    return float(np.mean(out))


@pytest.mark.skipif(not have_real("amazon-clothing"), reason="amazon-clothing data missing")
def test_eval_clothing_full_ranking(benchmark):
    ds = real_dataset("amazon-clothing")
    seed_everything(0)
    model = ssr_engine.LightGCN(ds.train_graph(), dim=64).eval()
    truth, train = ds.user_item_matrix("test"), ds.user_item_matrix("train")

    def run():
        return full_ranking(model.scorer(), truth, train, ks=(10, 20))

    res = run()
    # Accuracy gate on 200 evaluated users: same Recall@20 as an independent ranking.
    sample = res.users[np.random.default_rng(0).choice(res.users.size, 200, replace=False)]
    want = _numpy_recall(model.scorer(), truth, train, sample, 20)
    got = res.summary(sample)["recall@20"]
    if not math.isclose(got, want, abs_tol=1e-9):
        pytest.fail(f"blocked evaluation disagrees with the numpy ranking: {got} vs {want}")
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update({"users": int(res.users.size), "items": ds.n_items,
                                 "threads": torch.get_num_threads(),
                                 "goal_seconds": 10.0,
                                 "mean_seconds": benchmark.stats.stats.mean})


def _fixed_batch_loss(model, batch):
    model.eval()
    with torch.no_grad():
        out = float(model.loss(*batch)["rec"])
    model.train()
    return out


@pytest.mark.skipif(not have_real("amazon-baby"), reason="amazon-baby data missing")
def test_epoch_ssr_vs_lightgcn_baby(benchmark):
    ds = real_dataset("amazon-baby")
    graph = ds.train_graph()
    seed_everything(0)
    t0 = time.perf_counter()
    ssr = ssr_engine.SSRModel(graph, features=None)
    ssr_setup = time.perf_counter() - t0
    lgn = ssr_engine.LightGCN(graph)
    sampler = BPRSampler(ds.user_item_matrix("train"), 2048, rng=np.random.default_rng(1))
    u, p, n = next(sampler.epoch())
    batch = tuple(torch.from_numpy(x) for x in (u, p, n))
    trainers = {name: Trainer(m, ds, TrainConfig(quiet=True, seed=0))
                for name, m in (("ssr", ssr), ("lightgcn", lgn))}
    before = {name: _fixed_batch_loss(t.model, batch) for name, t in trainers.items()}
    times = {}
    for name, t in trainers.items():  # the first epoch of each also serves as warm-up
        t0 = time.perf_counter()
        t.train_epoch()
        times[name] = time.perf_counter() - t0
    after = {name: _fixed_batch_loss(t.model, batch) for name, t in trainers.items()}
    for name in trainers:
        if not after[name] < before[name]:
            pytest.fail(f"{name}: an epoch did not lower the loss ({before[name]:.4f} -> "
                        f"{after[name]:.4f}); refusing to report a time")

    def both():
        out = {}
        for name, t in trainers.items():
            t0 = time.perf_counter()
            t.train_epoch()
            out[name] = time.perf_counter() - t0
        return out

    rounds = [both() for _ in range(2)]
    ssr_s = min(r["ssr"] for r in rounds)
    lgn_s = min(r["lightgcn"] for r in rounds)
    benchmark.pedantic(lambda: trainers["ssr"].train_epoch(), rounds=1, iterations=1)
    benchmark.extra_info.update({"ssr_epoch_s": ssr_s, "lightgcn_epoch_s": lgn_s,
                                 "ratio_ssr_over_lightgcn": ssr_s / lgn_s, "goal_ratio": 2.0,
                                 "ssr_setup_s": ssr_setup,
                                 "threads": torch.get_num_threads()})


@pytest.mark.skipif(not have_real("amazon-clothing"), reason="amazon-clothing data missing")
def test_eval_topk_numba_vs_torch(benchmark, monkeypatch):
    pytest.importorskip("numba")
    from ssr_engine.ops import masked_topk
    ds = real_dataset("amazon-clothing")
    seed_everything(0)
    model = ssr_engine.LightGCN(ds.train_graph(), dim=64).eval()
    truth, train = ds.user_item_matrix("test"), ds.user_item_matrix("train")
    scorer = model.scorer()

    def run(backend):
        monkeypatch.setenv("SSR_BACKEND", backend)
        return full_ranking(scorer, truth, train, ks=(10, 20))

    first = {b: run(b) for b in ("torch", "numba")}
    for key, v in first["torch"].per_user.items():
        if not np.array_equal(v, first["numba"].per_user[key]):
            pytest.fail(f"the numba evaluation differs from torch's on {key}")
    # the selection alone, on the block the trainer scores
    users = first["torch"].users[:max(1, (1 << 25) // ds.n_items)]
    with torch.no_grad():
        block = scorer(torch.from_numpy(users)).float()
    ex = train[users]
    picks = {b: masked_topk(block, 20, ex, backend=b) for b in ("torch", "numba")}
    if not torch.equal(picks["torch"], picks["numba"]):
        pytest.fail("the numba top-20 differs from torch's on the block")

    def best(fn, rounds, fresh=lambda: None):
        """Best time of ``fn(fresh())``; ``fresh()`` (untimed) hands it its input."""
        times = []
        for _ in range(rounds):
            arg = fresh()
            t0 = time.perf_counter()
            fn(arg)
            times.append(time.perf_counter() - t0)
        return min(times)

    info = {"users": int(first["torch"].users.size), "items": ds.n_items,
            "block": list(block.shape), "default_threads": torch.get_num_threads()}
    threads0 = torch.get_num_threads()
    try:
        for threads in (1, threads0):
            torch.set_num_threads(threads)
            # numba reads the block; torch writes -inf into a fresh copy, as the
            # evaluation lets it (overwrite=True on scores it just computed)
            info[f"select_numba_s@{threads}"] = best(
                lambda _: masked_topk(block, 20, ex, backend="numba"), 7)
            info[f"select_torch_s@{threads}"] = best(
                lambda S: masked_topk(S, 20, ex, backend="torch", overwrite=True), 7,
                fresh=block.clone)
            evals = {"torch": [], "numba": []}
            for _ in range(2):                 # interleaved: load drifts hit both
                for name in evals:
                    evals[name].append(best(lambda _, n=name: run(n), 1))
            for name, v in evals.items():
                info[f"eval_{name}_s@{threads}"] = min(v)
            info[f"select_ratio@{threads}"] = (info[f"select_numba_s@{threads}"]
                                               / info[f"select_torch_s@{threads}"])
            info[f"eval_ratio@{threads}"] = (info[f"eval_numba_s@{threads}"]
                                             / info[f"eval_torch_s@{threads}"])
    finally:
        torch.set_num_threads(threads0)
    benchmark.pedantic(lambda: run("numba"), rounds=1, iterations=1)
    benchmark.extra_info.update(info)
    for t in sorted({1, threads0}):
        print(f"\n{t} thread(s): top-20 of the block numba {info[f'select_numba_s@{t}']:.3f} s, "
              f"torch {info[f'select_torch_s@{t}']:.3f} s (ratio "
              f"{info[f'select_ratio@{t}']:.2f}); full evaluation numba "
              f"{info[f'eval_numba_s@{t}']:.2f} s, torch {info[f'eval_torch_s@{t}']:.2f} s "
              f"(ratio {info[f'eval_ratio@{t}']:.2f})")
