"""The recommendation engine: one scoring path for the HTTP service, the batch job and tests.

    engine = Engine.load(root, version)
    engine.recommend("42", k=10)                       # known user: precomputed vector, seen excluded
    engine.recommend_for_history(["1", "50"], k=10)    # fresh history at request time
    engine.similar_items("1", k=10)

Every answer carries the model version, the scores and its `source` (personalized, history or
popularity_fallback).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys import fsio, registry
from recsys.retrieval import index as index_mod
from recsys.errors import RecsysError
from recsys.scoring import PERSONALIZED, POPULARITY, LoadedVersion, query_vectors

FILTER_KEYS = ("genre", "item")
MAX_K = 1000
_NO_GENRES = frozenset()


class RequestError(RecsysError):
    """A bad request: the message names the field."""

    def __init__(self, field_name: str, message: str, status: int = 400):
        super().__init__(f"{field_name}: {message}")
        self.field, self.status = field_name, status


@dataclass
class Recommendations:
    items: list
    scores: list
    source: str
    version: str
    ignored_history: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"items": self.items, "scores": self.scores, "source": self.source, "version": self.version,
                "ignored_history": self.ignored_history}


def parse_filters(values, field_name: str) -> dict:
    """["genre:Drama", "item:123"] -> {"genre": {"Drama"}, "item": {"123"}}; unknown keys are errors."""
    out: dict = {}
    for v in values or []:
        key, sep, val = str(v).partition(":")
        if not sep or not val:
            raise RequestError(field_name, f"{v!r} is not key:value (keys: {', '.join(FILTER_KEYS)})")
        if key not in FILTER_KEYS:
            raise RequestError(field_name, f"unknown filter key {key!r} (allowed: {', '.join(FILTER_KEYS)})")
        out.setdefault(key, set()).add(val)
    return out


def _row_of(vocab, key) -> int:
    """The index of one ID in a vocabulary, -1 if unknown: `vocab.lookup([key])[0]` without building a
    pandas Index per call (a request looks up one user and a few items; that construction dominated)."""
    index = getattr(vocab, "_index", None)
    if index is None:
        return int(vocab.lookup([key])[0])
    try:
        r = index.get_loc(key)
    except (KeyError, TypeError, pd.errors.InvalidIndexError):
        return -1
    return int(r) if isinstance(r, (int, np.integer)) else int(vocab.lookup([key])[0])


def _rows_of(vocab, keys) -> np.ndarray:
    return np.fromiter((_row_of(vocab, k) for k in keys), dtype=np.int64, count=len(keys))


def _not_in(values: np.ndarray, sorted_rows: np.ndarray) -> np.ndarray:
    """`~np.isin(values, sorted_rows)` for sorted unique rows, without isin's set-up cost on a few values."""
    if not len(sorted_rows):
        return np.ones(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_rows, values), len(sorted_rows) - 1)
    return sorted_rows[pos] != values


class Engine:
    """A loaded version with its index, item attributes and per-user seen items."""

    def __init__(self, lv: LoadedVersion, idx, seen: sp.csr_matrix | None, genres: list[set]):
        self.lv, self.index, self.seen, self.genres = lv, idx, seen, genres
        self.version = lv.version
        self.n_items = len(lv.items)
        self._genre_masks: dict = {}
        self.popularity_order = np.lexsort((np.arange(self.n_items), -lv.popularity))

    @classmethod
    def load(cls, root: str, version: str | None = None) -> "Engine":
        """Load `version` (default: the published one). Raises on anything missing or corrupt."""
        version = registry.resolve_version(root, version)
        lv = LoadedVersion(root, version)
        d = registry.version_dir(root, version)
        idx = None
        if lv.personalized:
            if fsio.exists(fsio.join(d, "index", "index.json")):
                idx = index_mod.load(fsio.join(d, "index"), lv.item_embeddings)
            else:
                idx = index_mod.BruteForceIndex(lv.item_embeddings)
        seen = None
        if fsio.exists(fsio.join(d, "seen.npz")):
            import io
            seen = sp.load_npz(io.BytesIO(fsio.read_bytes(fsio.join(d, "seen.npz")))).tocsr()
        # one shared frozenset per distinct genre combination: a million per-item sets are a million
        # objects for Python's cyclic garbage collector to walk (seconds-long pauses in the service)
        genres = [_NO_GENRES] * len(lv.items)
        shared: dict = {}
        if fsio.exists(fsio.join(d, "items.parquet")):
            import pyarrow as pa
            import pyarrow.parquet as pq
            feats = pq.read_table(pa.BufferReader(fsio.read_bytes(fsio.join(d, "items.parquet"))),
                                  columns=["item", "genres"]).to_pandas()
            rows = lv.items.lookup(feats["item"].to_numpy(dtype=object))
            for r, g in zip(rows, feats["genres"]):
                if r >= 0 and g is not None:
                    g = frozenset(g)
                    genres[r] = shared.setdefault(g, g)
        return cls(lv, idx, seen, genres)

    # ---- filters -------------------------------------------------------------------------------
    def _genre_mask(self, genre: str) -> np.ndarray:
        if genre not in self._genre_masks:
            self._genre_masks[genre] = np.fromiter((genre in g for g in self.genres), bool, self.n_items)
        return self._genre_masks[genre]

    def _masks(self, include: dict, exclude: dict, blocked_rows: np.ndarray | None):
        allowed = None
        if include:
            allowed = np.zeros(self.n_items, dtype=bool)
            for g in include.get("genre", ()):
                allowed |= self._genre_mask(g)
            items = self.lv.items.lookup(list(include.get("item", ())))
            allowed[items[items >= 0]] = True
        blocked = None
        if exclude or (blocked_rows is not None and len(blocked_rows)):
            blocked = np.zeros(self.n_items, dtype=bool)
            for g in exclude.get("genre", ()):
                blocked |= self._genre_mask(g)
            items = self.lv.items.lookup(list(exclude.get("item", ())))
            blocked[items[items >= 0]] = True
            if blocked_rows is not None:
                blocked[blocked_rows] = True
        return blocked, allowed

    def _seen_rows(self, user_row: int) -> np.ndarray:
        if self.seen is None or user_row < 0 or user_row >= self.seen.shape[0]:
            return np.zeros(0, dtype=np.int64)
        return self.seen.indices[self.seen.indptr[user_row]:self.seen.indptr[user_row + 1]]

    # ---- scoring -------------------------------------------------------------------------------
    def _top(self, vector, source, k, blocked, allowed) -> tuple[np.ndarray, np.ndarray, str]:
        if source == POPULARITY or vector is None:
            ok = np.ones(self.n_items, dtype=bool)
            if blocked is not None:
                ok &= ~blocked
            if allowed is not None:
                ok &= allowed
            order = self.popularity_order[ok[self.popularity_order]][:k]
            return order, self.lv.popularity[order].astype(np.float32), POPULARITY
        ids, scores = index_mod.search_filtered(self.index, self.lv.item_embeddings, vector, k, blocked, allowed)
        return ids, scores, source

    def _select(self, vector, source, k, include: dict, exclude: dict, blocked_rows: np.ndarray | None):
        """`_top(vector, source, k, *_masks(include, exclude, blocked_rows))`, with the same answer, but
        without full-catalog boolean masks when only item rows are blocked (seen items, history, item:
        excludes): the common request then costs one index search instead of several passes over every
        item. Genre filters and includes take the mask path."""
        if include or exclude.get("genre"):
            return self._top(vector, source, k, *self._masks(include, exclude, blocked_rows))
        masked = bool(exclude) or (blocked_rows is not None and len(blocked_rows) > 0)
        parts = [] if blocked_rows is None else [np.asarray(blocked_rows, dtype=np.int64)]
        if exclude.get("item"):
            items = _rows_of(self.lv.items, list(exclude["item"]))
            parts.append(items[items >= 0])
        rows = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
        if source == POPULARITY or vector is None:
            # popularity order minus the blocked rows: the first k survivors lie in the first k + |rows|
            order = self.popularity_order[:k + len(rows)]
            if len(rows):
                order = order[_not_in(order, rows)]
            order = order[:k]
            return order, self.lv.popularity[order].astype(np.float32), POPULARITY
        if not masked:
            ids, scores = index_mod.search_filtered(self.index, self.lv.item_embeddings, vector, k)
            return ids, scores, source
        # index.search_filtered's first over-fetch (k + |blocked| + 16), checked against the few blocked
        # rows; anything else (too few survivors, most of the catalog blocked) goes through it unchanged.
        n = self.n_items
        available = n - len(rows)
        kk = min(k, available)
        if 0 < kk and available > n // 5:
            ids, scores = self.index.search(vector[None], min(n, kk + len(rows) + 16))
            ids, scores = ids[0], scores[0]
            keep = _not_in(ids, rows)
            if keep.sum() >= kk:
                return ids[keep][:kk], scores[keep][:kk], source
        blocked = np.zeros(n, dtype=bool)
        blocked[rows] = True
        ids, scores = index_mod.search_filtered(self.index, self.lv.item_embeddings, vector, k, blocked, None)
        return ids, scores, source

    def _answer(self, ids, scores, source, ignored=()) -> Recommendations:
        return Recommendations([str(x) for x in self.lv.items.ids[ids]], [float(s) for s in scores], source,
                               self.version, list(ignored))

    @staticmethod
    def _check_k(k):
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise RequestError("k", f"{k!r} is out of range: an integer in [1, {MAX_K}]")

    def recommend(self, user_id: str, k: int = 10, exclude_seen: bool = True, include=None, exclude=None,
                  ) -> Recommendations:
        """Top-k for a user ID: their precomputed vector, or popularity if the user is unknown."""
        self._check_k(k)
        inc, exc = parse_filters(include, "include"), parse_filters(exclude, "exclude")
        row = _row_of(self.lv.users, user_id)
        source = PERSONALIZED if (row >= 0 and self.lv.personalized) else POPULARITY
        vector = self.lv.user_embeddings[row] if source == PERSONALIZED else None
        return self._answer(*self._select(vector, source, k, inc, exc, self._seen_rows(row) if exclude_seen else None))

    def recommend_for_history(self, history: list, user_id: str | None = None, k: int = 10,
                              exclude_seen: bool = True, include=None, exclude=None) -> Recommendations:
        """Top-k from a fresh history (item IDs, newest first). Unknown items are ignored and listed."""
        self._check_k(k)
        inc, exc = parse_filters(include, "include"), parse_filters(exclude, "exclude")
        hist_rows = _rows_of(self.lv.items, [str(h) for h in history]) if history else np.zeros(0, np.int64)
        ignored = [str(h) for h, r in zip(history or [], hist_rows) if r < 0]
        known_hist = hist_rows[hist_rows >= 0]
        row = _row_of(self.lv.users, user_id) if user_id is not None else -1
        if not self.lv.personalized:
            vecs, sources = None, np.array([POPULARITY], dtype=object)
        elif len(known_hist):
            vecs, sources = query_vectors(self.lv, np.array([row]), [known_hist])
        else:
            vecs, sources = query_vectors(self.lv, np.array([row]), None)
        seen = np.concatenate([self._seen_rows(row), known_hist]) if exclude_seen else None
        vector = vecs[0] if vecs is not None else None
        return self._answer(*self._select(vector, sources[0], k, inc, exc, seen), ignored=ignored)

    def similar_items(self, item_id: str, k: int = 10, include=None, exclude=None) -> Recommendations:
        """Items whose embeddings score highest against this item's (the item itself excluded)."""
        self._check_k(k)
        inc, exc = parse_filters(include, "include"), parse_filters(exclude, "exclude")
        row = _row_of(self.lv.items, item_id)
        if row < 0:
            raise RequestError("item_id", f"unknown item {item_id!r}", status=404)
        if not self.lv.personalized:
            return self._answer(*self._select(None, POPULARITY, k, inc, exc, np.array([row])))
        return self._answer(*self._select(self.lv.item_embeddings[row], PERSONALIZED, k, inc, exc, np.array([row])))

    def recommend_users(self, user_rows: np.ndarray, k: int, exclude_seen: bool = True):
        """Top-k for many known user rows (the batch job) through the very path `recommend` uses, so
        batch output equals what the service answers. Returns (ids [n, k], -1 padded; scores [n, k])."""
        n = len(user_rows)
        out_ids = np.full((n, k), -1, dtype=np.int64)
        out_scores = np.zeros((n, k), dtype=np.float32)
        for r, u in enumerate(np.asarray(user_rows, dtype=np.int64)):
            source = PERSONALIZED if (u >= 0 and self.lv.personalized) else POPULARITY
            vector = self.lv.user_embeddings[u] if source == PERSONALIZED else None
            ids, scores, _ = self._select(vector, source, k, {}, {}, self._seen_rows(int(u)) if exclude_seen else None)
            out_ids[r, :len(ids)], out_scores[r, :len(ids)] = ids, scores
        return out_ids, out_scores
