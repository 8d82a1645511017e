"""The ranking rule: how recsys turns query vectors (or popularity) into a user's top-k.

One module owns it, at the bottom of the layers (numpy and scipy only), so that the offline scorer
(`recsys.evaluation.scorer`), the through-index evaluation, batch recommendations and the service
(`recsys.engine`) rank by the same code and their numbers cannot drift apart:

- the source labels every answer and every evaluated user carries;
- the one tie rule (equal scores: the lower item index first) and the top-k / membership primitives;
- the query-vector rule (`query_source`, applied by `query_vectors` / `query_vector`): a fresh or
  unknown user's history, else a known user's vector, else popularity;
- popularity's top-k, for one row with filters (`popular_row`) or a block (`popular_rows`);
- a searcher's top-k with exclusions and over-fetch, for one row with filters (`search_row`) or a
  block (`search_rows`);
- `rank_rows`: a block of rows, popularity rows and personalized rows, against any searcher.

A searcher is anything with `search(queries [n, d], k) -> (ids, scores)` and `embeddings` (the item
vectors it searches, for exact scoring of a filtered remainder): `recsys.retrieval.index.Index`.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# Where a query vector came from; every answer and every evaluated user carries one. POPULARITY is a
# fallback (a personalized model with nothing to go on); MODEL_POPULARITY is the answer of a model that
# is not personalized (popularity, repeat): its own answer, not a fallback.
PERSONALIZED, HISTORY, POPULARITY = "personalized", "history", "popularity_fallback"
MODEL_POPULARITY = "popularity"

# score matrices at least this wide go through TensorFlow's top_k when a block is large enough
_TF_TOP_K_FROM = 4096


def order(scores: np.ndarray) -> np.ndarray:
    """Item indices by score, best first, ties to the lower index (the tie rule of every top-k here)."""
    return np.lexsort((np.arange(len(scores)), -np.asarray(scores)))


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k highest scores per row, best first, ties to the lower index.

    Large blocks go through TensorFlow's top_k (a partial sort on every core, ~10x numpy's
    argpartition at 50k columns, with the same tie rule; imported only then), narrow ones through a
    stable sort, and a few wide rows one at a time (argpartition for the k-th score, then every item
    tied with it)."""
    n, m = scores.shape
    k = min(k, m)
    if k <= 0:
        return np.zeros((n, 0), dtype=np.int64)
    if m >= _TF_TOP_K_FROM and n * m >= 1 << 20:
        import tensorflow as tf
        return tf.math.top_k(scores, k, sorted=True).indices.numpy().astype(np.int64)
    if m < _TF_TOP_K_FROM:
        return np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int64)
    out = np.empty((n, k), dtype=np.int64)
    for r in range(n):
        row = scores[r]
        kth = row[np.argpartition(-row, k - 1)[k - 1]]
        cand = np.flatnonzero(row >= kth)
        out[r] = cand[np.lexsort((cand, -row[cand]))][:k]
    return out


def top_k_masked(scores: np.ndarray, k: int, exclude: sp.csr_matrix | None = None) -> np.ndarray:
    """The k best columns per row of a score matrix, skipping row r's excluded items (row r of
    `exclude`) and -inf scores: [n, k], -1 where fewer than k are left.

    Writes -inf into `scores` (a float32 array the caller owns) at the excluded items."""
    if exclude is not None and exclude.nnz:
        r = np.repeat(np.arange(exclude.shape[0]), np.diff(exclude.indptr))
        scores[r, exclude.indices] = -np.inf
    k = min(k, scores.shape[1])
    top = top_k_rows(scores, k)
    # fewer than k items left (a small catalog, many excluded): the rest of the list is empty
    return np.where(np.take_along_axis(scores, top, 1) == -np.inf, -1, top)


def in_rows(ids: np.ndarray, rows: sp.csr_matrix) -> np.ndarray:
    """Boolean [n, k]: whether ids[r, j] is among the column indices of row r of `rows` (-1 never is).

    By sorted (row, item) keys: no dense row of the catalog, whatever its size."""
    n, k = ids.shape
    if not rows.nnz:
        return np.zeros((n, k), dtype=bool)
    return pairs_in(np.broadcast_to(np.arange(n, dtype=np.int64)[:, None], (n, k)), ids, rows) & (ids >= 0)


def pairs_in(row: np.ndarray, col: np.ndarray, matrix: sp.csr_matrix) -> np.ndarray:
    """Whether each (row[i], col[i]) is a stored entry of `matrix` (any shape of row / col), by sorted
    (row, column) keys."""
    matrix = matrix.tocsr()
    if not matrix.has_sorted_indices:
        matrix = matrix.sorted_indices()
    if not matrix.nnz:
        return np.zeros(np.shape(col), dtype=bool)
    width = np.int64(matrix.shape[1]) + 1
    keys_of = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr)) * width + matrix.indices
    keys = np.asarray(row, dtype=np.int64) * width + col
    pos = np.minimum(np.searchsorted(keys_of, keys), len(keys_of) - 1)
    return keys_of[pos] == keys


def not_in(values: np.ndarray, sorted_rows: np.ndarray) -> np.ndarray:
    """`~np.isin(values, sorted_rows)` for sorted unique rows, without isin's set-up cost on a few values."""
    if not len(sorted_rows):
        return np.ones(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_rows, values), len(sorted_rows) - 1)
    return sorted_rows[pos] != values


def fetch_size(n_items: int, k: int, n_blocked: int) -> int:
    """How many results the first over-fetch asks for: k plus the blocked rows plus a margin, rounded
    up to a power of two. The rounding lets `search_rows` serve a block of users with one batched
    search per size and give each user what `search_row` gives: ScaNN's answer depends on the number
    asked for (it re-scores max(reorder, asked) candidates). On an exact index the answers are
    identical; ScaNN's batched kernels can break a near-tie in its approximate scores differently from
    its one-query search (>99.9% top-20 overlap at the default reorder, tests/recsys/retrieval)."""
    return int(fetch_sizes(n_items, k, n_blocked))


def fetch_sizes(n_items: int, k, n_blocked) -> np.ndarray:
    """`fetch_size` for many rows at once (the one place the rule is written)."""
    need = np.maximum(np.asarray(k, np.int64) + np.asarray(n_blocked, np.int64) + 16, 64)
    return np.minimum(n_items, 1 << np.ceil(np.log2(need)).astype(np.int64))


# ---- the query vector --------------------------------------------------------------------------
def query_source(personalized: bool, known: bool, has_history: bool, fresh: bool) -> str:
    """Where one row's query vector comes from: the rule, written once.

    - a model that is not personalized: its own ranking for everyone -> MODEL_POPULARITY;
    - a fresh history (items given at request time), or a user the model does not know with a history
      of items it knows: the model's history vector -> HISTORY;
    - a user the model knows: their vector -> PERSONALIZED;
    - anyone else: popularity -> POPULARITY.
    """
    if not personalized:
        return MODEL_POPULARITY
    if has_history and (fresh or not known):
        return HISTORY
    return PERSONALIZED if known else POPULARITY


# `query_source` for every (known, has_history, fresh), indexed by known * 4 + has_history * 2 + fresh
_SOURCE_TABLE = np.array([query_source(True, bool(k), bool(h), bool(f)) for k in (0, 1) for h in (0, 1)
                          for f in (0, 1)], dtype=object)


def query_vectors(model, user_idx: np.ndarray, history: np.ndarray, fresh: np.ndarray | None = None,
                  stored: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """The query vector and source of every row (`query_source`), for a block of rows.

    A PERSONALIZED row gets the user's `stored` vector (the version's precomputed user vectors, so a
    request costs no model call) or, without one, `model.user_vectors(user, history)`; a HISTORY row
    gets `model.history_vectors(history, user)`; a POPULARITY row a zero vector.

    Args:
        model: anything with the attributes of `recsys.models.base.Model`.
        user_idx: [n] the model's user index per row, -1 for users it does not know.
        history: [n, L] the model's item indices, newest first, -1 padded.
        fresh: [n] bool, rows whose history was given at request time (None: none).
        stored: [n_users, d] precomputed vectors of known users (None: computed by the model).
    Returns:
        (vectors [n, d] or None for a model without vectors, sources [n]).
    """
    user_idx = np.asarray(user_idx, dtype=np.int64)
    n = len(user_idx)
    if not model.personalized:
        return None, np.full(n, MODEL_POPULARITY, dtype=object)
    known = user_idx >= 0
    has_hist = (history >= 0).any(1) if history.size else np.zeros(n, dtype=bool)
    code = known * 4 + has_hist * 2 + (0 if fresh is None else np.asarray(fresh, dtype=bool))
    sources = _SOURCE_TABLE[code]
    vecs = np.zeros((n, model.item_embeddings.shape[1]), dtype=np.float32)
    by_user = sources == PERSONALIZED
    if by_user.any():
        vecs[by_user] = stored[user_idx[by_user]] if stored is not None else \
            model.user_vectors(user_idx[by_user], history[by_user])
    by_history = sources == HISTORY
    if by_history.any():
        vecs[by_history] = model.history_vectors(history[by_history], user_idx[by_history])
    return vecs, sources


def query_vector(model, user: int, history: np.ndarray, fresh: bool,
                 stored: np.ndarray | None = None) -> tuple[np.ndarray | None, str]:
    """`query_vectors` for one request (the service's path: scalars, no block set-up).

    Args:
        model, stored: as in `query_vectors`.
        user: the model's user index, -1 if unknown.
        history: [L] the model's item indices, newest first, -1 padded.
        fresh: whether the history was given at request time.
    Returns:
        (vector [d] or None, source).
    """
    source = query_source(model.personalized, user >= 0, bool(len(history)) and history[0] >= 0, fresh)
    if source == PERSONALIZED:
        if stored is not None:
            return stored[user], source
        return model.user_vectors(np.array([user]), history[None])[0], source
    if source == HISTORY:
        return model.history_vectors(history[None], np.array([user]))[0], source
    return None, source


# ---- popularity --------------------------------------------------------------------------------
def _allowed_mask(n: int, blocked, allowed, blocked_rows) -> np.ndarray | None:
    if blocked is None and allowed is None and not len(blocked_rows):
        return None
    ok = np.ones(n, dtype=bool) if allowed is None else allowed.copy()
    if blocked is not None:
        ok &= ~blocked
    ok[blocked_rows] = False
    return ok


def _sorted_rows(blocked_rows) -> np.ndarray:
    return np.zeros(0, dtype=np.int64) if blocked_rows is None else np.unique(np.asarray(blocked_rows, dtype=np.int64))


def popular_row(popularity, k: int, blocked: np.ndarray | None = None, allowed: np.ndarray | None = None,
                blocked_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k most popular items that pass one request's filters (arguments as in `search_row`).

    Args:
        popularity: anything with `order` (items, most popular first) and `counts` (per item).
    Returns:
        (item indices, interaction counts as float32), most popular first.
    """
    items = popularity.order
    rows = _sorted_rows(blocked_rows)
    if blocked is None and allowed is None:
        # the first k survivors lie in the first k + |rows| of the order
        top = items[:k + len(rows)]
        top = top[not_in(top, rows)][:k]
    else:
        ok = _allowed_mask(len(items), blocked, allowed, rows)
        top = items[ok[items]][:k]
    return top, popularity.counts[top].astype(np.float32)


def popular_rows(items: np.ndarray, k: int, exclude: sp.csr_matrix) -> np.ndarray:
    """The first k items of one ranking `items` for every row of `exclude`, skipping that row's
    excluded items: [rows, k], -1 padded. Computed from the ranking once, never a dense score matrix:
    a row's k survivors lie in the first k + (its excluded count) of the order."""
    n = exclude.shape[0]
    k = min(k, len(items))
    out = np.full((n, k), -1, dtype=np.int64)
    counts = np.diff(exclude.indptr)
    for start in range(0, n, 4096):
        rows = slice(start, min(start + 4096, n))
        width = min(len(items), k + int(counts[rows].max(initial=0)))
        cand = np.broadcast_to(items[:width], (rows.stop - rows.start, width))
        blocked = in_rows(cand, exclude[rows])
        # stable: kept candidates keep their order
        pick = np.argsort(blocked, axis=1, kind="stable")[:, :k]
        got = np.take_along_axis(cand, pick, 1)
        ok = ~np.take_along_axis(blocked, pick, 1)
        out[rows] = np.where(ok, got, -1)
    return out


# ---- a searcher --------------------------------------------------------------------------------
def exact_subset(embeddings: np.ndarray, query: np.ndarray, candidates: np.ndarray, k: int):
    """Exact top-k of `query` among the item indices `candidates` (ties: the lower index)."""
    scores = embeddings[candidates] @ query
    k = min(k, len(candidates))
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    # every candidate tied with the k-th score competes, so ties go to the lower index as everywhere
    kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
    part = np.flatnonzero(scores >= kth)
    best = np.lexsort((candidates[part], -scores[part]))[:k]
    return candidates[part][best].astype(np.int64), scores[part][best].astype(np.float32)


def search_row(searcher, query: np.ndarray, k: int, blocked: np.ndarray | None = None,
               allowed: np.ndarray | None = None, blocked_rows: np.ndarray | None = None,
               max_fetch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Top-k for one query skipping blocked items and keeping only allowed ones.

    Over-fetches from the searcher and widens the fetch until k items survive, so the caller gets k
    results whenever k are available. When the filters leave a small share of the catalog, or the
    searcher cannot supply enough survivors (a tree search only visits some leaves), the surviving
    items are scored exactly instead.

    Args:
        searcher: an index (`search`, `embeddings`).
        query: [d] the query vector.
        k: how many items to return.
        blocked, allowed: optional boolean masks over items.
        blocked_rows: item indices to skip (seen items, the history, `item:` excludes). The common
            request blocks only such rows: it is answered with one search checked against them,
            without a mask over the whole catalog.
        max_fetch: the widest fetch before falling back to exact scoring.
    Returns:
        (item indices, scores), best first; fewer than k when fewer items pass the filters.
    """
    embeddings = searcher.embeddings
    n = len(embeddings)
    rows = _sorted_rows(blocked_rows)
    if blocked is None and allowed is None:
        available = n - len(rows)
        kk = min(k, available)
        if kk <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if not len(rows):
            ids, scores = searcher.search(query[None], kk)
            return ids[0], scores[0]
        if available > n // 5:   # the first over-fetch, checked against the few blocked rows
            ids, scores = searcher.search(query[None], fetch_size(n, kk, len(rows)))
            keep = not_in(ids[0], rows)
            if keep.sum() >= kk:
                return ids[0][keep][:kk], scores[0][keep][:kk]
    ok = _allowed_mask(n, blocked, allowed, rows)
    available = n if ok is None else int(ok.sum())
    k = min(k, available)
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    if ok is None:
        ids, scores = searcher.search(query[None], k)
        return ids[0], scores[0]
    if available <= n // 5:
        return exact_subset(embeddings, query, np.flatnonzero(ok), k)
    fetch = min(n, k + (n - available) + 16)
    while True:
        ids, scores = searcher.search(query[None], fetch)
        ids, scores = ids[0], scores[0]
        keep = ok[ids]
        if keep.sum() >= k:
            return ids[keep][:k], scores[keep][:k]
        if fetch >= min(n, max_fetch) or len(ids) < fetch:
            return exact_subset(embeddings, query, np.flatnonzero(ok), k)
        fetch = min(n, fetch * 4)


def search_rows(searcher, queries: np.ndarray, k: int,
                blocked: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`search_row` for many queries at once, each skipping its own blocked items (row r of
    `blocked`, e.g. the users' seen items): the same answers (see `fetch_size` for ScaNN's near-ties),
    batched searches.

    Rows are grouped by `fetch_size`; each group is one search, checked against the blocked items by
    sorted (row, item) keys. The rare row that cannot be answered that way (most of the catalog
    blocked, or too few survivors) goes through `search_row`.
    Returns:
        (item indices [n, k], -1 padded; scores [n, k], 0 where padded).
    """
    n_q = len(queries)
    n = len(searcher.embeddings)
    out_ids = np.full((n_q, k), -1, dtype=np.int64)
    out_scores = np.zeros((n_q, k), dtype=np.float32)
    if n_q == 0:
        return out_ids, out_scores
    counts = np.zeros(n_q, dtype=np.int64) if blocked is None else np.diff(blocked.indptr)
    kk = np.minimum(k, n - counts)
    plain = counts == 0
    fetch = np.where(plain, min(k, n), fetch_sizes(n, kk, counts))
    single = (~plain & (n - counts <= n // 5)) | (kk <= 0)
    for size in np.unique(fetch[~single]):
        rows = np.flatnonzero((fetch == size) & ~single)
        for s in range(0, len(rows), 8192):
            part = rows[s:s + 8192]
            ids, scores = searcher.search(queries[part], int(size))
            if blocked is not None and counts[part].any():
                hit = in_rows(ids, blocked[part])
            else:
                hit = np.zeros(ids.shape, dtype=bool)
            hit |= ids < 0     # no result (a tree search's padding) is as good as blocked
            pick = np.argsort(hit, axis=1, kind="stable")[:, :k]   # survivors, in rank order
            got, gone = np.take_along_axis(ids, pick, 1), np.take_along_axis(hit, pick, 1)
            sc = np.take_along_axis(scores, pick, 1)
            enough = (~gone).sum(1) >= kk[part]
            ok_rows = part[enough]
            width = min(k, got.shape[1])
            keep = (np.arange(width)[None, :] < kk[ok_rows][:, None]) & ~gone[enough][:, :width]
            out_ids[ok_rows, :width] = np.where(keep, got[enough][:, :width], -1)
            out_scores[ok_rows, :width] = np.where(keep, sc[enough][:, :width], 0.0)
            single[part[~enough]] = True
    for r in np.flatnonzero(single):
        rows_r = np.zeros(0, dtype=np.int64) if blocked is None else blocked.indices[blocked.indptr[r]:blocked.indptr[r + 1]]
        ids, scores = search_row(searcher, queries[r], k, blocked_rows=rows_r)
        out_ids[r, :len(ids)], out_scores[r, :len(ids)] = ids, scores
    return out_ids, out_scores


# ---- a block of rows ---------------------------------------------------------------------------
def put_first(ids: np.ndarray, scores: np.ndarray, first: sp.csr_matrix, exclude, blocked=None,
              allowed=None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `first` items (nonzero values; highest value first, ties: the lower index) ahead of its
    ranked list, minus its excluded and filtered items, the rest of the list after them without
    duplicates: "buy again" in front of another ranking. `exclude` as in `rank_rows`."""
    first = first.tocsr()
    k = ids.shape[1]
    for r in np.flatnonzero(np.diff(first.indptr)):
        items = first.indices[first.indptr[r]:first.indptr[r + 1]]
        values = first.data[first.indptr[r]:first.indptr[r + 1]]
        gone = exclude if not sp.issparse(exclude) else exclude.indices[exclude.indptr[r]:exclude.indptr[r + 1]]
        keep = not_in(items, np.unique(np.asarray(gone, dtype=np.int64)))
        if blocked is not None:
            keep &= ~blocked[items]
        if allowed is not None:
            keep &= allowed[items]
        items, values = items[keep], values[keep]
        best = np.lexsort((items, -values))[:k]
        pinned, pinned_scores = items[best], values[best]
        later = (ids[r] >= 0) & not_in(ids[r], np.sort(pinned))
        rest, rest_scores = ids[r][later], scores[r][later]
        merged = np.r_[pinned, rest][:k]
        ids[r] = -1
        scores[r] = 0
        ids[r, :len(merged)] = merged
        scores[r, :len(merged)] = np.r_[pinned_scores, rest_scores][:k]
    return ids, scores


def rank_rows(searcher, vectors: np.ndarray | None, sources: np.ndarray, popularity, k: int,
              exclude: sp.csr_matrix | np.ndarray, blocked: np.ndarray | None = None,
              allowed: np.ndarray | None = None, first: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every row's top-k: popularity rows by the popularity order, the others by their query vector
    against `searcher`, each skipping its own excluded items and the items the filters remove.

    A block goes through the batched forms (`popular_rows`, the searcher's `search_many`); a single
    row (what the service asks) and rows with filters through the one-row forms (`popular_row`,
    `search_row`), which give the same lists (see `fetch_size` for ScaNN's near-ties).

    Args:
        searcher: an index over the item vectors (`recsys.retrieval.index.Index`); None when no row
            is personalized.
        vectors: [n, d] query vectors (None: a model without vectors).
        sources: [n] each row's source (`query_vectors`).
        popularity: anything with `order` (items, most popular first) and `counts`.
        k: list length.
        exclude: [n, n_items] CSR, the items each row must not get; for a single row its item
            indices may be given as an array instead (a request spares building a matrix).
        blocked, allowed: boolean masks over items that apply to every row (a request's filters).
        first: [n, n_items] items each row gets ahead of the ranking, by value (a model's `own_items`:
            "buy again"), or None.
    Returns:
        (item indices [n, k], best first, -1 padded; scores [n, k]: the dot product, or the
        interaction count for popularity rows; 0 where padded).
    """
    n = len(sources)
    n_items = len(popularity.counts)
    k = min(k, n_items)
    ids = np.full((n, k), -1, dtype=np.int64)
    scores = np.zeros((n, k), dtype=np.float32)
    if vectors is None:
        sources = np.full(n, POPULARITY, dtype=object)
    if n == 1 or blocked is not None or allowed is not None:
        for r in range(n):
            rows = exclude if not sp.issparse(exclude) else exclude.indices[exclude.indptr[r]:exclude.indptr[r + 1]]
            if sources[r] == POPULARITY:
                got, sc = popular_row(popularity, k, blocked, allowed, rows)
            else:
                got, sc = search_row(searcher, vectors[r], k, blocked, allowed, rows)
            ids[r, :len(got)], scores[r, :len(got)] = got, sc
        return (ids, scores) if first is None else put_first(ids, scores, first, exclude, blocked, allowed)
    by_pop = np.flatnonzero(sources == POPULARITY)
    if len(by_pop):
        top = popular_rows(popularity.order, k, exclude[by_pop])
        ids[by_pop, :top.shape[1]] = top
        scores[by_pop, :top.shape[1]] = np.where(top >= 0, popularity.counts[np.maximum(top, 0)], 0)
    pers = np.flatnonzero(sources != POPULARITY)
    if len(pers):
        got, sc = searcher.search_many(vectors[pers], k, exclude[pers])
        ids[pers], scores[pers] = got, sc
    return (ids, scores) if first is None else put_first(ids, scores, first, exclude)
