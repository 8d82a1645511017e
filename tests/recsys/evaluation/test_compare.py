"""A/B statistics: planted differences are found; identical or exchangeable models are not flagged."""
import numpy as np
import pytest

from recsys.evaluation import compare
from recsys.evaluation import report
from recsys.schema import RANKING_METRICS


def test_identical_arrays_have_no_difference():
    a = np.random.default_rng(0).random(500)
    s = compare.paired_stats(a, a.copy())
    assert s.delta == 0 and s.p_value == 1.0 and s.ci_low == 0 == s.ci_high
    assert compare.verdict(s, "ndcg@20").startswith("no significant difference")


def test_planted_difference_is_found():
    rng = np.random.default_rng(1)
    a = (rng.random(2000) < 0.2).astype(float)                 # hit or miss per user
    b = np.where(rng.random(2000) < 0.15, 1.0, a)              # B fixes 15% of users
    s = compare.paired_stats(a, b)
    assert s.p_value < 0.01 and s.ci_low > 0 and s.delta == pytest.approx(b.mean() - a.mean())
    assert compare.verdict(s, "recall@20").startswith("B is better")
    assert compare.verdict(compare.paired_stats(b, a), "recall@20").startswith("B is worse")


def test_false_positive_rate_over_seeds_is_near_alpha():
    """Two models whose per-user metrics are exchangeable: flagged in about 5% of repetitions."""
    flagged = 0
    reps = 200
    for seed in range(reps):
        rng = np.random.default_rng(seed)
        base = rng.beta(0.5, 2.0, 300)                         # users differ a lot; models do not
        a = np.clip(base + rng.normal(0, 0.1, 300), 0, 1)
        b = np.clip(base + rng.normal(0, 0.1, 300), 0, 1)
        s = compare.paired_stats(a, b, n_boot=200, n_perm=400, seed=seed)
        flagged += s.p_value < 0.05
    assert flagged / reps <= 0.09, flagged


def test_compare_versions_end_to_end(served, tmp_path):
    root, v = served["root"], served["versions"]
    same = compare.compare(root, v["mf"], v["mf"], ks=(10, 20), primary="ndcg@20")
    assert same.primary.delta == 0 and same.verdict.startswith("no significant difference")
    planted = compare.compare(root, v["popularity"], v["mf"], ks=(10, 20), primary="ndcg@20")
    assert planted.verdict.startswith("B is better"), planted.verdict
    names = {s.name for s in planted.segments}
    assert {"light users", "medium users", "heavy users", "new users", "returning users"} <= names
    assert any(n.startswith("head items") for n in names) and any(n.startswith("tail items") for n in names)
    paths = report.write_report(root, planted, str(tmp_path / "report"))
    html = open(paths["html"]).read()
    # a title naming the models, one verdict, every section, every plot
    assert html.count("<h1>") == 1 and "<title>mf (" in html and " vs popularity (" in html
    assert html.count("B is better") == 1
    for section in ("What was compared", "Metrics", "Segments", "Popularity bias", "Sample recommendations",
                    "Item embeddings of mf"):
        assert f"<h2>{section}" in html, section
    assert html.count("data:image/png;base64,") == 6     # metrics, deltas, segments, bias, coverage, map
    assert "Benjamini-Hochberg" in html and "`" not in html and "{'" not in html   # no markdown or dict leaks
    md = open(paths["md"]).read()
    assert "| **ndcg@20** |" in md and "p=" not in md
    # a segment with no users says so instead of a statistic (no new users in this split)
    new_users = next(s for s in planted.segments if s.name == "new users")
    assert new_users.n_users == 0 and new_users.too_few and "| new users | 0 | too few users |" in md
    # adjusted p-values in the report, the raw ones kept in comparison.json
    data = __import__("json").load(open(paths["json"]))
    row = next(r for r in data["metrics"] if r["metric"] == "ndcg@20")
    assert row["p_adjusted"] >= row["p_value"] > 0
    assert data["embeddings"][0]["neighbour_agreement"] > data["embeddings"][0]["random_agreement"]
    assert sum(data["context"]["popularity_deciles"]["a"]) == pytest.approx(1.0)


def test_benjamini_hochberg_adjustment_and_too_few_users_are_left_out():
    rows = [compare.PairedStats(100, 0, 0, 0, p_value=p, name=str(i)) for i, p in enumerate([0.01, 0.04, 0.03, 0.5])]
    rows.append(compare.PairedStats(3, 0, 0, 0, p_value=0.001, name="tiny", too_few=True))
    out = compare.adjust(rows)
    # BH: p_(i) * m / i, made monotone from the top: 0.01*4/1, 0.03*4/2 -> 0.06, 0.04*4/3 -> 0.0533.. -> 0.0533
    assert [round(r.p_adjusted, 4) for r in out[:4]] == [0.04, 0.0533, 0.0533, 0.5]
    assert out[4].p_adjusted is None
    assert report.fmt_p(0.0002) == "< 0.001" and report.fmt_p(0.0234) == "0.023"


@pytest.mark.parametrize("metric", RANKING_METRICS)
def test_every_metric_the_config_accepts_as_primary_is_paired(served, metric):
    """nightly.primary_metric accepts exactly the per-user ranking metrics, and compare pairs the one
    chosen whichever it is (mrr@20 used to pass validation and end compare in a StopIteration)."""
    from recsys.config import from_dict
    assert from_dict({"nightly": {"primary_metric": f"{metric}@20"}}).nightly.primary_metric == f"{metric}@20"
    root, v = served["root"], served["versions"]
    c = compare.compare(root, v["popularity"], v["mf"], ks=(10, 20), primary=f"{metric}@20")
    assert c.primary.name == f"{metric}@20" and any(r.name == f"{metric}@20" for r in c.metrics)
    assert c.primary.delta == pytest.approx(float(np.mean(c.per_user_delta)))


def test_a_primary_metric_that_is_not_computed_is_a_config_error_or_a_data_error(served):
    from recsys.config import from_dict
    from recsys.errors import ConfigError, DataError
    for bad in ("coverage@20", "novelty@20", "recall@7", "precision@20"):
        with pytest.raises(ConfigError, match="nightly.primary_metric"):
            from_dict({"nightly": {"primary_metric": bad}})
    with pytest.raises(DataError, match="primary metric 'recall@7' is not computed"):
        compare.compare(served["root"], served["versions"]["popularity"], served["versions"]["mf"], ks=(10, 20),
                        primary="recall@7")


def test_the_gate_holds_a_candidate_that_loses_a_guarded_slice(served):
    """With the overall check waved through (tolerance 1), popularity against production mf still loses
    most of mf's recall on short histories and new items (here: every user and item): the slice guard
    holds it and says why; without the guard it would be published."""
    from recsys.config import GateConfig
    root, v = served["root"], served["versions"]
    candidates = {"popularity": {"version": v["popularity"], "metrics": {"recall@20": 1.0}}}
    args = (root, candidates, v["mf"], 0.0, served["dataset"].id, (10, 20), "recall@20", 1.0)
    held = compare.gate(*args, gate_config=GateConfig(max_slice_loss=0.2, new_item_days=10_000, short_history=10_000))
    assert not held.publish and "held: short histories" in held.reason, held.reason
    assert {s["name"].split(" (")[0] for s in held.slices} == {"short histories", "new items"}
    assert all(s["candidate"] < 0.8 * s["production"] for s in held.slices)
    free = compare.gate(*args, gate_config=GateConfig(max_slice_loss=0.0))
    assert free.publish and free.slices == []


def test_activity_segments_count_the_history_when_nothing_is_excluded():
    """Under `exclusion: none` the excluded items are empty; light / heavy users are still told apart
    by what they did (the query history), not by row order."""
    from types import SimpleNamespace
    import numpy as np
    import scipy.sparse as sp
    n, n_items = 30, 10
    history = np.full((n, 20), -1)
    for u in range(n):
        history[u, :20 - (u // 10) * 9] = u % n_items     # users 0-9: 20 items, 10-19: 11, 20-29: 2
    relevant = sp.csr_matrix((np.ones(n), (np.arange(n), np.arange(n) % n_items)), shape=(n, n_items))
    es = SimpleNamespace(exclude=sp.csr_matrix((n, n_items)), history=history, relevant=relevant,
                         user_idx=np.arange(n))
    topk = np.tile(np.arange(n_items), (n, 1))

    def result(per_user):
        ev = SimpleNamespace(users=np.arange(n), per_user={"recall@20": per_user}, topk=topk)
        return SimpleNamespace(evaluation=ev, eval_set=es, train_item_counts=np.ones(n_items))
    heavy_better = (np.arange(n) < 10).astype(float)
    segs = {s.name: s for s in compare.segments(result(np.zeros(n)), result(heavy_better), 20, "recall@20")}
    assert segs["heavy users"].delta == 1.0 and segs["light users"].delta == 0.0
