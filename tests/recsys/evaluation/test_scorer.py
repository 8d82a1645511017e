"""The one scorer: training validation and `recsys evaluate` rank by the same rule."""
import re

import numpy as np
import pytest
import yaml

from pipelines import build_dataset
from recsys import cli, version
from recsys.config import load_config
from recsys.data.synthetic import clustered_interactions
from recsys.evaluation.scorer import evaluate_model
from recsys.jobs import train_version
from recsys.models import create
from recsys.ranking import HISTORY, MODEL_POPULARITY, PERSONALIZED, POPULARITY, query_vectors
from recsys.evaluation.scorer import validation_metrics


@pytest.fixture(scope="module")
def temporal(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scorer")
    clustered_interactions(n_users=200, n_items=120, n_clusters=5, per_user=25, seed=4).to_csv(
        tmp / "events.csv", index=False)
    conf = {
        "source": {"path": "events.csv", "format": "csv", "items_format": "none",
                   "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "value": "rating"}},
        "filters": {"min_user_interactions": 3, "min_item_interactions": 1, "max_rounds": 3},
        "split": {"strategy": "temporal", "test_fraction": 0.1, "validation_fraction": 0.1},
        "runner": {"shuffle_buckets": 2},
        "artifacts": {"root": "artifacts"},
        # no refit: the saved model is the one validation measured; patience > epochs: no early stop
        "model": {"dim": 16, "batch_size": 256, "epochs": 4, "patience": 10, "learning_rate": 0.02,
                  "history_length": 5, "refit": False},
    }
    path = tmp / "recsys.yaml"
    path.write_text(yaml.safe_dump(conf))
    cfg = load_config(str(path))
    ds = build_dataset.run(cfg, dataset_id="t1", previous=None, progress=lambda *_: None)
    return path, cfg, ds


@pytest.mark.parametrize("model", ["mf", "two_tower"])
def test_the_kept_epochs_metric_equals_recsys_evaluate_on_validation(temporal, model, capsys):
    path, cfg, ds = temporal
    lines = []
    v = train_version(cfg, model, ds.id, warm_start="none", progress=lines.append)
    m = version.read_manifest(cfg.resolve(cfg.artifacts.root), v)
    epochs, kept = m["training"]["epochs"], m["training"]["best_epoch"]
    assert len(epochs) == 4 and 1 <= kept <= 4      # the saved weights are those of the best epoch
    printed = [x for x in lines if x.startswith("epoch")][kept - 1]
    at_kept_epoch = float(re.search(r"val_recall@20 (\d\.\d+)", printed).group(1))
    capsys.readouterr()
    assert cli.main(["evaluate", "--config", str(path), "--model", v, "--split", "validation"]) == 0
    table = capsys.readouterr().out
    evaluated = float(re.search(r"^recall@20\s+(\d\.\d+)", table, re.M).group(1))
    assert evaluated == at_kept_epoch, (printed, table)
    # not only as printed: the values agree to float precision
    assert epochs[kept - 1]["val_recall@20"] == pytest.approx(m["validation_metrics"]["recall@20"], abs=1e-9)


class _Toy:
    """A model with vectors for users 0 and 1, and histories folded into their first item's vector."""
    personalized = True

    def __init__(self):
        self.item_embeddings = np.eye(3, dtype=np.float32)

    def user_vectors(self, user_idx, history):
        return self.item_embeddings[user_idx] * 2

    def history_vectors(self, history, user_idx):
        return self.item_embeddings[history[:, 0]]


def test_the_rule_known_user_then_history_then_popularity():
    users = np.array([1, -1, -1, 0])
    history = np.array([[2, -1], [2, 0], [-1, -1], [-1, -1]])
    vecs, sources = query_vectors(_Toy(), users, history)
    assert sources.tolist() == [PERSONALIZED, HISTORY, POPULARITY, PERSONALIZED]
    np.testing.assert_array_equal(vecs, [[0, 2, 0], [0, 0, 1], [0, 0, 0], [2, 0, 0]])
    pop = create("popularity")
    assert query_vectors(pop, users, history)[1].tolist() == [MODEL_POPULARITY] * 4   # its answer, not a fallback


def test_items_unknown_to_the_model_are_never_recommended_and_count_as_misses(temporal):
    """A version scored on a catalog with an item it does not know (yesterday's model, today's split)."""
    path, cfg, ds = temporal
    model = create("mf", cfg.model)
    from recsys.data import trainset
    ts = trainset.from_dataset(ds, 5)
    model.fit(ts, (10,), progress=lambda *_: None, validate=validation_metrics)
    ev = ts.evals["test"]
    catalog = ts.item_ids.copy()
    catalog[0] = "brand-new"
    result, _ = evaluate_model(model, ev, (10,), None, catalog_ids=catalog)
    assert 0 not in set(result.topk.ravel().tolist())
    same, _ = evaluate_model(model, ev, (10,), None, catalog_ids=ts.item_ids)
    direct, _ = evaluate_model(model, ev, (10,), None)
    assert same.summary()["recall@10"] == pytest.approx(direct.summary()["recall@10"])
