"""`shop_log`: a session log whose future purchases are not already in the history, with an oracle."""
import numpy as np
import pandas as pd
import pytest

from recsys.data.synthetic import shop_catalog, shop_log

K = 20


@pytest.fixture(scope="module")
def catalog():
    return shop_catalog(2000, seed=0)


@pytest.fixture(scope="module")
def log(catalog):
    return shop_log(800, catalog, seed=3)


def same_item_view_share(log: pd.DataFrame, purchases: pd.DataFrame, seconds: int) -> float:
    """Share of `purchases` whose (user, item) was viewed in `log` within `seconds` before."""
    p = purchases.sort_values("timestamp")
    v = log[log["event_type"] == "view"].rename(columns={"timestamp": "viewed"}).sort_values("viewed")
    m = pd.merge_asof(p, v[["user_id", "item_id", "viewed"]], left_on="timestamp", right_on="viewed",
                      by=["user_id", "item_id"], direction="backward")
    return float(((m["timestamp"] - m["viewed"]) <= pd.Timedelta(seconds=seconds)).mean())


def test_deterministic_and_split_at_cut(catalog, log):
    again = shop_log(800, catalog, seed=3)
    pd.testing.assert_frame_equal(log.events, again.events)
    pd.testing.assert_frame_equal(log.future, again.future)
    assert not log.events.equals(shop_log(800, catalog, seed=4).events)
    assert list(log.events.columns) == ["user_id", "item_id", "event_type", "timestamp"]
    assert log.events["timestamp"].dtype == "datetime64[s]"
    assert set(log.events["event_type"]) == {"view", "cart", "purchase"}
    assert log.cut == pd.Timestamp("2026-01-01") + pd.Timedelta(days=102)
    assert (log.events["timestamp"] < log.cut).all()
    assert len(log.future) > 100
    assert (log.future["timestamp"] >= log.cut).all() and (log.future["event_type"] == "purchase").all()
    later = log.log[(log.log["timestamp"] >= log.cut) & (log.log["event_type"] == "purchase")]
    assert len(later) == len(log.future)
    assert set(log.future["item_id"]) <= set(catalog["item_id"])
    custom = shop_log(200, catalog, seed=3, cut="2026-03-01")
    assert custom.events["timestamp"].max() < pd.Timestamp("2026-03-01") <= custom.future["timestamp"].min()


def test_no_same_item_funnel_leak(catalog, log):
    assert same_item_view_share(log.log, log.future, 1800) < 0.10
    leaky = shop_log(800, catalog, seed=3, same_item_funnel=True)
    purchases = leaky.log[leaky.log["event_type"] == "purchase"]
    assert same_item_view_share(leaky.log, purchases, 60) == 1.0
    assert same_item_view_share(leaky.log, leaky.future, 1800) == 1.0


def test_oracle_beats_category_popularity_beats_popularity_beats_random(catalog, log):
    ev, users = log.events, log.future["user_id"].unique()
    oracle = log.oracle(K)
    assert set(oracle) == set(users) and all(len(v) == K and len(set(v)) == K for v in oracle.values())
    buys = ev[ev["event_type"] == "purchase"]
    popular = list(buys["item_id"].value_counts().index[:K])
    # popular items of the user's most viewed categories, in order, topped up with global popularity
    category = catalog.set_index("item_id")["category"]
    by_category = buys.groupby(buys["item_id"].map(category))["item_id"].agg(lambda s: list(s.value_counts().index))
    views = ev[ev["event_type"] == "view"]
    viewed = views.groupby([views["user_id"], views["item_id"].map(category)]).size()
    cat_pop = {}
    for u in users:
        lst = []
        cats = viewed.loc[u].sort_values(ascending=False).index if u in viewed.index.get_level_values(0) else []
        for c in cats:
            lst += [i for i in by_category.get(c, []) if i not in lst]
            if len(lst) >= K:
                break
        cat_pop[u] = (lst + [i for i in popular if i not in lst])[:K]
    rng = np.random.default_rng(0)
    rand = {u: list(rng.choice(catalog["item_id"].to_numpy(), K, replace=False)) for u in users}
    r_oracle = log.recall_at(oracle, K)
    r_cat = log.recall_at(cat_pop, K)
    r_pop = log.recall_at({u: popular for u in users}, K)
    r_rand = log.recall_at(rand, K)
    assert r_oracle > r_cat + 0.05
    assert r_cat > r_pop + 0.05
    assert r_pop > 5 * r_rand
    assert log.recall_at({}, K) == 0.0


def test_repeat_knob(catalog):
    def repeat_share(s):
        bought = s.events.loc[s.events["event_type"] == "purchase", ["user_id", "item_id"]].drop_duplicates()
        return s.future.merge(bought, how="left", indicator=True)["_merge"].eq("both").mean()
    none, half = shop_log(800, catalog, seed=3), shop_log(800, catalog, seed=3, repeat=0.5)
    assert repeat_share(half) > repeat_share(none) + 0.25
    # the oracle knows about repeats: its recall rises with them
    assert half.recall_at(half.oracle(K), K) > none.recall_at(none.oracle(K), K) + 0.1
