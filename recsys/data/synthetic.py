"""Generated interaction logs with planted structure, for tests and benchmarks.

Users and items belong to clusters; a user interacts mostly with items of their own cluster, so a model
that learns anything beats popularity by a wide margin, and one that learns nothing does not.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def clustered_interactions(n_users: int = 400, n_items: int = 300, n_clusters: int = 8,
                           per_user: int = 30, in_cluster: float = 0.9, seed: int = 0,
                           start_ts: int = 1_600_000_000) -> pd.DataFrame:
    """Columns user_id, item_id, rating, timestamp; item popularity is Zipf-like within a cluster."""
    rng = np.random.default_rng(seed)
    user_cluster = rng.integers(0, n_clusters, n_users)
    item_cluster = np.arange(n_items) % n_clusters
    rows = []
    for u in range(n_users):
        own = np.flatnonzero(item_cluster == user_cluster[u])
        other = np.flatnonzero(item_cluster != user_cluster[u])
        n_own = rng.binomial(per_user, in_cluster)
        w = 1.0 / np.arange(1, len(own) + 1) ** 0.7
        own_items = rng.choice(own, size=min(n_own, len(own)), replace=False, p=w / w.sum())
        other_items = rng.choice(other, size=per_user - len(own_items), replace=False)
        items = np.concatenate([own_items, other_items])
        rng.shuffle(items)
        ts = start_ts + np.sort(rng.integers(0, 86400 * 365, len(items)))
        for it, t in zip(items, ts):
            rows.append((f"u{u}", f"i{it}", 4.0 + rng.integers(0, 2) * 0.5 if rng.random() < 0.9 else 2.0, int(t)))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


def clustered_items(n_items: int = 300, n_clusters: int = 8) -> pd.DataFrame:
    """Item metadata for `clustered_interactions`: the genre is the item's cluster, plus a title and year."""
    return pd.DataFrame({
        "item_id": [f"i{i}" for i in range(n_items)],
        "title": [f"Item {i} cluster{i % n_clusters} ({1990 + i % 30})" for i in range(n_items)],
        "genres": [f"g{i % n_clusters}|all" for i in range(n_items)],
    })
