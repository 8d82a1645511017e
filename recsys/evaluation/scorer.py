"""The one offline scorer: how a model ranks the catalog for held-out users.

Used by validation during training (early stopping) and by `recsys evaluate` / `recsys compare` /
the nightly gate on saved versions, so the epoch training picks is chosen by the rule that is
reported. The rule, per evaluated user, with the history known at the split's cut:
- a user the model knows: `model.user_vectors(user, history)`                 -> "personalized";
- a user it does not know, with a history of items it knows: `history_vectors` -> "history";
- anyone else: popularity -> "popularity_fallback";
- every user of a model that is not personalized (popularity, repeat): its own ranking -> "popularity".

The model and the dataset need not share vocabularies (the nightly gate scores yesterday's
production version on today's split): users and items are matched by ID string, and catalog items
the model does not know can still be relevant and simply count as misses.

It needs no model class: a model is anything with the attributes of `recsys.models.base.Model`. The
ranking itself (query vectors, popularity rows, exclusions, ties) is `recsys.ranking`'s, as it is for
batch recommendations and the service.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys import ranking
from recsys.data.trainset import csr_from_pairs
from recsys.evaluation import metrics
from recsys.progress import Progress
from recsys.retrieval import index as index_mod

# rows ranked per block: the unit of progress on a long evaluation
BLOCK_ROWS = 16384


def rank(model, user_idx: np.ndarray, history: np.ndarray, exclude: sp.csr_matrix, k: int,
         catalog_cols: np.ndarray | None = None, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's top-k catalog columns, its excluded items skipped, and the source of every row:
    `recsys.ranking.query_vectors` and `rank_rows` against an exact index of the model's items
    (`recsys.retrieval.index.exact`: sparse for a rule's vectors, brute force for a model's).

    Args:
        model: a fitted or loaded model.
        user_idx: [n] the model's user index per row, -1 for users it does not know.
        history: [n, L] the model's item indices, newest first, -1 padded.
        exclude: [rows, n_catalog] items each row must not be recommended.
        k: list length.
        catalog_cols: the model's item index of each catalog column (-1: unknown to the model; such
            columns are never recommended). None: the catalog is the model's own item list.
        progress: receives a users/s and ETA line every 30 s (None: quiet).
    Returns:
        (top-k column indices [rows, k], best first, -1 padded; sources [rows]).
    """
    n_model = len(model.popularity.counts)
    vecs, sources = ranking.query_vectors(model, user_idx, history)
    if catalog_cols is not None:   # ranked in the model's item space, answered in the catalog's
        exclude, to_catalog = in_model_items(exclude, catalog_cols, n_model)
    searcher = index_mod.exact(model.item_embeddings) if vecs is not None else None
    first = model.own_items(user_idx, history)   # "buy again": the rows' own items ahead (None: none)
    k = min(k, n_model if catalog_cols is None else len(catalog_cols))
    out = np.full((len(sources), k), -1, dtype=np.int64)
    meter = Progress("evaluate", len(sources), "users", progress) if progress else None
    for start in range(0, len(sources), BLOCK_ROWS):
        part = slice(start, start + BLOCK_ROWS)
        ids, _ = ranking.rank_rows(searcher, None if vecs is None else vecs[part], sources[part],
                                   model.popularity, k, exclude[part], first=None if first is None else first[part])
        out[part, :ids.shape[1]] = ids
        if meter:
            meter.advance(len(ids))
    if catalog_cols is not None:
        out = np.where(out >= 0, to_catalog[np.maximum(out, 0)], -1)
    return out, sources


def in_model_items(exclude: sp.csr_matrix, catalog_cols: np.ndarray, n_model_items: int):
    """Exclusions over catalog columns moved into a model's item space (catalog items the model does
    not know are dropped: it cannot return them), and the catalog column of each model item (-1: not
    in the catalog) to map its answers back."""
    known = np.flatnonzero(catalog_cols >= 0)
    to_catalog = np.full(n_model_items, -1, dtype=np.int64)
    to_catalog[catalog_cols[known]] = known
    ex = exclude.tocoo()
    keep = catalog_cols[ex.col] >= 0
    return csr_from_pairs(ex.row[keep], catalog_cols[ex.col[keep]], exclude.shape[0], n_model_items), to_catalog


def model_inputs(model, ev, catalog_ids: np.ndarray | None = None):
    """An EvalSet's users and histories in the model's own indices: (user index or -1 per row, the
    model's item index of each catalog column or None when the EvalSet's indices are the model's,
    histories newest first with items the model does not know dropped)."""
    if catalog_ids is None:
        return np.asarray(ev.user_idx, dtype=np.int64), None, np.asarray(ev.history)
    user_idx = lookup_ids(model.user_ids, ev.user_ids)
    cols = lookup_ids(model.item_ids, catalog_ids)
    h = np.asarray(ev.history)
    history = np.where(h >= 0, cols[np.maximum(h, 0)], -1)
    order = np.argsort(history < 0, axis=1, kind="stable")
    return user_idx, cols, np.take_along_axis(history, order, axis=1)


def evaluate_model(model, ev, ks=(10, 20, 50), item_counts: np.ndarray | None = None,
                   catalog_ids: np.ndarray | None = None, progress=None) -> tuple[metrics.Evaluation, np.ndarray]:
    """Full-catalog metrics of a model on an EvalSet, seen items excluded.

    Args:
        model: a fitted or loaded model.
        ev: the EvalSet (recsys.data.trainset); its rows index `ev.relevant` / `ev.exclude`.
        ks: metric cutoffs.
        item_counts: training interactions per catalog item (novelty); None to skip novelty.
        catalog_ids: the item ID of every column of `ev.relevant` when the EvalSet comes from a
            dataset whose vocabularies may differ from the model's. None: the EvalSet's user and
            item indices are the model's own (validation during training).
        progress: receives users/s lines on a long evaluation (None: quiet).
    Returns:
        (the Evaluation, the source of every row of `ev`; None for rows with nothing held out).
    """
    user_idx, cols, history = model_inputs(model, ev, catalog_ids)
    # users with nothing held out are not evaluated (the standard definition)
    users = np.flatnonzero(np.diff(ev.relevant.indptr) > 0)
    topk, src = rank(model, user_idx[users], history[users], ev.exclude[users], max(ks), cols, progress=progress)
    sources = np.full(len(user_idx), None, dtype=object)   # None: not evaluated
    sources[users] = src
    return metrics.from_topk(topk, users, ev.relevant, ks, item_counts), sources


def validation_metrics(model, ev, ks=(10, 20, 50), item_counts: np.ndarray | None = None) -> dict:
    """The mean metrics of `evaluate_model` (what training's `validate` argument and the manifest's
    validation_metrics record)."""
    return evaluate_model(model, ev, ks, item_counts)[0].summary()


def lookup_ids(vocab_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The position of each of `ids` in `vocab_ids`, -1 where absent."""
    return pd.Index(np.asarray(vocab_ids, dtype=object)).get_indexer(
        pd.Index(np.asarray(ids, dtype=object))).astype(np.int64)
