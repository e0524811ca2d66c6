import numpy as np
import pytest

from ssr_engine.data import synthetic_dataset


def test_exact_count_seeded_and_split():
    a = synthetic_dataset(500, 300, 8000, seed=7)
    b = synthetic_dataset(500, 300, 8000, seed=7)
    assert a.user_ids.size == 8000
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    np.testing.assert_array_equal(a.features["image"], b.features["image"])
    pairs = a.user_ids * a.n_items + a.item_ids
    assert np.unique(pairs).size == pairs.size  # no duplicates
    counts = np.bincount(a.split, minlength=3) / a.split.size
    assert counts[0] > 0.7 and counts[1] > 0.05 and counts[2] > 0.05
    # every user with >= 3 interactions has a valid and a test item
    per_user = np.stack([np.bincount(a.user_ids[a.split == s], minlength=500) for s in (1, 2)])
    many = a.user_counts() >= 3
    assert (per_user[:, many] >= 1).all()


def test_power_law_degrees_and_planted_signal():
    ds = synthetic_dataset(3000, 1000, 60000, modalities={"text": 16}, seed=0)
    deg = np.bincount(ds.item_ids, minlength=1000)
    assert deg.max() > 10 * np.median(deg)  # heavy tail
    # items co-consumed by the same users have more similar features than random pairs
    f = ds.features["text"] / np.linalg.norm(ds.features["text"], axis=1, keepdims=True)
    u = ds.user_ids
    order = np.argsort(u, kind="stable")
    it = ds.item_ids[order]
    same_user = u[order][1:] == u[order][:-1]
    co = (f[it[1:]] * f[it[:-1]]).sum(1)[same_user].mean()
    rng = np.random.default_rng(0)
    rand = (f[rng.integers(0, 1000, 5000)] * f[rng.integers(0, 1000, 5000)]).sum(1).mean()
    assert co > rand + 0.1


@pytest.mark.parametrize("kw, match", [
    (dict(n_users=10, n_items=5, n_interactions=10), "below n_users"),
    (dict(n_users=0, n_items=5, n_interactions=10), "must be positive"),
    (dict(n_users=4, n_items=50, n_interactions=20, in_community=2.0), "in_community"),
    (dict(n_users=4, n_items=50, n_interactions=20, split=(0.5, 0.5, 0.5)), "split"),
    (dict(n_users=4, n_items=5, n_interactions=12), "too dense"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        synthetic_dataset(**kw)
