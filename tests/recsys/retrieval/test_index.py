import numpy as np

from recsys.retrieval import index
from recsys.config import from_dict


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
    ix.save(str(tmp_path / "ix"))
    again = index.load(str(tmp_path / "ix"), emb)
    np.testing.assert_array_equal(again.search(q, 10)[0], got)


def test_default_scann_recall_is_measured():
    emb = clustered(20000)
    cfg = from_dict({"index": {"kind": "scann"}}).index
    ix = index.build(emb, cfg)
    rec = index.recall_vs_exact(ix, emb, emb[:200] + 0.05)
    assert rec["recall@10"] >= 0.9, rec


def test_auto_uses_brute_force_for_small_catalogs():
    assert index.build(clustered(100), from_dict({}).index).kind == "brute_force"


def test_filtered_search_refills_to_k():
    emb = clustered(3000)
    ix = index.BruteForceIndex(emb)
    q = emb[0]
    top = ix.search(q[None], 50)[0][0]
    blocked = np.zeros(len(emb), bool)
    blocked[top[:40]] = True
    ids, _ = index.search_filtered(ix, emb, q, 10, blocked=blocked)
    assert len(ids) == 10 and not blocked[ids].any()
    np.testing.assert_array_equal(ids, top[40:50])
    allowed = np.zeros(len(emb), bool)
    allowed[::97] = True
    ids, _ = index.search_filtered(ix, emb, q, 10, allowed=allowed)
    assert len(ids) == 10 and allowed[ids].all()
    ids, _ = index.search_filtered(ix, emb, q, 10, allowed=np.zeros(len(emb), bool))
    assert len(ids) == 0
