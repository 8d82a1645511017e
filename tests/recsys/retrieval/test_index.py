import numpy as np
import pytest

from recsys import ranking
from recsys.config import from_dict
from recsys.retrieval import index


def clustered(n=5000, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, d))
    return (centers[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def test_scann_equals_brute_force_when_searching_everything(tmp_path):
    emb = clustered()
    cfg = from_dict({"index": {"kind": "scann", "num_leaves": 16, "leaves_to_search": 16, "reorder": 5000}}).index
    ix = index.build(emb, cfg)
    assert ix.kind == "scann"
    q = emb[:50] + 0.05
    got, got_s = ix.search(q, 10)
    want, want_s = index.BruteForceIndex(emb).search(q, 10)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-4, atol=1e-4)
    # the batch path (search_many: ScaNN's batched search vs the exact index's matmul or exact scorer,
    # each row's excluded items skipped) gives the same lists too, for a block above the exact scorer's
    # 1024-query threshold
    import scipy.sparse as sp
    rng = np.random.default_rng(1)
    many = emb[rng.integers(0, len(emb), 1500)] + 0.05
    ex = sp.random(len(many), len(emb), density=0.002, format="csr", random_state=2, dtype=np.int8)
    ex.data[:] = 1
    got_b, got_bs = ix.search_many(many, 20, ex)
    want_b, want_bs = index.BruteForceIndex(emb).search_many(many, 20, ex)   # >= 1024 queries: exact scorer
    np.testing.assert_array_equal(got_b, want_b)
    np.testing.assert_allclose(got_bs, want_bs, rtol=1e-4, atol=1e-4)
    # and the plain reference: every score by a matmul, excluded items masked, top 20 by ranking's rule
    scores = many @ emb.T
    scores[ex.nonzero()] = -np.inf
    ref = np.argsort(-scores, axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(got_b, ref)
    meta = ix.save(str(tmp_path / "ix"))
    again = index.ScannIndex.load(str(tmp_path / "ix"), meta, emb)
    np.testing.assert_array_equal(again.search(q, 10)[0], got)


def test_default_scann_recall_is_measured():
    emb = clustered(20000)
    cfg = from_dict({"index": {"kind": "scann"}}).index
    ix = index.build(emb, cfg)
    rec = index.recall_vs_exact(ix, emb, emb[:200] + 0.05)
    assert rec["recall@10"] >= 0.9, rec


def test_auto_uses_brute_force_for_small_catalogs():
    assert index.build(clustered(100), from_dict({}).index).kind == "brute_force"


# ---- the contract every index kind passes ----------------------------------------------------------
KINDS = {"brute_force": {"kind": "brute_force"},
         "scann": {"kind": "scann", "num_leaves": 16, "leaves_to_search": 16, "reorder": 3000}}


@pytest.mark.parametrize("kind", list(KINDS))
def test_index_contract(kind, tmp_path):
    """Build, search (best first, true dot-product scores), save -> load -> same answers, filtered top-k."""
    emb = clustered(3000)
    ix = index.build(emb, from_dict({"index": KINDS[kind]}).index)
    assert ix.kind == kind and len(ix) == len(emb)
    q = emb[:20] + 0.05
    ids, scores = ix.search(q, 10)
    assert ids.shape == scores.shape == (20, 10)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, emb[ids]), rtol=1e-4, atol=1e-4)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    assert index.recall_vs_exact(ix, emb, q)["recall@10"] >= 0.95
    assert isinstance(ix, index.Index) and index.KINDS[kind] is type(ix)
    meta = ix.save(str(tmp_path / "ix"))
    again = index.KINDS[kind].load(str(tmp_path / "ix"), meta, emb)
    assert again.kind == kind
    np.testing.assert_array_equal(again.search(q, 10)[0], ids)
    # with exclusions: each row's excluded items skipped, the rest in the same order
    import scipy.sparse as sp
    ex = sp.csr_matrix((np.ones(20, np.int8), ids[:, 0], np.arange(21)), shape=(20, len(emb)))
    got, got_s = ix.search_many(q, 9, ex)
    np.testing.assert_array_equal(got, ids[:, 1:])
    np.testing.assert_allclose(got_s, scores[:, 1:], rtol=1e-5, atol=1e-5)
    # filtered top-k: blocked rows as a sorted array answer like the same rows as a mask
    rows = np.unique(ids[0, :5])
    mask = np.zeros(len(emb), bool)
    mask[rows] = True
    by_rows = ranking.search_row(ix, q[0], 10, blocked_rows=rows)
    by_mask = ranking.search_row(ix, q[0], 10, blocked=mask)
    np.testing.assert_array_equal(by_rows[0], by_mask[0])
    assert len(by_rows[0]) == 10 and not np.isin(by_rows[0], rows).any()


def test_building_and_loading_scann_prints_nothing(tmp_path):
    """ScaNN's C++ partitioner logs ("I0000 ... PartitionerFactory ran in") stay out of normal output."""
    import subprocess
    import sys
    code = ("import numpy as np; from recsys.retrieval import index; from recsys.config import from_dict; "
            "e = np.random.default_rng(0).normal(size=(5000, 8)).astype(np.float32); "
            "ix = index.build(e, from_dict({'index': {'kind': 'scann'}}).index); "
            f"m = ix.save({str(tmp_path)!r}); index.ScannIndex.load({str(tmp_path)!r}, m, e); index.ExactScann(e)")
    env = {k: v for k, v in __import__("os").environ.items() if k != "RECSYS_VERBOSE"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr == "" and run.stdout == ""


# ---- the exact index for a rule's sparse vectors ----------------------------------------------------
def rule_like(n=4000, d=40, multi=0.0, seed=0):
    """Item vectors shaped like attribute_popularity's: one value dimension (or two, for a share
    `multi` of items) weighted by popularity, plus a global popularity column; all distinct values."""
    rng = np.random.default_rng(seed)
    pop = rng.pareto(1.2, n) + rng.random(n) * 1e-3 + 1e-3
    emb = np.zeros((n, d + 1), dtype=np.float32)
    value = rng.integers(0, d, n)
    emb[np.arange(n), value] = pop
    two = rng.random(n) < multi
    emb[np.flatnonzero(two), rng.integers(0, d, two.sum())] += pop[two] * 0.5
    emb[:, d] = pop / pop.sum()
    return emb


def rule_queries(n, d, seed=1, negative=False):
    rng = np.random.default_rng(seed)
    q = np.zeros((n, d + 1), dtype=np.float32)
    for r in range(n):
        dims = rng.choice(d, rng.integers(1, 6), replace=False)
        q[r, dims] = rng.dirichlet(np.ones(len(dims)))
    q[:, d] = 1e-4
    if negative:   # a query may weigh a dimension negatively: still exact
        q[::3, rng.integers(0, d, len(q[::3]))] = -0.2
    q[5] = 0          # nothing to go on: every score is 0, the lower indices first
    return q


def reference(emb, q, k, ex=None):
    """Every score by a matmul (float64), excluded items masked, top k by ranking's rule."""
    scores = q.astype(np.float64) @ emb.T.astype(np.float64)
    if ex is not None:
        scores[ex.nonzero()] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(scores, top, 1) == -np.inf, -1, top)


@pytest.mark.parametrize("multi,negative", [(0.0, False), (0.3, True)])
def test_sparse_exact_gives_the_brute_force_lists(multi, negative):
    """The threshold algorithm scores a few items per row, yet returns exactly the full ranking's top k,
    with exclusions, items with two values, negative query weights, an all-zero query, and rows that
    must retry (k larger than the first cut) or fall back to scoring everything."""
    import scipy.sparse as sp
    import time
    emb = rule_like(multi=multi)
    q = rule_queries(600, 40, negative=negative)
    ix = index.SparseExactIndex(emb)
    assert index.SparseExactIndex.fits(emb) and ix.max_nnz == (3 if multi else 2)
    ex = sp.random(len(q), len(emb), density=0.01, format="csr", random_state=4, dtype=np.int8)
    ex.data[:] = 1
    # each row also excludes its own best items, so the first cut must reach further
    best = reference(emb, q, 30)
    ex = (ex + sp.csr_matrix((np.ones(best.size, np.int8), (np.repeat(np.arange(len(q)), 30), best.ravel())),
                             shape=ex.shape)).tocsr()
    ex.data[:] = 1
    for k in (1, 20, 300):
        got, got_s = ix.search_many(q, k, ex)
        want = reference(emb, q, k, ex)
        # the same lists but where two scores agree to float32 precision (either order is exact)
        assert (got == want).mean() > 0.999
        true = np.where(got >= 0, np.einsum("qd,qkd->qk", q.astype(np.float64), emb[np.maximum(got, 0)].astype(np.float64)), 0)
        best = np.where(want >= 0, np.einsum("qd,qkd->qk", q.astype(np.float64), emb[np.maximum(want, 0)].astype(np.float64)), 0)
        np.testing.assert_allclose(true, best, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(got_s, true, rtol=1e-5, atol=1e-9)
        assert not ranking.in_rows(got, ex).any() and ((got >= 0) == (want >= 0)).all()
        assert all(len(set(r[r >= 0])) == (r >= 0).sum() for r in got)
    np.testing.assert_array_equal(ix.search(q[:50], 20)[0], reference(emb, q[:50], 20))
    # a row with every item excluded gets an empty list; k above the catalog gets the whole catalog
    small = emb[:30]
    all_out = sp.csr_matrix(np.ones((2, 30), dtype=np.int8))
    all_out[1, :] = 0
    all_out.eliminate_zeros()
    got, _ = index.SparseExactIndex(small).search_many(q[:2], 50, all_out)
    assert (got[0] == -1).all()
    np.testing.assert_array_equal(got[1], reference(small, q[1:2], 30)[0])
    # the point of it: the cost follows k, not the catalog (a looser check than a benchmark: 20x)
    big = rule_like(n=200_000, d=100, seed=5)
    qb = rule_queries(2000, 100, seed=6)
    t0 = time.perf_counter()
    fast, _ = index.SparseExactIndex(big).search_many(qb, 20)
    sparse_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow, _ = index.BruteForceIndex(big).search(qb, 20)
    assert sparse_s < (time.perf_counter() - t0)
    np.testing.assert_array_equal(fast, slow)


def test_sparse_exact_is_chosen_for_rules_only(tmp_path):
    """auto: a rule's vectors get sparse_exact (saved as a kind with no files; loaded from the
    embeddings); a model's dense or signed vectors never do."""
    cfg = from_dict({}).index
    emb = rule_like(n=300)
    ix = index.build(emb, cfg)
    assert ix.kind == "sparse_exact" and index.exact(emb).kind == "sparse_exact"
    assert index.build(clustered(300), cfg).kind == "brute_force" and index.exact(clustered(300)).kind == "brute_force"
    signed = emb.copy()
    signed[0, 0] = -1
    assert not index.SparseExactIndex.fits(signed) and not index.SparseExactIndex.fits(emb[:, :5])
    with pytest.raises(ValueError, match="negative"):
        index.SparseExactIndex(signed)
    meta = ix.save(str(tmp_path / "ix"))
    again = index.KINDS["sparse_exact"].load(str(tmp_path / "ix"), meta, emb)
    q = rule_queries(10, 40)
    np.testing.assert_array_equal(again.search(q, 10)[0], ix.search(q, 10)[0])
    # one request through the service's path: seen rows skipped, the rest in order
    ids, _ = ix.search(q[:1], 15)
    got, _ = ranking.search_row(ix, q[0], 10, blocked_rows=np.sort(ids[0, :5]))
    np.testing.assert_array_equal(got, ids[0, 5:15])
