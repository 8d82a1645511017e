"""Shared fixtures: small generated inputs in tmp_path, a config builder and a quiet pipeline runner."""
from __future__ import annotations

import copy
import glob
import json
import os

import pandas as pd
import pytest

from pipelines import build_dataset as _pipeline
from recsys import jobs, registry, version
from recsys.data import trainset
from recsys.models import create
from recsys.config import from_dict
from recsys.data.synthetic import clustered_interactions, clustered_items
from recsys.evaluation.scorer import validation_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small and fast: 2 shuffle buckets, few k-core rounds, no item metadata, filters off unless a test sets them.
TEST_DEFAULTS = {
    "source": {"items_format": "none"},
    "filters": {"min_user_interactions": 1, "min_item_interactions": 1, "max_rounds": 3},
    "runner": {"shuffle_buckets": 2},
    "artifacts": {"root": "artifacts"},
}


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@pytest.fixture
def write_file(tmp_path):
    """write_file(name, content) -> absolute path; content is str, bytes or a list of lines."""
    def write(name: str, content, newline: str = "\n") -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, (list, tuple)):
            content = "".join(f"{line}{newline}" for line in content)
        if isinstance(content, str):
            content = content.encode("utf-8")
        path.write_bytes(content)
        return str(path)
    return write


@pytest.fixture
def make_config(tmp_path):
    """make_config(overrides) -> validated Config resolved against tmp_path, on the small test defaults."""
    def make(overrides: dict | None = None, base_dir=None):
        return from_dict(deep_merge(TEST_DEFAULTS, overrides or {}), base_dir=str(base_dir or tmp_path))
    return make


@pytest.fixture
def build_dataset():
    """build_dataset(cfg, dataset_id="d1", previous=None) -> Dataset, without progress output."""
    from pipelines import build_dataset as pipeline

    def build(cfg, dataset_id: str = "d1", previous=None):
        return pipeline.run(cfg, dataset_id=dataset_id, previous=previous, progress=lambda *_: None)
    return build


def read_rejected(dataset) -> list[dict]:
    """Every dead-letter row of a dataset's interaction files (rejected/part-*.jsonl)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(dataset.path, "rejected", "part-*.jsonl"))):
        with open(path, encoding="utf-8") as fh:
            rows.extend(json.loads(line) for line in fh if line.strip())
    return rows


def read_splits(dataset) -> pd.DataFrame:
    """All splits of a dataset in one frame with a `split` column."""
    frames = [dataset.read(s).assign(split=s) for s in ("train", "validation", "test")]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def dataset_io():
    """Helpers to read a built dataset back: .rejected(ds), .splits(ds)."""
    class IO:
        rejected = staticmethod(read_rejected)
        splits = staticmethod(read_splits)
    return IO


# ---- a small artifact root with trained versions (serving, compare and e2e tests) ----
def config_for(tmp, model: dict | None = None, nightly: dict | None = None, **model_kw):
    """Config for the generated events.csv / items.csv in `tmp` (serving, compare and e2e tests)."""
    return from_dict({
        "source": {"path": str(tmp / "events.csv"), "format": "csv", "items_path": str(tmp / "items.csv"),
                   "items_format": "csv",
                   "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "value": "rating"},
                   "item_columns": {"item": "item_id", "title": "title", "genres": "genres"}},
        "filters": {"min_user_interactions": 3, "min_item_interactions": 1, "max_rounds": 3},
        "split": {"strategy": "leave_last_n", "leave_last_n": 2},
        "runner": {"shuffle_buckets": 2},
        "artifacts": {"root": str(tmp / "artifacts")},
        "model": {"dim": 16, "batch_size": 256, "epochs": 4, "learning_rate": 0.02, "history_length": 5,
                  **(model or {}), **model_kw},
        "nightly": {"isolate_steps": False, **(nightly or {})},
    }, base_dir=str(tmp))


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served")
    clustered_interactions(n_users=200, n_items=150, n_clusters=5, per_user=25, seed=3).to_csv(
        tmp / "events.csv", index=False)
    clustered_items(150, 5).to_csv(tmp / "items.csv", index=False)
    cfg = config_for(tmp)
    ds = _pipeline.run(cfg, dataset_id="d1", previous=None, progress=lambda *_: None)
    ts = trainset.from_dataset(ds, cfg.model.history_length)
    root = cfg.resolve(cfg.artifacts.root)
    versions = {}
    for name in ("mf", "two_tower", "popularity"):
        model = create(name, cfg.model)
        model.fit(ts, (10,), progress=lambda *_: None, validate=validation_metrics)
        versions[name] = version.save_fitted(model, ts, cfg, root, ds)
        jobs.index_version(cfg, root, versions[name], progress=lambda *_: None)
    registry.publish(root, versions["two_tower"])
    return {"root": root, "cfg": cfg, "versions": versions, "dataset": ds, "trainset": ts}
