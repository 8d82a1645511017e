"""Offline A/B: two versions on the same held-out users, paired statistics, segments, a verdict.

Statistics are over users (the unit that is randomized online):
- the effect is the mean of per-user differences B - A;
- its 95% confidence interval is a paired bootstrap over users (percentile method);
- the p-value is a paired sign-flip permutation test (exact in distribution under "no difference",
  no normality assumption: ranking metrics are mostly zeros and ties).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from recsys.errors import DataError
from recsys.evaluation.evaluate import EvaluationResult, evaluate_version, evaluation_settings
from recsys.evaluation import metrics
from recsys.evaluation.metrics import Evaluation

DEFAULT_METRICS = ("recall", "ndcg")
# segments with fewer users than this get "too few users" instead of a CI and a p-value
MIN_SEGMENT_USERS = 30
ADJUSTMENT = "Benjamini-Hochberg"


@dataclass
class PairedStats:
    """B - A on one metric (or within one segment), paired over the same users."""
    n_users: int
    a: float
    b: float
    delta: float
    ci_low: float = 0.0
    ci_high: float = 0.0
    p_value: float = 1.0
    relative: float = 0.0
    name: str = ""            # the metric or the segment
    sampled_from: int = 0     # evaluable users the n_users were sampled from (0: not sampled)
    p_adjusted: float | None = None   # Benjamini-Hochberg within its family (metrics, or segments)
    too_few: bool = False     # a segment with fewer than MIN_SEGMENT_USERS users: no statistic shown


@dataclass
class Arm:
    version: str
    model: str
    sources: dict             # source -> evaluated users answered from it


@dataclass
class Comparison:
    """What `recsys compare` found; `to_dict()` is comparison.json."""
    a: Arm
    b: Arm
    dataset_id: str
    split: str
    primary_metric: str
    alpha: float
    metrics: list             # [PairedStats] per metric
    list_level: dict          # coverage@k: {"a": .., "b": ..}
    segments: list            # [PairedStats] per segment
    verdict: str
    primary: PairedStats
    per_user_delta: np.ndarray
    popularity_metrics: dict = field(default_factory=dict)
    users_total: int = 0      # evaluable users; more than primary.n_users when a sample was evaluated
    # (A's, B's) EvaluationResult: the lists and held-out rows the report shows (not in to_dict)
    results: tuple = field(default=(), repr=False)

    def to_dict(self) -> dict:
        """comparison.json: every field as plain data (rows keyed `metric` / `segment` by what they are)."""
        d = dataclasses.asdict(dataclasses.replace(self, results=()))
        d.pop("results")
        for key, label in (("metrics", "metric"), ("segments", "segment")):
            d[key] = [{label: r.pop("name"), **r} for r in d[key]]
        d["primary"] = {"metric": d["primary"].pop("name"), **d["primary"]}
        d["per_user_delta"] = np.asarray(self.per_user_delta).tolist()
        return d


@dataclass
class GateDecision:
    """The nightly gate: publish the best candidate only if it is not worse than production."""
    metric: str
    tolerance: float
    best: str                 # the candidate's model name
    candidate: str            # its version
    candidate_score: float
    publish: bool
    reason: str
    production: str | None = None
    production_score: float | None = None
    delta: float | None = None
    ci: list | None = None
    p_value: float | None = None
    verdict: str | None = None
    popularity_score: float | None = None
    best_rule: str | None = None            # the best rule among the candidates (popularity, ...)
    best_rule_score: float | None = None
    slices: list = field(default_factory=list)   # per guarded slice: production vs candidate (slice_losses)


def paired_stats(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, n_perm: int = 5000, seed: int = 0,
                 alpha: float = 0.05, name: str = "") -> PairedStats:
    """Mean difference B - A with a bootstrap CI and a sign-flip permutation p-value.

    Args:
        a, b: per-user values of the two arms, paired by position.
        n_boot: bootstrap resamples (CI).
        n_perm: random sign flips (p-value).
        seed: the random seed (results are reproducible).
        alpha: 1 - the CI's coverage.
        name: the metric or segment, carried into the result.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = b - a
    n = len(d)
    if n == 0:
        return PairedStats(0, 0.0, 0.0, 0.0, name=name)
    base = dict(n_users=int(n), a=float(a.mean()), b=float(b.mean()), delta=float(d.mean()), name=name)
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
    rel = base["delta"] / base["a"] if base["a"] else 0.0
    return PairedStats(**base, ci_low=float(lo), ci_high=float(hi), p_value=float(p), relative=float(rel))


def verdict(stats: PairedStats, metric: str, alpha: float = 0.05) -> str:
    """One line: B better / worse / no significant difference on the primary metric."""
    s = stats
    users = f"{s.n_users} users" + (f" (a seeded sample of {s.sampled_from})" if s.sampled_from > s.n_users else "")
    p = "p < 0.001" if s.p_value < 0.001 else f"p = {s.p_value:.3f}"
    ci = f"95% CI [{s.ci_low:+.4f}, {s.ci_high:+.4f}], {p}, {users}"
    if s.p_value < alpha and s.delta > 0:
        return f"B is better on {metric}: {s.a:.4f} -> {s.b:.4f} ({s.delta:+.4f}, {s.relative:+.1%}; {ci})"
    if s.p_value < alpha and s.delta < 0:
        return f"B is worse on {metric}: {s.a:.4f} -> {s.b:.4f} ({s.delta:+.4f}, {s.relative:+.1%}; {ci})"
    return f"no significant difference on {metric}: {s.a:.4f} vs {s.b:.4f} ({s.delta:+.4f}; {ci})"


def group_recall(ev: Evaluation, relevant, item_mask: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user recall@k restricted to relevant items in `item_mask`; returns (values, users with any)."""
    rel_full = relevant[ev.users].multiply(item_mask[None, :].astype(np.float32)).tocsr()
    rel_full.eliminate_zeros()
    n_rel = np.diff(rel_full.indptr)
    hits = metrics.hits_from_topk(ev.topk[:, :k], rel_full).sum(1)
    has = n_rel > 0
    return np.where(has, hits / np.maximum(n_rel, 1), 0.0), has


def segments(res_a: EvaluationResult, res_b: EvaluationResult, k: int, primary: str) -> list[PairedStats]:
    """Paired deltas of the primary metric within user and item segments."""
    ev_a, ev_b = res_a.evaluation, res_b.evaluation
    es = res_b.eval_set
    users = ev_b.users
    counts = res_b.train_item_counts
    # activity: the user's known items, cut at tertiles. The excluded items count them under
    # `exclusion: seen`; under bought / none they are purchases or nothing, so the query history (up to
    # its length) counts too, whatever the exclusion rule
    activity = np.maximum(np.asarray(es.exclude[users].sum(1)).ravel(),
                          (np.asarray(es.history)[users] >= 0).sum(1) if len(users) else 0)
    out = []
    a_vals, b_vals = ev_a.per_user[primary], ev_b.per_user[primary]
    if len(users):
        # equal-sized thirds by activity rank (quantile cuts collapse when many users have no history)
        third = np.argsort(np.argsort(activity, kind="stable"), kind="stable") * 3 // len(users)
        for name, mask in (("light users", third == 0), ("medium users", third == 1),
                           ("heavy users", third == 2),
                           # relative to the dataset's train split, so both versions are cut alike
                           ("new users", es.user_idx[users] < 0), ("returning users", es.user_idx[users] >= 0)):
            out.append(paired_stats(a_vals[mask], b_vals[mask], n_boot=500, n_perm=1000, name=name))
    # head = the most popular items that make up half of training interactions; tail = the rest
    order = np.argsort(-counts)
    cum = np.cumsum(counts[order]) / max(counts.sum(), 1)
    head = np.zeros(len(counts), dtype=bool)
    head[order[:int(np.searchsorted(cum, 0.5)) + 1]] = True
    for name, mask in ((f"head items (recall@{k})", head), (f"tail items (recall@{k})", ~head)):
        ra, has_a = group_recall(ev_a, es.relevant, mask, k)
        rb, has_b = group_recall(ev_b, es.relevant, mask, k)
        has = has_a & has_b
        out.append(paired_stats(ra[has], rb[has], n_boot=500, n_perm=1000, name=name))
    return out


def compare(root: str, version_a: str, version_b: str, split: str = "test", dataset_id: str | None = None,
            ks=(10, 20, 50), primary: str = "ndcg@20", alpha: float = 0.05,
            results: dict | None = None) -> Comparison:
    """Compare two versions on the same dataset split (default: B's dataset).

    Args:
        root: the artifact root.
        version_a, version_b: the baseline and the candidate.
        split: the held-out split both are scored on.
        dataset_id: the dataset (default: B's).
        ks: metric cutoffs.
        primary: the metric of the verdict.
        alpha: the significance level of the verdict.
        results: version -> EvaluationResult already computed on this split and dataset (the nightly
            evaluates each version once); the others are evaluated here.
    """
    from recsys import version as version_mod
    manifest_b = version_mod.read_manifest(root, version_b)
    dataset_id = dataset_id or manifest_b.get("dataset_id")
    # both on B's held-out rows: the candidate's evaluation.target_events decide what counts
    res_a, res_b = _paired_results(root, version_a, version_b, split, dataset_id, ks, results)
    ev_a, ev_b = res_a.evaluation, res_b.evaluation
    if primary not in ev_a.per_user:
        raise DataError(f"primary metric {primary!r} is not computed: one of "
                        f"{', '.join(metrics.METRICS)} at a k of {', '.join(map(str, ks))}")
    k_primary = int(primary.split("@")[1])
    rows = []
    # the primary metric is always paired, whichever it is; the others shown are the defaults
    name = primary.split("@")[0]
    names = DEFAULT_METRICS + (() if name in DEFAULT_METRICS else (name,)) + ("novelty",)
    for k in ks:
        for m in names:
            key = f"{m}@{k}"
            if key in ev_a.per_user:
                rows.append(_paired_metric(res_a, res_b, key))
    list_level = {k: {"a": res_a.metrics[k], "b": res_b.metrics[k]}
                  for k in res_a.metrics if k.startswith("coverage@")}
    rows = adjust(rows)
    segs = adjust([dataclasses.replace(s, too_few=s.n_users < MIN_SEGMENT_USERS)
                   for s in segments(res_a, res_b, k_primary, primary)])
    primary_stats = next(r for r in rows if r.name == primary)
    return Comparison(
        a=Arm(version_a, res_a.model, res_a.sources), b=Arm(version_b, res_b.model, res_b.sources),
        dataset_id=res_b.dataset_id, split=split, primary_metric=primary, alpha=alpha,
        metrics=rows, list_level=list_level, segments=segs,
        verdict=verdict(primary_stats, primary, alpha), primary=primary_stats,
        per_user_delta=ev_b.per_user[primary] - ev_a.per_user[primary],
        popularity_metrics=res_b.popularity_metrics, users_total=res_b.users_total, results=(res_a, res_b))


def adjust(rows: list) -> list:
    """The rows with Benjamini-Hochberg adjusted p-values over the family (segments with too few users
    take no part and get none)."""
    from scipy.stats import false_discovery_control
    tested = [i for i, r in enumerate(rows) if not r.too_few and r.n_users > 0]
    out = list(rows)
    if tested:
        adjusted = false_discovery_control([rows[i].p_value for i in tested], method="bh")
        for i, p in zip(tested, adjusted):
            out[i] = dataclasses.replace(rows[i], p_adjusted=float(p))
    return out


def _paired_metric(res_a: EvaluationResult, res_b: EvaluationResult, key: str) -> PairedStats:
    """The paired statistics of one per-user metric of both arms, with the sample they were drawn from."""
    p = paired_stats(res_a.evaluation.per_user[key], res_b.evaluation.per_user[key], name=key)
    return dataclasses.replace(p, sampled_from=res_b.users_total if res_b.sampled else 0)


def _paired_results(root: str, version_a: str, version_b: str, split: str, dataset_id: str, ks,
                    results: dict | None) -> tuple[EvaluationResult, EvaluationResult]:
    """Both arms on the same users: B's target events and user sample decide for both (a version
    trained under another config would otherwise sample other users); reuses `results` made alike."""
    from recsys import version as version_mod
    settings = evaluation_settings(version_mod.read_manifest(root, version_b))
    out, shared = [], {}
    for v in (version_a, version_b):
        r = (results or {}).get(v)
        if r is None or (r.split, r.dataset_id, r.settings) != (split, dataset_id, settings):
            r = evaluate_version(root, v, split, dataset_id, ks, target_events=settings[0], max_users=settings[1],
                                 sample_seed=settings[2], exclusion=settings[3], shared=shared)
        out.append(r)
    if not np.array_equal(out[0].eval_set.user_ids[out[0].evaluation.users],
                          out[1].eval_set.user_ids[out[1].evaluation.users]):
        raise DataError(f"compare: {version_a} and {version_b} were evaluated on different users of "
                        f"{dataset_id}/{split}; they cannot be paired")
    return out[0], out[1]


def slice_losses(res_a: EvaluationResult, res_b: EvaluationResult, metric: str, new_item_days: int,
                 short_history: int) -> list[PairedStats]:
    """B against A (production) on the slices the gate guards: held-out items first seen within
    `new_item_days` before the held-out period (recall@k on those items only), and users with at most
    `short_history` known interactions (the primary metric)."""
    ev_a, ev_b, es = res_a.evaluation, res_b.evaluation, res_b.eval_set
    users = ev_b.users
    k = int(metric.split("@")[1])
    out = []
    # known interactions (the history the split is queried with, up to its length), whatever the exclusion
    known = (np.asarray(es.history)[users] >= 0).sum(1) if len(users) else np.zeros(0)
    short = known <= short_history
    out.append(paired_stats(ev_a.per_user[metric][short], ev_b.per_user[metric][short], n_boot=500, n_perm=1000,
                            name=f"short histories (<= {short_history} items)"))
    first_seen = res_b.item_first_seen
    if first_seen is not None and np.isfinite(first_seen).any():
        # relative to the newest interaction the models could know
        cut = res_b.history_end
        new = np.isfinite(first_seen) & (first_seen >= cut - new_item_days * 86400)
        ra, has_a = group_recall(ev_a, es.relevant, new, k)
        rb, has_b = group_recall(ev_b, es.relevant, new, k)
        has = has_a & has_b
        out.append(paired_stats(ra[has], rb[has], n_boot=500, n_perm=1000,
                                name=f"new items (first seen in the last {new_item_days} days, recall@{k})"))
    return out


def gate(root: str, candidates: dict, production: str | None, popularity_score: float, dataset_id: str,
         ks, metric: str, tolerance: float, results: dict | None = None, gate_config=None) -> GateDecision:
    """Which candidate to publish, if any.

    The best candidate by `metric`, rules included (so a model is published only where it beats every
    rule the nightly trained), is published only if it is not worse than production (a paired
    comparison on the same users) beyond `tolerance`; on a first run (no production), if it beats the
    popularity baseline, or is a rule itself. With `gate_config` (the config's `gate:`), a candidate that
    loses significantly more than `max_slice_loss` of production's figure on a guarded slice (new items,
    short histories: `slice_losses`) is held, and the reason names the slice.

    Args:
        root: the artifact root.
        candidates: model name -> {"version": id, "metrics": {metric: value}}.
        production: the published version, or None.
        popularity_score: the popularity baseline's `metric` on the same split.
        dataset_id: the dataset both are compared on.
        ks: metric cutoffs.
        metric: the primary metric.
        tolerance: how much worse than production a candidate may be and still be published.
        results: version -> EvaluationResult on the test split of `dataset_id` (the nightly's own
            evaluations: nothing is evaluated twice); missing ones are evaluated here.
    """
    from recsys.models import MODELS
    # the best of all candidates, rules included: a model is published only where it beats every rule
    best = max(candidates, key=lambda k: candidates[k]["metrics"][metric])
    best_v = candidates[best]["version"]
    score = candidates[best]["metrics"][metric]
    rules = [k for k in candidates if k in MODELS and MODELS[k].rule]
    best_rule = max(rules, key=lambda k: candidates[k]["metrics"][metric]) if rules else None
    rule_score = candidates[best_rule]["metrics"][metric] if best_rule else None
    against_rules = "" if best_rule is None or best_rule == best else \
        f"; best rule {best_rule} {rule_score:.4f}"
    if production:
        res_a, res_b = _paired_results(root, production, best_v, "test", dataset_id, ks, results)
        p = _paired_metric(res_a, res_b, metric)
        publish = best_v != production and p.delta >= -tolerance
        reason = f"{best} {score:.4f} vs production {p.a:.4f} (delta {p.delta:+.4f}, tolerance {tolerance}){against_rules}"
        slices, lost = [], []
        if gate_config is not None and gate_config.max_slice_loss > 0 and best_v != production:
            slices = slice_losses(res_a, res_b, metric, gate_config.new_item_days, gate_config.short_history)
            lost = [s for s in slices if s.n_users >= MIN_SEGMENT_USERS and s.a > 0 and s.ci_high < 0
                    and (s.a - s.b) / s.a > gate_config.max_slice_loss]
        if publish and lost:
            publish = False
            reason += "; held: " + "; ".join(f"{s.name} {s.a:.4f} -> {s.b:.4f} ({(s.b - s.a) / s.a:+.0%}, "
                                            f"{s.n_users} users; gate.max_slice_loss {gate_config.max_slice_loss:.0%})"
                                            for s in lost)
        return GateDecision(metric, tolerance, best, best_v, score, publish=publish, reason=reason,
                            production=production, production_score=p.a, delta=p.delta,
                            ci=[p.ci_low, p.ci_high], p_value=p.p_value, verdict=verdict(p, metric),
                            best_rule=best_rule, best_rule_score=rule_score,
                            slices=[{"name": s.name, "production": s.a, "candidate": s.b, "users": s.n_users,
                                     "ci": [s.ci_low, s.ci_high]} for s in slices])
    return GateDecision(metric, tolerance, best, best_v, score,
                        publish=score > popularity_score or MODELS[best].rule,
                        reason=f"first run: {best} {score:.4f} vs popularity {popularity_score:.4f}{against_rules}",
                        popularity_score=popularity_score, best_rule=best_rule, best_rule_score=rule_score)
