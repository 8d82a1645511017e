"""A loaded model version and the one way query vectors are made from it.

Used by offline evaluation, the online engine and the batch job alike:
- a known user: the precomputed row of `user_embeddings.npy` (no TensorFlow at request time);
- a history (fresh items at request time): two_tower runs its query tower on the history; mf folds
  the history in by regularized least squares over the item embeddings;
- neither: the popularity fallback.
"""
from __future__ import annotations

import numpy as np

from recsys import fsio, registry

PERSONALIZED, HISTORY, POPULARITY = "personalized", "history", "popularity_fallback"


class LoadedVersion:
    """Everything a version needs at scoring time, in memory."""

    def __init__(self, root: str, version: str, load_query_model: bool = True):
        self.root, self.version = root, version
        self.path = registry.version_dir(root, version)
        self.manifest = registry.read_manifest(root, version)
        self.model = self.manifest["model"]
        self.users, self.items = registry.load_vocabs(root, version)
        self.popularity = registry.load_npy(fsio.join(self.path, "popularity.npy")).astype(np.float64)
        # a tiny index tie-break: deterministic popularity rankings
        self.popularity_scores = (self.popularity - np.arange(len(self.popularity)) * 1e-9).astype(np.float32)
        self.item_embeddings = self.user_embeddings = None
        if self.model != "popularity":
            self.item_embeddings = registry.load_npy(fsio.join(self.path, "item_embeddings.npy"))
            self.user_embeddings = registry.load_npy(fsio.join(self.path, "user_embeddings.npy"))
        self.history_length = int(self.manifest.get("history_length", 20))
        self._query_model = None
        self._load_query_model = load_query_model and self.model == "two_tower"
        if self._load_query_model:
            self.query_model()  # load now: a broken SavedModel must fail at load, not on a request

    @property
    def personalized(self) -> bool:
        return self.item_embeddings is not None

    def query_model(self):
        if self._query_model is None:
            import tensorflow as tf  # only two_tower history queries need TensorFlow
            self._query_model = tf.saved_model.load(fsio.join(self.path, "query_model")).signatures["serving_default"]
        return self._query_model

    def history_vectors(self, histories: list[np.ndarray], user_idx: np.ndarray | None = None) -> np.ndarray:
        """Query vectors for item-index histories (newest first; -1 entries ignored). two_tower also
        takes each row's user (index, -1 unknown): a known user keeps their ID embedding and features."""
        d = self.item_embeddings.shape[1]
        out = np.zeros((len(histories), d), dtype=np.float32)
        if self.model == "two_tower":
            import tensorflow as tf
            L = self.history_length
            ids = np.full((len(histories), L), "", dtype=object)
            for r, h in enumerate(histories):
                h = [int(x) for x in h if x >= 0][:L]
                ids[r, :len(h)] = self.items.ids[h]
            users = [""] * len(histories) if user_idx is None else \
                [self.users.ids[u] if u >= 0 else "" for u in user_idx]
            res = self.query_model()(user_id=tf.constant(users), history=tf.constant(ids.astype(str)))
            return res["embedding"].numpy().astype(np.float32)
        for r, h in enumerate(histories):
            out[r] = fold_in(self.item_embeddings, np.asarray([x for x in h if x >= 0], dtype=np.int64))
        return out

    def score(self, vectors: np.ndarray) -> np.ndarray:
        return vectors @ self.item_embeddings.T


def fold_in(item_embeddings: np.ndarray, items: np.ndarray, reg: float = 0.1) -> np.ndarray:
    """Least-squares user vector u minimizing sum_i (1 - u.v_i)^2 + reg |u|^2 over the history items.

    This is ALS's user step with implicit positives of weight 1 (implicit's `recalculate_user`).
    """
    if len(items) == 0:
        return np.zeros(item_embeddings.shape[1], dtype=np.float32)
    V = item_embeddings[items].astype(np.float64)
    A = V.T @ V + reg * np.eye(V.shape[1])
    return np.linalg.solve(A, V.sum(0)).astype(np.float32)


def query_vectors(lv: LoadedVersion, user_idx: np.ndarray, histories: list[np.ndarray] | None = None):
    """Vectors and sources for rows of (user index or -1, optional fresh history).

    A known user uses the precomputed embedding unless a fresh history is given (then the history path
    runs on the fresh items, with the user's ID and features for two_tower); an unknown user with a
    history uses the history path; else popularity.
    Rows with source POPULARITY get a zero vector (callers use `popularity_scores` for them).
    """
    n = len(user_idx)
    d = lv.item_embeddings.shape[1]
    vecs = np.zeros((n, d), dtype=np.float32)
    sources = np.full(n, POPULARITY, dtype=object)
    has_hist = np.zeros(n, dtype=bool)
    if histories is not None:
        has_hist = np.asarray([len(h) > 0 and (np.asarray(h) >= 0).any() for h in histories], dtype=bool)
    known = (user_idx >= 0) & ~has_hist
    vecs[known] = lv.user_embeddings[user_idx[known]]
    sources[known] = PERSONALIZED
    if has_hist.any():
        rows = np.flatnonzero(has_hist)
        vecs[rows] = lv.history_vectors([histories[r] for r in rows], user_idx[rows])
        sources[rows] = HISTORY
    return vecs, sources
