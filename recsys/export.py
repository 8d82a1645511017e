"""Write a trained model as a version directory (layout in recsys/registry.py)."""
from __future__ import annotations

import io
import os
import tempfile

import numpy as np
import tensorflow as tf

from recsys import fsio, registry
from recsys.config import Config, is_url
from recsys.models.popularity import fit_popularity
from recsys.models.training import Trained, tower_weights
from recsys.data.trainset import TrainSet, last_items
from recsys.data.vocab import Vocabulary


class QueryModel(tf.Module):
    """The query tower behind string lookups: user IDs and recent item IDs in, embeddings out.

    Unknown user IDs map to the out-of-vocabulary row; unknown or empty history IDs are ignored.
    """

    def __init__(self, tower, user_ids: np.ndarray, item_ids: np.ndarray, history_length: int):
        super().__init__()
        self.tower = tower
        self.history_length = history_length
        self.users = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(user_ids.astype(str)), tf.range(len(user_ids), dtype=tf.int32)), -1)
        self.items = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(item_ids.astype(str)), tf.range(len(item_ids), dtype=tf.int32)), -1)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None, None], tf.string)])
    def serve(self, user_id, history):
        hist = self.items.lookup(history)[:, :self.history_length]
        return {"embedding": self.tower({"user_idx": self.users.lookup(user_id), "history": hist})}


def user_histories(ts: TrainSet, length: int, dataset_path: str | None = None) -> np.ndarray:
    """Each known user's `length` most recent items (newest first) from train, then validation.

    Validation interactions precede test in time, so the stored embeddings use everything a service
    would know before the test period, and nothing from it.
    """
    users, items = ts.user_idx, ts.item_idx
    if dataset_path and not ts.includes_validation:
        val = _split_rows(ts, dataset_path, "validation", ["user", "item_idx", "timestamp"])
        val = val.sort_values("timestamp", kind="stable")
        users = np.concatenate([users, val["user_idx"].to_numpy(np.int64)])
        items = np.concatenate([items, val["item_idx"].to_numpy(np.int64)])
    return last_items(users, items, ts.n_users, length)


def _split_rows(ts: TrainSet, dataset_path: str, split: str, columns: list):
    """Rows of a dataset split whose user and item the version knows, with `user_idx` in `ts`'s
    vocabulary (which may extend the dataset's: a refit appends users first seen in validation)."""
    from recsys.data.dataset import Dataset
    df = Dataset(dataset_path).read(split, columns)
    df["user_idx"] = Vocabulary(ts.user_ids).lookup(df["user"])
    return df[(df["user_idx"] >= 0) & (df["item_idx"] >= 0)]


def seen_items(ts: TrainSet, dataset_path: str | None):
    """Known users x items they interacted with in any split (what the service excludes as seen)."""
    import scipy.sparse as sp
    rows, cols = [ts.user_idx], [ts.item_idx]
    if dataset_path:
        for split in ("validation", "test"):
            df = _split_rows(ts, dataset_path, split, ["user", "item_idx"])
            rows.append(df["user_idx"].to_numpy(np.int64))
            cols.append(df["item_idx"].to_numpy(np.int64))
    r, c = np.concatenate(rows), np.concatenate(cols)
    m = sp.csr_matrix((np.ones(len(r), np.int8), (r, c)), shape=(ts.n_users, ts.n_items))
    m.sum_duplicates()
    m.data[:] = 1
    return m


def save_version(tr: Trained | None, ts: TrainSet, cfg: Config, model_name: str, root: str,
                 dataset_path: str | None = None, extra: dict | None = None, version: str | None = None) -> str:
    """Write the version directory atomically; returns the version id."""
    version = version or registry.new_version_id(model_name)
    L = cfg.model.history_length
    with registry.VersionWriter(root, version) as w:
        Vocabulary(ts.user_ids).save(w.file("users.txt"))
        Vocabulary(ts.item_ids).save(w.file("items.txt"))
        pop = tr.popularity if tr is not None else fit_popularity(ts, cfg.model.popularity_window_days)
        registry.save_npy(w.file("popularity.npy"), pop.counts.astype(np.int64))
        registry.save_npz_csr(w.file("seen.npz"), seen_items(ts, dataset_path))
        if dataset_path and fsio.exists(fsio.join(dataset_path, "items.parquet")):
            fsio.write_bytes(w.file("items.parquet"), fsio.read_bytes(fsio.join(dataset_path, "items.parquet")))
        manifest = {"version": version, "model": model_name, "dataset_id": ts.dataset_id,
                    "config": cfg.to_dict(), "n_users": ts.n_users, "n_items": ts.n_items}
        if tr is not None:
            hist = user_histories(ts, L, dataset_path) if model_name == "two_tower" else np.full((ts.n_users, 1), -1, np.int32)
            users = tr.query_embeddings(np.arange(ts.n_users, dtype=np.int32), hist)
            registry.save_npy(w.file("item_embeddings.npy"), tr.item_embeddings.astype(np.float32))
            registry.save_npy(w.file("user_embeddings.npy"), users.astype(np.float32))
            buf = io.BytesIO()
            np.savez(buf, **tower_weights(tr))
            fsio.write_bytes(w.file("weights.npz"), buf.getvalue())
            _save_query_model(QueryModel(tr.query_tower, ts.user_ids, ts.item_ids, L), w.file("query_model"))
            manifest.update({"dim": int(tr.item_embeddings.shape[1]), "history_length": L,
                             "training": {"seconds": round(tr.train_seconds, 1), "best_epoch": tr.best_epoch,
                                          "examples_per_second": round(tr.examples_per_second),
                                          "epochs": tr.history, "warm_started_rows": tr.warm_started}})
        manifest.update(extra or {})
        registry.write_manifest(w.file("manifest.json"), manifest)
    return version


def _save_query_model(module: QueryModel, path: str) -> None:
    if not is_url(path):
        tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
        return
    with tempfile.TemporaryDirectory() as tmp:  # SavedModel writes many files; stage then upload
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
        for dirpath, _, files in os.walk(tmp):
            for f in files:
                src = os.path.join(dirpath, f)
                rel = os.path.relpath(src, tmp)
                with open(src, "rb") as fh:
                    fsio.write_bytes(fsio.join(path, rel), fh.read())
