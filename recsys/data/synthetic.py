"""Generated interaction logs with planted structure, for tests and benchmarks.

Users and items belong to clusters; a user interacts mostly with items of their own cluster, so a model
that learns anything beats popularity by a wide margin, and one that learns nothing does not.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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


@dataclass
class ShopLog:
    """A shop log split at `cut`, with the generator's own purchase probabilities as a ceiling.

    `events`: user_id, item_id, event_type, timestamp (datetime64[s]) of everything before `cut`;
    `future`: the purchases at or after `cut` (same columns), what a recommender is asked to predict;
    `log`: the complete generated log (before and after `cut`), e.g. for measuring leaks.
    """
    events: pd.DataFrame
    future: pd.DataFrame
    log: pd.DataFrame
    cut: pd.Timestamp
    _user_ids: np.ndarray = field(repr=False)
    _item_ids: np.ndarray = field(repr=False)
    _probs: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    _posterior: Callable[[np.ndarray, int, int], np.ndarray] | None = field(default=None, repr=False)

    def oracle(self, k: int) -> dict:
        """For each user with a future purchase, their top-k item ids by the true purchase
        probability at the cut (taste x popularity, plus the buy-again mass when `repeat` > 0)."""
        return self._top(self._probs, k)

    def best_from_history(self, k: int, samples: int = 4000, seed: int = 0) -> dict:
        """For each user with a future purchase, their top-k by the posterior mean purchase probability
        given their events before the cut, under the generator's own model (its popularity, brands,
        category shares and priors known; only the user's tastes estimated, from their views and
        purchases). This is the Bayes ceiling of any recommender that sees the same log: the oracle
        knows the tastes, a model has to estimate them from a few dozen events.

        Computed by importance sampling: per user, `samples` brand-weight vectors from a Dirichlet
        centred on their counts, weighted by prior x likelihood / proposal (the prior is the
        generator's mixture over main categories of scaled Dirichlets). Only for `repeat` = 0 and
        without `same_item_funnel` (raises ValueError otherwise).
        """
        if self._posterior is None:
            raise ValueError("best_from_history needs a log generated with repeat=0 and same_item_funnel=False")
        return self._top(lambda chunk: self._posterior(chunk, samples, seed), k)

    def _top(self, probs: Callable[[np.ndarray], np.ndarray], k: int) -> dict:
        users = pd.unique(self.future["user_id"])
        index = pd.Index(self._user_ids).get_indexer(users)
        out = {}
        k = min(k, len(self._item_ids))
        for start in range(0, len(index), 512):
            chunk = index[start:start + 512]
            p = probs(chunk)
            top = np.argpartition(-p, k - 1, axis=1)[:, :k]
            top = np.take_along_axis(top, np.argsort(-np.take_along_axis(p, top, 1), axis=1, kind="stable"), 1)
            for u, row in zip(users[start:start + 512], top):
                out[u] = list(self._item_ids[row])
        return out

    def recall_at(self, lists: dict, k: int) -> float:
        """Mean over users with future purchases of |top-k of their list ∩ their future purchased
        items| / |their future purchased items| (distinct items; a missing list scores 0)."""
        truth = self.future.groupby("user_id")["item_id"].agg(lambda s: set(s))
        if len(truth) == 0:
            return float("nan")
        return float(np.mean([len(items & set(lists.get(u, ())[:k])) / len(items) for u, items in truth.items()]))


def shop_log(n_users: int, catalog: pd.DataFrame, *, seed: int = 0, days: int = 120,
             sessions_per_user_mean: float = 12.0, views_per_session: float = 4.0, cart_rate: float = 0.2,
             purchase_rate: float = 0.4, browse_noise: float = 0.5, main_category_share: float = 0.8,
             brand_concentration: float = 0.5, zipf: float = 0.8, repeat: float = 0.0,
             same_item_funnel: bool = False, cut: str | pd.Timestamp | None = None,
             start: str = "2026-01-01", users_seed: int | None = None, first_user: int = 0) -> ShopLog:
    """A session-based shop log (view / cart / purchase) whose future is not already in its history.

    Generative rules:

    - user u has one or two main categories sharing `main_category_share` of the category preference
      (the rest spread evenly over the other categories), a brand affinity per brand drawn from
      Gamma(`brand_concentration`) (small = a few favourite brands), and a lognormal activity level;
      item popularity pop(i) is Zipf(`zipf`) over a random ranking of the items of each category;
    - the base purchase probability is p_u(i) ∝ pref_u(category_i) * pref_u(brand_i) * pop(i); with
      `repeat` > 0 each purchase is, with probability `repeat` (if the user bought before), a re-buy of
      one of the user's earlier purchases picked uniformly ("buy again"), so the true probability at a
      time is repeat * (share of i in u's past purchases) + (1 - repeat) * p_u(i);
    - activity comes in sessions: Poisson(`sessions_per_user_mean` * relative activity) sessions
      starting uniformly over `days` (gaps of hours to days); a session has 1 + Poisson(
      `views_per_session` - 1) views tens of seconds apart, each drawn from p_u with probability
      1 - `browse_noise` and else by popularity alone (browsing); each view is carted with
      `cart_rate` seconds to minutes later; then Poisson(`purchase_rate`) purchases a minute or so
      after the last view, each drawn from the purchase distribution above, independently of what was
      viewed (not preceded by a cart of the same item);
    - with `same_item_funnel=True` every purchase is additionally preceded by a view (20-59 s before)
      and a cart (1-19 s before) of the same item: the leaky funnel of `shop_events`, kept only to
      test leak detectors;
    - `cut` defaults to start + round(0.85 * days) days; `events` is everything before it, `future`
      the purchases at or after it, drawn from the same distributions, so history predicts them only
      through taste, popularity and repeats. `ShopLog.oracle(k)` ranks by the true probability at
      the cut (base p_u mixed with the user's purchases before the cut when `repeat` > 0).

    User ids are "c0", "c1", ... (from "c<first_user>"); item ids come from `catalog` (e.g. `shop_catalog`).
    A large log is generated in chunks of users that share the catalog's popularity: the same `seed`
    (popularity), a different `users_seed` (tastes and activity; None: drawn on from `seed`) and
    `first_user` per chunk.
    """
    rng = np.random.default_rng(seed)
    item_ids = catalog["item_id"].to_numpy()
    n_items = len(catalog)
    category, _ = pd.factorize(catalog["category"])
    brand, _ = pd.factorize(catalog["brand"])
    n_cat, n_brand = category.max() + 1, brand.max() + 1
    brand_cat = np.zeros(n_brand, dtype=np.int64)
    brand_cat[brand] = category          # brands nest in categories (as in `shop_catalog`)

    # popularity: Zipf over a random ranking within each category
    rank = np.empty(n_items)
    perm = rng.permutation(n_items)
    cat_sorted = perm[np.argsort(category[perm], kind="stable")]
    first = np.searchsorted(category[cat_sorted], np.arange(n_cat))
    rank[cat_sorted] = np.arange(n_items) - first[category[cat_sorted]]
    pop = 1.0 / (rank + 1.0) ** zipf
    # items sorted by brand: an item "within brand b" is one searchsorted into a contiguous range
    order = np.argsort(brand, kind="stable")
    cum = np.cumsum(pop[order])
    edges = np.r_[0.0, cum]
    bstart = np.searchsorted(brand[order], np.arange(n_brand))
    bend = np.searchsorted(brand[order], np.arange(n_brand), "right")
    b_lo, b_hi = edges[bstart], edges[bend]
    brand_mass = b_hi - b_lo

    # user tastes
    if users_seed is not None:
        rng = np.random.default_rng([seed, users_seed])
    main = rng.integers(0, n_cat, (n_users, 2))
    two = rng.random(n_users) < 0.5
    rest = (1 - main_category_share) / max(n_cat - 1, 1)
    pref_cat = np.full((n_users, n_cat), rest)
    pref_cat[np.arange(n_users), main[:, 0]] = 0.0
    pref_cat[two, main[two, 1]] = 0.0
    share = np.where(two & (main[:, 0] != main[:, 1]), main_category_share / 2, main_category_share)
    pref_cat[np.arange(n_users), main[:, 0]] += share
    pref_cat[two, main[two, 1]] += share[two]
    pref_brand = rng.gamma(brand_concentration, 1.0, (n_users, n_brand))
    w = pref_cat[:, brand_cat] * pref_brand * brand_mass          # P(brand | user), unnormalized
    w /= w.sum(1, keepdims=True)
    wcum = np.cumsum(w, 1)
    wcum[:, -1] = 1.0
    flat = (wcum + np.arange(n_users)[:, None]).ravel()

    def draw_user(users: np.ndarray) -> np.ndarray:
        """Items from p_u: a brand by the user's brand weights, then an item by popularity in it."""
        b = np.searchsorted(flat, users + rng.random(len(users)), "right") - users * n_brand
        b = np.clip(b, 0, n_brand - 1)
        r = b_lo[b] + rng.random(len(users)) * brand_mass[b]
        return order[np.minimum(np.searchsorted(cum, r, "right"), n_items - 1)]

    def draw_popular(n: int) -> np.ndarray:
        return order[np.minimum(np.searchsorted(cum, rng.random(n) * cum[-1], "right"), n_items - 1)]

    # sessions
    activity = rng.lognormal(0.0, 1.0, n_users)
    n_sess = rng.poisson(sessions_per_user_mean * activity / activity.mean())
    s_user = np.repeat(np.arange(n_users), n_sess)
    span = days * 86400
    s_start = rng.integers(0, max(span - 3600, 1), len(s_user))
    # views
    n_views = 1 + rng.poisson(max(views_per_session - 1, 0), len(s_user))
    v_sess = np.repeat(np.arange(len(s_user)), n_views)
    gap = rng.exponential(45.0, len(v_sess)).astype(np.int64) + 1
    csum = np.cumsum(gap)
    v_t = s_start[v_sess] + csum - np.repeat(csum[np.cumsum(n_views) - n_views], n_views)
    v_user = s_user[v_sess]
    noisy = rng.random(len(v_sess)) < browse_noise
    v_item = draw_user(v_user)
    v_item[noisy] = draw_popular(int(noisy.sum()))
    # carts of viewed items
    carted = rng.random(len(v_sess)) < cart_rate
    c_user, c_item = v_user[carted], v_item[carted]
    c_t = v_t[carted] + rng.integers(5, 300, int(carted.sum()))
    # purchases after the session's last view, independent of the views
    s_end = np.zeros(len(s_user), dtype=np.int64)
    s_end[v_sess] = v_t                       # last write per session wins: v_t is increasing in it
    n_buy = rng.poisson(purchase_rate, len(s_user))
    p_sess = np.repeat(np.arange(len(s_user)), n_buy)
    p_user = s_user[p_sess]
    p_t = s_end[p_sess] + 60 + (np.arange(len(p_sess)) - np.repeat(np.cumsum(n_buy) - n_buy, n_buy)) * 90 \
        + rng.integers(0, 60, len(p_sess))
    p_item = draw_user(p_user)
    # buy again: a purchase re-buys a uniformly chosen earlier purchase of the same user
    o = np.lexsort((p_t, p_user))
    p_user, p_t, p_item = p_user[o], p_t[o], p_item[o]
    n_p = np.bincount(p_user, minlength=n_users)
    u_first = np.cumsum(n_p) - n_p
    prior = np.arange(len(p_user)) - u_first[p_user]          # purchases the user made before this one
    again = (rng.random(len(p_user)) < repeat) & (prior > 0)
    parent = np.arange(len(p_user))
    parent[again] = u_first[p_user[again]] + (rng.random(int(again.sum())) * prior[again]).astype(np.int64)
    while True:
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            break
        parent = nxt
    p_item = p_item[parent]

    parts = [(v_user, v_item, 0, v_t), (c_user, c_item, 1, c_t), (p_user, p_item, 2, p_t)]
    if same_item_funnel:
        parts += [(p_user, p_item, 0, p_t - rng.integers(20, 60, len(p_t))),
                  (p_user, p_item, 1, p_t - rng.integers(1, 20, len(p_t)))]
    u = np.concatenate([x[0] for x in parts])
    it = np.concatenate([x[1] for x in parts])
    et = np.concatenate([np.full(len(x[0]), x[2]) for x in parts])
    t0 = np.datetime64(start, "s").astype(np.int64)
    ts = t0 + np.concatenate([x[3] for x in parts])
    o = np.lexsort((et, ts, u))
    user_ids = np.char.add("c", np.arange(first_user, first_user + n_users).astype(str)).astype(object)
    log = pd.DataFrame({"user_id": user_ids[u[o]], "item_id": item_ids[it[o]],
                        "event_type": np.asarray(FUNNEL, dtype=object)[et[o]],
                        "timestamp": ts[o].astype("datetime64[s]")})
    cut_ts = (pd.Timestamp(start) + pd.Timedelta(days=round(0.85 * days))) if cut is None else pd.Timestamp(cut)
    before = (log["timestamp"] < cut_ts).to_numpy()
    events = log[before].reset_index(drop=True)
    future = log[~before & (log["event_type"] == "purchase").to_numpy()].reset_index(drop=True)

    # the true purchase probability at the cut
    cut_s = int(cut_ts.to_datetime64().astype("datetime64[s]").astype(np.int64)) - t0
    past = p_t < cut_s
    past_counts = pd.Series(1.0, index=pd.MultiIndex.from_arrays([p_user[past], p_item[past]])).groupby(level=[0, 1]).sum()
    item_in_brand = pop / brand_mass[brand]

    def probs(users: np.ndarray) -> np.ndarray:
        p = w[users][:, brand] * item_in_brand[None, :]
        if repeat > 0 and len(past_counts):
            bought = np.zeros_like(p)
            sub = past_counts[past_counts.index.get_level_values(0).isin(users)]
            row = pd.Index(users).get_indexer(sub.index.get_level_values(0))
            bought[row, sub.index.get_level_values(1)] = sub.to_numpy()
            n = bought.sum(1, keepdims=True)
            p = np.where(n > 0, repeat * bought / np.maximum(n, 1) + (1 - repeat) * p, p)
        return p

    posterior = None
    if repeat == 0 and not same_item_funnel:
        posterior = _brand_posterior(
            views=np.bincount(v_user[v_t < cut_s] * n_brand + brand[v_item[v_t < cut_s]],
                              minlength=n_users * n_brand).reshape(n_users, n_brand),
            buys=np.bincount(p_user[past] * n_brand + brand[p_item[past]],
                             minlength=n_users * n_brand).reshape(n_users, n_brand),
            brand_cat=brand_cat, brand_mass=brand_mass, n_cat=n_cat, share=main_category_share,
            concentration=brand_concentration, noise=browse_noise, item_brand=brand, item_in_brand=item_in_brand)
    return ShopLog(events, future, log, cut_ts, user_ids, item_ids, probs, posterior)


def _brand_posterior(views, buys, brand_cat, brand_mass, n_cat, share, concentration, noise, item_brand,
                     item_in_brand):
    """`shop_log`'s Bayes estimate: users -> [len(users), n_items] posterior mean purchase probability.

    A user's tastes enter the log only through their brand weights w (P(brand b | user)): a purchase
    falls in brand b with probability w_b, a view with (1 - noise) w_b + noise m_b (m_b: b's share of
    popularity, a browsing view), and within a brand both pick by popularity, which carries no
    information about the user. So the per-brand counts of views and purchases are sufficient. The
    prior on w: main categories (one, or two with probability 1/2, uniform) fix a_b = category share x
    brand mass, then w = a*g / sum(a*g) with g_b ~ Gamma(concentration): a scaled Dirichlet, whose
    density is Gamma(sum alpha) / prod Gamma(alpha) * prod (w_b^(alpha-1) / a_b^alpha) /
    (sum_b w_b / a_b)^(sum alpha).
    """
    from scipy.special import gammaln
    n_brand = len(brand_mass)
    m = brand_mass / brand_mass.sum()
    rest = (1 - share) / max(n_cat - 1, 1)
    configs, prior = [], []
    for c in range(n_cat):
        pc = np.full(n_cat, rest)
        pc[c] = share
        configs.append(pc)
        prior.append(0.5 / n_cat + 0.5 / n_cat ** 2)
        for d in range(c + 1, n_cat):
            pc = np.full(n_cat, rest)
            pc[[c, d]] = share / 2
            configs.append(pc)
            prior.append(0.5 * 2 / n_cat ** 2)
    a = np.array(configs)[:, brand_cat] * brand_mass[None, :]          # [configs, brands]
    log_prior_config = np.log(np.array(prior))
    alpha = concentration
    const = gammaln(alpha * n_brand) - n_brand * gammaln(alpha) - alpha * np.log(a).sum(1)   # [configs]

    def posterior(users: np.ndarray, samples: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.zeros((len(users), n_brand))
        for r, u in enumerate(users):
            beta = alpha + buys[u] + (1 - noise) * views[u]
            w = np.maximum(rng.dirichlet(beta, samples), 1e-300)                         # [S, B]
            logw = np.log(w)
            # prior: a mixture over the main-category configurations of scaled Dirichlets
            lp = (const[None, :] + (alpha - 1) * logw.sum(1, keepdims=True)
                  - alpha * n_brand * np.log(w @ (1.0 / a).T) + log_prior_config[None, :])   # [S, configs]
            log_prior = np.logaddexp.reduce(lp, axis=1)
            log_lik = logw @ buys[u] + np.log((1 - noise) * w + noise * m[None, :]) @ views[u]
            log_q = gammaln(beta.sum()) - gammaln(beta).sum() + logw @ (beta - 1)
            lw = log_prior + log_lik - log_q
            weight = np.exp(lw - lw.max())
            out[r] = weight @ w / weight.sum()
        return out[:, item_brand] * item_in_brand[None, :]

    return posterior
