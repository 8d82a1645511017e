"""The contract every entry of recsys.models.MODELS passes (in the spirit of implicit's
recommender_base_test): fit on planted data, beat popularity where it should, save -> load -> identical
scores, fresh-history queries, warm start keeps carried-over rows. A new model gets all of this by being
added to MODELS."""
import copy

import numpy as np
import pytest

from pipelines import build_dataset
from recsys import version
from recsys.config import from_dict
from recsys.data import trainset
from recsys.data.synthetic import clustered_interactions, clustered_items
from recsys.evaluation import metrics
from recsys.evaluation.scorer import evaluate_model
from recsys.models import MODELS, create
from recsys.models.base import Model
from recsys.models.popularity import Popularity
from recsys.evaluation.scorer import validation_metrics

MODEL = {"dim": 16, "batch_size": 256, "epochs": 12, "patience": 4, "learning_rate": 0.02, "history_length": 5}

# Every model, plus recipe variants that change what is saved (two_tower pooling the candidate table).
VARIANTS = {name: (name, {}) for name in MODELS}
VARIANTS["two_tower/candidate"] = ("two_tower", {"history_items": "candidate"})


def make_config(tmp_path, csv, **model):
    # the catalog's genre is the planted cluster (plus one genre every item has): what a rule can use
    clustered_items(300, 6).to_csv(tmp_path / "items.csv", index=False)
    return from_dict({
        "source": {"path": csv, "format": "csv", "items_path": str(tmp_path / "items.csv"), "items_format": "csv",
                   "item_columns": {"item": "item_id", "title": "title", "genres": "genres"},
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


@pytest.fixture(scope="module")
def fitted(planted):
    tmp, cfg, ds, ts = planted
    out = {}
    for key, (name, recipe) in VARIANTS.items():
        mc = copy.deepcopy(cfg.model)
        for k, v in recipe.items():
            setattr(mc, k, v)
        model = create(name, mc)
        model.fit(ts, (20,), progress=lambda *_: None, validate=validation_metrics)
        out[key] = model
    return out


@pytest.fixture(scope="module")
def saved(planted, fitted):
    tmp, cfg, ds, ts = planted
    root = cfg.resolve(cfg.artifacts.root)
    return {key: version.save_fitted(model, ts, cfg, root, ds) for key, model in fitted.items()}


def popularity_recall(ts, split="test"):
    ev = ts.evals[split]
    pop = Popularity(ts.n_items).fit(ts.item_idx)
    return metrics.evaluate(lambda r: np.array(pop.score_rows(len(r))), np.arange(len(ev.user_ids)),
                            ev.relevant, ev.exclude, (20,)).summary()["recall@20"]


def test_models_is_a_plain_dict_of_model_classes():
    assert set(MODELS) == {"two_tower", "mf", "popularity", "attribute_popularity", "repeat"}
    for name, cls in MODELS.items():
        assert issubclass(cls, Model) and cls.name == name


@pytest.mark.parametrize("key", list(VARIANTS))
def test_fit_beats_popularity_where_it_should(planted, fitted, key):
    tmp, cfg, ds, ts = planted
    model = fitted[key]
    pop = popularity_recall(ts)
    got = evaluate_model(model, ts.evals["test"], (20,), ts.item_counts)[0].summary()["recall@20"]
    if model.personalized:
        assert got > 1.5 * pop, (key, got, pop)
        assert model.rule or (model.report.epochs and model.report.best_epoch >= 1)
    else:
        assert got == pytest.approx(pop)


@pytest.mark.parametrize("key", list(VARIANTS))
def test_save_load_gives_identical_scores(planted, fitted, saved, key):
    tmp, cfg, ds, ts = planted
    root = cfg.resolve(cfg.artifacts.root)
    model, lv = fitted[key], version.load(root, saved[key])
    assert lv.model_name == model.name == version.read_manifest(root, saved[key])["model"]
    assert lv.users.ids.tolist() == ts.user_ids.tolist() and lv.items.ids.tolist() == ts.item_ids.tolist()
    np.testing.assert_array_equal(lv.popularity.counts, model.popularity.counts)
    # the same evaluation through the one scorer, in memory and from disk
    ev = ts.evals["test"]
    before = evaluate_model(model, ev, (10, 20), ts.item_counts)[0].summary()
    after = evaluate_model(lv.model, ev, (10, 20), ts.item_counts, catalog_ids=ts.item_ids)[0].summary()
    for k in ("recall@10", "recall@20", "ndcg@20"):
        assert after[k] == pytest.approx(before[k], abs=1e-6), k
    if not model.personalized:
        assert lv.model.item_embeddings is None
        return
    np.testing.assert_array_equal(lv.model.item_embeddings, model.item_embeddings)
    users = np.arange(ts.n_users)
    hist = trainset.user_histories(ts, cfg.model.history_length, ds) if model.uses_history \
        else np.full((ts.n_users, 1), -1, np.int32)
    np.testing.assert_allclose(lv.model.user_embeddings, model.user_vectors(users, hist), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lv.model.user_vectors(users, hist), model.user_vectors(users, hist),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", [k for k, (name, _) in VARIANTS.items() if MODELS[name].personalized])
def test_fresh_history_query_agrees_between_memory_and_disk(planted, fitted, saved, key):
    """A history at request time (known or unknown user) gets the vector the fitted model gives it."""
    tmp, cfg, ds, ts = planted
    root = cfg.resolve(cfg.artifacts.root)
    model, lv = fitted[key], version.load(root, saved[key])
    rows = np.flatnonzero((np.asarray(ts.history) >= 0).sum(1) >= 3)[:50]
    hist = ts.history[rows]
    for users in (ts.user_idx[rows], np.full(len(rows), -1)):
        want = model.history_vectors(hist, users)
        np.testing.assert_allclose(lv.model.history_vectors(hist, users), want, rtol=1e-5, atol=1e-5)
        assert np.isfinite(want).all() and (np.abs(want).sum(1) > 0).all()
    if model.uses_history:
        # what the training step saw for these examples (user + items before it, newest first)
        np.testing.assert_allclose(lv.model.history_vectors(hist, ts.user_idx[rows]),
                                   model.user_vectors(ts.user_idx[rows], hist), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", [k for k, (name, _) in VARIANTS.items()
                                 if MODELS[name].personalized and not MODELS[name].rule])
def test_warm_start_keeps_carried_over_rows(planted, fitted, saved, key, tmp_path):
    tmp, cfg, ds, ts = planted
    root = cfg.resolve(cfg.artifacts.root)
    name, recipe = VARIANTS[key]
    # a second dataset with new users and items: old IDs keep their indices, new ones are appended
    more = clustered_interactions(n_users=340, n_items=230, n_clusters=6, per_user=30, seed=1)
    csv = tmp_path / "more.csv"
    more.to_csv(csv, index=False)
    cfg2 = make_config(tmp, str(csv), epochs=1, learning_rate=1e-9, **recipe)
    ds2 = build_dataset.run(cfg2, dataset_id=f"d2-{key.replace('/', '-')}", previous="d1", progress=lambda *_: None)
    ts2 = trainset.from_dataset(ds2, cfg2.model.history_length)
    assert ts2.n_items > ts.n_items and ts2.n_users > ts.n_users
    old = fitted[key].weights()
    model = create(name, cfg2.model)
    model.fit(ts2, (20,), previous=version.load_warm_start(root, saved[key]), progress=lambda *_: None, validate=validation_metrics)
    new = model.weights()
    assert model.report.warm_started["candidate.item_embedding"] == ts.n_items
    # same IDs, same indices (the vocabulary is extended) -> same rows, up to a 1e-9 learning rate
    np.testing.assert_allclose(new["candidate.item_embedding"][: ts.n_items + 1],
                               old["candidate.item_embedding"], atol=1e-6)
    np.testing.assert_allclose(new["query.user_embedding"][: ts.n_users + 1], old["query.user_embedding"], atol=1e-6)
    # new rows are fresh initializations, not copies
    assert not np.allclose(new["candidate.item_embedding"][ts.n_items + 1:], 0)
