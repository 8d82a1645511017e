"""The recommendation engine: one scoring path for the HTTP service, the batch job and tests.

    engine = Engine.load(root, version)
    engine.recommend("42", k=10)                       # known user: precomputed vector, seen excluded
    engine.recommend_for_history(["1", "50"], k=10)    # fresh history at request time
    engine.similar_items("1", k=10)

Every answer carries the model version, the scores and its `source` (personalized, history,
popularity_fallback, or popularity: the answer of a model that is not personalized, not a fallback).
"""
from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys import ranking, registry, version as version_mod
from recsys.errors import RequestError
from recsys.retrieval import index as index_mod
from recsys.schema import ITEM_FIXED_COLUMNS
from recsys.version import LoadedVersion

# what a filter looks like (the HTTP schema uses it): an attribute of the catalog, then `:value`, or a
# comparison with a number for a numeric attribute
FILTER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(:|<=|>=|<|>).+$"
_NUMERIC_OPS = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}
MAX_K = 1000
MASK_CACHE_SIZE = 256      # filter-value masks kept (least recently used dropped): n_items bytes each
ECHO_IGNORED = 50          # ignored history items echoed back at most, each cut to ECHO_CHARS
ECHO_CHARS = 64
_NO_GENRES = frozenset()
_NO_ROWS = np.zeros(0, dtype=np.int64)
_NO_HISTORY = np.zeros((1, 0), dtype=np.int64)
_SOURCE_ROWS = {s: np.array([s], dtype=object) for s in (ranking.PERSONALIZED, ranking.HISTORY, ranking.POPULARITY,
                                                           ranking.MODEL_POPULARITY)}
_POPULAR, _PERSONAL = _SOURCE_ROWS[ranking.POPULARITY], _SOURCE_ROWS[ranking.PERSONALIZED]


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


_FILTER_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(<=|>=|<|>|:)(.+)$", re.S)


def parse_filters(values, field_name: str) -> list:
    """["genre:Drama", "item:123", "price<=50"] -> [(key, op, value), ...]; syntax only (the engine checks
    keys and values against its catalog)."""
    out = []
    for v in values or []:
        m = _FILTER_RE.match(str(v))
        if not m:
            raise RequestError(field_name, f"{v!r} is not key:value or key<=number (e.g. genre:Drama, price<=50)")
        out.append(m.groups())
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


def _number(field_name: str, key: str, op: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise RequestError(field_name, f"{key}{op}{value!r}: {value!r} is not a number") from None


def _date_seconds(field_name: str, key: str, op: str, value: str) -> float:
    """A date filter's value as epoch seconds, read by the parser the catalog's dates went through
    (ISO 8601: 2024-10-01, 2024-10-01T12:00:00+02:00; naive is UTC)."""
    from recsys.data.metadata import date_seconds
    seconds = float(date_seconds([value])[0])
    if np.isnan(seconds):                 # "NaT", "nan", "last week": a filter on it would match nothing
        raise RequestError(field_name, f"{key}{op}{value!r}: {value!r} is not a date (ISO 8601, e.g. "
                                       "2024-10-01)")
    return seconds


class Engine:
    """A loaded version with its index, item attributes and per-user seen items."""

    def __init__(self, lv: LoadedVersion, idx, seen: sp.csr_matrix | None, categorical: dict | None = None,
                 numeric: dict | None = None, mask_cache_size: int = MASK_CACHE_SIZE, dates=(),
                 max_age_days: dict | None = None):
        """`categorical`: filter key (genre, category, ...) -> a frozenset of values per item row;
        `numeric`: filter key -> float array over item rows (NaN: unknown); `dates`: the numeric keys
        that are dates (epoch seconds; filters compare with a date); `max_age_days`: date key -> days,
        items older than that (or without the date) are never answered."""
        self.lv, self.index, self.seen = lv, idx, seen
        # the version's exclusion rule: `seen` also leaves out the items of a fresh history; with bought
        # or none a viewed item stays rankable (seen.npz already holds what the rule excludes)
        self.exclusion = version_mod.exclusion(lv.manifest)
        # the stored user vectors as a plain array view: indexing a memmap costs ~7 us a request
        self._stored = None if lv.model.user_embeddings is None else np.asarray(lv.model.user_embeddings)
        self.version = lv.version
        self.n_items = len(lv.items)
        self.categorical = {"genre": [_NO_GENRES] * self.n_items, **(categorical or {})}
        self.numeric = numeric or {}
        self.dates = frozenset(dates)
        self.max_age_days = dict(max_age_days or {})
        self.values = {name: frozenset().union(*set(rows)) if rows else frozenset()
                       for name, rows in self.categorical.items()}
        # bounded: every distinct filter value would otherwise keep an n_items mask for ever
        self._masks: OrderedDict = OrderedDict()
        self.mask_cache_size = mask_cache_size

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
            idx = version_mod.load_index(root, version, lv.model.item_embeddings) \
                if version_mod.has_index(root, version) else index_mod.exact(lv.model.item_embeddings)
        seen = version_mod.load_seen(root, version)
        # one shared frozenset per distinct genre combination: a million per-item sets are a million
        # objects for Python's cyclic garbage collector to walk (seconds-long pauses in the service)
        shared: dict = {}
        categorical, numeric, dates, max_age = {}, {}, [], {}
        fixed = [c for c in ITEM_FIXED_COLUMNS if c != "genres"]   # every other column is a filter key
        feats = version_mod.load_item_attributes(root, version, None, exclude=[c for c in fixed if c != "item"])
        if feats is not None:
            rows = lv.items.lookup(feats["item"].to_numpy(dtype=object))
            ok = rows >= 0
            kinds = feats.attrs.get("kinds", {})
            dates = [c for c, kind in kinds.items() if kind == "date"]
            max_age = {c: d for c, d in feats.attrs.get("max_age_days", {}).items() if c in dates}
            for col in feats.columns:
                if col in fixed or kinds.get(col) == "text":   # free text feeds the model, not filters
                    continue
                values = feats[col]
                if pd.api.types.is_numeric_dtype(values):
                    arr = np.full(len(lv.items), np.nan)
                    arr[rows[ok]] = values.to_numpy(np.float64)[ok]
                    numeric[col] = arr
                    continue
                per_item = [_NO_GENRES] * len(lv.items)
                for r, v in zip(rows, values):
                    if r < 0 or v is None or (isinstance(v, float) and np.isnan(v)):
                        continue
                    v = frozenset([v] if isinstance(v, str) else v)
                    per_item[r] = shared.setdefault(v, v)
                categorical["genre" if col == "genres" else col] = per_item
        return cls(lv, idx, seen, categorical, numeric, mask_cache_size, dates, max_age)

    # ---- filters -------------------------------------------------------------------------------
    def _filters(self, values, field_name: str) -> dict:
        """The request's filters checked against the catalog: {"item": {ids}, attribute: {values},
        ("range", attribute): [(op, number)]}. An unknown attribute or value is an error naming it
        (a typo would otherwise answer 200 with an empty list)."""
        out: dict = {}
        for key, op, value in parse_filters(values, field_name):
            if key in self.numeric and op != ":":
                number = _date_seconds(field_name, key, op, value) if key in self.dates else _number(
                    field_name, key, op, value)
                out.setdefault(("range", key), []).append((op, number))
            elif op != ":":
                raise RequestError(field_name, f"{key!r} is not a numeric attribute "
                                               f"(numeric: {', '.join(sorted(self.numeric)) or 'none'})")
            elif key == "item" or key in self.categorical:
                if key != "item" and value not in self.values[key]:
                    known = sorted(self.values[key])
                    shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
                    raise RequestError(field_name, f"unknown {key} {value!r} (the catalog's: {shown or 'none'})")
                out.setdefault(key, set()).add(value)
            else:
                keys = ["item", *sorted(self.categorical), *sorted(f"{n}<=" for n in self.numeric)]
                raise RequestError(field_name, f"unknown filter key {key!r} (allowed: {', '.join(keys)})")
        return out

    def _value_mask(self, attribute: str, value: str) -> np.ndarray:
        """Items whose `attribute` has `value` (kept in a bounded LRU cache)."""
        key = (attribute, value)
        mask = self._masks.get(key)
        if mask is None:
            mask = np.fromiter((value in g for g in self.categorical[attribute]), bool, self.n_items)
            self._masks[key] = mask
            while len(self._masks) > self.mask_cache_size:
                self._masks.popitem(last=False)
        else:
            self._masks.move_to_end(key)
        return mask

    def _condition(self, key, values) -> np.ndarray:
        """Items matching one key's conditions (OR within a key; ranges of one attribute AND)."""
        if isinstance(key, tuple):
            col = self.numeric[key[1]]
            mask = np.ones(self.n_items, dtype=bool)
            for op, number in values:
                mask &= _NUMERIC_OPS[op](col, number)   # NaN (unknown) never matches
            return mask
        mask = np.zeros(self.n_items, dtype=bool)
        if key == "item":
            rows = self.lv.items.lookup(list(values))
            mask[rows[rows >= 0]] = True
            return mask
        for v in values:
            mask |= self._value_mask(key, v)
        return mask

    def _unknown(self, key) -> np.ndarray:
        """Items without a value of the attribute a condition reads (no catalog row, an empty value,
        NaN): an exclude blocks them too, so a filter fails closed (an uncatalogued sport item is not let
        through `exclude=section:sport`). Includes never match them anyway."""
        attribute = key[1] if isinstance(key, tuple) else key
        cache_key = ("unknown", attribute)
        mask = self._masks.get(cache_key)
        if mask is None:
            if isinstance(key, tuple):
                mask = np.isnan(np.asarray(self.numeric[attribute], dtype=np.float64))
            else:
                mask = np.fromiter((not g for g in self.categorical[attribute]), bool, self.n_items)
            self._masks[cache_key] = mask
            while len(self._masks) > self.mask_cache_size:
                self._masks.popitem(last=False)
        return mask

    def _recent(self) -> np.ndarray | None:
        """Items young enough for every date attribute's max_age_days (None: no limit). An item without
        the date is left out (fail closed, as filters are). Recomputed once a minute."""
        if not self.max_age_days:
            return None
        minute = int(time.time() // 60)
        cache_key = ("recent", minute)
        mask = self._masks.get(cache_key)
        if mask is None:
            now = minute * 60.0
            mask = np.ones(self.n_items, dtype=bool)
            for attribute, days in self.max_age_days.items():
                mask &= np.asarray(self.numeric[attribute], dtype=np.float64) >= now - days * 86400.0
            for old in [k for k in self._masks if isinstance(k, tuple) and k[0] == "recent"]:
                del self._masks[old]
            self._masks[cache_key] = mask
        return mask

    def _seen_rows(self, user_row: int) -> np.ndarray:
        if self.seen is None or user_row < 0 or user_row >= self.seen.shape[0]:
            return np.zeros(0, dtype=np.int64)
        return self.seen.indices[self.seen.indptr[user_row]:self.seen.indptr[user_row + 1]]

    # ---- scoring -------------------------------------------------------------------------------
    def _select(self, vectors, sources, k, include: dict, exclude: dict, blocked_rows: np.ndarray | None,
                first=None):
        """Top-k by the query vector (or popularity) with the request's filters, by `ranking.rank_rows`.
        Item rows to skip (seen items, the history, `item:` excludes) travel as a sorted array, so the
        common request costs one index search and no pass over the catalog; attribute filters and
        includes become masks."""
        parts = [] if blocked_rows is None else [np.asarray(blocked_rows, dtype=np.int64)]
        if exclude.get("item"):
            items = _rows_of(self.lv.items, list(exclude["item"]))
            parts.append(items[items >= 0])
        rows = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
        blocked = allowed = None
        for key, values in include.items():        # AND across keys
            cond = self._condition(key, values)
            allowed = cond if allowed is None else allowed & cond
        recent = self._recent()
        if recent is not None:
            allowed = recent if allowed is None else allowed & recent
        for key, values in exclude.items():        # any match is out, and any item the attribute is unknown for
            if key == "item":
                continue                           # already in `rows`
            cond = self._condition(key, values) | self._unknown(key)
            blocked = cond if blocked is None else blocked | cond
        ids, scores = ranking.rank_rows(self.index, vectors, sources, self.lv.popularity, k, rows, blocked, allowed,
                                        first)
        listed = ids[0] >= 0
        return ids[0][listed], scores[0][listed], sources[0]

    def _answer(self, ids, scores, source, ignored=()) -> Recommendations:
        return Recommendations([str(x) for x in self.lv.items.ids[ids]], [float(s) for s in scores], source,
                               self.version, list(ignored))

    @staticmethod
    def _check_k(k):
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise RequestError("k", f"{k!r} is out of range: an integer in [1, {MAX_K}]")

    def _query(self, row: int, history: np.ndarray):
        """The query vector and source of one request (`ranking.query_vector`: a fresh history -> the
        model's history vector; else the known user's stored vector; else popularity), as rows."""
        hist = np.full(max(self.lv.history_length, 1, len(history)), -1, dtype=np.int64)
        hist[:len(history)] = history
        vector, source = ranking.query_vector(self.lv.model, row, hist, len(history) > 0, self._stored)
        return (None if vector is None else vector[None]), _SOURCE_ROWS[source]

    def recommend(self, user_id: str, k: int = 10, exclude_seen: bool = True, include=None, exclude=None,
                  ) -> Recommendations:
        """Top-k for a user ID: their precomputed vector, or popularity if the user is unknown."""
        self._check_k(k)
        inc, exc = self._filters(include, "include"), self._filters(exclude, "exclude")
        row = _row_of(self.lv.users, user_id)
        vectors, sources = self._query(row, _NO_ROWS)
        first = self.lv.model.own_items(np.array([row]), _NO_HISTORY)
        return self._answer(*self._select(vectors, sources, k, inc, exc, self._seen_rows(row) if exclude_seen else None,
                                          first))

    def recommend_for_history(self, history: list, user_id: str | None = None, k: int = 10,
                              exclude_seen: bool = True, include=None, exclude=None) -> Recommendations:
        """Top-k from a fresh history (item IDs, newest first). Unknown items are ignored and listed."""
        self._check_k(k)
        inc, exc = self._filters(include, "include"), self._filters(exclude, "exclude")
        hist_rows = _rows_of(self.lv.items, [str(h) for h in history]) if history else _NO_ROWS
        # echoed back bounded: a request must not get its own megabytes back
        ignored = [_echo(str(h)) for h, r in zip(history or [], hist_rows) if r < 0][:ECHO_IGNORED]
        known_hist = hist_rows[hist_rows >= 0]
        row = _row_of(self.lv.users, user_id) if user_id is not None else -1
        vectors, sources = self._query(row, known_hist)
        seen = None if not exclude_seen else self._seen_rows(row) if self.exclusion != "seen" else \
            np.concatenate([self._seen_rows(row), known_hist])
        first = self.lv.model.own_items(np.array([row]), known_hist[None], fresh=True)
        return self._answer(*self._select(vectors, sources, k, inc, exc, seen, first), ignored=ignored)

    def similar_items(self, item_id: str, k: int = 10, include=None, exclude=None) -> Recommendations:
        """Items whose embeddings score highest against this item's (the item itself excluded)."""
        self._check_k(k)
        inc, exc = self._filters(include, "include"), self._filters(exclude, "exclude")
        row = _row_of(self.lv.items, item_id)
        if row < 0:
            raise RequestError("item_id", f"unknown item {item_id!r}", status=404)
        if not self.lv.personalized:
            return self._answer(*self._select(None, _POPULAR, k, inc, exc, np.array([row])))
        vector = self.lv.model.item_embeddings[row][None]
        return self._answer(*self._select(vector, _PERSONAL, k, inc, exc, np.array([row])))

    def recommend_users(self, user_rows: np.ndarray, k: int, exclude_seen: bool = True):
        """Top-k for many user rows (the batch job; -1 = unknown user): what `recommend` answers for
        each, ranked as a block by `ranking.rank_rows` (batched index searches, popularity ranked once).
        Returns (ids [n, k], -1 padded; scores [n, k])."""
        rows = np.asarray(user_rows, dtype=np.int64)
        n = len(rows)
        if self.seen is not None and exclude_seen:
            in_seen = (rows >= 0) & (rows < self.seen.shape[0])
            blocked = self.seen[np.where(in_seen, rows, 0)]
            blocked = blocked.multiply(in_seen[:, None]).tocsr()   # rows outside seen: nothing blocked
            blocked.eliminate_zeros()
        else:
            blocked = sp.csr_matrix((n, self.n_items), dtype=np.int8)
        vectors, sources = ranking.query_vectors(self.lv.model, rows, np.full((n, 1), -1, dtype=np.int64),
                                                 stored=self._stored)
        # a date attribute's max_age_days: every row ranks against the young items only (the one-row path)
        ids, scores = ranking.rank_rows(self.index, vectors, sources, self.lv.popularity, k, blocked,
                                        allowed=self._recent(),
                                        first=self.lv.model.own_items(rows, np.full((n, 1), -1)))
        if ids.shape[1] < k:   # a catalog smaller than k
            ids = np.pad(ids, ((0, 0), (0, k - ids.shape[1])), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, k - scores.shape[1])))
        return ids, scores
