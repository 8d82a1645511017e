"""A/B statistics: planted differences are found; identical or exchangeable models are not flagged."""
import numpy as np
import pytest

from recsys.evaluation import compare
from recsys.evaluation import report


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
    paths = report.write_report(planted, str(tmp_path / "report"))
    html = open(paths["html"]).read()
    assert html.count("data:image/png;base64,") == 3 and "B is better" in html
    assert "| ndcg@20 |" in open(paths["md"]).read()
