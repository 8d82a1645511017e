"""Rules a model must beat, as models: what a practitioner tries before a recommender.

- `attribute_popularity` ("popular in the user's categories"): each user's share of interactions per
  value of one catalog attribute (`model.rule_attribute`, e.g. category; "": each categorical column is
  tried and the best on validation kept), times each item's popularity
  within its value. Written as vectors so the index, the scorer, batch and the service rank it like any
  model: item vector = [popularity within each of its values ..., global popularity share], user
  vector = [the user's share of each value ..., FALLBACK]. The dot product is share(value of the item) x
  popularity within that value (the shape of a shop's taste: which categories, then what sells there),
  plus a FALLBACK x global share term that ranks the rest of the catalog by popularity, after them.
  A user with no history gets the popularity order.

- `repeat` ("buy again"): the user's own items first, by how often they had them and then how recently,
  then popularity (`own_items`, which `recsys.ranking.put_first` places ahead of the popularity order).
  Meaningful only where users' own items stay recommendable (`exclusion: none`, or `bought` for viewed
  items); with `exclusion: seen` it is popularity.

A rule has no training (`fit` counts), no weights to warm-start from and no epochs; `rule = True` tells
the gate and the report which candidates are rules.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys.errors import DataError
from recsys.models.base import FitReport, Model
from recsys.models.popularity import fit_popularity

# weight of the global-popularity dimension: small, so the items of the user's values rank before the
# rest except where a value the user barely touched holds an item almost nobody had (share x
# within-value share below 1e-4 x global share); then popularity decides, which is what it should
FALLBACK = 1e-4
# at most this many distinct values get a dimension of their own (the rest share one): vectors stay small
MAX_VALUES = 256
# users whose vectors are computed at once (a block's dense counts: USER_BLOCK x MAX_VALUES float64)
USER_BLOCK = 65536


def attribute_values(item_table, n_items: int, attribute: str) -> tuple[list, list]:
    """Per item index, the codes of its values of `attribute` (a list), and the value names.

    Args:
        item_table: items.parquet as a frame (`item_idx` and the attribute columns), or None.
        n_items: the item vocabulary size.
        attribute: a categorical or multi-valued column ("" picks genres when present, else the first
            categorical attribute).
    Raises:
        DataError: the catalog has no such column.
    """
    if item_table is None:
        raise DataError(f"model.rule_attribute={attribute!r}: the dataset has no catalog "
                        "(attribute_popularity needs source.items_path with a categorical column)")
    kinds = item_table.attrs.get("kinds", {})
    if not attribute:
        has_genres = "genres" in item_table and any(len(g) for g in item_table["genres"])
        attribute = "genres" if has_genres else next(
            (c for c, k in kinds.items() if k in ("categorical", "multi")), "")
    if attribute not in item_table.columns:
        choices = [c for c, k in kinds.items() if k in ("categorical", "multi")]
        raise DataError(f"model.rule_attribute={attribute!r} is invalid: the catalog's categorical columns are "
                        f"{', '.join(choices) or 'none'}")
    per_item: list = [[] for _ in range(n_items)]
    raw = item_table[attribute].tolist()
    rows = item_table["item_idx"].to_numpy()
    names: dict = {}
    for r, v in zip(rows, raw):
        if r < 0 or r >= n_items or v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        values = [v] if isinstance(v, str) else list(v)
        per_item[r] = [names.setdefault(str(x), len(names)) for x in values if str(x) != ""]
    return per_item, list(names)


# at most this many catalog columns are tried for the rule when model.rule_attribute is "" (auto)
MAX_CANDIDATES = 6


def candidate_attributes(item_table) -> list:
    """The catalog columns the rule can count taste in: genres when items have them, then the
    categorical and multi-valued attributes with 2 or more values, fewest values first."""
    if item_table is None:
        return []
    out = []
    if "genres" in item_table and any(len(g) for g in item_table["genres"]):
        out.append("genres")
    kinds = item_table.attrs.get("kinds", {})
    spans = {}
    for col, kind in kinds.items():
        if kind in ("categorical", "multi") and col in item_table and col != "genres":
            values = item_table[col].explode() if kind == "multi" else item_table[col]
            spans[col] = values.nunique()
    out += sorted((c for c, n in spans.items() if n >= 2), key=lambda c: (spans[c], c))
    return out[:MAX_CANDIDATES]


class AttributePopularity(Model):
    """Popular in the user's values of a catalog attribute (see the module docstring)."""

    name = "attribute_popularity"
    rule = True

    def __init__(self, config=None):
        super().__init__(config)
        self._user_values: sp.csr_matrix | None = None   # fitted: users x value dims, weighted counts
        self.attribute = ""

    def fit(self, ts, ks=(10, 20, 50), previous=None, progress=print, stop_after=None, max_seconds=None,
            validate=None, refit_ratio=None) -> FitReport:
        """Count interactions per item, per value, and per user and value (see `Model.fit`)."""
        import time
        t0 = time.time()
        self.user_ids, self.item_ids = ts.user_ids, ts.item_ids
        self.popularity = fit_popularity(ts, self.config.popularity_window_days)
        table = getattr(ts, "item_table", None)
        candidates = [self.config.rule_attribute] if self.config.rule_attribute else candidate_attributes(table)
        if not candidates:
            candidates = [""]   # attribute_values names what the catalog lacks
        val = ts.evals.get("validation") if validate is not None and len(candidates) > 1 else None
        if val is not None:
            # the sample the embedding models' early stopping scores (model.eval_users, same seed): every
            # validation user x the whole catalog per candidate made this rule 4 minutes at 10M events
            val = val.at_most(self.config.eval_users, self.config.seed)
        key = f"recall@{self.config.eval_k}"
        tried = []
        for attribute in candidates:
            self._fit_attribute(ts, table, attribute)
            score = validate(self, val, sorted(set(ks) | {self.config.eval_k}), ts.item_counts)[key] \
                if val is not None else None
            tried.append({"attribute": attribute, f"val_{key}": score})
            if val is None:
                break
        best = max(tried, key=lambda t: t[f"val_{key}"]) if val is not None else tried[0]
        if best is not tried[-1]:
            self._fit_attribute(ts, table, best["attribute"])
        self.attribute = best["attribute"]
        self.report = FitReport(seconds=time.time() - t0, chosen={"attribute": self.attribute, "tried": tried})
        progress(f"{self.name}: popular in the user's {self.attribute} values"
                 + (" (chosen on validation: " + ", ".join(f"{t['attribute']} {t[f'val_{key}']:.4f}" for t in tried) + ")"
                    if len(tried) > 1 else "") + f" in {self.report.seconds:.1f}s")
        return self.report

    def chosen_config(self) -> dict:
        """The attribute chosen on validation (see `Model.chosen_config`)."""
        return {"rule_attribute": self.attribute} if self.attribute else {}

    def _fit_attribute(self, ts, table, attribute: str) -> None:
        """Item vectors and per-user value counts for one attribute (see the module docstring)."""
        per_item, names = attribute_values(table, ts.n_items, attribute)
        # the most frequent values by interactions get a dimension each; the rest share the last one
        counts = self.popularity.counts
        value_rows = np.repeat(np.arange(ts.n_items), [len(v) for v in per_item])
        value_cols = np.fromiter((c for v in per_item for c in v), dtype=np.int64, count=len(value_rows))
        by_value = np.bincount(value_cols, weights=counts[value_rows], minlength=len(names))
        top = np.argsort(-by_value, kind="stable")[:MAX_VALUES - 1]
        dim_of = np.full(len(names), min(len(top), MAX_VALUES - 1), dtype=np.int64)
        dim_of[top] = np.arange(len(top))
        n_dims = min(len(names), MAX_VALUES)
        item_values = sp.csr_matrix((np.ones(len(value_rows)), (value_rows, dim_of[value_cols])),
                                    shape=(ts.n_items, n_dims))
        item_values.data[:] = 1.0                     # an item counts once per dimension
        item_values = sp.diags(1.0 / np.maximum(item_values.sum(1).A1, 1)) @ item_values   # multi: split
        within = np.asarray(item_values.multiply(counts[:, None]).sum(0)).ravel()
        emb = np.zeros((ts.n_items, n_dims + 1), dtype=np.float32)
        emb[:, :n_dims] = item_values.multiply(counts[:, None]).multiply(1.0 / np.maximum(within, 1)[None, :]).toarray()
        emb[:, n_dims] = counts / max(counts.sum(), 1)
        self.item_embeddings = emb
        self._user_values = sp.csr_matrix((ts.weight.astype(np.float64), (ts.user_idx, ts.item_idx)),
                                          shape=(ts.n_users, ts.n_items)) @ sp.csr_matrix((emb[:, :n_dims] > 0).astype(np.float64))
        self.attribute = attribute

    @staticmethod
    def _vectors(value_counts: np.ndarray) -> np.ndarray:
        """User vectors from per-value counts: the shares, then the fallback weight."""
        totals = value_counts.sum(1, keepdims=True)
        shares = np.divide(value_counts, totals, out=np.zeros_like(value_counts), where=totals > 0)
        return np.hstack([shares, np.full((len(shares), 1), FALLBACK)]).astype(np.float32)

    def user_vectors(self, user_idx: np.ndarray, history: np.ndarray) -> np.ndarray:
        """Known users: from every training interaction (fitted) or the stored vectors (loaded)."""
        user_idx = np.asarray(user_idx, dtype=np.int64)
        if self._user_values is None:
            return np.asarray(self.user_embeddings[user_idx], dtype=np.float32)
        # in blocks: the dense float64 counts of every user at once were the 50M-event nightly's peak
        # (3.25M users x 257 values, 23.4 GB in the step that saves the rule)
        out = np.empty((len(user_idx), self._user_values.shape[1] + 1), dtype=np.float32)
        for s in range(0, len(user_idx), USER_BLOCK):
            out[s:s + USER_BLOCK] = self._vectors(self._user_values[user_idx[s:s + USER_BLOCK]].toarray())
        return out

    def history_vectors(self, history: np.ndarray, user_idx: np.ndarray | None = None) -> np.ndarray:
        """From the values of the history's items (-1 pads); an empty history ranks by popularity."""
        history = np.asarray(history)
        rows, cols = np.nonzero(history >= 0)
        # only the history's items are read: a request costs its length, not the catalog's size
        marks = (np.asarray(self.item_embeddings[history[rows, cols], :-1]) > 0).astype(np.float64)
        counts = np.zeros((len(history), self.item_embeddings.shape[1] - 1))
        np.add.at(counts, rows, marks)
        return self._vectors(counts)

    def load_state(self, user_ids, item_ids, item_embeddings, user_embeddings, query_model, history_length):
        """See `Model.load_state`: the saved item and user vectors are the whole rule."""
        super().load_state(user_ids, item_ids, item_embeddings, user_embeddings, query_model, history_length)
        self._user_values = None


def _own_scores(users: np.ndarray, items: np.ndarray, weights: np.ndarray, order: np.ndarray, n_users: int,
                n_items: int) -> sp.csr_matrix:
    """users x items: the summed weight of each (user, item) plus a recency fraction below 1 (the later
    its last interaction among the user's, the larger), so frequency decides first, then recency."""
    m = sp.csr_matrix((weights.astype(np.float64), (users, items)), shape=(n_users, n_items))
    m.sum_duplicates()
    # the latest position of each pair (COO keeps duplicates; CSR would sum them): their maximum
    last = sp.coo_matrix((order.astype(np.float64) + 1, (users, items)), shape=(n_users, n_items))
    latest = sp.csr_matrix((n_users, n_items))
    if last.nnz:
        frame = np.lexsort((last.data, last.col, last.row))
        r, c, d = last.row[frame], last.col[frame], last.data[frame]
        end = np.r_[(r[1:] != r[:-1]) | (c[1:] != c[:-1]), True]
        latest = sp.csr_matrix((d[end], (r[end], c[end])), shape=(n_users, n_items))
    top = np.maximum(np.asarray(latest.max(1).toarray()).ravel(), 1)
    recency = sp.diags(1.0 / (top + 1)) @ latest          # in (0, 1)
    out = (m + recency).tocsr()
    out.eliminate_zeros()
    return out


class Repeat(Model):
    """Buy again: the user's own items first (frequency, then recency), then popularity."""

    name = "repeat"
    rule = True
    personalized = False

    def __init__(self, config=None):
        super().__init__(config)
        self.own: sp.csr_matrix | None = None     # users x items: frequency + recency fraction

    def fit(self, ts, ks=(10, 20, 50), previous=None, progress=print, stop_after=None, max_seconds=None,
            validate=None, refit_ratio=None) -> FitReport:
        """Count each user's interactions per item (see `Model.fit`)."""
        self.user_ids, self.item_ids = ts.user_ids, ts.item_ids
        self.popularity = fit_popularity(ts, self.config.popularity_window_days)
        order = np.arange(len(ts.user_idx))   # rows are in time order per user (TrainSet)
        self.own = _own_scores(ts.user_idx, ts.item_idx, ts.weight, order, ts.n_users, ts.n_items)
        self.report = FitReport()
        return self.report

    def own_items(self, user_idx: np.ndarray, history: np.ndarray, fresh: bool = False) -> sp.csr_matrix:
        """Known users: their own items (plus the history's when it is `fresh`, given at request time);
        unknown ones: the history's items (the rule `recsys.ranking.query_source` applies to vectors)."""
        user_idx = np.asarray(user_idx, dtype=np.int64)
        n_items = len(self.item_ids)
        known = np.where(user_idx >= 0, user_idx, 0)
        base = self.own[known] if self.own is not None else sp.csr_matrix((len(user_idx), n_items))
        base = sp.diags((user_idx >= 0).astype(np.float64)) @ base
        history = np.asarray(history)
        if not fresh and history.size:
            history = np.where((user_idx >= 0)[:, None], -1, history)   # a known user's history is in `own`
        if history.size:
            rows, cols = np.nonzero(history >= 0)
            # newest first in a history: position 0 is the most recent
            recent = (history.shape[1] - cols).astype(np.float64)
            given = _own_scores(rows, history[rows, cols], np.ones(len(rows)), recent, len(user_idx), n_items)
            base = base + given
        return sp.csr_matrix(base)
