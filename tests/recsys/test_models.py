"""Models on generated data with planted clusters: quality that can fail, export round-trip, warm start."""
import copy

import numpy as np
import pytest
import tensorflow as tf

from pipelines import build_dataset
from recsys import export, registry
from recsys.evaluation import metrics
from recsys.models import training as train
from recsys.data import trainset
from recsys.config import from_dict
from recsys.models.popularity import Popularity
from recsys.models.loss import RetrievalModel, build_towers
from recsys.scoring import LoadedVersion
from recsys.data.synthetic import clustered_interactions

MODEL = {"dim": 16, "batch_size": 256, "epochs": 12, "patience": 4, "learning_rate": 0.02, "history_length": 5}


def make_config(tmp_path, csv, **model):
    return from_dict({
        "source": {"path": csv, "format": "csv", "items_format": "none",
                   "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "value": "rating"}},
        "filters": {"min_user_interactions": 3, "min_item_interactions": 1, "max_rounds": 3},
        "split": {"strategy": "leave_last_n", "leave_last_n": 3},
        "runner": {"shuffle_buckets": 2},
        "artifacts": {"root": str(tmp_path / "artifacts")},
        "model": {**MODEL, **model},
    }, base_dir=str(tmp_path))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    csv = tmp / "events.csv"
    clustered_interactions(n_users=300, n_items=200, n_clusters=6, per_user=30, seed=1).to_csv(csv, index=False)
    cfg = make_config(tmp, str(csv))
    ds = build_dataset.run(cfg, dataset_id="d1", previous=None, progress=lambda *_: None)
    return tmp, cfg, ds, trainset.from_dataset(ds, cfg.model.history_length)


def popularity_recall(ts, split="test"):
    ev = ts.evals[split]
    pop = Popularity(ts.n_items).fit(ts.item_idx)
    return metrics.evaluate(lambda r: np.array(pop.score_rows(len(r))), np.arange(len(ev.user_ids)),
                            ev.relevant, ev.exclude, (20,)).summary()["recall@20"]


# "two_tower/candidate": the query tower pools the candidate tower's item table (model.history_items)
VARIANTS = {"mf": ("mf", "own"), "two_tower": ("two_tower", "own"), "two_tower/candidate": ("two_tower", "candidate")}


@pytest.fixture(scope="module")
def trained(planted):
    tmp, cfg, ds, ts = planted
    out = {}
    for key, (name, history_items) in VARIANTS.items():
        mc = copy.deepcopy(cfg.model)
        mc.history_items = history_items
        out[key] = train.fit(ts, name, mc, (20,), progress=lambda *_: None)
    return out


@pytest.mark.parametrize("key", list(VARIANTS))
def test_models_beat_popularity_by_a_wide_margin(planted, trained, key):
    tmp, cfg, ds, ts = planted
    pop = popularity_recall(ts)
    got = train.evaluate_trained(trained[key], ts.evals["test"], (20,), ts.item_counts).summary()["recall@20"]
    assert got > 1.5 * pop, (key, got, pop)
    assert trained[key].history and trained[key].best_epoch >= 1


@pytest.mark.parametrize("key", list(VARIANTS))
def test_export_reload_round_trip_gives_identical_scores(planted, trained, key):
    tmp, cfg, ds, ts = planted
    name = VARIANTS[key][0]
    root = cfg.resolve(cfg.artifacts.root)
    version = export.save_version(trained[key], ts, cfg, name, root, ds.path)
    lv = LoadedVersion(root, version)
    assert lv.users.ids.tolist() == ts.user_ids.tolist() and lv.items.ids.tolist() == ts.item_ids.tolist()
    np.testing.assert_allclose(lv.item_embeddings, trained[key].item_embeddings, rtol=0, atol=0)
    users = np.arange(ts.n_users, dtype=np.int32)
    hist = export.user_histories(ts, cfg.model.history_length, ds.path) if name == "two_tower" \
        else np.full((ts.n_users, 1), -1, np.int32)
    expected = trained[key].query_embeddings(users, hist) @ trained[key].item_embeddings.T
    np.testing.assert_allclose(lv.score(lv.user_embeddings), expected, rtol=1e-6, atol=1e-6)
    # the SavedModel answers with the same embeddings from string IDs
    ids = np.where(hist >= 0, ts.item_ids[np.maximum(hist, 0)], "").astype(str)
    got = lv.query_model()(user_id=tf.constant(ts.user_ids.astype(str)), history=tf.constant(ids))["embedding"]
    np.testing.assert_allclose(got.numpy(), lv.user_embeddings, rtol=1e-5, atol=1e-5)
    m = registry.read_manifest(root, version)
    assert m["model"] == name and m["dataset_id"] == "d1" and m["training"]["best_epoch"] >= 1


@pytest.mark.parametrize("key", ["two_tower", "two_tower/candidate"])
def test_query_tower_on_fresh_history_agrees_with_training(planted, trained, key):
    tmp, cfg, ds, ts = planted
    tr = trained[key]
    root = cfg.resolve(cfg.artifacts.root)
    version = export.save_version(tr, ts, cfg, "two_tower", root, ds.path)
    lv = LoadedVersion(root, version)
    rows = np.flatnonzero((ts.history >= 0).sum(1) >= 3)[:50]
    # what the training step saw for these examples (user + items before it, newest first)
    seen = tr.query_embeddings(ts.user_idx[rows].astype(np.int32), ts.history[rows])
    ids = np.where(ts.history[rows] >= 0, ts.item_ids[np.maximum(ts.history[rows], 0)], "").astype(str)
    fresh = lv.query_model()(user_id=tf.constant(ts.user_ids[ts.user_idx[rows]].astype(str)),
                             history=tf.constant(ids))["embedding"].numpy()
    np.testing.assert_allclose(fresh, seen, rtol=1e-5, atol=1e-5)


def test_candidate_history_reads_the_item_table_without_training_it():
    qt, ct = build_towers("two_tower", 10, 30, 8, True, history_items="candidate")
    model = RetrievalModel(qt, ct, np.ones(30))
    batch = {"user_idx": tf.constant([0, 1, -1]), "item_idx": tf.constant([3, 4, 5]),
             "history": tf.constant([[1, 2, -1], [7, -1, -1], [-1, -1, -1]])}
    model.compute_loss(batch)
    table = ct.item_embedding.embeddings
    assert not hasattr(qt, "history_embedding")
    assert sum(v is table for v in model.trainable_variables) == 1      # one table, updated once per step
    with tf.GradientTape() as tape:
        q = qt(batch)
    assert tape.gradient(q, table) is None                                # the query side does not train it
    before = qt(batch).numpy()
    table.assign_add(tf.ones_like(table))                                 # but it reads the current values
    assert not np.allclose(qt(batch).numpy()[:2], before[:2])
    np.testing.assert_allclose(qt(batch).numpy()[2], before[2], atol=1e-6)  # empty history: user ID only


def test_warm_start_keeps_carried_over_embeddings(planted, trained, tmp_path):
    tmp, cfg, ds, ts = planted
    # a second dataset with new users and items: old IDs keep their indices, new ones are appended
    more = clustered_interactions(n_users=340, n_items=230, n_clusters=6, per_user=30, seed=1)
    csv = tmp_path / "more.csv"
    more.to_csv(csv, index=False)
    cfg2 = make_config(tmp, str(csv), epochs=1, learning_rate=1e-9)
    ds2 = build_dataset.run(cfg2, dataset_id="d2", previous="d1", progress=lambda *_: None)
    ts2 = trainset.from_dataset(ds2, cfg2.model.history_length)
    assert ts2.n_items > ts.n_items and ts2.n_users > ts.n_users
    old = train.tower_weights(trained["mf"])
    tr2 = train.fit(ts2, "mf", cfg2.model, (20,), previous=(ts.user_ids, ts.item_ids, old),
                    progress=lambda *_: None)
    new = train.tower_weights(tr2)
    assert tr2.warm_started["candidate.item_embedding"] == ts.n_items
    # same IDs, same indices (the vocabulary is extended) -> same rows, up to a 1e-9 learning rate
    np.testing.assert_allclose(new["candidate.item_embedding"][: ts.n_items + 1],
                               old["candidate.item_embedding"], atol=1e-6)
    np.testing.assert_allclose(new["query.user_embedding"][: ts.n_users + 1], old["query.user_embedding"], atol=1e-6)
    # new rows are fresh initializations, not copies
    assert not np.allclose(new["candidate.item_embedding"][ts.n_items + 1:], 0)


@pytest.mark.parametrize("logq,hits,extra,weighted", [(True, True, 0, False), (True, True, 7, True),
                                                       (False, False, 0, True), (True, False, 5, False)])
def test_fused_loss_equals_the_tfrs_retrieval_task(logq, hits, extra, weighted):
    """The fused training loss is the TFRS Retrieval loss: same value and same gradients."""
    rng = np.random.default_rng(0)
    n_users, n_items, b = 40, 30, 64            # 64 draws from 30 items: many accidental hits
    counts = rng.integers(1, 50, n_items)
    qt, ct = build_towers("mf", n_users, n_items, 8, True)
    batch = {"user_idx": tf.constant(rng.integers(0, n_users, b), tf.int32),
             "item_idx": tf.constant(rng.integers(0, n_items, b), tf.int32),
             "history": tf.fill([b, 1], -1)}
    if weighted:
        batch["weight"] = tf.constant(rng.uniform(0.5, 2.0, b), tf.float32)
    results = []
    for fused in (False, True):
        model = RetrievalModel(qt, ct, counts, 0.1, logq, hits, extra, fused=fused)
        tf.random.set_seed(3)                     # the same extra negatives for both
        with tf.GradientTape() as tape:
            loss = model.compute_loss(batch, training=True)
        grads = tape.gradient(loss, model.trainable_variables)
        results.append((float(loss), [tf.convert_to_tensor(g).numpy() for g in grads]))
    (l0, g0), (l1, g1) = results
    assert l1 == pytest.approx(l0, rel=1e-5)
    for a, c in zip(g0, g1):
        np.testing.assert_allclose(c, a, rtol=1e-3, atol=1e-6)


def _featured_trainset(token_names, genre_names, user_ids, item_ids):
    """A tiny two_tower TrainSet whose feature tables are keyed by the given token/genre lists."""
    rng = np.random.default_rng(0)
    n_users, n_items = len(user_ids), len(item_ids)
    u = np.repeat(np.arange(n_users), 4)
    i = rng.integers(0, n_items, len(u))
    feats = trainset.ItemFeatures(
        np.tile(np.arange(len(genre_names), dtype=np.int32)[:1], (n_items, 1)),
        np.tile(np.arange(len(token_names), dtype=np.int32), (n_items, 1)),
        np.ones(n_items, np.int32), len(genre_names), len(token_names), 41,
        np.asarray(genre_names, dtype=str), np.asarray(token_names, dtype=str))
    users = trainset.UserFeatures(np.zeros((n_users, 1), np.int32), np.asarray(["plan=basic"], dtype=object))
    return trainset.TrainSet(u, i, np.ones(len(u), np.float32), trainset.history_windows(u, i, 3), n_users, n_items,
                             np.asarray(user_ids, dtype=object), np.asarray(item_ids, dtype=object), feats, users)


def test_warm_start_matches_feature_rows_by_token_not_position():
    cfg = from_dict({"model": {**MODEL, "epochs": 1, "history_length": 3}})
    ts1 = _featured_trainset(["comedy", "war"], ["drama"], ["a", "b"], ["x", "y", "z"])
    tr1 = train.fit(ts1, "two_tower", cfg.model, (20,), progress=lambda *_: None)
    old = train.tower_weights(tr1)
    assert old["candidate.token_embedding:names"].tolist() == ["comedy", "war"]
    # the next dataset adds a token that sorts first: every old token moves down one index
    ts2 = _featured_trainset(["action", "comedy", "war"], ["drama", "noir"], ["a", "b", "c"], ["x", "y", "z", "w"])
    mc = copy.deepcopy(cfg.model)
    mc.learning_rate = 1e-9
    tr2 = train.fit(ts2, "two_tower", mc, (20,), previous=(ts1.user_ids, ts1.item_ids, old), progress=lambda *_: None)
    new = train.tower_weights(tr2)
    assert tr2.warm_started["candidate.token_embedding"] == 2 and tr2.warm_started["candidate.genre_embedding"] == 1
    np.testing.assert_allclose(new["candidate.token_embedding"][2:4], old["candidate.token_embedding"][1:3], atol=1e-6)
    assert not np.allclose(new["candidate.token_embedding"][1], old["candidate.token_embedding"][1])  # "action": fresh
    np.testing.assert_allclose(new["candidate.genre_embedding"][1], old["candidate.genre_embedding"][1], atol=1e-6)
    np.testing.assert_allclose(new["query.user_feature_embedding"][1], old["query.user_feature_embedding"][1], atol=1e-6)
    # a previous version without names (written before they were saved) copies no feature rows
    legacy = {k: v for k, v in old.items() if not k.endswith(":names")}
    tr3 = train.fit(ts2, "two_tower", mc, (20,), previous=(ts1.user_ids, ts1.item_ids, legacy), progress=lambda *_: None)
    assert "candidate.token_embedding" not in tr3.warm_started and "candidate.item_embedding" in tr3.warm_started
