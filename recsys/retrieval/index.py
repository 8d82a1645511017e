"""Maximum inner product search over item embeddings: one interface, brute force and ScaNN behind it.

Every index implements `Index` (as TFRS's `TopK` does for its indexes): `build`, `search` (queries
in, `(ids, scores)` out; ids are item indices), `search_many` (with each row's excluded items),
`save` (its own files in a folder; returns its metadata) and `load`. Where the folder is and the
metadata file are the version's business (`recsys.version.save_index` / `load_index`). The ScaNN
index goes through `scann_ops_pybind` (no TensorFlow ops), so a served index never depends on TF op
registration. Configuration follows the vectors and the catalog size: a rule's sparse non-negative
vectors get the exact `SparseExactIndex` (threshold algorithm), a model's dense ones exact brute force
below `brute_force_below` items and tree partitioning + asymmetric hashing + exact reordering above.
"""
from __future__ import annotations

import time
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from recsys import fsio, ranking
from recsys.retrieval.native_logs import quiet

# exact batch searches of at least this many queries over at least this many items go through
# ScaNN's brute-force scorer (smaller: a matmul and a stable sort)
EXACT_SCANN_FROM_ITEMS = 4096
EXACT_SCANN_FROM_QUERIES = 1024
# the most float32 scores BruteForceIndex.search holds at once (256 MB): 1024 rows below 64k items
SCORE_BLOCK = 1 << 26


class Index:
    """The interface of an item index over `embeddings` [n_items, d] (dot product).

    Subclasses set `kind` and implement `search`, `save` and `load`; `search_many` skips each row's
    excluded items by the over-fetch of `recsys.ranking.search_rows` unless the index has a better
    exact form."""

    kind: ClassVar[str] = ""
    embeddings: np.ndarray

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices [n, k] and scores per query row [n, d], best first (-1: no result)."""
        raise NotImplementedError

    def search_many(self, queries: np.ndarray, k: int,
                    exclude: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query row skipping row r's items of `exclude`: (ids [n, k] -1 padded, scores [n, k])."""
        return ranking.search_rows(self, queries, k, exclude)

    def save(self, directory: str) -> dict:
        """Write the index's own files into `directory` (local or URL); returns what `load` needs."""
        return {}

    @classmethod
    def load(cls, directory: str, meta: dict, embeddings: np.ndarray) -> "Index":
        """The index saved in `directory` with metadata `meta`, over `embeddings`."""
        raise NotImplementedError


class BruteForceIndex(Index):
    """Exact dot-product top-k (a matmul and a partial sort)."""
    kind = "brute_force"

    def __init__(self, embeddings: np.ndarray):
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self._bulk = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores per query row, best first (ties: lower index)."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        k = min(k, len(self.embeddings))
        ids, scores = [], []
        rows = self._block_rows()
        for s in range(0, len(q), rows):
            block = q[s:s + rows] @ self.embeddings.T
            top = ranking.top_k_rows(block, k)
            ids.append(top)
            scores.append(np.take_along_axis(block, top, 1))
        if not ids:
            return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
        return np.concatenate(ids), np.concatenate(scores)

    def search_many(self, queries: np.ndarray, k: int,
                    exclude: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k per row, row r's excluded items skipped: each block of 1024 rows is one matmul
        with the exclusions set to -inf; a large batch over a large catalog goes through ScaNN's exact
        scorer with the over-fetch (~3x a matmul + top_k at 50k items, benchmarks/topn_throughput.py).
        The same lists as `search` + skipping, up to float summation order."""
        q = np.asarray(queries, dtype=np.float32)
        n, n_items = len(q), len(self.embeddings)
        if exclude is None:
            exclude = sp.csr_matrix((n, n_items), dtype=np.int8)
        if n_items >= EXACT_SCANN_FROM_ITEMS and n >= EXACT_SCANN_FROM_QUERIES:
            if self._bulk is None:
                self._bulk = ExactScann(self.embeddings)
            return self._bulk.search_many(q, k, exclude)
        k = min(k, n_items)
        ids = np.full((n, k), -1, dtype=np.int64)
        scores = np.zeros((n, k), dtype=np.float32)
        rows = self._block_rows()
        for s in range(0, n, rows):
            block = np.require(q[s:s + rows] @ self.embeddings.T, np.float32, ["W"])
            top = ranking.top_k_masked(block, k, exclude[s:s + rows])
            ids[s:s + len(top)] = top
            scores[s:s + len(top)] = np.where(top >= 0, np.take_along_axis(block, np.maximum(top, 0), 1), 0)
        return ids, scores

    def _block_rows(self) -> int:
        """Query rows scored at once: at most SCORE_BLOCK scores (1024 rows x 1M items, 4 GB, and
        TensorFlow's top_k copies of it were the 50M-event index step's 13.4 GB recall check)."""
        return max(1, min(1024, SCORE_BLOCK // max(len(self.embeddings), 1)))

    @classmethod
    def load(cls, directory: str, meta: dict, embeddings: np.ndarray) -> "BruteForceIndex":
        """Brute force needs nothing but the item embeddings."""
        return cls(embeddings)


class ExactScann(Index):
    """Exact dot-product top-k through ScaNN's brute-force scorer: no [queries, items] score matrix,
    SIMD scoring and a parallel batched search. For bulk exact ranking: at 50k items it ranks ~17k
    queries/s on 2 cores where a matmul + top_k ranks ~6k (benchmarks/topn_throughput.py). Same
    answers as BruteForceIndex up to float summation order (near-ties may swap). Never saved: it is
    built from the embeddings in a second."""
    kind = "exact_scann"

    def __init__(self, embeddings: np.ndarray):
        from scann.scann_ops.py import scann_ops_pybind
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        with quiet():
            self.searcher = scann_ops_pybind.builder(self.embeddings, 10, "dot_product").score_brute_force().build()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores per query row, best first."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, len(self.embeddings))
        if len(q) >= 256:
            ids, scores = self.searcher.search_batched_parallel(q, final_num_neighbors=k, batch_size=256)
        else:
            ids, scores = self.searcher.search_batched(q, final_num_neighbors=k)
        return np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32)


class SparseExactIndex(Index):
    """Exact dot-product top-k for item vectors that are mostly zeros and never negative (the rules of
    `recsys.models.rules`: an item's value of one attribute and its popularity share, 2 of 101-257
    dimensions), without scoring the catalog.

    Fagin's threshold algorithm, one block of rows at a time: each dimension's items are kept sorted by
    their value there; a row takes the first items of every dimension its query weights (about 3k +
    its excluded items in all, shared by weight), and scores those exactly. An item not taken has
    every term at most its dimension's first value not taken (times the weight), and at most `max_nnz`
    nonzero terms, so its score is at most the sum of the `max_nnz` largest of those: a row whose k-th
    candidate beats that bound has its exact top-k. Other rows retry
    with four times the candidates; what is left when every list is exhausted is scored by brute force.
    Same lists as BruteForceIndex up to float summation order; the cost follows k and the number of
    dimensions a query touches, not the catalog (benchmarks/topn_throughput.py --rule). Never saved:
    built from the embeddings in well under a second per million items."""
    kind = "sparse_exact"

    def __init__(self, embeddings: np.ndarray):
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if (self.embeddings < 0).any():
            raise ValueError("sparse_exact needs item vectors without negative values")
        self.rows = sp.csr_matrix(self.embeddings)
        self.rows.sort_indices()
        self.max_nnz = int(np.diff(self.rows.indptr).max(initial=0))
        cols = self.rows.tocsc()
        n_dims = self.embeddings.shape[1]
        dim = np.repeat(np.arange(n_dims), np.diff(cols.indptr))
        # per dimension: items by value, largest first, ties to the lower index (the tie rule)
        by = np.lexsort((cols.indices, -cols.data, dim))
        self.ptr = cols.indptr.astype(np.int64)
        self.items = cols.indices[by].astype(np.int64)
        self.values = cols.data[by].astype(np.float64)
        self.lengths = np.diff(self.ptr)
        self._dense = None
        # rows per block: a candidate's sort key holds its row, its score's 32 bits and its item
        self._item_bits = max(1, (len(self.embeddings) - 1).bit_length())
        self._block_rows = min(4096, 1 << max(0, 32 - self._item_bits))

    @staticmethod
    def fits(embeddings: np.ndarray) -> bool:
        """Whether the vectors suit this index: no negative value, at most 1/8 of the entries nonzero,
        and at least 8 dimensions (a dense model's vectors never qualify)."""
        e = np.asarray(embeddings)
        if e.ndim != 2 or e.shape[1] < 8 or not len(e):
            return False
        return bool(np.count_nonzero(e) <= e.size / 8 and not (e < 0).any())

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores per query row, best first (ties: lower index)."""
        return self.search_many(np.atleast_2d(queries), k)

    def search_many(self, queries: np.ndarray, k: int,
                    exclude: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k per row, row r's excluded items skipped: (ids [n, k] -1 padded, scores [n, k])."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        n, n_items = len(q), len(self.embeddings)
        k = min(k, n_items)
        if exclude is None:
            exclude = sp.csr_matrix((n, n_items), dtype=np.int8)
        exclude = exclude.tocsr()
        ids = np.full((n, k), -1, dtype=np.int64)
        scores = np.zeros((n, k), dtype=np.float32)
        if k <= 0 or n == 0:
            return ids, scores
        for s in range(0, n, self._block_rows):
            part = slice(s, min(s + self._block_rows, n))
            ids[part], scores[part] = self._block(q[part], k, exclude[part])
        return ids, scores

    def _block(self, q: np.ndarray, k: int, exclude: sp.csr_matrix):
        n, n_items = len(q), len(self.embeddings)
        ids = np.full((n, k), -1, dtype=np.int64)
        scores = np.zeros((n, k), dtype=np.float32)
        n_excluded = np.diff(exclude.indptr)
        want = np.minimum(k, n_items - n_excluded)      # a row's list length (all but its exclusions)
        # candidates to take: 3x the list (the k-th must beat what is left: ~5% of a rule's rows retry,
        # against nearly all at 1x), plus its excluded items, which may be among them
        target = 3 * want + n_excluded + 16
        todo = np.flatnonzero(want > 0)
        while len(todo):
            done, exhausted = self._try(q[todo], want[todo], target[todo], exclude[todo], ids, scores, todo)
            left = ~done & ~exhausted
            rest = todo[~done & exhausted]
            if len(rest):   # every list taken whole and still not proven: score those rows outright
                if self._dense is None:
                    self._dense = BruteForceIndex(self.embeddings)
                ids[rest], scores[rest] = self._dense.search_many(q[rest], k, exclude[rest])
            todo = todo[left]
            target[todo] *= 4
        return ids, scores

    def _try(self, q, want, target, exclude, ids_out, scores_out, rows_out):
        """One round for rows `rows_out`: writes the proven rows' lists; returns (proven, every list taken)."""
        n = len(q)
        r, d = np.nonzero(q > 0)
        w = q[r, d].astype(np.float64)
        cut = self._cuts(r, d, w, n, target)           # items taken per (row, dimension)
        # candidates: the first `cut` items of each (row, dimension) list
        starts = np.repeat(self.ptr[d] - np.cumsum(cut) + cut, cut)
        rows = np.repeat(r.astype(np.int64), cut)
        items = self.items[np.arange(int(cut.sum()), dtype=np.int64) + starts]
        if exclude.nnz:
            kept = ~ranking.pairs_in(rows, items, exclude)
            rows, items = rows[kept], items[kept]
        sc = self._scores(q, rows, items)
        # bound on any item not taken: the sum of its at most max_nnz terms, each below its cut
        below = np.where(cut < self.lengths[d], self.values[np.minimum(self.ptr[d] + cut, len(self.values) - 1)], 0.0)
        terms = np.zeros(q.shape)
        terms[r, d] = w * below
        m = min(self.max_nnz, q.shape[1])
        bound = terms.sum(1) if m >= q.shape[1] else -np.partition(-terms, m - 1, axis=1)[:, :m].sum(1)
        exhausted = np.bincount(r, weights=cut < self.lengths[d], minlength=n) == 0
        rows, items, sc = self._ranked(rows, items, sc)
        first = np.searchsorted(rows, np.arange(n))
        have = np.bincount(rows, minlength=n)
        kth = np.full(n, np.inf)
        full = have >= want
        kth[full] = sc[first[full] + want[full] - 1]
        # strictly above the bound (with room for float32 rounding): no item outside can tie or beat it
        done = full & (kth > bound * (1 + 1e-5) + 1e-30)
        rank = np.arange(len(rows)) - first[rows]
        keep = done[rows] & (rank < want[rows])
        ids_out[rows_out[rows[keep]], rank[keep]] = items[keep]
        scores_out[rows_out[rows[keep]], rank[keep]] = sc[keep]
        return done, exhausted & ~done

    def _ranked(self, rows, items, sc):
        """Candidates sorted by (row, score descending, item), each (row, item) once: one sort of one
        64-bit key per candidate (row | order-preserving bits of -score | item), ~5x a lexsort."""
        bits = self._item_bits
        u = (sc.astype(np.float32) + np.float32(0)).view(np.uint32).astype(np.uint64)   # (+0: -0.0 ties 0.0)
        # float32 bits made unsigned-monotone (negatives flipped), then inverted: larger scores first
        mono = np.where(u & 0x80000000, ~u & 0xFFFFFFFF, u | 0x80000000)
        key = (rows.astype(np.uint64) << np.uint64(32 + bits)) | ((~mono & 0xFFFFFFFF) << np.uint64(bits)) \
            | items.astype(np.uint64)
        key.sort()
        if len(key):
            key = key[np.r_[True, key[1:] != key[:-1]]]   # an item taken from two of a row's lists
        mono = ~(key >> np.uint64(bits)) & 0xFFFFFFFF
        u = np.where(mono & 0x80000000, mono & 0x7FFFFFFF, ~mono & 0xFFFFFFFF)
        return ((key >> np.uint64(32 + bits)).astype(np.int64), (key & np.uint64((1 << bits) - 1)).astype(np.int64),
                u.astype(np.uint32).view(np.float32))

    def _cuts(self, r, d, w, n, target) -> np.ndarray:
        """How many items to take from each (row, dimension) list: the row's `target` shared in
        proportion to its weights (at least one each). Any cut is exact (the bound follows it); this one
        needs no search and, with a target of 3x the list, proves ~95% of a rule's rows at once (a
        threshold found by bisection took 2.5-3x longer: benchmarks/topn_throughput.py --rule)."""
        total = np.bincount(r, weights=w, minlength=n)
        return np.minimum(np.ceil(target[r] * w / total[r]).astype(np.int64), self.lengths[d])

    def _scores(self, q: np.ndarray, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Exact dot products of query rows `rows` with items `items` (over the items' nonzeros)."""
        ip = self.rows.indptr
        per = ip[items + 1] - ip[items]
        at = np.repeat(ip[items] - np.cumsum(per) + per, per) + np.arange(int(per.sum()))
        prod = q[np.repeat(rows, per), self.rows.indices[at]] * self.rows.data[at]
        out = np.zeros(len(items), dtype=np.float32)
        nonzero = per > 0
        if nonzero.any():
            out[nonzero] = np.add.reduceat(prod, (np.cumsum(per) - per)[nonzero])
        return out

    @classmethod
    def load(cls, directory: str, meta: dict, embeddings: np.ndarray) -> "SparseExactIndex":
        """Built from the item embeddings: it has no files of its own."""
        return cls(embeddings)


def exact(embeddings: np.ndarray) -> Index:
    """The exact index for these vectors: `SparseExactIndex` where they suit it, else brute force."""
    return SparseExactIndex(embeddings) if SparseExactIndex.fits(embeddings) else BruteForceIndex(embeddings)


class ScannIndex(Index):
    """ScaNN: tree partitioning, anisotropic hashing, exact reordering (dot product)."""
    kind = "scann"

    def __init__(self, searcher, embeddings: np.ndarray, params: dict):
        self.searcher, self.embeddings, self.params = searcher, embeddings, params
        # The pybind object under scann's Python wrapper: a single query is a ~50 us call, so the
        # wrapper's keyword handling and per-call dict lookups are worth skipping on the serving path.
        self._raw = getattr(searcher, "searcher", searcher)
        self._reorder = int(params["reorder"])
        self.n = len(embeddings)

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
        with quiet():
            searcher = b.build()
        return cls(searcher, embeddings, dict(params))

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

    def save(self, directory: str) -> dict:
        """Serialize the searcher into `directory` (local or URL)."""
        with fsio.staged_dir(directory) as local:   # ScaNN serializes to a local folder only
            self.searcher.serialize(local, relative_path=True)
        return {"n": self.n, "params": self.params}

    @classmethod
    def load(cls, directory: str, meta: dict, embeddings: np.ndarray) -> "ScannIndex":
        """The searcher serialized in `directory`."""
        from scann.scann_ops.py import scann_ops_pybind
        with fsio.local_copy(directory) as local:   # ScaNN loads from a local folder only
            searcher = scann_ops_pybind.load_searcher(local)
        return cls(searcher, embeddings, meta["params"])


# the kinds a version's index can be saved as, by the `kind` its metadata records
KINDS = {cls.kind: cls for cls in (BruteForceIndex, SparseExactIndex, ScannIndex)}


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


def build(embeddings: np.ndarray, cfg) -> Index:
    """`cfg.kind`, or for "auto": `SparseExactIndex` for sparse non-negative vectors (a rule's: exact
    and faster than any approximate index on them, at every catalog size), brute force below
    `cfg.brute_force_below` items, else ScaNN."""
    kind = cfg.kind
    if kind == "auto":
        kind = "sparse_exact" if SparseExactIndex.fits(embeddings) else \
            "brute_force" if len(embeddings) < cfg.brute_force_below else "scann"
    if kind == "brute_force":
        return BruteForceIndex(embeddings)
    if kind == "sparse_exact":
        return SparseExactIndex(embeddings)
    params = default_params(len(embeddings), cfg)
    if params["partitioning"] == "auto":
        # Unit-norm items: dot product is cosine, and spherical k-means (unit-norm centroids) ranks
        # leaves by it correctly; squared-L2 centroids have uneven norms that skew the leaf ranking.
        # On 1M x 64 normalised clustered vectors (1000 leaves, 20 searched) this lifts recall@10
        # from 0.89 to 0.94 (harder mixture) and from 0.973 to 0.984 (benchmarks/ann.py).
        params["partitioning"] = "spherical" if unit_norm(embeddings) else "generic"
    return ScannIndex.build(embeddings, params)


def recall_vs_exact(index: Index, embeddings: np.ndarray, queries: np.ndarray, ks=(10, 100)) -> dict:
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
