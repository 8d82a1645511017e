"""Popularity with a recent window (model.popularity_window_days): the model, the fallback and the
baseline column of `recsys evaluate` all count the same recent rows."""
import numpy as np
import pandas as pd
import pytest

from pipelines import build_dataset
from recsys.evaluation import evaluate
from recsys.config import from_dict
from recsys import version
from recsys.jobs import train_version

DAY = 86400


@pytest.fixture(scope="module")
def shifting_tastes(tmp_path_factory):
    """old1-3 were what everyone watched on days 1-3; new1-2 are what half of them watch on days 330-335."""
    tmp = tmp_path_factory.mktemp("pop")
    rng = np.random.default_rng(0)
    rows = []
    for u in range(40):
        rows += [(f"u{u}", f"old{k}", 4.0, DAY * (1 + k) + u) for k in range(3)]
        if u % 2 == 0:
            rows += [(f"u{u}", f"new{k}", 4.0, DAY * (330 + k) + u) for k in range(2)]
        for j, item in enumerate(rng.choice(20, 4, replace=False)):
            rows.append((f"u{u}", f"f{item}", 4.0, DAY * (340 + j * 5) + u * 100))
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).to_csv(tmp / "events.csv", index=False)
    return tmp


def config(tmp, window):
    return from_dict({
        "source": {"path": str(tmp / "events.csv"), "format": "csv", "items_format": "none",
                   "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "value": "rating"}},
        "filters": {"min_user_interactions": 3, "min_item_interactions": 1, "max_rounds": 3},
        "split": {"strategy": "temporal", "test_fraction": 0.1, "validation_fraction": 0.1},
        "runner": {"shuffle_buckets": 2},
        "artifacts": {"root": str(tmp / f"artifacts{window}")},
        "model": {"popularity_window_days": window},
    }, base_dir=str(tmp))


@pytest.mark.parametrize("window,top", [(0, {"old0", "old1", "old2"}), (30, {"new0", "new1"})])
def test_popularity_window_ranks_recent_items_first(shifting_tastes, window, top):
    cfg = config(shifting_tastes, window)
    ds = build_dataset.run(cfg, dataset_id="d1", previous=None, progress=lambda *_: None)
    root = cfg.resolve(cfg.artifacts.root)
    v = train_version(cfg, "popularity", ds.id, warm_start="none", progress=lambda *_: None)
    lv = version.load(root, v)
    best = lv.items.ids[lv.popularity.order[:len(top)]]
    assert set(best) == top
    res = evaluate.evaluate_version(root, v, "test", ds.id, (10,))
    # the report's baseline is the same windowed popularity, so the popularity version ties it exactly
    assert res.metrics["recall@10"] == pytest.approx(res.popularity_metrics["recall@10"])
    assert res.metrics["ndcg@10"] == pytest.approx(res.popularity_metrics["ndcg@10"])
