"""The ranking rule (recsys/ranking.py): top-k primitives, popularity and searcher top-k, one row or a
block, and the one function the scorer, the through-index evaluation, batch and the service rank by."""
import numpy as np
import pytest
import scipy.sparse as sp

from recsys import ranking
from recsys.config import from_dict
from recsys.models.popularity import Popularity
from recsys.retrieval import index


def clustered(n=5000, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, d))
    return (centers[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def csr(rows, n_items):
    sizes = [len(r) for r in rows]
    return sp.csr_matrix((np.ones(sum(sizes), np.int8), np.concatenate([np.asarray(r, np.int64) for r in rows] or [[]]),
                          np.r_[0, np.cumsum(sizes)]), shape=(len(rows), n_items))


def test_top_k_masked_excludes_and_breaks_ties_by_index():
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 0.0]], dtype=np.float32)
    assert ranking.top_k_masked(scores, 3, csr([[1]], 5)).tolist() == [[2, 3, 0]]   # item 1 excluded
    assert ranking.top_k_masked(np.array([[5.0, 5.0, 5.0, 1.0]], np.float32), 2).tolist() == [[0, 1]]  # ties
    assert ranking.top_k_masked(np.array([[1.0, 2.0]], np.float32), 3, csr([[0]], 2)).tolist() == [[1, -1]]


def test_wide_top_k_paths_agree_with_a_stable_sort():
    """The three top_k_rows paths (stable sort, row by row, TensorFlow's top_k) give one tie rule."""
    rng = np.random.default_rng(0)
    few = rng.integers(0, 50, size=(3, 6000)).astype(np.float32)         # wide, few rows: row by row
    many = rng.integers(0, 50, size=(300, 6000)).astype(np.float32)      # wide block: TensorFlow
    for s in (few, many):
        want = np.argsort(-s, axis=1, kind="stable")[:, :20]
        np.testing.assert_array_equal(ranking.top_k_rows(s, 20), want)


def test_filtered_search_refills_to_k():
    emb = clustered(3000)
    ix = index.BruteForceIndex(emb)
    q = emb[0]
    top = ix.search(q[None], 50)[0][0]
    blocked = np.zeros(len(emb), bool)
    blocked[top[:40]] = True
    ids, _ = ranking.search_row(ix, q, 10, blocked=blocked)
    assert len(ids) == 10 and not blocked[ids].any()
    np.testing.assert_array_equal(ids, top[40:50])
    allowed = np.zeros(len(emb), bool)
    allowed[::97] = True
    ids, _ = ranking.search_row(ix, q, 10, allowed=allowed)
    assert len(ids) == 10 and allowed[ids].all()
    ids, _ = ranking.search_row(ix, q, 10, allowed=np.zeros(len(emb), bool))
    assert len(ids) == 0


def test_popular_row_skips_blocked_rows_and_keeps_allowed_ones():
    pop = Popularity(6, np.array([5, 9, 9, 1, 0, 7]))
    assert pop.order.tolist() == [1, 2, 5, 0, 3, 4]            # ties: the lower index first
    ids, counts = ranking.popular_row(pop, 3, blocked_rows=np.array([2]))
    assert ids.tolist() == [1, 5, 0] and counts.tolist() == [9, 7, 5]
    allowed = np.array([True, False, True, True, False, False])
    assert ranking.popular_row(pop, 2, allowed=allowed, blocked_rows=np.array([2]))[0].tolist() == [0, 3]


@pytest.mark.parametrize("kind", ["brute_force", "scann_default", "scann_small_reorder"])
def test_search_rows_equals_search_row_row_by_row(kind):
    """The batch job's path gives every user the service's answer (exactly, on an exact index): no
    blocked items, a few, enough to need a wider fetch than ScaNN re-scores, and most of the catalog."""
    import scipy.sparse as sp
    emb = clustered(6000, seed=1)
    cfg = {"brute_force": {"kind": "brute_force"}, "scann_default": {"kind": "scann"},
           "scann_small_reorder": {"kind": "scann", "reorder": 40}}[kind]
    ix = index.build(emb, from_dict({"index": cfg}).index)
    rng = np.random.default_rng(2)
    n_q = 300
    queries = emb[rng.integers(0, len(emb), n_q)] + 0.1 * rng.normal(size=(n_q, emb.shape[1])).astype(np.float32)
    sizes = rng.choice([0, 3, 30, 300, 5500], n_q, p=[0.3, 0.3, 0.2, 0.15, 0.05])
    rows = [np.sort(rng.choice(len(emb), s, replace=False)) for s in sizes]
    blocked = sp.csr_matrix((np.ones(sizes.sum(), np.int8), np.concatenate(rows), np.r_[0, np.cumsum(sizes)]),
                            shape=(n_q, len(emb)))
    ids, scores = ranking.search_rows(ix, queries, 20, blocked)
    overlap = []
    for r in range(n_q):
        want, want_s = ranking.search_row(ix, queries[r], 20, blocked_rows=rows[r])
        got = ids[r][ids[r] >= 0]
        assert len(got) == len(want) == 20 and not np.isin(got, rows[r]).any()
        if kind == "brute_force":
            np.testing.assert_array_equal(got, want)
            np.testing.assert_allclose(scores[r], want_s, rtol=1e-5, atol=1e-5)
        overlap.append(len(np.intersect1d(got, want)) / 20)
    # ScaNN's batched search uses other kernels than its one-query search, so near-ties in the
    # approximate scores can pick a different last candidate for a few rows
    assert np.mean(overlap) > (0.999 if kind == "scann_default" else 0.99), np.mean(overlap)


def test_popular_rows_is_the_order_minus_each_rows_blocked_items():
    import scipy.sparse as sp
    order = np.array([4, 2, 0, 1, 3])
    blocked = sp.csr_matrix(np.array([[0, 0, 0, 0, 0], [0, 0, 1, 0, 1], [1, 1, 1, 1, 0]], dtype=np.int8))
    np.testing.assert_array_equal(ranking.popular_rows(order, 3, blocked),
                                  [[4, 2, 0], [0, 1, 3], [4, -1, -1]])




@pytest.mark.parametrize("model", ["mf", "two_tower", "popularity"])
def test_the_scorer_through_index_evaluation_batch_and_service_give_the_same_lists(served, model):
    """One ranking owner: on an exact index, the offline scorer, the through-index evaluation, batch
    recommendations and single service requests return identical lists for the same users, query
    vectors and exclusions (popularity rows and unknown users included)."""
    from recsys import version
    from recsys.evaluation import evaluate, scorer
    from recsys.engine import Engine
    root, v = served["root"], served["versions"][model]
    engine = Engine.load(root, v)
    assert engine.index is None or engine.index.kind == "brute_force"
    k = 20
    # the through-index evaluation ranks like the exact scorer on the held-out protocol
    r = evaluate.evaluate_through_index(root, v, "test", served["dataset"].id, (10, k))
    np.testing.assert_array_equal(r.through_index.topk[:, :k], r.exact.evaluation.topk[:, :k])
    assert r.overlap == 1.0
    # batch (one block) and the service (one request at a time) on every known user and two unknown ones
    rows = np.r_[np.arange(len(engine.lv.users)), -1, -1]
    batch, _ = engine.recommend_users(rows, k)
    ids = engine.lv.items.ids
    for row, listed in zip(rows, batch):
        user = str(engine.lv.users.ids[row]) if row >= 0 else "nobody"
        served_ids = engine.recommend(user, k).items
        assert served_ids == [str(ids[i]) for i in listed if i >= 0], user
    # the offline scorer given the service's query vectors and exclusions (mf's stored vector is its
    # user vector; popularity has none) ranks the same lists
    if model != "two_tower":
        known = rows[rows >= 0]
        lv = version.load(root, v)
        offline, sources = scorer.rank(lv.model, known, np.full((len(known), 1), -1), engine.seen[known], k)
        np.testing.assert_array_equal(offline, batch[:len(known)])
        # a popularity model's answers are its own, not a fallback
        assert set(sources) == ({"personalized"} if model == "mf" else {"popularity"})


def test_one_request_and_a_block_choose_query_vectors_by_the_same_rule():
    """`query_vector` (a request) and `query_vectors` (a block) agree on every combination of known
    user, history and fresh history, with stored vectors and without."""
    class Toy:
        personalized = True
        item_embeddings = np.eye(3, dtype=np.float32)

        def user_vectors(self, user_idx, history):
            return self.item_embeddings[user_idx] * 2

        def history_vectors(self, history, user_idx):
            return self.item_embeddings[history[:, 0]] + (user_idx[:, None] >= 0)

    stored = np.arange(6, dtype=np.float32).reshape(2, 3)
    cases = [(u, h, f) for u in (-1, 1) for h in ([-1, -1], [2, -1]) for f in (False, True)]
    for kept in (None, stored):
        vecs, sources = ranking.query_vectors(Toy(), np.array([c[0] for c in cases]),
                                              np.array([c[1] for c in cases]), np.array([c[2] for c in cases]), kept)
        for (u, h, f), vec, src in zip(cases, vecs, sources):
            one, one_src = ranking.query_vector(Toy(), u, np.array(h), f, kept)
            assert one_src == src == ranking.query_source(True, u >= 0, h[0] >= 0, f)
            np.testing.assert_array_equal(np.zeros(3) if one is None else one, vec)
    assert sources.tolist() == [ranking.POPULARITY, ranking.POPULARITY, ranking.HISTORY, ranking.HISTORY,
                                ranking.PERSONALIZED, ranking.PERSONALIZED, ranking.PERSONALIZED, ranking.HISTORY]


def test_put_first_places_each_rows_own_items_ahead_minus_exclusions_and_filters():
    ids = np.array([[5, 4, 3, 2], [0, 1, 2, 3]])
    scores = np.array([[9, 8, 7, 6], [9, 8, 7, 6]], dtype=np.float32)
    first = sp.csr_matrix(np.array([[0, 3.5, 0, 2.2, 0, 0], [0, 0, 0, 0, 0, 0.0]]))   # row 0: item 1, then 3
    out, sc = ranking.put_first(ids.copy(), scores.copy(), first, csr([[], []], 6))
    assert out.tolist() == [[1, 3, 5, 4], [0, 1, 2, 3]] and sc[0, :2].tolist() == pytest.approx([3.5, 2.2])
    # an excluded or filtered-out own item is not put first
    out, _ = ranking.put_first(ids.copy(), scores.copy(), first, csr([[1], []], 6))
    assert out[0].tolist() == [3, 5, 4, 2]
    allowed = np.ones(6, bool)
    allowed[3] = False
    out, _ = ranking.put_first(ids[:1].copy(), scores[:1].copy(), first[:1], np.zeros(0, np.int64), allowed=allowed)
    assert out[0].tolist() == [1, 5, 4, 3]   # 3 is not put first (the ranking itself applied the filters)


def test_exact_scoring_of_a_filtered_remainder_keeps_the_tie_rule():
    """When the filters leave a small share of the catalog, a request scores the survivors exactly:
    tied items still come lower index first, as the block path (a masked matmul) ranks them."""
    emb = np.tile(np.eye(4, dtype=np.float32), (50, 1))      # 200 items, 4 distinct vectors: many ties
    ix = index.BruteForceIndex(emb)
    query = np.array([1.0, 0.5, 0.0, 0.0], dtype=np.float32)
    rows = np.sort(np.random.default_rng(0).choice(200, 170, replace=False))
    one, _ = ranking.search_row(ix, query, 10, blocked_rows=rows)
    block, _ = ix.search_many(query[None], 10, csr([rows], 200))
    assert one.tolist() == block[0].tolist()
