"""Masked top-k: the numba kernel against the torch reference, bad inputs, the fallback."""
import multiprocessing as mp
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ssr_engine.metrics import full_ranking
from ssr_engine.ops import dispatch, masked_topk, masked_topk_reference

numba = pytest.importorskip("numba")


def _case(b, n, per_row, dtype=torch.float32, seed=0):
    rng = np.random.default_rng(seed)
    scores = torch.from_numpy(rng.standard_normal((b, n))).to(dtype)
    rows = np.repeat(np.arange(b), per_row)
    cols = np.concatenate([rng.choice(n, c, replace=False) for c in np.broadcast_to(per_row, b)])
    ex = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(b, n))
    return scores, ex


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,k", [(1000, 20), (300, 1), (128, 128), (129, 50), (5000, 10)])
def test_numba_equals_the_reference(dtype, n, k):
    per_row = np.random.default_rng(1).integers(0, min(n - k, 60) + 1, 37)
    scores, ex = _case(37, n, per_row, dtype)
    before = scores.clone()
    got = masked_topk(scores, k, ex, backend="numba")
    want = masked_topk_reference(scores, k, ex)
    assert got.dtype == torch.int64 and got.shape == (37, k)
    assert torch.equal(got, want)
    assert torch.equal(scores, before)                  # neither path wrote the scores
    assert not set(got[0].tolist()) & set(ex[0].indices.tolist())


def test_nan_ranks_first_and_exclusion_wins_over_nan():
    scores, ex = _case(6, 700, 30)
    scores[1, 333] = float("nan")
    scores[2, 650] = float("nan")
    scores[3, int(ex[3].indices[0])] = float("nan")      # excluded: never returned
    scores[4, 5] = float("inf")
    got = masked_topk(scores, 10, ex, backend="numba")
    assert torch.equal(got, masked_topk_reference(scores, 10, ex))
    assert got[1, 0] == 333 and got[2, 0] == 650 and got[4, 0] == 5
    # NaN above +inf, as torch.topk has it
    inf_at, nan_at = np.setdiff1d(np.arange(700), ex[5].indices)[[10, 600]]
    scores[5, inf_at], scores[5, nan_at] = float("inf"), float("nan")
    got = masked_topk(scores, 3, ex, backend="numba")
    assert got[5, :2].tolist() == [nan_at, inf_at]
    assert torch.equal(got, masked_topk_reference(scores, 3, ex))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_finite_scores_anywhere_in_a_chunk(dtype):
    """NaN and infinities at random places (inside skipped chunks too): one NaN per row at
    most, so the expected order has no ties."""
    scores, ex = _case(200, 1000, 15, dtype, seed=7)
    rng = np.random.default_rng(8)
    for r in range(200):
        cols = rng.choice(1000, 3, replace=False)
        scores[r, cols[0]] = float("nan") if r % 2 else float("inf")
        scores[r, cols[1]] = float("-inf")
        if r % 3 == 0:
            scores[r, cols[2]] = float("inf") if r % 2 else 50.0
    got = masked_topk(scores, 20, ex, backend="numba")
    assert torch.equal(got, masked_topk_reference(scores, 20, ex))


def test_rows_with_fewer_items_left_than_k_end_with_excluded_items():
    scores, _ = _case(3, 40, 0)
    ex = sp.csr_matrix(np.concatenate([np.ones((1, 36)), np.zeros((1, 4))], axis=1))
    ex = sp.vstack([ex, sp.csr_matrix((2, 40))]).tocsr()
    got = masked_topk(scores, 6, ex, backend="numba")
    want = masked_topk_reference(scores, 6, ex)
    left = torch.topk(scores[0, 36:], 4).indices + 36
    assert torch.equal(got[0, :4], left) and torch.equal(want[0, :4], left)
    assert got[0, 4:].tolist() == [0, 1]                 # excluded, lowest index first
    assert torch.equal(got[1:], want[1:])


def test_ties_keep_the_lower_index_first_and_no_exclusion():
    scores = torch.zeros(2, 300)
    scores[0, [7, 3, 250]] = 1.0
    got = masked_topk(scores, 5, None, backend="numba")
    assert got[0].tolist() == [3, 7, 250, 0, 1] and got[1].tolist() == [0, 1, 2, 3, 4]


def test_unsorted_duplicated_exclusions_are_canonicalised():
    scores, _ = _case(2, 200, 0)
    ex = sp.csr_matrix((np.ones(4), np.array([9, 3, 9, 150]), np.array([0, 3, 4])),
                       shape=(2, 200))
    assert not ex.has_canonical_format
    got = masked_topk(scores, 190, ex, backend="numba")
    assert torch.equal(got, masked_topk_reference(scores, 190, ex))


@pytest.mark.parametrize("args,err,match", [
    ((torch.zeros(5), 2, None), ValueError, r"\[b, n_items\]"),
    ((torch.zeros(2, 5, dtype=torch.int64), 2, None), TypeError, "floating point"),
    ((torch.zeros(2, 5), 0, None), ValueError, "k must be"),
    ((torch.zeros(2, 5), 6, None), ValueError, "k must be"),
    ((torch.zeros(2, 5), 2.5, None), ValueError, "k must be"),
    ((torch.zeros(2, 5), 2, sp.csr_matrix((3, 5))), ValueError, "exclude must be"),
])
def test_bad_inputs(args, err, match):
    for backend in ("torch", "numba"):
        with pytest.raises(err, match=match):
            masked_topk(*args, backend=backend)


def test_backends_refuse_what_they_cannot_run(monkeypatch):
    with pytest.raises(TypeError, match="float32/float64"):
        masked_topk(torch.zeros(2, 5, dtype=torch.float16), 2, backend="numba")
    with pytest.raises(ValueError, match="backend must be"):
        masked_topk(torch.zeros(2, 5), 2, backend="cupy")
    with pytest.raises(ValueError, match="no Triton kernel"):
        masked_topk(torch.zeros(2, 5), 2, backend="triton")
    # an SSR_BACKEND naming a backend this op lacks is ignored, not an error
    monkeypatch.setenv("SSR_BACKEND", "triton")
    scores, ex = _case(4, 300, 5)
    assert torch.equal(masked_topk(scores, 5, ex), masked_topk_reference(scores, 5, ex))


def test_excluded_indices_out_of_range_are_refused():
    for col in (7, -3):
        ex = sp.csr_matrix((np.ones(1), np.array([col]), np.array([0, 1, 1])), shape=(2, 5))
        for backend in ("torch", "numba"):
            with pytest.raises(ValueError, match="outside"):
                masked_topk(torch.zeros(2, 5), 2, ex, backend=backend)


def test_auto_sends_large_k_to_torch(monkeypatch):
    def no_kernel(*args):
        raise AssertionError("the numba kernel ran")
    # patch the module masked_topk runs in (a doctest run may have loaded ranking.py again)
    where = masked_topk.__globals__
    monkeypatch.setitem(where, "_run_kernel", no_kernel)
    monkeypatch.delenv("SSR_BACKEND", raising=False)
    scores, ex = _case(3, 400, 10)
    k = where["NUMBA_MAX_K"] + 1
    assert torch.equal(masked_topk(scores, k, ex), masked_topk_reference(scores, k, ex))
    with pytest.raises(AssertionError, match="kernel ran"):
        masked_topk(scores, where["NUMBA_MAX_K"], ex)


@pytest.fixture
def keep_threads():
    """Torch's and numba's thread settings are restored after the test."""
    torch_threads = torch.get_num_threads()
    yield
    torch.set_num_threads(torch_threads)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def test_threads_follow_torch_and_numba_setting_is_left_alone(keep_threads):
    scores, ex = _case(64, 2000, 20)
    want = masked_topk_reference(scores, 20, ex)
    numba.set_num_threads(1)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        assert torch.equal(masked_topk(scores, 20, ex, backend="numba"), want)
        assert numba.get_num_threads() == 1


def _child(scores, ex, want, queue):
    queue.put(bool(torch.equal(masked_topk(scores, 20, ex), want)))


@pytest.mark.skipif(not hasattr(mp, "get_context") or sys.platform != "linux",
                    reason="fork start method")
def test_a_forked_child_ranks_after_the_parent_used_the_parallel_kernel(keep_threads):
    scores, ex = _case(64, 2000, 20)
    want = masked_topk_reference(scores, 20, ex)
    torch.set_num_threads(2)
    assert torch.equal(masked_topk(scores, 20, ex, backend="numba"), want)      # parallel
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(scores, ex, want, queue))
    child.start()
    child.join(120)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung")
    assert child.exitcode == 0 and queue.get(timeout=5)


@pytest.fixture
def no_numba(monkeypatch):
    """numba made unimportable (as on a machine without it)."""
    monkeypatch.setitem(sys.modules, "numba", None)
    dispatch.numba_usable.cache_clear()
    yield
    dispatch.numba_usable.cache_clear()


def test_without_numba_auto_falls_back_to_torch(no_numba, monkeypatch):
    monkeypatch.delenv("SSR_BACKEND", raising=False)
    assert not dispatch.numba_usable()
    assert dispatch.resolve_backend("auto", torch.zeros(2), numba=True) == "torch"
    scores, ex = _case(9, 500, 12)
    assert torch.equal(masked_topk(scores, 20, ex), masked_topk_reference(scores, 20, ex))
    with pytest.raises(RuntimeError, match="needs the numba package"):
        masked_topk(scores, 20, ex, backend="numba")
    # the evaluation runs on (full ranking takes the top k through masked_topk)
    truth = sp.csr_matrix((np.ones(9), (np.arange(9), np.arange(9) * 7)), shape=(9, 500))
    res = full_ranking(lambda u: scores[u], truth, ex, ks=(20,))
    assert res.users.size == 9 and 0 <= res.summary()["recall@20"] <= 1


def test_full_ranking_is_the_same_on_both_backends(monkeypatch):
    scores, ex = _case(50, 800, 25, seed=4)
    truth = sp.random(50, 800, density=0.02, format="csr", random_state=3)
    truth = truth - truth.multiply(ex > 0)
    truth.eliminate_zeros()
    out = {}
    for env in ("torch", "numba"):
        monkeypatch.setenv("SSR_BACKEND", env)
        out[env] = full_ranking(lambda u: scores[u].clone(), truth, ex, ks=(10, 20), block=16)
    for key, v in out["torch"].per_user.items():
        np.testing.assert_array_equal(v, out["numba"].per_user[key], err_msg=key)
