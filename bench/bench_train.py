"""Training and evaluation speed on the real datasets.

* ``test_eval_clothing_full_ranking``: full-ranking evaluation of every Clothing test user
  (embeddings + scores against all 23k items + training-item mask + top-20 + metrics).
  Accuracy gate: the blocked evaluation equals an independent numpy ranking on a sample of
  users. Goal: ≤ 10 s on the 2-core development machine.
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
