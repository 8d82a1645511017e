"""Evaluation that mirrors serving: on a funnel log (a purchase follows a view and a cart of the same
item seconds earlier), `last_session` and `temporal` keep every held-out event out of the history a
model is queried with, and the leak detector says how much `leave_last_n` leaks."""
import numpy as np
import pandas as pd
import pytest

from recsys.config import from_dict
from recsys.data import dataset as ds
from recsys.data.synthetic import shop_catalog, shop_log


@pytest.fixture(scope="module")
def funnel_log(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("funnel")
    catalog = shop_catalog(800, seed=3)
    log = shop_log(400, catalog, seed=3, same_item_funnel=True)
    events = log.log.copy()   # the whole log: the views and carts after the cut too
    events["timestamp"] = events["timestamp"].astype("datetime64[s]").astype(np.int64)
    events.to_csv(tmp / "events.csv", index=False)
    return tmp


def build(tmp, build_dataset, strategy: str, **split):
    cfg = from_dict({
        "source": {"path": str(tmp / "events.csv"), "format": "csv", "items_format": "none",
                   "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp",
                               "event": "event_type"}},
        "feedback": {"mode": "event"},
        "filters": {"min_user_interactions": 1, "min_item_interactions": 1},
        "split": {"strategy": strategy, **split},
        "evaluation": {"target_events": ["purchase"]},
        "runner": {"shuffle_buckets": 2},
        "artifacts": {"root": str(tmp / strategy)},
    }, base_dir=str(tmp))
    return build_dataset(cfg)


@pytest.mark.parametrize("strategy", ["last_session", "temporal"])
def test_no_held_out_event_is_in_the_history(funnel_log, build_dataset, strategy):
    dataset = build(funnel_log, build_dataset, strategy)
    rows = {s: dataset.read(s, ["user", "timestamp"]) for s in ("train", "validation", "test")}
    assert len(rows["test"]) and len(rows["validation"])
    for held, history in (("test", ("train", "validation")), ("validation", ("train",))):
        before = pd.concat([rows[s] for s in history]).groupby("user")["timestamp"].max()
        first_held = rows[held].groupby("user")["timestamp"].min()
        both = first_held.index.intersection(before.index)
        # strictly after every event of the history: no view of the visit, not even in the same second
        assert (first_held[both] > before[both]).all(), held
    leak = dataset.stats["leak"]["test"]
    assert leak["targets"] > 50 and leak["share"] < 0.05, leak
    assert ds.leak_warning(dataset.stats) is None


def test_the_leak_detector_measures_leave_last_n_on_a_funnel(funnel_log, build_dataset):
    dataset = build(funnel_log, build_dataset, "leave_last_n", leave_last_n=2)
    leak = dataset.stats["leak"]
    assert leak["test"]["targets"] > 50 and leak["test"]["share"] > 0.5, leak
    assert leak["window_minutes"] == 30 and leak["target_events"] == ["purchase"]
    warning = ds.leak_warning(dataset.stats)
    assert warning.startswith("warning: ") and "split.strategy: last_session" in warning
