"""The recommendation engine: one scoring path for the HTTP service, the batch job and tests.

    engine = Engine.load(root, version)
    engine.recommend("42", k=10)                       # known user: precomputed vector, seen excluded
    engine.recommend_for_history(["1", "50"], k=10)    # fresh history at request time
    engine.similar_items("1", k=10)

Every answer carries the model version, the scores and its `source` (personalized, history or
popularity_fallback).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys import registry, version as version_mod
from recsys.errors import RequestError
from recsys.models.base import HISTORY, PERSONALIZED, POPULARITY
from recsys.retrieval import index as index_mod
from recsys.version import LoadedVersion

FILTER_KEYS = ("genre", "item")
FILTER_PATTERN = rf"^({'|'.join(FILTER_KEYS)}):.+$"   # what a filter looks like (the HTTP schema uses it)
MAX_K = 1000
MASK_CACHE_SIZE = 256      # genre masks kept (least recently used dropped): n_items bytes each
ECHO_IGNORED = 50          # ignored history items echoed back at most, each cut to ECHO_CHARS
ECHO_CHARS = 64
_NO_GENRES = frozenset()


@dataclass
class Recommendations:
    items: list
    scores: list
    source: str
    version: str
    ignored_history: list = field(default_factory=list)

    def as_dict(self) -> dict:
        """The JSON answer of the HTTP service."""
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


def _echo(item_id: str) -> str:
    return item_id if len(item_id) <= ECHO_CHARS else item_id[:ECHO_CHARS] + "..."


def _rows_of(vocab, keys) -> np.ndarray:
    return np.fromiter((_row_of(vocab, k) for k in keys), dtype=np.int64, count=len(keys))


class Engine:
    """A loaded version with its index, item attributes and per-user seen items."""

    def __init__(self, lv: LoadedVersion, idx, seen: sp.csr_matrix | None, genres: list[set],
                 mask_cache_size: int = MASK_CACHE_SIZE):
        self.lv, self.index, self.seen, self.genres = lv, idx, seen, genres
        self.version = lv.version
        self.n_items = len(lv.items)
        # bounded: every distinct filter value would otherwise keep an n_items mask for ever
        self._genre_masks: OrderedDict = OrderedDict()
        self.mask_cache_size = mask_cache_size
        self.genre_values = frozenset().union(*set(genres)) if genres else frozenset()

    @classmethod
    def load(cls, root: str, version: str | None = None, mask_cache_size: int = MASK_CACHE_SIZE) -> "Engine":
        """Load `version` (default: the published one).

        Raises:
            DataError: the version is missing, incomplete or corrupt.
        """
        version = registry.resolve_version(root, version)
        lv = version_mod.load(root, version)
        idx = None
        if lv.personalized:
            idx_dir = version_mod.index_dir(root, version)
            idx = index_mod.load(idx_dir, lv.model.item_embeddings) if index_mod.exists(idx_dir) \
                else index_mod.BruteForceIndex(lv.model.item_embeddings)
        seen = version_mod.load_seen(root, version)
        # one shared frozenset per distinct genre combination: a million per-item sets are a million
        # objects for Python's cyclic garbage collector to walk (seconds-long pauses in the service)
        genres = [_NO_GENRES] * len(lv.items)
        shared: dict = {}
        feats = version_mod.load_item_attributes(root, version, ["item", "genres"])
        if feats is not None:
            rows = lv.items.lookup(feats["item"].to_numpy(dtype=object))
            for r, g in zip(rows, feats["genres"]):
                if r >= 0 and g is not None:
                    g = frozenset(g)
                    genres[r] = shared.setdefault(g, g)
        return cls(lv, idx, seen, genres, mask_cache_size)

    # ---- filters -------------------------------------------------------------------------------
    def _filters(self, values, field_name: str) -> dict:
        """`parse_filters`, and a value the catalog does not have is an error naming it (a typo would
        otherwise answer 200 with an empty list)."""
        out = parse_filters(values, field_name)
        unknown = sorted(out.get("genre", set()) - self.genre_values)
        if unknown:
            known = ", ".join(sorted(self.genre_values)[:12]) + (", ..." if len(self.genre_values) > 12 else "")
            raise RequestError(field_name, f"unknown genre {unknown[0]!r} (the catalog's: {known or 'none'})")
        return out

    def _genre_mask(self, genre: str) -> np.ndarray:
        mask = self._genre_masks.get(genre)
        if mask is None:
            mask = np.fromiter((genre in g for g in self.genres), bool, self.n_items)
            self._genre_masks[genre] = mask
            while len(self._genre_masks) > self.mask_cache_size:
                self._genre_masks.popitem(last=False)
        else:
            self._genre_masks.move_to_end(genre)
        return mask

    def _seen_rows(self, user_row: int) -> np.ndarray:
        if self.seen is None or user_row < 0 or user_row >= self.seen.shape[0]:
            return np.zeros(0, dtype=np.int64)
        return self.seen.indices[self.seen.indptr[user_row]:self.seen.indptr[user_row + 1]]

    # ---- scoring -------------------------------------------------------------------------------
    def _select(self, vector, source, k, include: dict, exclude: dict, blocked_rows: np.ndarray | None):
        """Top-k by the vector (or popularity) with the request's filters. Item rows to skip (seen
        items, the history, `item:` excludes) travel as a sorted array, so the common request costs one
        index search and no pass over the catalog; genre filters and includes become masks."""
        parts = [] if blocked_rows is None else [np.asarray(blocked_rows, dtype=np.int64)]
        if exclude.get("item"):
            items = _rows_of(self.lv.items, list(exclude["item"]))
            parts.append(items[items >= 0])
        rows = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
        blocked = allowed = None
        if include:
            allowed = np.zeros(self.n_items, dtype=bool)
            for g in include.get("genre", ()):
                allowed |= self._genre_mask(g)
            items = self.lv.items.lookup(list(include.get("item", ())))
            allowed[items[items >= 0]] = True
        if exclude.get("genre"):
            blocked = np.zeros(self.n_items, dtype=bool)
            for g in exclude["genre"]:
                blocked |= self._genre_mask(g)
        if source == POPULARITY or vector is None:
            ids, scores = index_mod.popular_filtered(self.lv.popularity, k, blocked, allowed, rows)
            return ids, scores, POPULARITY
        ids, scores = index_mod.search_filtered(self.index, self.lv.model.item_embeddings, vector, k,
                                                blocked, allowed, rows)
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
        inc, exc = self._filters(include, "include"), self._filters(exclude, "exclude")
        row = _row_of(self.lv.users, user_id)
        source = PERSONALIZED if (row >= 0 and self.lv.personalized) else POPULARITY
        vector = self.lv.model.user_embeddings[row] if source == PERSONALIZED else None
        return self._answer(*self._select(vector, source, k, inc, exc, self._seen_rows(row) if exclude_seen else None))

    def recommend_for_history(self, history: list, user_id: str | None = None, k: int = 10,
                              exclude_seen: bool = True, include=None, exclude=None) -> Recommendations:
        """Top-k from a fresh history (item IDs, newest first). Unknown items are ignored and listed."""
        self._check_k(k)
        inc, exc = self._filters(include, "include"), self._filters(exclude, "exclude")
        hist_rows = _rows_of(self.lv.items, [str(h) for h in history]) if history else np.zeros(0, np.int64)
        # echoed back bounded: a request must not get its own megabytes back
        ignored = [_echo(str(h)) for h, r in zip(history or [], hist_rows) if r < 0][:ECHO_IGNORED]
        known_hist = hist_rows[hist_rows >= 0]
        row = _row_of(self.lv.users, user_id) if user_id is not None else -1
        vector, source = self._request_vector(row, known_hist)
        seen = np.concatenate([self._seen_rows(row), known_hist]) if exclude_seen else None
        return self._answer(*self._select(vector, source, k, inc, exc, seen), ignored=ignored)

    def _request_vector(self, row: int, history: np.ndarray):
        """The request-time rule: fresh history -> the model's history vector (two_tower keeps the
        known user's ID and features, mf folds the items in); no history -> the known user's
        precomputed vector; neither -> popularity."""
        if not self.lv.personalized:
            return None, POPULARITY
        if len(history):
            L = max(self.lv.history_length, 1)
            hist = np.full((1, max(L, len(history))), -1, dtype=np.int64)
            hist[0, :len(history)] = history
            return self.lv.model.history_vectors(hist, np.array([row], dtype=np.int64))[0], HISTORY
        if row >= 0:
            return self.lv.model.user_embeddings[row], PERSONALIZED
        return None, POPULARITY

    def similar_items(self, item_id: str, k: int = 10, include=None, exclude=None) -> Recommendations:
        """Items whose embeddings score highest against this item's (the item itself excluded)."""
        self._check_k(k)
        inc, exc = self._filters(include, "include"), self._filters(exclude, "exclude")
        row = _row_of(self.lv.items, item_id)
        if row < 0:
            raise RequestError("item_id", f"unknown item {item_id!r}", status=404)
        if not self.lv.personalized:
            return self._answer(*self._select(None, POPULARITY, k, inc, exc, np.array([row])))
        return self._answer(*self._select(self.lv.model.item_embeddings[row], PERSONALIZED, k, inc, exc, np.array([row])))

    def recommend_users(self, user_rows: np.ndarray, k: int, exclude_seen: bool = True):
        """Top-k for many known user rows (the batch job) through the very path `recommend` uses, so
        batch output equals what the service answers. Returns (ids [n, k], -1 padded; scores [n, k])."""
        n = len(user_rows)
        out_ids = np.full((n, k), -1, dtype=np.int64)
        out_scores = np.zeros((n, k), dtype=np.float32)
        for r, u in enumerate(np.asarray(user_rows, dtype=np.int64)):
            source = PERSONALIZED if (u >= 0 and self.lv.personalized) else POPULARITY
            vector = self.lv.model.user_embeddings[u] if source == PERSONALIZED else None
            ids, scores, _ = self._select(vector, source, k, {}, {}, self._seen_rows(int(u)) if exclude_seen else None)
            out_ids[r, :len(ids)], out_scores[r, :len(ids)] = ids, scores
        return out_ids, out_scores
