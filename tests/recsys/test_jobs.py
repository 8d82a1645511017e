"""Refit on train + validation (model.refit): users first seen in validation become known, the epoch
count is the one validation chose, and the test baseline knows what the refit model knows."""
import os

import numpy as np
import pandas as pd
import pytest

from pipelines import build_dataset
from recsys import version
from recsys.evaluation import evaluate
from recsys.evaluation import metrics
from recsys.data import trainset
from recsys.config import from_dict
from recsys.errors import DataError
from recsys.data.synthetic import clustered_interactions
from recsys import jobs
from recsys.jobs import train_version

DAY = 86400
LATE = [f"late{i}" for i in range(8)]


def make_config(tmp, csv, **model):
    return from_dict({
        "source": {"path": str(csv), "format": "csv", "items_format": "none",
                   "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "value": "rating"}},
        "filters": {"min_user_interactions": 3, "min_item_interactions": 1, "max_rounds": 3},
        "split": {"strategy": "temporal", "test_fraction": 0.1, "validation_fraction": 0.1},
        "runner": {"shuffle_buckets": 2},
        "artifacts": {"root": str(tmp / "artifacts")},
        "model": {"dim": 16, "batch_size": 256, "epochs": 6, "patience": 2, "learning_rate": 0.02,
                  "history_length": 5, **model},
    }, base_dir=str(tmp))


@pytest.fixture(scope="module")
def temporal(tmp_path_factory):
    """Planted clusters over a year; LATE users start inside the validation window and go on into test."""
    tmp = tmp_path_factory.mktemp("refit")
    base = clustered_interactions(n_users=200, n_items=120, n_clusters=5, per_user=25, seed=4, start_ts=0)
    late = clustered_interactions(n_users=len(LATE), n_items=120, n_clusters=5, per_user=24, seed=5, start_ts=0)
    late["user_id"] = late["user_id"].map(lambda u: f"late{u[1:]}")
    # 16 rows in days 335-340 (validation: the cut quantiles of the base rows sit near days 292 and 328
    # plus the late rows), the rest on day 400 (test)
    n = late.groupby("user_id").cumcount()
    late["timestamp"] = np.where(n < 16, 335 * DAY + n * 1000, 400 * DAY + n)
    csv = tmp / "events.csv"
    pd.concat([base, late]).to_csv(csv, index=False)
    cfg = make_config(tmp, csv)
    ds = build_dataset.run(cfg, dataset_id="t1", previous=None, progress=lambda *_: None)
    return tmp, cfg, ds


def test_train_plus_validation_appends_users_first_seen_in_validation(temporal):
    tmp, cfg, ds = temporal
    ts = trainset.from_dataset(ds, 5)
    full = trainset.from_dataset(ds, 5, include_validation=True)
    val = ds.read("validation", ["user", "user_idx", "item_idx"])
    new_users = sorted(val.loc[val["user_idx"] < 0, "user"].unique())
    assert set(LATE) <= set(new_users), "the fixture must put the late users in validation only"
    assert full.user_ids[:ts.n_users].tolist() == ts.user_ids.tolist()          # existing indices never move
    assert full.user_ids[ts.n_users:].tolist() == new_users
    assert len(full.user_idx) == len(ts.user_idx) + len(val)
    assert list(full.evals) == ["test"] and full.includes_validation
    # test users first seen in validation now map to their appended rows
    test = full.evals["test"]
    rows = np.flatnonzero(np.isin(test.user_ids, LATE))
    assert len(rows) == len(LATE) and (test.user_idx[rows] >= ts.n_users).all()
    assert (ts.evals["test"].user_idx[np.isin(ts.evals["test"].user_ids, LATE)] == -1).all()
    # a late user's training examples see only their own earlier (validation) items
    u = full.user_ids.tolist().index(LATE[0])
    ex = np.flatnonzero(full.user_idx == u)
    assert (full.history[ex[0]] == -1).all() and full.history[ex[1]][0] == full.item_idx[ex[0]]


@pytest.mark.parametrize("model", ["mf", "two_tower"])
def test_refit_version_knows_validation_users_and_keeps_the_chosen_epochs(temporal, model):
    tmp, cfg, ds = temporal
    root = cfg.resolve(cfg.artifacts.root)
    v = train_version(cfg, model, ds.id, warm_start="none", progress=lambda *_: None)
    m = version.read_manifest(root, v)
    chosen = m["selection"]["best_epoch"]
    assert 1 <= chosen <= len(m["selection"]["epochs"])                       # early stopping ran on validation
    assert all("val_recall@20" in e for e in m["selection"]["epochs"])
    # the refit ran exactly the chosen epochs on train + validation, with no validation to look at
    assert m["refit"]["epochs"] == m["training"]["best_epoch"] == len(m["training"]["epochs"]) == chosen
    assert not any("val_recall@20" in e for e in m["training"]["epochs"])
    assert m["refit"]["interactions"] == ds.stats["splits"]["train"]["interactions"] + \
        ds.stats["splits"]["validation"]["interactions"]
    assert m["validation_metrics"]["recall@20"] > 0          # measured before the refit saw validation
    lv = version.load(root, v)
    assert set(LATE) <= set(lv.users.ids)
    # a late user's seen items (what the service excludes) hold their validation and test items
    rows = lv.users.lookup([LATE[0]])[0]
    items = ds.read("validation", ["user", "item"]).query("user == @LATE[0]")["item"].tolist() + \
        ds.read("test", ["user", "item"]).query("user == @LATE[0]")["item"].tolist()
    seen_m = version.load_seen(root, v)
    seen = set(lv.items.ids[seen_m[rows].indices])
    assert set(items) <= seen
    res = evaluate.evaluate_version(root, v, "test", ds.id, (20,))
    assert res.sources.get("history", 0) == 0              # late users are served as known users
    with pytest.raises(DataError, match="refit"):             # it trained on validation: no such numbers
        evaluate.evaluate_version(root, v, "validation", ds.id, (20,))
    # the version keeps the tables that chose its epochs (trained on train only, train's vocabulary)
    # beside its own, and the next version's choice starts from those: never from tables that saw
    # validation rows
    own, chosen_by = version.load_warm_start(root, v), version.load_warm_start(root, v, selection=True)
    assert set(LATE) <= set(own.user_ids) and not set(LATE) & set(chosen_by.user_ids)
    assert set(chosen_by.weights) == set(own.weights)
    name = "query.user_embedding"
    n = len(chosen_by.user_ids) + 1
    assert not np.allclose(chosen_by.weights[name][1:n], own.weights[name][1:n])
    v_next = train_version(cfg, model, ds.id, warm_start=v, progress=lambda *_: None)
    m_next = version.read_manifest(root, v_next)
    assert m_next["warm_started_from"] == v and m_next["selection"]["warm_started"] is True
    # the refit started from the version's own tables: every user row carried over, the late ones too
    assert m_next["training"]["warm_started_rows"][name] == len(own.user_ids) > len(chosen_by.user_ids)
    # a refit version without them (written before they were kept): the choice and the refit start cold
    path = os.path.join(version.version_dir(root, v), version.WEIGHTS)
    np.savez(path + ".tmp.npz", **own.weights)
    os.replace(path + ".tmp.npz", path)
    assert version.load_warm_start(root, v, selection=True) is None
    v_cold = train_version(cfg, model, ds.id, warm_start=v, progress=lambda *_: None)
    m_cold = version.read_manifest(root, v_cold)
    assert m_cold["warm_started_from"] is None and m_cold["selection"]["warm_started"] is False
    assert not m_cold["training"]["warm_started_rows"]
    assert res.metrics["recall@20"] > 1.3 * res.popularity_metrics["recall@20"]

    no_refit = make_config(tmp, cfg.source.path, refit=False)
    v2 = train_version(no_refit, model, ds.id, warm_start="none", progress=lambda *_: None)
    assert "refit" not in version.read_manifest(root, v2)
    assert not set(LATE) & set(version.load(root, v2).users.ids)
    assert evaluate.evaluate_version(root, v2, "test", ds.id, (20,)).sources["history"] >= len(LATE)


def test_test_baseline_counts_train_and_validation(temporal):
    tmp, cfg, ds = temporal
    root = cfg.resolve(cfg.artifacts.root)
    v = train_version(cfg, "popularity", ds.id, warm_start="none", progress=lambda *_: None)
    res = evaluate.evaluate_version(root, v, "test", ds.id, (20,))
    ev = res.eval_set
    counts = sum(np.bincount(ds.read(s, ["item_idx"])["item_idx"], minlength=len(ds.items))
                 for s in ("train", "validation")).astype(np.float64)
    scores = (counts - np.arange(len(counts)) * 1e-9).astype(np.float32)
    want = metrics.evaluate(lambda r: np.broadcast_to(scores, (len(r), len(scores))).copy(),
                            np.arange(len(ev.user_ids)), ev.relevant, ev.exclude, (20,)).summary()
    assert res.popularity_metrics["recall@20"] == pytest.approx(want["recall@20"])
    # the refit popularity version counts the same rows, so it equals its baseline exactly
    assert res.metrics["recall@20"] == pytest.approx(want["recall@20"])
    assert version.read_manifest(root, v)["refit"]["interactions"] == int(counts.sum())


def test_training_on_a_catalog_smaller_than_the_largest_k_works(tmp_path):
    """evaluation.ks goes to 50; a 12-item catalog used to crash the first validation."""
    csv = tmp_path / "small.csv"
    clustered_interactions(n_users=40, n_items=12, n_clusters=2, per_user=6, seed=2, start_ts=0).to_csv(csv, index=False)
    cfg = make_config(tmp_path, csv, epochs=2)
    ds = build_dataset.run(cfg, dataset_id="s1", previous=None, progress=lambda *_: None)
    assert len(ds.items) < 50
    for model in ("mf", "popularity"):
        v = train_version(cfg, model, ds.id, warm_start="none", progress=lambda *_: None)
        m = evaluate.evaluate_version(cfg.resolve(cfg.artifacts.root), v, "test", ds.id, (10, 20, 50)).metrics
        assert 0 <= m["recall@50"] <= 1 and m["recall@50"] >= m["recall@10"]


@pytest.mark.parametrize("refit", [True, False])
def test_warm_start_epochs_choose_at_most_that_many_epochs_from_the_previous_version(temporal, refit, monkeypatch):
    """model.warm_start_epochs: with a previous version of the model, the epoch choice runs at most N
    epochs from its weights on train, each measured on validation, stops at the first that loses, and
    keeps the best (a converged model trained on for a fixed count overfits); with refit, the refit
    then trains the chosen count from the version's own tables on train + validation."""
    tmp, cfg, ds = temporal[:3]
    cold = train_version(make_config(tmp, tmp / "events.csv", refit=refit), "mf", ds.id, "none", lambda *_: None)
    lines, made = [], []
    warm_cfg = make_config(tmp, tmp / "events.csv", refit=refit, warm_start_epochs=3)
    real_create = jobs.create
    monkeypatch.setattr(jobs, "create", lambda name, mc: made.append((mc.epochs, mc.patience)) or real_create(name, mc))
    warm = train_version(warm_cfg, "mf", ds.id, cold, lines.append)
    # the refit keeps the choice's epoch horizon (what a cosine schedule decays over); the choice's
    # patience is 1 (the configured 2 is the cold search's)
    assert made[0] == (6, 2) and made[1:] == ([(3, 1), (3, 1)] if refit else [(3, 1)])
    m = version.read_manifest(warm_cfg.resolve(warm_cfg.artifacts.root), warm)
    assert m["warm_started_from"] == cold and m["warm_epochs"] == 3
    assert any("at most 3 epochs from" in line for line in lines)
    chose = m["selection"] if refit else m["training"]
    curve = [e["val_recall@20"] for e in chose["epochs"]]
    assert 1 <= len(curve) <= 3 and chose["best_epoch"] == 1 + int(np.argmax(curve))
    # stopped at the first epoch that lost: every epoch before the last was a new best
    assert all(curve[i] > max(curve[:i], default=-1) for i in range(len(curve) - 1))
    assert m["validation_metrics"]["recall@20"] == pytest.approx(max(curve), abs=1e-6)   # the best epoch's
    if refit:
        assert m["selection"]["warm_started"] and m["refit"]["epochs"] == chose["best_epoch"]
        assert len(m["training"]["epochs"]) == chose["best_epoch"] and m["training"]["warm_started_rows"]
    # without a previous version the epoch search runs as usual
    first = train_version(warm_cfg, "mf", ds.id, "none", lambda *_: None)
    assert "warm_epochs" not in version.read_manifest(warm_cfg.resolve(warm_cfg.artifacts.root), first)


@pytest.mark.parametrize("refit", [True, False])
def test_a_warm_start_that_loses_quality_says_so_and_trains_cold(temporal, refit):
    """A warm start from a good version that lands far below it on validation (here: a learning rate
    that wrecks the carried-over weights) is reported and replaced by the cold epoch search."""
    tmp, cfg, ds = temporal[:3]
    cold = train_version(make_config(tmp, tmp / "events.csv", refit=refit), "mf", ds.id, "none", lambda *_: None)
    root = cfg.resolve(cfg.artifacts.root)
    before = version.read_manifest(root, cold)["validation_metrics"]["recall@20"]
    lines = []
    wrecked = make_config(tmp, tmp / "events.csv", refit=refit, warm_start_epochs=1, learning_rate=9.0)
    v = train_version(wrecked, "mf", ds.id, cold, lines.append)
    m = version.read_manifest(root, v)
    warning = [line for line in lines if "warning:" in line]
    assert warning and "training from a cold start instead" in warning[0] and f"{before:.4f}" in warning[0]
    assert m["warm_start_rejected"]["from"] == cold and "warm_epochs" not in m
    assert m["warm_started_from"] is None and ("selection" in m) is refit
    # a warm start that keeps its quality is kept, without a warning
    kept = train_version(make_config(tmp, tmp / "events.csv", refit=refit, warm_start_epochs=2), "mf", ds.id, cold,
                         lines.append)
    assert version.read_manifest(root, kept)["warm_epochs"] == 2


def test_the_warm_start_guard_holds_night_after_night(temporal):
    """A warm start with refit records the validation figure of its epoch choice (measured before the
    refit saw validation), so the next night's warm start is compared with it."""
    tmp, cfg, ds = temporal[:3]
    root = cfg.resolve(cfg.artifacts.root)
    cold = train_version(make_config(tmp, tmp / "events.csv"), "mf", ds.id, "none", lambda *_: None)
    warm_cfg = make_config(tmp, tmp / "events.csv", warm_start_epochs=1)
    night2 = train_version(warm_cfg, "mf", ds.id, cold, lambda *_: None)
    m2 = version.read_manifest(root, night2)
    figure = m2["validation_metrics"]["recall@20"]
    assert figure > 0 and m2["selection"]["warm_started"] and "refit" in m2
    lines = []
    wrecked = make_config(tmp, tmp / "events.csv", warm_start_epochs=1, learning_rate=9.0)
    night3 = train_version(wrecked, "mf", ds.id, night2, lines.append)
    assert version.read_manifest(root, night3)["warm_start_rejected"]["from"] == night2
    assert any(f"{figure:.4f}" in line for line in lines if "warning:" in line)


def test_a_budget_too_short_for_epochs_and_refit_trains_on_and_says_so(temporal, monkeypatch):
    """When the budget cannot hold more epochs and the refit while validation still rises, the refit's
    time goes to epochs: the version is the selection fit's, measured on validation, and says why."""
    from recsys.models import training
    tmp, cfg, ds = temporal
    calls = []

    def budget(elapsed, epoch, best_epoch, max_seconds, refit_ratio=None, last=False):
        calls.append((epoch, refit_ratio))
        # the clock of a slow machine: from epoch 2 on only epochs fit (no refit), and then only up to 4
        if epoch >= 2:
            return epoch < 4, False
        return True, True
    monkeypatch.setattr(training, "after_epoch", budget)
    v = train_version(make_config(tmp, cfg.source.path, max_train_minutes=10, patience=10), "mf", ds.id,
                      warm_start="none", progress=lambda *_: None)
    m = version.read_manifest(str(tmp / "artifacts"), v)
    assert "refit" not in m and "selection" not in m
    assert "still rising at epoch 2" in m["refit_dropped"]
    assert m["validation_metrics"]["recall@20"] > 0 and m["training"]["best_epoch"] <= 4
    assert len(m["training"]["epochs"]) == 4
    # the refit's ratio is its rows over train's, asked about after every epoch
    splits = ds.stats["splits"]
    ratio = 1 + splits["validation"]["interactions"] / splits["train"]["interactions"]
    assert calls == [(e, pytest.approx(ratio)) for e in (1, 2, 3, 4)]
