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


FUNNEL = ("view", "cart", "purchase")


def shop_catalog(n_items: int, n_categories: int | None = None, brands_per_category: int = 5,
                 seed: int = 0) -> pd.DataFrame:
    """A shop's catalog: item_id, title, category, brand (brands nest in categories), price, tags
    (`;`-joined) and description. Rows are in item order (item i is row i)."""
    rng = np.random.default_rng(seed)
    n_cat = n_categories or int(np.clip(n_items // 500, 10, 200))
    category = rng.integers(0, n_cat, n_items)
    brand = category * brands_per_category + rng.integers(0, brands_per_category, n_items)
    # prices lognormal around a per-category level
    level = rng.uniform(np.log(5), np.log(500), n_cat)
    price = np.round(np.exp(level[category] + rng.normal(0, 0.4, n_items)), 2)
    words = np.array(["soft", "steel", "eco", "classic", "compact", "premium", "travel", "kids", "outdoor",
                      "wireless", "organic", "vintage", "smart", "handmade", "family", "sport"])
    w1 = words[(category * 7) % len(words)]
    w2 = words[rng.integers(0, len(words), n_items)]
    ids = np.char.add("sku", np.arange(n_items).astype(str))
    return pd.DataFrame({
        "item_id": ids,
        "title": np.char.add(np.char.add(np.char.add(w1, " "), w2), np.char.add(" item ", np.arange(n_items).astype(str))),
        "category": np.char.add("cat", category.astype(str)),
        "brand": np.char.add("brand", brand.astype(str)),
        "price": price,
        "tags": np.where(rng.random(n_items) < 0.3, "sale;new", np.where(rng.random(n_items) < 0.5, "sale", "new")),
        "description": np.char.add(np.char.add(np.char.add("a ", w1), np.char.add(" ", w2)),
                                   " product for everyday use"),
    })


def shop_events(n_events: int, n_users: int, catalog: pd.DataFrame, seed: int = 0, days: int = 120,
                in_category: float = 0.75, favourite_brand: float = 0.3, cart_rate: float = 0.3,
                purchase_rate: float = 0.5, zipf: float = 1.0, start: str = "2026-01-01",
                first_user: int = 0) -> pd.DataFrame:
    """A shop's event log with planted structure, vectorized so that tens of millions of rows take
    seconds: columns user_id, item_id, event_type (view, cart, purchase), timestamp (datetime64[s]).

    Users have lognormal activity, one or two preferred categories and a favourite brand in the first;
    an item is picked from a preferred category with probability `in_category` (of those, from the
    favourite brand with probability `favourite_brand`), else from the whole catalog, always by Zipf
    popularity. Each pick is a view, followed by a cart with `cart_rate` and then a purchase with
    `purchase_rate`, minutes apart; picks spread over `days`. User IDs start at `first_user` (a large
    log is generated in chunks of users with different seeds).
    """
    rng = np.random.default_rng(seed)
    n_items = len(catalog)
    category = pd.factorize(catalog["category"])[0]
    brand = pd.factorize(catalog["brand"])[0]
    n_cat, n_brand = category.max() + 1, brand.max() + 1
    per_pick = 1 + cart_rate + cart_rate * purchase_rate
    n_picks = max(1, int(round(n_events / per_pick)))
    activity = rng.lognormal(0.0, 1.0, n_users)
    picks_per_user = rng.multinomial(n_picks, activity / activity.sum())
    user = np.repeat(np.arange(n_users), picks_per_user)
    # Zipf popularity; one cumulative array over items sorted by (category, brand) lets a pick
    # "within category c" or "within brand b" be one searchsorted into a contiguous weight range
    pop = 1.0 / (rng.permutation(n_items) + 1.0) ** zipf
    order = np.lexsort((brand, category))
    cum = np.cumsum(pop[order])
    edges = np.r_[0.0, cum]

    def ranges(keys: np.ndarray, n: int):
        """Per key, its [low, high) cumulative-weight range (keys are contiguous in `order`)."""
        k = keys[order]
        first = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        last = np.r_[first[1:], len(k)]
        lo, hi = np.zeros(n), np.zeros(n)
        lo[k[first]], hi[k[first]] = edges[first], edges[last]
        return lo, hi
    cat_lo, cat_hi = ranges(category, n_cat)
    brand_lo, brand_hi = ranges(brand, n_brand)
    prefs = rng.integers(0, n_cat, (n_users, 2))
    two = rng.random(n_users) < 0.5
    items_of_cat = [np.flatnonzero(category == c) for c in range(n_cat)]
    fav = np.array([brand[rng.choice(items_of_cat[c])] if len(items_of_cat[c]) else 0 for c in prefs[:, 0]])
    kind = rng.random(len(user))
    which = np.where(two[user] & (rng.random(len(user)) < 0.5), prefs[user, 1], prefs[user, 0])
    lo = np.where(kind < in_category * favourite_brand, brand_lo[fav[user]],
                  np.where(kind < in_category, cat_lo[which], 0.0))
    hi = np.where(kind < in_category * favourite_brand, brand_hi[fav[user]],
                  np.where(kind < in_category, cat_hi[which], cum[-1]))
    r = lo + rng.random(len(user)) * (hi - lo)
    item = order[np.minimum(np.searchsorted(cum, r, "right"), n_items - 1)]
    t0 = np.datetime64(start, "s").astype(np.int64)
    t = t0 + rng.integers(0, days * 86400, len(user))
    stage = 1 + (rng.random(len(user)) < cart_rate) * (1 + (rng.random(len(user)) < purchase_rate))
    rep = np.repeat(np.arange(len(user)), stage)
    step = np.arange(len(rep)) - np.repeat(np.cumsum(stage) - stage, stage)
    ts = t[rep] + step * 3600 + rng.integers(0, 3600, len(rep))   # each stage within its own hour
    ids = catalog["item_id"].to_numpy()
    return pd.DataFrame({"user_id": np.char.add("c", (user[rep] + first_user).astype(str)).astype(object),
                         "item_id": ids[item[rep]],
                         "event_type": np.asarray(FUNNEL, dtype=object)[step],
                         "timestamp": ts.astype("datetime64[s]")})
