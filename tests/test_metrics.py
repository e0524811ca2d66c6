"""Ranking metrics: MMRec definitions on hand-computed cases, masking, blocking."""
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ssr_engine.metrics import full_ranking, topk_metrics
from tolerances import tol

TOL = tol(torch.float64)


def test_hand_computed_single_user():
    # Ranked list: hit, miss, hit, miss; the user has 3 relevant items.
    m = topk_metrics(np.array([[1, 0, 1, 0]]), np.array([3]), ks=(2, 4))
    assert m["recall@2"][0] == pytest.approx(1 / 3, abs=TOL)
    assert m["recall@4"][0] == pytest.approx(2 / 3, abs=TOL)
    assert m["precision@2"][0] == pytest.approx(1 / 2, abs=TOL)
    assert m["precision@4"][0] == pytest.approx(2 / 4, abs=TOL)
    # NDCG: ideal DCG over min(K, 3) positions.
    dcg4 = 1 + 1 / math.log2(4)
    assert m["ndcg@2"][0] == pytest.approx(1 / (1 + 1 / math.log2(3)), abs=TOL)
    assert m["ndcg@4"][0] == pytest.approx(dcg4 / (1 + 1 / math.log2(3) + 1 / math.log2(4)),
                                          abs=TOL)
    # MAP: sum of precision at the hits over min(K, #relevant).
    assert m["map@2"][0] == pytest.approx(1.0 / 2, abs=TOL)
    assert m["map@4"][0] == pytest.approx((1 + 2 / 3) / 3, abs=TOL)


def test_recall_divides_by_all_relevant_items():
    # 30 relevant items, K = 20, all 20 hits: MMRec recall is 20/30, NDCG is 1.
    m = topk_metrics(np.ones((1, 20)), np.array([30]), ks=(20,))
    assert m["recall@20"][0] == pytest.approx(20 / 30, abs=TOL)
    assert m["ndcg@20"][0] == pytest.approx(1.0, abs=TOL)
    assert m["map@20"][0] == pytest.approx(1.0, abs=TOL)


def test_rejects_bad_cutoffs_and_users_without_items():
    with pytest.raises(ValueError, match="cut-offs"):
        topk_metrics(np.ones((1, 5)), np.array([1]), ks=(10,))
    with pytest.raises(ValueError, match="relevant"):
        topk_metrics(np.ones((1, 5)), np.array([0]), ks=(5,))


def _brute_force(scores, truth, exclude, k):
    """Independent per-user loop of the MMRec definitions."""
    out = {"recall": [], "ndcg": [], "precision": [], "map": []}
    for u in range(scores.shape[0]):
        rel = set(np.flatnonzero(truth[u]))
        if not rel:
            continue
        s = scores[u].copy()
        s[exclude[u] > 0] = -np.inf
        top = np.argsort(-s, kind="stable")[:k]
        hits = [1.0 if i in rel else 0.0 for i in top]
        out["recall"].append(sum(hits) / len(rel))
        out["precision"].append(sum(hits) / k)
        dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
        idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(rel))))
        out["ndcg"].append(dcg / idcg)
        ap = sum(hits[r] * sum(hits[:r + 1]) / (r + 1) for r in range(k))
        out["map"].append(ap / min(k, len(rel)))
    return {f"{n}@{k}": float(np.mean(v)) for n, v in out.items()}


@pytest.mark.parametrize("block", [1, 7, 1000])
def test_full_ranking_matches_brute_force(block):
    rng = np.random.default_rng(0)
    n_u, n_i = 40, 60
    scores = rng.standard_normal((n_u, n_i))  # distinct values: no ties
    train = (rng.random((n_u, n_i)) < 0.2).astype(float)
    truth = ((rng.random((n_u, n_i)) < 0.1) & (train == 0)).astype(float)
    truth[3] = 0.0  # a user without relevant items is skipped
    S = torch.tensor(scores, dtype=torch.float32)
    res = full_ranking(lambda u: S[u], sp.csr_matrix(truth), sp.csr_matrix(train),
                       ks=(5, 10), block=block)
    assert 3 not in res.users
    got = res.summary()
    for k in (5, 10):
        want = _brute_force(scores, truth, train, k)
        for name, v in want.items():
            assert got[name] == pytest.approx(v, abs=tol(torch.float32))


def test_training_items_are_masked():
    # Item 0 has the top score for both users but is user 0's training item.
    S = torch.tensor([[9.0, 1.0, 0.5], [9.0, 1.0, 0.5]])
    train = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 0]]))
    truth = sp.csr_matrix(np.array([[0, 1, 0], [0, 1, 0]]))
    res = full_ranking(lambda u: S[u], truth, train, ks=(1,))
    assert res.per_user["recall@1"].tolist() == [1.0, 0.0]
    # Without the mask user 0 would miss too.
    res = full_ranking(lambda u: S[u], truth, None, ks=(1,))
    assert res.per_user["recall@1"].tolist() == [0.0, 0.0]


def test_summary_subset_and_errors():
    S = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    truth = sp.csr_matrix(np.array([[1, 0], [1, 0]]))
    res = full_ranking(lambda u: S[u], truth, None, ks=(1,))
    assert res.summary([0])["recall@1"] == 1.0 and res.summary([0])["n_users"] == 1
    assert res.summary()["recall@1"] == 0.5
    with pytest.raises(ValueError, match="no user has a relevant item"):
        full_ranking(lambda u: S[u], sp.csr_matrix((2, 2)), None, ks=(1,))
    with pytest.raises(ValueError, match="exceeds the number of items"):
        full_ranking(lambda u: S[u], truth, None, ks=(3,))


def test_per_user_results_round_trip_and_bad_files(tmp_path):
    from ssr_engine.metrics import RankingResult
    truth = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]]))
    S = torch.tensor([[0.0, 9.0, 1.0], [0.0, 2.0, 1.0], [5.0, 0.0, 1.0]])
    r = full_ranking(lambda u: S[u], truth, ks=(1, 2))
    r.save(tmp_path / "r.npz")
    back = RankingResult.load(tmp_path / "r.npz")
    assert back.users.tolist() == r.users.tolist()
    assert back.summary() == r.summary() and back.summary([0, 2]) == r.summary([0, 2])
    assert back.summary([0])["recall@1"] == 1.0 and back.summary([1])["recall@1"] == 0.0
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "other.npz", x=np.arange(3))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "r.npz").read_bytes()[:100])
    # a single array, and arrays that cannot be per-user metrics
    np.save(open(tmp_path / "single.npz", "wb"), np.arange(3))
    bad = {"float-users": dict(users=np.array([0.7, 1.2]), **{"metric:r": np.ones(2)}),
           "2d-users": dict(users=np.zeros((2, 1), int), **{"metric:r": np.ones((2, 1))}),
           "repeated": dict(users=np.array([1, 1]), **{"metric:r": np.ones(2)}),
           "negative": dict(users=np.array([-1, 2]), **{"metric:r": np.ones(2)}),
           "nan": dict(users=np.array([0, 2]), **{"metric:r": np.array([0.5, np.nan])}),
           "above-one": dict(users=np.array([0, 2]), **{"metric:r": np.array([0.5, 2.0])}),
           "int-metric": dict(users=np.array([0, 2]), **{"metric:r": np.array([0, 1])}),
           "unnamed": dict(users=np.array([0, 2]), **{"metric:": np.ones(2)})}
    for name, arrays in bad.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
    for name in ("garbage", "other", "cut", "single", *bad):
        with pytest.raises(ValueError, match="per-user ranking metrics"):
            RankingResult.load(tmp_path / f"{name}.npz")
    # a path is written as given (numpy's savez would append .npz)
    r.save(tmp_path / "plain")
    assert RankingResult.load(tmp_path / "plain").summary() == r.summary()
    with pytest.raises(FileNotFoundError):
        RankingResult.load(tmp_path / "missing.npz")
