"""`recsys evaluate` in blocks equals the per-user definition; large evaluations sample users, say so,
and stay paired; the nightly gate reuses what was evaluated."""
import numpy as np
import pytest

from recsys import version
from recsys.data.trainset import eval_sets
from recsys.evaluation import compare, evaluate


def per_user_reference(lv, ev, catalog_ids, k):
    """recall@k and ndcg@k user by user, straight from the definitions: score every catalog item
    (the model's user vector, else its popularity), drop seen items, sort (ties: lower index)."""
    cols = np.array([lv.items.lookup([i])[0] for i in catalog_ids])
    recall, ndcg = {}, {}
    for r, uid in enumerate(ev.user_ids):
        rel = set(ev.relevant[r].indices)
        if not rel:
            continue
        row = lv.users.lookup([uid])[0]
        if lv.personalized and row >= 0:
            scores = lv.model.item_embeddings[np.maximum(cols, 0)] @ lv.model.user_embeddings[row]
        else:
            scores = lv.model.popularity.scores[np.maximum(cols, 0)].astype(np.float32)
        scores = np.where(cols >= 0, scores, -np.inf).astype(np.float32)
        scores[ev.exclude[r].indices] = -np.inf
        top = [i for i in np.argsort(-scores, kind="stable")[:k] if scores[i] > -np.inf]
        hits = [i in rel for i in top]
        recall[uid] = sum(hits) / len(rel)
        dcg = sum(h / np.log2(j + 2) for j, h in enumerate(hits))
        ndcg[uid] = dcg / sum(1 / np.log2(j + 2) for j in range(min(k, len(rel))))
    return recall, ndcg


@pytest.mark.parametrize("model", ["mf", "two_tower", "popularity"])
def test_batched_evaluation_equals_the_per_user_definition(served, model):
    root, ds = served["root"], served["dataset"]
    v = served["versions"][model]
    res = evaluate.evaluate_version(root, v, "test", ds.id, (5, 20), target_events=(), max_users=0)
    lv = version.load(root, v)
    ev = eval_sets(ds, lv.history_length)["test"]
    for k in (5, 20):
        recall, ndcg = per_user_reference(lv, ev, ds.items.ids, k)
        got_users = ev.user_ids[res.evaluation.users]
        assert list(got_users) == list(recall)
        np.testing.assert_allclose(res.evaluation.per_user[f"recall@{k}"], [recall[u] for u in got_users], atol=1e-9)
        np.testing.assert_allclose(res.evaluation.per_user[f"ndcg@{k}"], [ndcg[u] for u in got_users], atol=1e-9)


def test_a_large_evaluation_samples_users_and_reports_the_sample_size(served, tmp_path):
    root, ds = served["root"], served["dataset"]
    a, b = served["versions"]["popularity"], served["versions"]["mf"]
    full = evaluate.evaluate_version(root, b, "test", ds.id, (20,), max_users=0)
    res_a = evaluate.evaluate_version(root, a, "test", ds.id, (20,), max_users=40, sample_seed=3)
    res_b = evaluate.evaluate_version(root, b, "test", ds.id, (20,), max_users=40, sample_seed=3)
    assert res_b.metrics["users"] == 40 and res_b.users_total == full.metrics["users"] > 40 and res_b.sampled
    assert not full.sampled
    # the same seed on the same split: the same users, so the arms stay paired
    assert list(res_a.eval_set.user_ids) == list(res_b.eval_set.user_ids)
    assert set(res_b.eval_set.user_ids) < set(full.eval_set.user_ids[full.evaluation.users])
    other = evaluate.evaluate_version(root, b, "test", ds.id, (20,), max_users=40, sample_seed=4)
    assert list(other.eval_set.user_ids) != list(res_b.eval_set.user_ids)
    # compare pairs both arms on B's sample settings: results made with others are not reused
    calls = []
    monkey = pytest.MonkeyPatch()
    real = compare.evaluate_version
    monkey.setattr(compare, "evaluate_version", lambda *a, **k: calls.append(k) or real(*a, **k))
    try:
        c = compare.compare(root, a, b, "test", ds.id, (20,), "recall@20", results={a: res_a, b: res_b})
        assert len(calls) == 2 and all(k["max_users"] == 100_000 and k["sample_seed"] == 0 for k in calls)
        assert c.primary.n_users == full.metrics["users"] and c.primary.sampled_from == 0
        # a version configured to sample 40 users: both arms on that sample, the size in the verdict
        import shutil
        root2 = str(tmp_path / "root")
        shutil.copytree(root, root2)
        conf = version.read_manifest(root2, b)["config"]
        conf["evaluation"].update(max_users=40, sample_seed=3)
        version.update_manifest(root2, b, config=conf)
        calls.clear()
        c = compare.compare(root2, a, b, "test", ds.id, (20,), "recall@20")
    finally:
        monkey.undo()
    assert c.primary.n_users == 40 and c.primary.sampled_from == res_b.users_total == c.users_total
    assert f"40 users (a seeded sample of {res_b.users_total})" in c.verdict
    assert "users evaluated: 40 (a seeded sample of" in evaluate.format_table(res_b, (20,))


def test_the_gate_reuses_the_nightly_s_evaluations(served, monkeypatch):
    root, ds = served["root"], served["dataset"]
    vs = served["versions"]
    results = {v: evaluate.evaluate_version(root, v, "test", ds.id, (20,)) for v in vs.values()}
    calls = []
    monkeypatch.setattr(compare, "evaluate_version", lambda *a, **k: calls.append(a) or None)
    cands = {m: {"version": v, "metrics": results[v].metrics} for m, v in vs.items() if m != "two_tower"}
    decision = compare.gate(root, cands, vs["two_tower"], 0.0, ds.id, (20,), "recall@20", 0.0, results=results)
    assert calls == [] and decision.production == vs["two_tower"] and decision.verdict
    want = compare.paired_stats(results[vs["two_tower"]].evaluation.per_user["recall@20"],
                                results[decision.candidate].evaluation.per_user["recall@20"])
    assert decision.delta == pytest.approx(want.delta) and decision.p_value == pytest.approx(want.p_value)


@pytest.mark.parametrize("model", ["mf", "two_tower", "popularity"])
def test_through_the_exact_index_the_serving_path_loses_nothing(served, model):
    root, ds = served["root"], served["dataset"]
    r = evaluate.evaluate_through_index(root, served["versions"][model], "test", ds.id, (10, 20))
    assert r.index_kind == ("popularity" if model == "popularity" else "brute_force")
    assert r.overlap == pytest.approx(1.0) and all(abs(v) < 1e-12 for v in r.loss().values()), r.loss()
    assert r.metrics["users"] == r.exact.metrics["users"] > 0


def test_through_a_coarse_scann_index_the_loss_is_measured(served, tmp_path):
    """A ScaNN index that searches 3 of 4 leaves and re-scores nothing exactly misses part of the exact top-k: the report says how
    much, from the same users."""
    import shutil
    from recsys.config import from_dict
    from recsys.retrieval import index
    root = str(tmp_path / "root")
    shutil.copytree(served["root"], root)
    v = served["versions"]["mf"]
    lv = version.load(root, v)
    cfg = from_dict({"index": {"kind": "scann", "num_leaves": 4, "leaves_to_search": 3, "reorder": 1}}).index
    version.save_index(root, v, index.build(lv.model.item_embeddings, cfg))
    r = evaluate.evaluate_through_index(root, v, "test", served["dataset"].id, (10, 20))
    assert r.index_kind == "scann" and r.overlap < 1.0
    loss = r.loss()
    assert loss["recall@20"] == pytest.approx(r.exact.metrics["recall@20"] - r.metrics["recall@20"])
    assert r.to_dict()["top_k_overlap"] == r.overlap


@pytest.mark.parametrize("unknown_columns", [False, True])
def test_large_catalogs_rank_through_scann_s_exact_scorer_like_the_matmul(monkeypatch, unknown_columns):
    """At 4096+ items the scorer ranks with ScaNN's brute force (no score matrix) and applies the
    exclusions by over-fetching; the lists equal the dense matmul + top-k path's."""
    import scipy.sparse as sp
    from recsys.config import from_dict
    from recsys.evaluation import scorer
    from recsys.models import create
    from recsys.retrieval import index
    from recsys.models.popularity import Popularity
    rng = np.random.default_rng(0)
    n_users, n_items = 1500, 5000
    model = create("mf", from_dict({}).model)
    model.item_embeddings = rng.normal(size=(n_items, 16)).astype(np.float32)
    model.user_embeddings = rng.normal(size=(n_users, 16)).astype(np.float32)
    model.popularity = Popularity(n_items).fit(rng.integers(0, n_items, 20000))
    model.user_ids = np.arange(n_users).astype(str).astype(object)
    model.item_ids = np.arange(n_items).astype(str).astype(object)
    sizes = rng.choice([0, 5, 50, 900], n_users, p=[0.2, 0.5, 0.25, 0.05])
    cols = np.concatenate([rng.choice(n_items, s, replace=False) for s in sizes])
    exclude = sp.csr_matrix((np.ones(len(cols), np.int8), cols, np.r_[0, np.cumsum(sizes)]), shape=(n_users, n_items))
    catalog_cols = np.arange(n_items)
    if unknown_columns:   # a catalog with items the model never saw, in a different order
        catalog_cols = np.r_[rng.permutation(n_items), -np.ones(300, np.int64)]
        exclude = sp.hstack([exclude, sp.csr_matrix((n_users, 300), dtype=np.int8)]).tocsr()
    users = np.arange(n_users, dtype=np.int64)
    hist = np.full((n_users, 1), -1, np.int32)
    fast, src = scorer.rank(model, users, hist, exclude, 50, catalog_cols)
    monkeypatch.setattr(index, "EXACT_SCANN_FROM_ITEMS", 10 ** 9)
    dense, _ = scorer.rank(model, users, hist, exclude, 50, catalog_cols)
    assert (src == "personalized").all()
    assert (fast == dense).mean() > 0.999            # float summation order may swap a near-tie
    assert not np.any(exclude[np.arange(n_users)[:, None], np.maximum(fast, 0)].toarray() * (fast >= 0))


def test_versions_evaluated_together_share_one_read_of_the_split_and_get_the_same_results(served, monkeypatch):
    """The nightly evaluates every candidate on one HeldOut (one read of the splits, one EvalSet);
    each version's results are what it gets alone, and other settings build their own."""
    root, ds = served["root"], served["dataset"]
    alone = {m: evaluate.evaluate_version(root, v, "test", ds.id, (20,), max_users=0)
             for m, v in served["versions"].items()}
    built = []
    real = evaluate.held_out
    monkeypatch.setattr(evaluate, "held_out", lambda *a: built.append(a[1:]) or real(*a))
    shared = {}
    together = {m: evaluate.evaluate_version(root, v, "test", ds.id, (20,), max_users=0, shared=shared)
                for m, v in served["versions"].items()}
    lengths = {version.load(root, v).history_length for v in served["versions"].values()}
    assert len(built) == len(shared) == len(lengths)      # one per history length, not per version
    for m in alone:
        assert together[m].metrics == alone[m].metrics
        assert together[m].popularity_metrics == alone[m].popularity_metrics
        np.testing.assert_array_equal(together[m].evaluation.topk, alone[m].evaluation.topk)
        assert together[m].history_end == alone[m].history_end
    evaluate.evaluate_version(root, served["versions"]["mf"], "test", ds.id, (20,), max_users=10, shared=shared)
    assert len(built) == len(lengths) + 1 and built[-1][2][1] == 10
