"""The rules as models: `repeat` (buy again) and `attribute_popularity`, through fit, a saved version,
the offline scorer and the engine, which must agree."""
import numpy as np
import pandas as pd
import pytest

from pipelines import build_dataset
from recsys import version
from recsys.config import from_dict
from recsys.data import trainset
from recsys.evaluation import scorer
from recsys.models import create
from recsys.engine import Engine

DAY = 86400


@pytest.fixture(scope="module")
def bought_again(tmp_path_factory):
    """u0 bought a three times, b once (latest), c twice; u1 bought c once; everyone bought z (popular)."""
    tmp = tmp_path_factory.mktemp("repeat")
    rows = [("u0", "a", 1), ("u0", "c", 2), ("u0", "a", 3), ("u0", "c", 4), ("u0", "a", 5), ("u0", "b", 6),
            ("u1", "c", 1), ("u1", "y", 2)]
    rows += [(f"p{i}", "z", 1 + i % 5) for i in range(20)] + [(f"p{i}", "y", 7) for i in range(10)]
    rows += [(u, "z", 8) for u in ("u0", "u1")]
    pd.DataFrame(rows, columns=["user_id", "item_id", "day"]).assign(
        timestamp=lambda f: f["day"] * DAY, rating=5.0).drop(columns="day").to_csv(tmp / "events.csv", index=False)
    cfg = from_dict({
        "source": {"path": str(tmp / "events.csv"), "format": "csv", "items_format": "none",
                   "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "value": "rating"}},
        "feedback": {"mode": "implicit"},
        "filters": {"min_user_interactions": 1, "min_item_interactions": 1},
        "split": {"strategy": "temporal", "test_fraction": 0.05, "validation_fraction": 0.01},
        "runner": {"shuffle_buckets": 1}, "artifacts": {"root": str(tmp / "artifacts")},
        "exclusion": "none", "model": {"refit": False},
    }, base_dir=str(tmp))
    ds = build_dataset.run(cfg, dataset_id="d1", previous=None, progress=lambda *_: None)
    ts = trainset.from_dataset(ds, 5, exclusion="none")
    model = create("repeat", cfg.model)
    model.fit(ts, progress=lambda *_: None)
    root = cfg.resolve(cfg.artifacts.root)
    return ts, model, root, version.save_fitted(model, ts, cfg, root, ds)


def test_repeat_ranks_own_items_by_frequency_then_recency_then_popularity(bought_again):
    ts, model, root, v = bought_again
    engine = Engine.load(root, v)
    assert engine.exclusion == "none"
    u0 = engine.recommend("u0", 5).items
    # a 3 times, c twice, b once (day 8's z is in the test split), then the popularity order
    assert u0 == ["a", "c", "b", "z", "y"], u0
    assert engine.recommend("u1", 3).items == ["y", "c", "z"]   # once each: the later first; then popularity
    assert engine.recommend("nobody", 2).items == ["z", "y"]                  # popularity
    # a fresh history counts for an unknown user too
    assert engine.recommend_for_history(["b", "b", "c"], k=2).items == ["b", "c"]


def test_repeat_answers_the_same_offline_in_batch_and_served(bought_again):
    ts, model, root, v = bought_again
    engine = Engine.load(root, v)
    rows = np.arange(len(engine.lv.users))
    batch, _ = engine.recommend_users(rows, 4)
    ids = engine.lv.items.ids
    for r, listed in zip(rows, batch):
        assert engine.recommend(str(engine.lv.users.ids[r]), 4).items == [str(ids[i]) for i in listed if i >= 0]
    lv = version.load(root, v)
    offline, _ = scorer.rank(lv.model, rows, np.full((len(rows), 1), -1), engine.seen[rows], 4)
    np.testing.assert_array_equal(offline, batch)
    # in memory and from disk: the same own items
    np.testing.assert_allclose(lv.model.own.toarray(), model.own.toarray())


def test_own_items_break_frequency_ties_by_the_latest_time_not_the_sum_of_times():
    from recsys.models.rules import _own_scores
    # one user: a at positions 0 and 9, b at 7 and 8: both twice; a is the more recent
    users, items = np.zeros(4, np.int64), np.array([0, 1, 1, 0])
    scores = _own_scores(users, items, np.ones(4), np.array([0, 7, 8, 9]), 1, 2).toarray()[0]
    assert scores[0] > scores[1] and 2 < scores[1] < scores[0] < 3


def _fitted_rule(eval_users: int):
    """attribute_popularity fitted on a small TrainSet with two candidate columns; returns (the model,
    the number of validation users each candidate was scored on)."""
    from recsys.config import ModelConfig
    rng = np.random.default_rng(0)
    n_users, n_items, per = 60, 30, 5
    table = pd.DataFrame({"item_idx": np.arange(n_items), "shelf": [f"s{i % 3}" for i in range(n_items)],
                          "colour": [f"c{i % 5}" for i in range(n_items)]})
    table.attrs["kinds"] = {"shelf": "categorical", "colour": "categorical"}
    users = np.repeat(np.arange(n_users), per)
    items = rng.integers(0, n_items, len(users))
    ts = trainset.TrainSet(users, items, np.ones(len(users), np.float32), np.full((len(users), 1), -1, np.int32),
                           n_users, n_items, np.array([f"u{u}" for u in range(n_users)], dtype=object),
                           np.array([f"i{i}" for i in range(n_items)], dtype=object),
                           timestamp=np.arange(len(users)), item_table=table)
    held = trainset.csr_from_pairs(np.arange(n_users), rng.integers(0, n_items, n_users), n_users, n_items)
    ts.evals["validation"] = trainset.EvalSet(ts.user_ids, np.arange(n_users), held,
                                              trainset.csr_from_pairs(users, items, n_users, n_items),
                                              np.full((n_users, 1), -1, np.int32))
    sizes = []

    def validate(model, ev, ks, counts):
        sizes.append(len(ev.user_ids))
        return scorer.validation_metrics(model, ev, ks, counts)
    model = create("attribute_popularity", ModelConfig(eval_users=eval_users))
    model.fit(ts, (20,), progress=lambda *_: None, validate=validate)
    return model, sizes


@pytest.mark.parametrize("eval_users, scored", [(25, 25), (1000, 60)])
def test_the_rule_chooses_its_attribute_on_the_validation_sample_the_models_stop_on(eval_users, scored):
    """attribute_popularity scores each candidate column on `model.eval_users` validation users (the
    sample early stopping uses), not every validation user against the whole catalog."""
    model, sizes = _fitted_rule(eval_users)
    assert sizes == [scored, scored]                       # both columns, each on the same sample
    assert [t["attribute"] for t in model.report.chosen["tried"]] == ["shelf", "colour"]


def test_the_rule_computes_user_vectors_in_blocks_with_the_same_result(monkeypatch):
    """Users' vectors come in blocks of USER_BLOCK (every user's dense counts at once were 23 GB at 50M
    events): any block size gives the vectors of the whole, in the order asked."""
    from recsys.models import rules
    model, _ = _fitted_rule(1000)
    users = np.random.default_rng(1).permutation(60)
    whole = model.user_vectors(users, None)
    want = rules.AttributePopularity._vectors(model._user_values[users].toarray())
    np.testing.assert_array_equal(whole, want)
    monkeypatch.setattr(rules, "USER_BLOCK", 7)
    np.testing.assert_array_equal(model.user_vectors(users, None), want)
    assert whole.shape == (60, model._user_values.shape[1] + 1) and whole.dtype == np.float32
