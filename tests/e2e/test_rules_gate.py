"""Rules in the gate: a model is published only where it beats every rule, and a rule is published
where the models lose (on planted data, so either outcome can fail)."""
import numpy as np
import pandas as pd

from pipelines import nightly
from recsys import registry, version
from recsys.config import from_dict
from recsys.data.synthetic import clustered_interactions


def run(tmp, attribute_is_the_cluster: bool, **model):
    """A nightly on planted clusters, with a catalog whose `shelf` is the item's cluster or noise."""
    events = clustered_interactions(n_users=300, n_items=200, n_clusters=6, per_user=30, seed=5)
    events.to_csv(tmp / "events.csv", index=False)
    items = np.arange(200)
    shelf = items % 6 if attribute_is_the_cluster else np.random.default_rng(1).integers(0, 6, 200)
    pd.DataFrame({"item_id": [f"i{i}" for i in items], "title": [f"Item {i}" for i in items],
                  "shelf": [f"s{s}" for s in shelf]}).to_csv(tmp / "items.csv", index=False)
    cfg = from_dict({
        "source": {"path": "events.csv", "format": "csv", "items_path": "items.csv", "items_format": "csv",
                   "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "value": "rating"},
                   "item_columns": {"item": "item_id", "title": "title", "attributes": {"shelf": "categorical"}}},
        "filters": {"min_user_interactions": 3, "min_item_interactions": 1},
        "split": {"strategy": "leave_last_n", "leave_last_n": 3},
        "runner": {"shuffle_buckets": 2},
        "artifacts": {"root": "artifacts"},
        "model": {"dim": 16, "batch_size": 256, "epochs": 10, "learning_rate": 0.02, "history_length": 5,
                  "rule_attribute": "shelf", **model},
        "nightly": {"models": ["mf", "popularity", "attribute_popularity"], "batch_top_n": 10},
    }, base_dir=str(tmp))
    summary = nightly.run(cfg, progress=lambda *_: None)
    root = cfg.resolve("artifacts")
    return summary, version.read_manifest(root, registry.current_version(root))


def test_a_model_that_beats_every_rule_is_published(tmp_path):
    summary, published = run(tmp_path, attribute_is_the_cluster=False)
    gate = summary["gate"]
    assert published["model"] == "mf", gate
    assert gate["best_rule"] in ("popularity", "attribute_popularity")
    assert gate["candidate_score"] > gate["best_rule_score"], gate


def test_a_rule_is_published_where_the_models_lose(tmp_path):
    # mf barely trained (one epoch at a vanishing learning rate) against a catalog shelf that is the cluster
    summary, published = run(tmp_path, attribute_is_the_cluster=True, epochs=1, learning_rate=1e-7, refit=False)
    gate = summary["gate"]
    assert published["model"] == "attribute_popularity", gate
    assert gate["publish"] and gate["best_rule"] == "attribute_popularity"
