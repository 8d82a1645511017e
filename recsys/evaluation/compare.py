"""Offline A/B: two versions on the same held-out users, paired statistics, segments, a verdict.

Statistics are over users (the unit that is randomized online):
- the effect is the mean of per-user differences B - A;
- its 95% confidence interval is a paired bootstrap over users (percentile method);
- the p-value is a paired sign-flip permutation test (exact in distribution under "no difference",
  no normality assumption: ranking metrics are mostly zeros and ties).
"""
from __future__ import annotations

import numpy as np

from recsys.evaluation.evaluate import evaluate_version
from recsys.evaluation.metrics import Evaluation

DEFAULT_METRICS = ("recall", "ndcg")


def paired_stats(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, n_perm: int = 5000, seed: int = 0,
                 alpha: float = 0.05) -> dict:
    """Mean difference B - A with a bootstrap CI and a sign-flip permutation p-value."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = b - a
    n = len(d)
    out = {"n_users": int(n), "a": float(a.mean()) if n else 0.0, "b": float(b.mean()) if n else 0.0,
           "delta": float(d.mean()) if n else 0.0}
    if n == 0:
        return {**out, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0, "relative": 0.0}
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    chunk = max(1, 2_000_000 // n)
    for s in range(0, n_boot, chunk):
        m = min(chunk, n_boot - s)
        boots[s:s + m] = d[rng.integers(0, n, (m, n))].mean(1)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    obs = abs(d.sum())
    if not d.any():
        p = 1.0
    else:
        extreme = 0
        for s in range(0, n_perm, chunk):
            m = min(chunk, n_perm - s)
            signs = rng.integers(0, 2, (m, n), dtype=np.int8) * 2 - 1
            extreme += int((np.abs(signs @ d) >= obs - 1e-12).sum())
        p = (extreme + 1) / (n_perm + 1)   # the observed labelling counts as one permutation
    rel = out["delta"] / out["a"] if out["a"] else 0.0
    return {**out, "ci_low": float(lo), "ci_high": float(hi), "p_value": float(p), "relative": float(rel)}


def verdict(stats: dict, metric: str, alpha: float = 0.05) -> str:
    """One line: B better / worse / no significant difference on the primary metric."""
    d, p = stats["delta"], stats["p_value"]
    ci = f"95% CI [{stats['ci_low']:+.4f}, {stats['ci_high']:+.4f}], p={p:.3g}, {stats['n_users']} users"
    if p < alpha and d > 0:
        return f"B is better on {metric}: {stats['a']:.4f} -> {stats['b']:.4f} ({d:+.4f}, {stats['relative']:+.1%}; {ci})"
    if p < alpha and d < 0:
        return f"B is worse on {metric}: {stats['a']:.4f} -> {stats['b']:.4f} ({d:+.4f}, {stats['relative']:+.1%}; {ci})"
    return f"no significant difference on {metric}: {stats['a']:.4f} vs {stats['b']:.4f} ({d:+.4f}; {ci})"


def group_recall(ev: Evaluation, relevant, item_mask: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user recall@k restricted to relevant items in `item_mask`; returns (values, users with any)."""
    rel_full = relevant[ev.users].multiply(item_mask[None, :].astype(np.float32)).tocsr()
    rel_full.eliminate_zeros()
    n_rel = np.diff(rel_full.indptr)
    hits = np.zeros(len(ev.users))
    top = ev.topk[:, :k]
    for r in range(len(ev.users)):
        row = rel_full.indices[rel_full.indptr[r]:rel_full.indptr[r + 1]]
        if len(row):
            hits[r] = np.isin(top[r], row).sum()
    has = n_rel > 0
    return np.where(has, hits / np.maximum(n_rel, 1), 0.0), has


def segments(res_a: dict, res_b: dict, k: int, primary: str) -> list[dict]:
    """Paired deltas of the primary metric within user and item segments."""
    ev_a, ev_b = res_a["evaluation"], res_b["evaluation"]
    es = res_b["eval_set"]
    users = ev_b.users
    counts = res_b["train_item_counts"]
    # activity: the user's seen (train [+ validation]) interactions, cut at tertiles
    activity = np.asarray(es.exclude[users].sum(1)).ravel()
    out = []
    a_vals, b_vals = ev_a.per_user[primary], ev_b.per_user[primary]
    if len(users):
        # equal-sized thirds by activity rank (quantile cuts collapse when many users have no history)
        third = np.argsort(np.argsort(activity, kind="stable"), kind="stable") * 3 // len(users)
        for name, mask in (("light users", third == 0), ("medium users", third == 1),
                           ("heavy users", third == 2),
                           # relative to the dataset's train split, so both versions are cut alike
                           ("new users", es.user_idx[users] < 0), ("returning users", es.user_idx[users] >= 0)):
            out.append({"segment": name, **paired_stats(a_vals[mask], b_vals[mask], n_boot=500, n_perm=1000)})
    # head = the most popular items that make up half of training interactions; tail = the rest
    order = np.argsort(-counts)
    cum = np.cumsum(counts[order]) / max(counts.sum(), 1)
    head = np.zeros(len(counts), dtype=bool)
    head[order[:int(np.searchsorted(cum, 0.5)) + 1]] = True
    for name, mask in ((f"head items (recall@{k})", head), (f"tail items (recall@{k})", ~head)):
        ra, has_a = group_recall(ev_a, es.relevant, mask, k)
        rb, has_b = group_recall(ev_b, es.relevant, mask, k)
        has = has_a & has_b
        out.append({"segment": name, **paired_stats(ra[has], rb[has], n_boot=500, n_perm=1000)})
    return out


def compare(root: str, version_a: str, version_b: str, split: str = "test", dataset_id: str | None = None,
            ks=(10, 20, 50), primary: str = "ndcg@20", alpha: float = 0.05) -> dict:
    """Compare two versions on the same dataset split (default: B's dataset)."""
    from recsys import registry
    dataset_id = dataset_id or registry.read_manifest(root, version_b).get("dataset_id")
    res_a = evaluate_version(root, version_a, split, dataset_id, ks)
    res_b = evaluate_version(root, version_b, split, dataset_id, ks)
    ev_a, ev_b = res_a["evaluation"], res_b["evaluation"]
    assert np.array_equal(ev_a.users, ev_b.users)   # same held-out users, row for row
    k_primary = int(primary.split("@")[1])
    rows = []
    for k in ks:
        for m in DEFAULT_METRICS + ("novelty",):
            key = f"{m}@{k}"
            if key in ev_a.per_user:
                rows.append({"metric": key, **paired_stats(ev_a.per_user[key], ev_b.per_user[key])})
    list_level = {k: {"a": res_a["model_metrics"][k], "b": res_b["model_metrics"][k]}
                  for k in res_a["model_metrics"] if k.startswith("coverage@")}
    primary_stats = next(r for r in rows if r["metric"] == primary)
    return {
        "a": {"version": version_a, "model": res_a["model"], "sources": res_a["sources"]},
        "b": {"version": version_b, "model": res_b["model"], "sources": res_b["sources"]},
        "dataset_id": res_b["dataset_id"], "split": split, "primary_metric": primary, "alpha": alpha,
        "metrics": rows, "list_level": list_level,
        "segments": segments(res_a, res_b, k_primary, primary),
        "verdict": verdict(primary_stats, primary, alpha),
        "primary": primary_stats,
        "per_user_delta": (ev_b.per_user[primary] - ev_a.per_user[primary]).tolist(),
        "popularity_metrics": res_b["popularity_metrics"],
    }
