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
