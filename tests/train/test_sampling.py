"""Triplet sampling: coverage of the training pairs and valid negatives."""
import numpy as np
import pytest
import scipy.sparse as sp

from ssr_engine.train import BPRSampler


def _matrix(seed=0, n_u=50, n_i=30, density=0.3):
    rng = np.random.default_rng(seed)
    m = (rng.random((n_u, n_i)) < density).astype(float)
    m[:, 0] = 1.0  # every user has an interaction
    return sp.csr_matrix(m)


def test_epoch_covers_each_interaction_once_and_negatives_are_unseen():
    R = _matrix()
    s = BPRSampler(R, batch_size=64, n_neg=3, rng=np.random.default_rng(1))
    us, ps, ns = zip(*s.epoch())
    u, p, n = np.concatenate(us), np.concatenate(ps), np.concatenate(ns)
    assert len(us) == len(s) and n.shape == (R.nnz, 3)
    seen = sorted(zip(u.tolist(), p.tolist()))
    coo = R.tocoo()
    assert seen == sorted(zip(coo.row.tolist(), coo.col.tolist()))
    dense = R.toarray()
    assert not dense[np.repeat(u, 3), n.ravel()].any()


def test_same_seed_same_batches():
    R = _matrix()
    a = [b[2] for b in BPRSampler(R, 32, rng=np.random.default_rng(5)).epoch()]
    b = [b[2] for b in BPRSampler(R, 32, rng=np.random.default_rng(5)).epoch()]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_bad_inputs():
    with pytest.raises(ValueError, match="no interactions"):
        BPRSampler(sp.csr_matrix((3, 3)))
    with pytest.raises(ValueError, match="all 2 items"):
        BPRSampler(sp.csr_matrix(np.ones((2, 2))))
