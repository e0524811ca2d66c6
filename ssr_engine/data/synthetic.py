"""A seeded generator of power-law user–item graphs with planted multimodal item features.

Users and items belong to latent communities. Item popularity and user activity follow
power laws; a user picks most of its items inside its own community (by popularity) and the
rest anywhere. Each modality sees the item's community through its own random embedding,
plus a per-item latent taste vector and noise, so content features carry real (and partly
redundant) signal about who interacts with what. Memory stays near a few arrays of
``n_interactions`` int32/int64 values, so 20M interactions fit in a few GB.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
from tqdm.auto import tqdm

from .dataset import Dataset

__all__ = ["synthetic_dataset"]


def _power_law(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    # Pareto weights with tail exponent `exponent`, normalised to mean 1.
    w = (1.0 - rng.random(n)) ** (-1.0 / exponent)
    return w / w.mean()


def synthetic_dataset(n_users: int, n_items: int, n_interactions: int,
                      modalities: Optional[Dict[str, int]] = None, n_communities: int = 32,
                      in_community: float = 0.8, exponent: float = 1.5,
                      split=(0.8, 0.1, 0.1), min_user_degree: int = 3,
                      seed: int = 0, name: str = "synthetic", progress: bool = False) -> Dataset:
    """Generate a power-law bipartite dataset with planted item features.

    Args:
        n_users: number of users.
        n_items: number of items.
        n_interactions: number of sampled interactions (duplicates are then merged, so the
            final count is slightly lower).
        modalities: modality name -> feature dimension (default ``{"image": 64, "text": 32}``;
            ``{}`` for ID-only).
        n_communities: number of latent communities.
        in_community: probability that an interaction stays inside the user's community.
        exponent: Pareto tail exponent of item popularity and user activity.
        split: fractions of each user's interactions for train / valid / test.
        min_user_degree: every user gets at least this many sampled interactions.
        seed: random seed; the same arguments and seed give the same dataset.
        name: dataset name.
        progress: show a progress bar over the generation stages (sampling, merging
            duplicates, splitting, features); a million users take about a minute.

    Returns:
        A :class:`Dataset` with split labels and features.

    Example:
        >>> ds = synthetic_dataset(1000, 500, 20000, seed=1)
        >>> ds.features["image"].shape
        (500, 64)
    """
    if min(n_users, n_items, n_interactions, n_communities) <= 0:
        raise ValueError("n_users, n_items, n_interactions and n_communities must be positive")
    if n_interactions < n_users * min_user_degree:
        raise ValueError(f"n_interactions={n_interactions} is below n_users * "
                         f"min_user_degree = {n_users * min_user_degree}")
    if n_interactions > n_users * n_items // 4:
        raise ValueError(f"n_interactions={n_interactions} is too dense for {n_users} x "
                         f"{n_items} pairs (at most a quarter of them)")
    if not 0.0 <= in_community <= 1.0:
        raise ValueError(f"in_community must lie in [0, 1], got {in_community}")
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1.0) > 1e-9:
        raise ValueError(f"split must be three fractions summing to 1, got {split}")
    modalities = {"image": 64, "text": 32} if modalities is None else dict(modalities)
    rng = np.random.default_rng(seed)
    C = n_communities
    bar = tqdm(total=4, desc="synthetic data", unit="stage", disable=not progress,
               dynamic_ncols=True)

    item_comm = rng.integers(0, C, n_items).astype(np.int32)
    user_comm = rng.integers(0, C, n_users).astype(np.int32)
    pop = _power_law(rng, n_items, exponent)

    # User activity: min degree plus a power-law share of the rest.
    act = _power_law(rng, n_users, exponent)
    extra = n_interactions - n_users * min_user_degree
    deg = min_user_degree + np.floor(act / act.sum() * extra).astype(np.int64)
    short = n_interactions - int(deg.sum())
    if short > 0:
        deg[rng.choice(n_users, short, replace=True, p=act / act.sum())] += 1
    users = np.repeat(np.arange(n_users, dtype=np.int32), deg)

    # Sampling items by popularity: globally, and inside a community through a cumulative
    # table in which community c occupies [c, c + 1).
    order = np.argsort(item_comm, kind="stable").astype(np.int32)
    comm_sorted = item_comm[order]
    cum = np.cumsum(pop[order])
    starts = np.searchsorted(comm_sorted, np.arange(C))
    ends = np.searchsorted(comm_sorted, np.arange(C), side="right")
    base = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    total = np.where(ends > starts, cum[np.maximum(ends - 1, 0)] - base, 1.0)
    table = comm_sorted + (cum - base[comm_sorted]) / total[comm_sorted]
    global_cum = np.cumsum(pop) / pop.sum()

    def sample_items(users: np.ndarray) -> np.ndarray:
        items = np.empty(users.size, dtype=np.int64)
        chunk = 1 << 22
        for lo in range(0, users.size, chunk):
            u = users[lo:lo + chunk]
            c = user_comm[u]
            inside = (rng.random(u.size) < in_community) & (starts[c] < ends[c])
            t = c[inside] + rng.random(int(inside.sum()))
            items[lo:lo + chunk][inside] = order[np.minimum(np.searchsorted(table, t), n_items - 1)]
            out = ~inside
            items[lo:lo + chunk][out] = np.minimum(
                np.searchsorted(global_cum, rng.random(int(out.sum()))), n_items - 1)
        return items

    # Merge duplicates through a sorted int64 key; top up with fresh samples (users by
    # activity) until exactly n_interactions distinct pairs remain.
    bar.set_postfix_str("sampling")
    key = np.unique(users.astype(np.int64) * n_items + sample_items(users))
    del users
    bar.update()
    bar.set_postfix_str("merging duplicates")
    user_cum = np.cumsum(deg) / deg.sum()
    for attempt in range(64):
        missing = n_interactions - key.size
        if missing <= 0:
            break
        n_extra = int(missing * (1.2 + attempt)) + 16
        extra_u = np.minimum(np.searchsorted(user_cum, rng.random(n_extra)), n_users - 1)
        key = np.union1d(key, extra_u * n_items + sample_items(extra_u))
    if key.size < n_interactions:
        raise ValueError(f"could not place {n_interactions} distinct interactions among "
                         f"{n_users} x {n_items} pairs with this popularity skew; ask for fewer")
    if key.size > n_interactions:
        key = np.sort(rng.choice(key, n_interactions, replace=False))
    u = key // n_items
    i = key % n_items
    del key
    bar.update()
    bar.set_postfix_str("splitting")
    perm = np.lexsort((rng.random(u.size), u))
    u, i = u[perm], i[perm]
    counts = np.bincount(u, minlength=n_users)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(u.size) - first[u]
    n_u = counts[u]
    # At least one valid and one test interaction for users with three or more.
    enough = n_u >= 3
    n_test = np.where(enough & (split[2] > 0), np.maximum(1, np.round(n_u * split[2])), 0)
    n_valid = np.where(enough & (split[1] > 0), np.maximum(1, np.round(n_u * split[1])), 0)
    lab = np.zeros(u.size, dtype=np.int8)
    lab[rank >= n_u - n_test] = 2
    lab[(rank >= n_u - n_test - n_valid) & (rank < n_u - n_test)] = 1

    bar.update()
    bar.set_postfix_str("features")
    feats = {}
    taste = rng.standard_normal((n_items, 8)).astype(np.float32)
    for m, d in modalities.items():
        centroids = rng.standard_normal((C, d)).astype(np.float32)
        mix = rng.standard_normal((8, d)).astype(np.float32) / np.sqrt(8)
        noise = rng.standard_normal((n_items, d)).astype(np.float32)
        feats[m] = centroids[item_comm] + 0.5 * taste @ mix + 0.7 * noise
    bar.update()
    bar.close()
    return Dataset(u, i, lab, n_users, n_items, feats, name=name)
