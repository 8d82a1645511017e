"""The one offline scorer: how a model ranks the catalog for held-out users.

Used by validation during training (early stopping) and by `recsys evaluate` / `recsys compare` /
the nightly gate on saved versions, so the epoch training picks is chosen by the rule that is
reported. The rule, per evaluated user, with the history known at the split's cut:
- a user the model knows: `model.user_vectors(user, history)`                 -> "personalized";
- a user it does not know, with a history of items it knows: `history_vectors` -> "history";
- anyone else, and every user of a model that is not personalized: popularity -> "popularity_fallback".

The model and the dataset need not share vocabularies (the nightly gate scores yesterday's
production version on today's split): users and items are matched by ID string, and catalog items
the model does not know can still be relevant and simply count as misses.

It needs no model class: a model is anything with the attributes of `recsys.models.base.Model` (it
imports only the source labels from there).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.evaluation import metrics
from recsys.models.base import HISTORY, PERSONALIZED, POPULARITY
from recsys.models.popularity import ranking
from recsys.progress import Progress
from recsys.retrieval.index import ExactScann, popularity_topk, search_many

# catalogs at least this large are ranked with ScaNN's exact scorer (smaller: a matmul and a stable sort)
EXACT_SCANN_FROM = 4096


def query_vectors(model, user_idx: np.ndarray, history: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """Query vectors and sources for rows of (user index in the model or -1, history in model items).

    Args:
        model: a fitted or loaded model.
        user_idx: [n] the model's user index per row, -1 for users it does not know.
        history: [n, L] the model's item indices, newest first, -1 padded.
    Returns:
        (vectors [n, d] or None for a model without vectors, sources [n]); rows with source
        POPULARITY have a zero vector.
    """
    n = len(user_idx)
    sources = np.full(n, POPULARITY, dtype=object)
    if not model.personalized:
        return None, sources
    vecs = np.zeros((n, model.item_embeddings.shape[1]), dtype=np.float32)
    known = user_idx >= 0
    has_hist = (history >= 0).any(1) if history.size else np.zeros(n, dtype=bool)
    if known.any():
        vecs[known] = model.user_vectors(user_idx[known], history[known])
        sources[known] = PERSONALIZED
    fresh = ~known & has_hist
    if fresh.any():
        vecs[fresh] = model.history_vectors(history[fresh], user_idx[fresh])
        sources[fresh] = HISTORY
    return vecs, sources


def rank(model, user_idx: np.ndarray, history: np.ndarray, exclude: sp.csr_matrix, k: int,
         catalog_cols: np.ndarray | None = None, batch_size: int = 1024,
         progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's top-k catalog columns, its excluded items skipped, and the source of every row.

    Args:
        model: a fitted or loaded model.
        user_idx, history: as in `query_vectors`.
        exclude: [rows, n_catalog] items each row must not be recommended.
        k: list length.
        catalog_cols: the model's item index of each catalog column (-1: unknown to the model; such
            columns are never recommended to personalized rows and rank last by popularity). None:
            the catalog is the model's own item list.
        batch_size: rows per matmul block.
        progress: receives a users/s and ETA line every 30 s (None: quiet).
    Returns:
        (top-k column indices [rows, k], best first, -1 padded; sources [rows]).
    """
    pop_model = model.popularity.scores.astype(np.float32)
    if catalog_cols is None:
        catalog_cols = np.arange(len(pop_model))
    known_cols = np.flatnonzero(catalog_cols >= 0)
    all_known = len(known_cols) == len(catalog_cols)
    pop = np.full(len(catalog_cols), -np.inf, dtype=np.float32)
    pop[known_cols] = pop_model[catalog_cols[known_cols]]
    vecs, sources = query_vectors(model, user_idx, history)
    k = min(k, len(catalog_cols))
    out = np.full((len(user_idx), k), -1, dtype=np.int64)
    by_pop = np.flatnonzero(sources == POPULARITY)
    if len(by_pop):
        out[by_pop] = popularity_topk(ranking(pop), k, exclude[by_pop])
    pers = np.flatnonzero(sources != POPULARITY)
    if not len(pers):
        return out, sources
    identity = all_known and np.array_equal(catalog_cols, np.arange(len(catalog_cols)))
    items = model.item_embeddings if identity else model.item_embeddings[catalog_cols[known_cols]]
    if len(items) >= EXACT_SCANN_FROM and len(pers) >= 1024:
        # ScaNN's exact scorer with the exclusions applied as the service applies seen items
        # (search_many: over-fetch by each row's excluded count); ~3x a matmul + top_k at 50k items
        ex = exclude[pers]
        if not all_known:   # the searcher ranks known columns only: exclusions in its numbering
            ex = ex[:, known_cols]
        ex = ex.tocsr()
        searcher = ExactScann(items)
        meter = Progress("evaluate", len(pers), "users", progress) if progress else None
        for start in range(0, len(pers), 16384):
            part = slice(start, start + 16384)
            ids, _ = search_many(searcher, items, vecs[pers[part]], k, ex[part])
            out[pers[part]] = ids if all_known else np.where(ids >= 0, known_cols[np.maximum(ids, 0)], -1)
            if meter:
                meter.advance(len(ids))
        return out, sources
    for start in range(0, len(pers), batch_size):
        rows = pers[start:start + batch_size]
        s = vecs[rows] @ items.T
        if not all_known:
            block = np.full((len(s), len(pop)), -np.inf, dtype=np.float32)
            block[:, known_cols] = s
            s = block
        out[rows] = metrics.top_k_inplace(np.require(s, np.float32, ["W"]), k, exclude[rows])
    return out, sources


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


def lookup_ids(vocab_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The position of each of `ids` in `vocab_ids`, -1 where absent."""
    return pd.Index(np.asarray(vocab_ids, dtype=object)).get_indexer(
        pd.Index(np.asarray(ids, dtype=object))).astype(np.int64)
