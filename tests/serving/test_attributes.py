"""Catalog attributes of any name become filters: category:Books, brand:Acme, tags:new, price<=50."""
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from recsys import registry, version
from recsys.config import from_dict
from recsys.data import trainset
from recsys.errors import RequestError
from recsys.models import create
from recsys.engine import Engine
from recsys.evaluation.scorer import validation_metrics
from serving.main import create_app
from serving.settings import Settings

CATEGORIES, BRANDS = ["Books", "Games", "Garden"], ["Acme", "Globex"]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    from pipelines import build_dataset
    tmp = tmp_path_factory.mktemp("shop")
    rng = np.random.default_rng(0)
    n_items = 60
    catalog = pd.DataFrame({"item_id": [f"p{i}" for i in range(n_items)],
                            "name": [f"Product {i}" for i in range(n_items)],
                            "category": [CATEGORIES[i % 3] for i in range(n_items)],
                            "brand": [BRANDS[i % 2] for i in range(n_items)],
                            "price": [5.0 * (i % 20) + 1 for i in range(n_items)],
                            "tags": ["new|sale" if i % 4 == 0 else "sale" for i in range(n_items)]})
    catalog.to_csv(tmp / "catalog.csv", index=False)
    events = [(f"u{u}", f"p{rng.integers(0, n_items)}", ["view", "cart", "purchase"][k % 3], 1000 * u + k)
              for u in range(80) for k in range(12)]
    pd.DataFrame(events, columns=["user_id", "item_id", "event", "ts"]).to_csv(tmp / "events.csv", index=False)
    cfg = from_dict({
        "source": {"path": "events.csv", "format": "csv", "items_path": "catalog.csv", "items_format": "csv",
                   "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts", "value": "", "event": "event"},
                   "item_columns": {"item": "item_id", "title": "name", "genres": "",
                                    "attributes": {"category": "categorical", "brand": "categorical",
                                                   "price": "numeric", "tags": "multi"}}},
        "feedback": {"mode": "event"}, "filters": {"min_user_interactions": 1, "min_item_interactions": 1},
        "split": {"strategy": "leave_last_n", "leave_last_n": 1}, "runner": {"shuffle_buckets": 2},
        "artifacts": {"root": "artifacts"}}, base_dir=str(tmp))
    ds = build_dataset.run(cfg, dataset_id="shop", previous=None, progress=lambda *_: None)
    ts = trainset.from_dataset(ds, 5)
    root = cfg.resolve(cfg.artifacts.root)
    model = create("popularity", cfg.model)
    model.fit(ts, validate=validation_metrics)
    v = version.save_fitted(model, ts, cfg, root, ds)
    registry.publish(root, v)
    return root, catalog.set_index("item_id")


def test_every_configured_attribute_filters(shop):
    root, catalog = shop
    engine = Engine.load(root)
    assert set(engine.categorical) == {"genre", "category", "brand", "tags"} and set(engine.numeric) == {"price"}

    def items(**kw):
        return engine.recommend("nobody", 50, **kw).items
    books = items(include=["category:Books"])
    assert books and all(catalog.loc[i, "category"] == "Books" for i in books)
    cheap_acme = items(include=["brand:Acme", "price<=20"])          # AND across keys
    assert cheap_acme and all(catalog.loc[i, "brand"] == "Acme" and catalog.loc[i, "price"] <= 20 for i in cheap_acme)
    either = items(include=["category:Books", "category:Games"])     # OR within a key
    assert {catalog.loc[i, "category"] for i in either} == {"Books", "Games"}
    new = items(include=["tags:new"])
    assert new and all("new" in catalog.loc[i, "tags"].split("|") for i in new)
    no_garden = items(exclude=["category:Garden", "price>90"])
    assert no_garden and all(catalog.loc[i, "category"] != "Garden" and catalog.loc[i, "price"] <= 90
                             for i in no_garden)


@pytest.mark.parametrize("bad,message", [("category:Bookz", "unknown category 'Bookz'"),
                                         ("colour:red", "unknown filter key 'colour'"),
                                         ("price<=cheap", "is not a number"),
                                         ("brand<=3", "not a numeric attribute")])
def test_an_unknown_attribute_or_value_is_a_400_naming_it(shop, bad, message):
    root, _ = shop
    with pytest.raises(RequestError, match=message):
        Engine.load(root).recommend("nobody", 5, include=[bad])
    with TestClient(create_app(Settings(root=root, poll_seconds=0))) as client:
        r = client.get("/v1/users/nobody/recommendations", params={"include": bad})
        assert r.status_code == 400 and message.split("'")[0] in r.json()["error"]


def test_filters_fail_closed_on_items_the_catalog_says_nothing_about(shop):
    """An item without a category (missing from the catalog, or an empty value) is never let through
    `exclude=category:...`, and never matches an include; the same for a numeric range."""
    root, catalog = shop
    engine = Engine.load(root)
    rows = engine.lv.items.lookup([f"p{i}" for i in range(0, 60, 5)])
    blank = {str(engine.lv.items.ids[r]) for r in rows}
    for r in rows:            # as if these items had no catalog row
        engine.categorical["category"][r] = frozenset()
        engine.numeric["price"][r] = np.nan

    def listed(**kw):
        return set(engine.recommend("u1", 60, exclude_seen=False, **kw).items)
    assert blank & listed()                                     # they are recommendable without filters
    assert not blank & listed(exclude=["category:Books"])
    assert not blank & listed(include=["category:Games"])
    assert not blank & listed(exclude=["price>=1000"])          # unknown price: out, like an unknown category
    assert listed(exclude=["category:Books"]) == {i for i in listed() - blank if catalog.loc[i, "category"] != "Books"}


def _dated_shop(tmp, max_age_days=None):
    """A catalog with a publish date: p0-p9 published in the last week, p10-p29 years ago, p30-p39
    without a date (an empty field); 40 users' events over all of them."""
    from pipelines import build_dataset
    now = pd.Timestamp.now(tz="UTC").floor("s")
    dates = ([(now - pd.Timedelta(days=1 + i % 5)).isoformat() for i in range(10)]
             + [f"20{10 + i % 8}-0{1 + i % 9}-15" for i in range(20)] + [""] * 10)
    pd.DataFrame({"item_id": [f"p{i}" for i in range(40)], "published_at": dates}).to_csv(tmp / "catalog.csv",
                                                                                          index=False)
    rng = np.random.default_rng(1)
    events = [(f"u{u}", f"p{rng.integers(0, 40)}", 1000 * u + k) for u in range(40) for k in range(10)]
    pd.DataFrame(events, columns=["user_id", "item_id", "ts"]).to_csv(tmp / "events.csv", index=False)
    published = {"kind": "date", "max_age_days": max_age_days} if max_age_days else "date"
    cfg = from_dict({
        "source": {"path": "events.csv", "format": "csv", "items_path": "catalog.csv", "items_format": "csv",
                   "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts", "value": ""},
                   "item_columns": {"item": "item_id", "title": "", "genres": "",
                                    "attributes": {"published_at": published}}},
        "feedback": {"mode": "implicit"}, "filters": {"min_user_interactions": 1, "min_item_interactions": 1},
        "split": {"strategy": "leave_last_n", "leave_last_n": 1}, "runner": {"shuffle_buckets": 2},
        "artifacts": {"root": "artifacts"}}, base_dir=str(tmp))
    ds = build_dataset.run(cfg, dataset_id="d", previous=None, progress=lambda *_: None)
    ts = trainset.from_dataset(ds, 5)
    root = cfg.resolve(cfg.artifacts.root)
    model = create("popularity", cfg.model)
    model.fit(ts, validate=validation_metrics)
    registry.publish(root, version.save_fitted(model, ts, cfg, root, ds))
    return Engine.load(root), now


def test_a_date_attribute_filters_by_date_and_max_age_days_keeps_only_young_items(tmp_path):
    (tmp_path / "a").mkdir()
    engine, now = _dated_shop(tmp_path / "a")
    assert engine.dates == {"published_at"} and not engine.max_age_days
    week_ago = (now - pd.Timedelta(days=7)).date().isoformat()
    young = engine.recommend("u1", k=40, exclude_seen=False, include=[f"published_at>={week_ago}"]).items
    assert young and {int(i[1:]) for i in young} <= set(range(10))
    old = engine.recommend("u1", k=40, exclude_seen=False, include=["published_at<2018-01-01T00:00:00+00:00"]).items
    assert old and {int(i[1:]) for i in old} <= set(range(10, 30))
    # an exclude on the date fails closed: undated items are not let through
    rest = engine.recommend("u1", k=40, exclude_seen=False, exclude=[f"published_at<{week_ago}"]).items
    assert {int(i[1:]) for i in rest} <= set(range(10))
    for bad in ("last week", "NaT", "nan"):     # NaT would be a filter that matches nothing: a 200 with []
        with pytest.raises(RequestError, match=rf"'{bad}' is not a date \(ISO 8601"):
            engine.recommend("u1", include=[f"published_at>={bad}"])
    # {kind: date, max_age_days: 30}: every answer, filtered or not, personal or popular, only young items
    (tmp_path / "b").mkdir()
    engine, _ = _dated_shop(tmp_path / "b", max_age_days=30)
    assert engine.max_age_days == {"published_at": 30.0}
    for answer in (engine.recommend("u1", k=40, exclude_seen=False), engine.recommend("stranger", k=40),
                   engine.recommend_for_history(["p12"], k=40)):
        assert answer.items and {int(i[1:]) for i in answer.items} <= set(range(10))
    ids, _ = engine.recommend_users(np.arange(len(engine.lv.users)), k=40, exclude_seen=False)
    assert set(ids[ids >= 0].tolist()) <= set(engine.lv.items.lookup([f"p{i}" for i in range(10)]).tolist())


def test_max_age_days_belongs_to_a_date_attribute():
    from recsys.errors import ConfigError
    src = {"path": "e.csv", "format": "csv", "items_path": "c.csv", "items_format": "csv",
           "columns": {"value": ""}, "item_columns": {"item": "item_id", "title": "", "genres": ""}}
    for spec, message in [({"kind": "numeric", "max_age_days": 30}, "only a date attribute has a max_age_days"),
                          ({"kind": "date", "max_age_days": 0}, "a number of days > 0"),
                          ({"kind": "date", "max_age_days": "month"}, "a number of days > 0")]:
        with pytest.raises(ConfigError, match=message):
            from_dict({"source": dict(src, item_columns=dict(src["item_columns"], attributes={"published": spec})),
                       "feedback": {"mode": "implicit"}})
