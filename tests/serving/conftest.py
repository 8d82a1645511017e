"""A small artifact root with two trained versions (mf, two_tower) on planted-cluster data."""
import pytest

from pipelines import build_dataset
from recsys import export, index_job, registry, train, trainset
from recsys.config import from_dict
from recsys.synthetic import clustered_interactions, clustered_items


def config_for(tmp, **model):
    return from_dict({
        "source": {"path": str(tmp / "events.csv"), "format": "csv", "items_path": str(tmp / "items.csv"),
                   "items_format": "csv",
                   "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "value": "rating"},
                   "item_columns": {"item": "item_id", "title": "title", "genres": "genres"}},
        "filters": {"min_user_interactions": 3, "min_item_interactions": 1, "max_rounds": 3},
        "split": {"strategy": "leave_last_n", "leave_last_n": 2},
        "runner": {"shuffle_buckets": 2},
        "artifacts": {"root": str(tmp / "artifacts")},
        "model": {"dim": 16, "batch_size": 256, "epochs": 4, "learning_rate": 0.02, "history_length": 5, **model},
    }, base_dir=str(tmp))


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served")
    clustered_interactions(n_users=200, n_items=150, n_clusters=5, per_user=25, seed=3).to_csv(
        tmp / "events.csv", index=False)
    clustered_items(150, 5).to_csv(tmp / "items.csv", index=False)
    cfg = config_for(tmp)
    ds = build_dataset.run(cfg, dataset_id="d1", previous=None, progress=lambda *_: None)
    ts = trainset.from_dataset(ds, cfg.model.history_length)
    root = cfg.resolve(cfg.artifacts.root)
    versions = {}
    for name in ("mf", "two_tower"):
        tr = train.fit(ts, name, cfg.model, (10,), progress=lambda *_: None)
        versions[name] = export.save_version(tr, ts, cfg, name, root, ds.path)
        index_job.build_version_index(cfg, root, versions[name], progress=lambda *_: None)
    versions["popularity"] = export.save_version(None, ts, cfg, "popularity", root, ds.path)
    registry.publish(root, versions["two_tower"])
    return {"root": root, "cfg": cfg, "versions": versions, "dataset": ds, "trainset": ts}
