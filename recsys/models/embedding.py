"""The embedding models: `two_tower` and `mf`. Both train with the loop in recsys/models/training.py
and the loss in recsys/models/loss.py; they differ in their towers and in how a history becomes a
query vector.

- `TwoTower`: the query tower reads the user ID, the user's features and the mean of their recent
  items; a history (fresh items at request time) runs through the same tower.
- `MF`: a user ID table against an item ID table; a history is folded in by regularized least squares
  over the item embeddings (ALS's user step), so users unknown to the model still get a vector.

TensorFlow is imported when a model is fitted or its saved query tower is first called, not when the
module is imported: serving an mf version needs numpy only.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from recsys.models.base import FitReport, Model, WarmStart


def fold_in(item_embeddings: np.ndarray, items: np.ndarray, reg: float = 0.1, bias_column: bool = False) -> np.ndarray:
    """Least-squares user vector u minimizing sum_i (1 - u.v_i)^2 + reg |u|^2 over the history items.

    This is ALS's user step with implicit positives of weight 1 (implicit's `recalculate_user`).

    Args:
        item_embeddings: [n_items, d].
        items: item indices of the history (no -1).
        reg: the L2 regularization.
        bias_column: the last column is the item bias (`model.item_bias`): u's last entry is fixed
            at 1 and the rest minimizes sum_i (1 - b_i - u.v_i)^2 + reg |u|^2.
    Returns:
        The vector [d] (zeros for an empty history, but for the bias entry).
    """
    d = item_embeddings.shape[1] - (1 if bias_column else 0)
    out = np.zeros(item_embeddings.shape[1], dtype=np.float32)
    if bias_column:
        out[-1] = 1.0
    if len(items) == 0:
        return out
    V = item_embeddings[items, :d].astype(np.float64)
    target = 1.0 - (item_embeddings[items, -1].astype(np.float64) if bias_column else 0.0)
    A = V.T @ V + reg * np.eye(d)
    out[:d] = np.linalg.solve(A, V.T @ np.broadcast_to(target, (len(items),)))
    return out


def _query_module(tower, user_ids: np.ndarray, item_ids: np.ndarray, history_length: int):
    """A tf.Module around the query tower for string lookups: user IDs and recent item IDs in,
    embeddings out. Unknown user IDs map to the out-of-vocabulary row; unknown or empty history IDs
    are ignored."""
    import tensorflow as tf

    class QueryModel(tf.Module):
        def __init__(self):
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

    return QueryModel()


class EmbeddingModel(Model):
    """Shared by two_tower and mf: fitted towers in memory, or the saved arrays after a load."""

    def __init__(self, config=None):
        super().__init__(config)
        self.query_tower = self.candidate_tower = None    # set by fit
        self.row_names: dict = {}                          # set by fit (warm start matches rows by them)
        self.history_length = self.config.history_length
        self._load_query_model: Callable | None = None
        self._saved_query = None

    def build_towers(self, ts):
        """(query tower, candidate tower) for this TrainSet."""
        raise NotImplementedError

    def fit(self, ts, ks=(10, 20, 50), previous: WarmStart | None = None, progress=print,
            stop_after: int | None = None, max_seconds: float | None = None, validate=None,
            refit_ratio: float | None = None) -> FitReport:
        """See `Model.fit`; the loop is recsys/models/training.py."""
        from recsys.models import training
        self.history_length = ts.history.shape[1]
        return training.fit(self, ts, ks, previous, progress, max_seconds, stop_after, validate, refit_ratio)

    @property
    def dim(self) -> int:
        """The embedding dimension."""
        return int(self.item_embeddings.shape[1])

    def _tower(self, user_idx: np.ndarray, history: np.ndarray) -> np.ndarray:
        """Query vectors from the in-memory tower (fitted) or the saved query module (loaded)."""
        user_idx = np.asarray(user_idx, dtype=np.int64)
        if self.query_tower is not None:
            from recsys.models.training import tower_outputs
            return tower_outputs(self.query_tower, user_idx, np.asarray(history, np.int32), self.dim)
        import tensorflow as tf
        if self._saved_query is None:
            self._saved_query = self._load_query_model()
        L = self.history_length
        ids = np.full((len(user_idx), max(L, 1)), "", dtype=object)
        for r, h in enumerate(np.asarray(history)):
            h = [int(x) for x in h if x >= 0][:L]
            ids[r, :len(h)] = self.item_ids[h]
        users = [self.user_ids[u] if u >= 0 else "" for u in user_idx]
        out = self._saved_query(user_id=tf.constant(users, dtype=tf.string), history=tf.constant(ids.astype(str)))
        return out["embedding"].numpy().astype(np.float32)

    def weights(self) -> dict:
        """Tower weights by stable layer name, with the tokens of feature-table rows (see warm_start.py)."""
        from recsys.models.warm_start import tower_weights
        if self.query_tower is None:
            return {}
        return tower_weights(self.query_tower, self.candidate_tower, self.row_names)

    def query_module(self):
        """The query tower behind string IDs (saved as the version's SavedModel), or None before fit."""
        if self.query_tower is None:
            return None
        return _query_module(self.query_tower, self.user_ids, self.item_ids, self.history_length)

    def load_state(self, user_ids, item_ids, item_embeddings, user_embeddings, query_model, history_length):
        """See `Model.load_state`."""
        super().load_state(user_ids, item_ids, item_embeddings, user_embeddings, query_model, history_length)
        self._load_query_model, self.history_length = query_model, history_length


class TwoTower(EmbeddingModel):
    """User ID + user features + mean of recent items (query) against item ID + item features."""

    name = "two_tower"
    uses_history = True

    def build_towers(self, ts):
        """Query tower (user ID, user features, pooled history) and candidate tower (item ID, item features)."""
        from recsys.models.towers import CandidateTower, QueryTower
        mc = self.config
        ct = CandidateTower(ts.n_items, mc.dim, ts.item_features if mc.use_item_features else None, mc.normalize,
                            item_bias=mc.item_bias)
        shared = ct.item_embedding if mc.history_items == "candidate" else None
        qt = QueryTower(ts.n_users, ts.n_items, mc.dim, mc.normalize, use_user_id=mc.use_user_id, candidate_items=shared,
                        user_features=ts.user_features if mc.use_user_features else None, bias_column=mc.item_bias)
        return qt, ct

    def user_vectors(self, user_idx, history):
        """The query tower on (user, history); see `Model.user_vectors`."""
        return self._tower(user_idx, history)

    def history_vectors(self, history, user_idx=None):
        """The query tower on the history, with the user's ID and features when known."""
        if user_idx is None:
            user_idx = np.full(len(history), -1, dtype=np.int64)
        return self._tower(user_idx, history)

    def load_state(self, user_ids, item_ids, item_embeddings, user_embeddings, query_model, history_length):
        """See `Model.load_state`; the SavedModel is loaded here, so a broken one fails at load."""
        super().load_state(user_ids, item_ids, item_embeddings, user_embeddings, query_model, history_length)
        self._saved_query = query_model()   # load now: a broken SavedModel must fail at load, not on a request


class MF(EmbeddingModel):
    """Matrix factorization: a user ID table against an item ID table."""

    name = "mf"
    uses_history = False

    def build_towers(self, ts):
        """A user ID table and an item ID table."""
        from recsys.models.towers import IdCandidateTower, IdQueryTower
        mc = self.config
        return (IdQueryTower(ts.n_users, mc.dim, mc.normalize, bias_column=mc.item_bias),
                IdCandidateTower(ts.n_items, mc.dim, mc.normalize, item_bias=mc.item_bias))

    def user_vectors(self, user_idx, history=None):
        """The user's row of the user table (the history is not used)."""
        user_idx = np.asarray(user_idx, dtype=np.int64)
        if self.query_tower is not None:
            return self._tower(user_idx, np.full((len(user_idx), 1), -1, np.int32))
        return self.user_embeddings[user_idx]

    def history_vectors(self, history, user_idx=None):
        """Each history folded in by least squares over the item embeddings (`fold_in`); the user is not used."""
        out = np.zeros((len(history), self.dim), dtype=np.float32)
        for r, h in enumerate(history):
            h = np.asarray(h)
            out[r] = fold_in(self.item_embeddings, h[h >= 0].astype(np.int64), bias_column=self.config.item_bias)
        return out
