"""Maximum inner product search over item embeddings: one interface, brute force and ScaNN behind it.

`build / search / save / load`, batches in, `(ids, scores)` out (ids are item indices). The ScaNN index
goes through `scann_ops_pybind` (no TensorFlow ops), so a served index never depends on TF op
registration. Configuration follows catalog size: exact brute force below `brute_force_below` items,
tree partitioning + asymmetric hashing + exact reordering above.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time

import numpy as np

from recsys import fsio
from recsys.errors import DataError


@contextlib.contextmanager
def _quiet_native_logs():
    """ScaNN's C++ side logs partitioner progress ("I0000 ... PartitionerFactory ran in ...") and an
    absl start-up warning straight to file descriptor 2 while it builds: noise in a nightly's output.
    Hidden during a build unless `recsys -v` (RECSYS_VERBOSE=1). Loading an index (the service, which
    has other threads logging) is not wrapped: fd 2 belongs to the whole process."""
    if os.environ.get("RECSYS_VERBOSE", "") not in ("", "0"):
        yield
        return
    global _quiet_depth, _saved_fd
    with _quiet_lock:   # fd 2 is the process's: the first to enter redirects, the last to leave restores
        if _quiet_depth == 0:
            sys.stderr.flush()
            _saved_fd = os.dup(2)
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 2)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                os.dup2(_saved_fd, 2)
                os.close(_saved_fd)


_quiet_lock = threading.Lock()
_quiet_depth, _saved_fd = 0, -1


def in_rows(ids: np.ndarray, rows: "scipy.sparse.csr_matrix") -> np.ndarray:
    """Boolean [n, k]: whether ids[r, j] is among the column indices of row r of `rows` (-1 never is).

    By sorted (row, item) keys: no dense row of the catalog, whatever its size."""
    n, k = ids.shape
    rows = rows.tocsr()
    if not rows.has_sorted_indices:
        rows = rows.sorted_indices()
    if not rows.nnz:
        return np.zeros((n, k), dtype=bool)
    width = np.int64(rows.shape[1]) + 1
    row_keys = np.repeat(np.arange(n, dtype=np.int64), np.diff(rows.indptr)) * width + rows.indices
    keys = np.arange(n, dtype=np.int64)[:, None] * width + ids
    pos = np.minimum(np.searchsorted(row_keys, keys), len(row_keys) - 1)
    return (row_keys[pos] == keys) & (ids >= 0)


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k highest scores per row, best first, ties to the lower index.

    Large blocks go through TensorFlow's top_k (a partial sort on every core, ~10x numpy's
    argpartition at 50k columns, with the same tie rule), narrow ones through a stable sort, and a
    few wide rows one at a time (argpartition for the k-th score, then every item tied with it)."""
    n, m = scores.shape
    k = min(k, m)
    if k <= 0:
        return np.zeros((n, 0), dtype=np.int64)
    if m >= 4096 and n * m >= 1 << 20:
        import tensorflow as tf
        return tf.math.top_k(scores, k, sorted=True).indices.numpy().astype(np.int64)
    if m < 4096:
        return np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int64)
    out = np.empty((n, k), dtype=np.int64)
    for r in range(n):
        row = scores[r]
        kth = row[np.argpartition(-row, k - 1)[k - 1]]
        cand = np.flatnonzero(row >= kth)
        out[r] = cand[np.lexsort((cand, -row[cand]))][:k]
    return out


class BruteForceIndex:
    """Exact dot-product top-k (a matmul and a partial sort)."""
    kind = "brute_force"

    def __init__(self, embeddings: np.ndarray):
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores per query row, best first (ties: lower index)."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        k = min(k, len(self.embeddings))
        ids, scores = [], []
        for s in range(0, len(q), 1024):   # bounded memory: [1024, n_items] scores at a time
            block = q[s:s + 1024] @ self.embeddings.T
            top = top_k_rows(block, k)
            ids.append(top)
            scores.append(np.take_along_axis(block, top, 1))
        if not ids:
            return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
        return np.concatenate(ids), np.concatenate(scores)

    def save(self, directory: str) -> None:
        """Write index.json (brute force needs nothing but the item embeddings)."""
        fsio.atomic_write_text(fsio.join(directory, "index.json"), json.dumps({"kind": self.kind}))


class ExactScann:
    """Exact dot-product top-k through ScaNN's brute-force scorer: no [queries, items] score matrix,
    SIMD scoring and a parallel batched search. For bulk exact ranking (evaluation): at 50k items it
    ranks ~17k queries/s on 2 cores where a matmul + top_k ranks ~6k (benchmarks/topn_throughput.py).
    Same answers as BruteForceIndex up to float summation order (near-ties may swap)."""
    kind = "exact_scann"

    def __init__(self, embeddings: np.ndarray):
        from scann.scann_ops.py import scann_ops_pybind
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        with _quiet_native_logs():
            self.searcher = scann_ops_pybind.builder(self.embeddings, 10, "dot_product").score_brute_force().build()

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores per query row, best first."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, len(self.embeddings))
        if len(q) >= 256:
            ids, scores = self.searcher.search_batched_parallel(q, final_num_neighbors=k, batch_size=256)
        else:
            ids, scores = self.searcher.search_batched(q, final_num_neighbors=k)
        return np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32)


class ScannIndex:
    """ScaNN: tree partitioning, anisotropic hashing, exact reordering (dot product)."""
    kind = "scann"

    def __init__(self, searcher, n: int, params: dict):
        self.searcher, self.n, self.params = searcher, n, params
        # The pybind object under scann's Python wrapper: a single query is a ~50 us call, so the
        # wrapper's keyword handling and per-call dict lookups are worth skipping on the serving path.
        self._raw = getattr(searcher, "searcher", searcher)
        self._reorder = int(params["reorder"])

    def __len__(self) -> int:
        return self.n

    @classmethod
    def build(cls, embeddings: np.ndarray, params: dict, threads: int = 0) -> "ScannIndex":
        """Build a ScaNN searcher (tree + asymmetric hashing + exact reorder) over `embeddings`."""
        from scann.scann_ops.py import scann_ops_pybind
        db = np.ascontiguousarray(embeddings, dtype=np.float32)
        n = len(db)
        leaves = int(params["num_leaves"])
        b = scann_ops_pybind.builder(db, 10, "dot_product")
        b = b.tree(num_leaves=leaves, num_leaves_to_search=int(params["leaves_to_search"]),
                   training_sample_size=min(n, int(params.get("training_sample_size", 250000))),
                   spherical=params.get("partitioning") == "spherical")
        b = b.score_ah(int(params["dimensions_per_block"]),
                       anisotropic_quantization_threshold=float(params["anisotropic_threshold"]))
        b = b.reorder(int(params["reorder"]))
        if threads:
            b = b.set_n_training_threads(threads)
        with _quiet_native_logs():
            searcher = b.build()
        return cls(searcher, n, dict(params))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores per query row, best first."""
        q = np.asarray(queries, dtype=np.float32)
        k = min(k, self.n)
        pre = max(self._reorder, k)
        if q.ndim == 1 or len(q) == 1:
            ids, scores = self._raw.search(np.ascontiguousarray(q.reshape(-1)), k, pre, -1)
            return ids.astype(np.int64)[None], scores[None]
        # Many queries: split over the searcher's threads (results are the same as one by one).
        ids, scores = self._raw.search_batched(q, k, pre, -1, len(q) >= 256, 256)
        ids, scores = np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32)
        # a tree search that finds fewer than k candidates pads its batched rows with item 0 and a NaN
        # score (the one-query search returns a shorter row): padding is "no result", -1
        return np.where(np.isnan(scores), -1, ids), np.nan_to_num(scores, nan=0.0)

    def save(self, directory: str) -> None:
        """Serialize the searcher and index.json into `directory` (local or URL)."""
        with fsio.staged_dir(directory) as local:   # ScaNN serializes to a local folder only
            self.searcher.serialize(local, relative_path=True)
        fsio.atomic_write_text(fsio.join(directory, "index.json"),
                               json.dumps({"kind": self.kind, "n": self.n, "params": self.params}))


def default_params(n_items: int, cfg) -> dict:
    """ScaNN settings that follow the catalog size (overridable in config `index:`)."""
    # 2 sqrt(n) leaves (2,000 at 1M items); search 1% of them, but always enough leaves to cover
    # ~10,000 items (so smaller catalogs search a larger share at about the same cost); `reorder`
    # 200 exact re-scores. Measured on 1M x 64 normalised clustered vectors (benchmarks/ann.py):
    # finer leaves searched more sparingly beat sqrt(n) leaves at 2-3% on recall at the same latency
    # (0.978 vs 0.943 recall@10 at ~0.05 ms on the harder mixture), for ~5 s more build CPU.
    leaves = cfg.num_leaves or int(max(16, min(4000, round(2 * np.sqrt(n_items)))))
    cover = int(np.ceil(10_000 * leaves / max(n_items, 1)))
    search = cfg.leaves_to_search or max(8, int(round(leaves * 0.01)), cover)
    return {"num_leaves": leaves, "leaves_to_search": min(search, leaves), "reorder": cfg.reorder,
            "dimensions_per_block": cfg.dimensions_per_block, "anisotropic_threshold": cfg.anisotropic_threshold,
            "training_sample_size": cfg.training_sample_size, "partitioning": cfg.partitioning}


def unit_norm(embeddings: np.ndarray, tol: float = 1e-3) -> bool:
    """True when every row has L2 norm 1 (within `tol`), as the two-tower model's embeddings do."""
    norms = np.einsum("ij,ij->i", embeddings, embeddings, dtype=np.float64)
    return bool(len(norms)) and bool(np.all(np.abs(norms - 1.0) <= 2 * tol))


def build(embeddings: np.ndarray, cfg) -> BruteForceIndex | ScannIndex:
    """Brute force below `cfg.brute_force_below` items (or when `cfg.kind` says so), else ScaNN."""
    kind = cfg.kind
    if kind == "auto":
        kind = "brute_force" if len(embeddings) < cfg.brute_force_below else "scann"
    if kind == "brute_force":
        return BruteForceIndex(embeddings)
    params = default_params(len(embeddings), cfg)
    if params["partitioning"] == "auto":
        # Unit-norm items: dot product is cosine, and spherical k-means (unit-norm centroids) ranks
        # leaves by it correctly; squared-L2 centroids have uneven norms that skew the leaf ranking.
        # On 1M x 64 normalised clustered vectors (1000 leaves, 20 searched) this lifts recall@10
        # from 0.89 to 0.94 (harder mixture) and from 0.973 to 0.984 (benchmarks/ann.py).
        params["partitioning"] = "spherical" if unit_norm(embeddings) else "generic"
    return ScannIndex.build(embeddings, params)


def exists(directory: str) -> bool:
    """Whether an index was saved in `directory`."""
    return fsio.exists(fsio.join(directory, "index.json"))


def load(directory: str, embeddings: np.ndarray) -> BruteForceIndex | ScannIndex:
    """Load an index saved by `save`; brute force needs only the embeddings."""
    meta_path = fsio.join(directory, "index.json")
    if not fsio.exists(meta_path):
        raise DataError(f"index: no index at {directory!r}; run `recsys index --model VERSION`")
    meta = json.loads(fsio.read_text(meta_path))
    if meta["kind"] == "brute_force":
        return BruteForceIndex(embeddings)
    from scann.scann_ops.py import scann_ops_pybind
    with fsio.local_copy(directory) as local:   # ScaNN loads from a local folder only
        searcher = scann_ops_pybind.load_searcher(local)
    return ScannIndex(searcher, int(meta["n"]), meta["params"])


def recall_vs_exact(index, embeddings: np.ndarray, queries: np.ndarray, ks=(10, 100)) -> dict:
    """Mean overlap of the index's top-k with exact brute force's top-k, per k."""
    exact = BruteForceIndex(embeddings)
    kmax = min(max(ks), len(embeddings))
    t0 = time.time()
    got, _ = index.search(queries, kmax)
    elapsed = time.time() - t0
    want, _ = exact.search(queries, kmax)
    out = {}
    for k in ks:
        k2 = min(k, kmax)
        out[f"recall@{k}"] = float(np.mean([len(np.intersect1d(g[:k2], w[:k2])) / k2 for g, w in zip(got, want)]))
    out["queries"] = int(len(queries))
    out["batch_seconds"] = round(elapsed, 4)
    return out


def exact_subset(embeddings: np.ndarray, query: np.ndarray, candidates: np.ndarray, k: int):
    """Exact top-k of `query` among the item indices `candidates`."""
    scores = embeddings[candidates] @ query
    k = min(k, len(candidates))
    part = np.argpartition(-scores, k - 1)[:k]
    order = np.lexsort((candidates[part], -scores[part]))
    return candidates[part][order].astype(np.int64), scores[part][order].astype(np.float32)


def not_in(values: np.ndarray, sorted_rows: np.ndarray) -> np.ndarray:
    """`~np.isin(values, sorted_rows)` for sorted unique rows, without isin's set-up cost on a few values."""
    if not len(sorted_rows):
        return np.ones(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_rows, values), len(sorted_rows) - 1)
    return sorted_rows[pos] != values


def _allowed_mask(n: int, blocked, allowed, blocked_rows) -> np.ndarray | None:
    if blocked is None and allowed is None and not len(blocked_rows):
        return None
    ok = np.ones(n, dtype=bool) if allowed is None else allowed.copy()
    if blocked is not None:
        ok &= ~blocked
    ok[blocked_rows] = False
    return ok


def search_filtered(index, embeddings: np.ndarray, query: np.ndarray, k: int, blocked: np.ndarray | None = None,
                    allowed: np.ndarray | None = None, blocked_rows: np.ndarray | None = None,
                    max_fetch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Top-k for one query skipping blocked items and keeping only allowed ones.

    Over-fetches from the index and widens the fetch until k items survive, so the caller gets k
    results whenever k are available. When the filters leave a small share of the catalog, or the
    index cannot supply enough survivors (a tree search only visits some leaves), the surviving items
    are scored exactly instead.

    Args:
        index: a BruteForceIndex or ScannIndex over `embeddings`.
        embeddings: [n_items, d] item embeddings (for exact scoring of survivors).
        query: [d] the query vector.
        k: how many items to return.
        blocked, allowed: optional boolean masks over items.
        blocked_rows: sorted unique item indices to skip (seen items, the history, `item:` excludes).
            The common request blocks only such rows: it is answered with one index search checked
            against them, without a mask over the whole catalog.
        max_fetch: the widest fetch before falling back to exact scoring.
    Returns:
        (item indices, scores), best first; fewer than k when fewer items pass the filters.
    """
    n = len(embeddings)
    rows = np.zeros(0, dtype=np.int64) if blocked_rows is None else np.unique(np.asarray(blocked_rows, dtype=np.int64))
    if blocked is None and allowed is None:
        available = n - len(rows)
        kk = min(k, available)
        if kk <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if not len(rows):
            ids, scores = index.search(query[None], kk)
            return ids[0], scores[0]
        if available > n // 5:   # the first over-fetch, checked against the few blocked rows
            ids, scores = index.search(query[None], fetch_size(n, kk, len(rows)))
            keep = not_in(ids[0], rows)
            if keep.sum() >= kk:
                return ids[0][keep][:kk], scores[0][keep][:kk]
    ok = _allowed_mask(n, blocked, allowed, rows)
    available = n if ok is None else int(ok.sum())
    k = min(k, available)
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    if ok is None:
        ids, scores = index.search(query[None], k)
        return ids[0], scores[0]
    if available <= n // 5:
        return exact_subset(embeddings, query, np.flatnonzero(ok), k)
    fetch = min(n, k + (n - available) + 16)
    while True:
        ids, scores = index.search(query[None], fetch)
        ids, scores = ids[0], scores[0]
        keep = ok[ids]
        if keep.sum() >= k:
            return ids[keep][:k], scores[keep][:k]
        if fetch >= min(n, max_fetch) or len(ids) < fetch:
            return exact_subset(embeddings, query, np.flatnonzero(ok), k)
        fetch = min(n, fetch * 4)


def fetch_size(n_items: int, k: int, n_blocked: int) -> int:
    """How many results the first over-fetch asks for: k plus the blocked rows plus a margin, rounded
    up to a power of two. The rounding lets `search_many` serve a block of users with one batched
    search per size and give each user what `search_filtered` gives: ScaNN's answer depends on the
    number asked for (it re-scores max(reorder, asked) candidates). On an exact index the answers are
    identical; ScaNN's batched kernels can break a near-tie in its approximate scores differently from
    its one-query search (>99.9% top-20 overlap at the default reorder, tests/recsys/retrieval)."""
    return int(fetch_sizes(n_items, k, n_blocked))


def fetch_sizes(n_items: int, k, n_blocked) -> np.ndarray:
    """`fetch_size` for many rows at once (the one place the rule is written)."""
    need = np.maximum(np.asarray(k, np.int64) + np.asarray(n_blocked, np.int64) + 16, 64)
    return np.minimum(n_items, 1 << np.ceil(np.log2(need)).astype(np.int64))


def search_many(index, embeddings: np.ndarray, queries: np.ndarray, k: int,
                blocked: "scipy.sparse.csr_matrix | None" = None) -> tuple[np.ndarray, np.ndarray]:
    """`search_filtered` for many queries at once, each skipping its own blocked items (row r of
    `blocked`, e.g. the users' seen items): the same answers (see `fetch_size` for ScaNN's near-ties),
    batched searches.

    Rows are grouped by `fetch_size`; each group is one index search, checked against the blocked
    items by sorted (row, item) keys. The rare row that cannot be answered that way (most of the
    catalog blocked, or too few survivors) goes through `search_filtered`.
    Returns:
        (item indices [n, k], -1 padded; scores [n, k], 0 where padded).
    """
    n_q = len(queries)
    n = len(embeddings)
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
            ids, scores = index.search(queries[part], int(size))
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
        ids, scores = search_filtered(index, embeddings, queries[r], k, blocked_rows=np.sort(rows_r))
        out_ids[r, :len(ids)], out_scores[r, :len(ids)] = ids, scores
    return out_ids, out_scores


def popularity_topk(order: np.ndarray, k: int, exclude: sp.csr_matrix) -> np.ndarray:
    """The first k items of one ranking `order` for every row of `exclude`, skipping that row's
    excluded items: [rows, k], -1 padded. Computed from the ranking once, never a dense score matrix:
    a row's k survivors lie in the first k + (its excluded count) of the order."""
    n = exclude.shape[0]
    k = min(k, len(order))
    out = np.full((n, k), -1, dtype=np.int64)
    counts = np.diff(exclude.indptr)
    for start in range(0, n, 4096):
        rows = slice(start, min(start + 4096, n))
        width = min(len(order), k + int(counts[rows].max(initial=0)))
        cand = np.broadcast_to(order[:width], (rows.stop - rows.start, width))
        blocked = in_rows(cand, exclude[rows])
        # stable: kept candidates keep their order
        pick = np.argsort(blocked, axis=1, kind="stable")[:, :k]
        got = np.take_along_axis(cand, pick, 1)
        ok = ~np.take_along_axis(blocked, pick, 1)
        out[rows] = np.where(ok, got, -1)
    return out


def popular_filtered(popularity, k: int, blocked: np.ndarray | None = None, allowed: np.ndarray | None = None,
                     blocked_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k most popular items that pass the filters (same arguments as `search_filtered`).

    Args:
        popularity: a recsys.models.popularity.Popularity.
    Returns:
        (item indices, interaction counts as float32), most popular first.
    """
    order = popularity.order
    rows = np.zeros(0, dtype=np.int64) if blocked_rows is None else np.unique(np.asarray(blocked_rows, dtype=np.int64))
    if blocked is None and allowed is None:
        # the first k survivors lie in the first k + |rows| of the order
        top = order[:k + len(rows)]
        top = top[not_in(top, rows)][:k]
    else:
        ok = _allowed_mask(len(order), blocked, allowed, rows)
        top = order[ok[order]][:k]
    return top, popularity.counts[top].astype(np.float32)
