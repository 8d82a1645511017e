"""`recsys evaluate`: a saved version on a dataset split, full catalog, next to popularity.

Scoring goes through recsys/evaluation/scorer.py, the same rule training validates with. The
version's vocabularies need not match the dataset's (the nightly gate evaluates yesterday's production
version on today's split).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys import ranking, version as version_mod
from recsys.data.dataset import Dataset
from recsys.data.trainset import EvalSet, eval_sets, read_split
from recsys.errors import DataError
from recsys.evaluation import metrics
from recsys.evaluation.scorer import evaluate_model, in_model_items, model_inputs
from recsys.models.popularity import Popularity
from recsys.version import LoadedVersion


@dataclass
class EvaluationResult:
    """A version's metrics on one split, beside the dataset's popularity baseline on the same users."""
    version: str
    model: str
    dataset_id: str
    split: str
    metrics: dict                 # summary: metric name -> mean over users (plus list-level metrics)
    popularity_metrics: dict      # the baseline, same users and rules
    sources: dict                 # source -> evaluated users answered from it
    user_sources: np.ndarray      # source per evaluated user (rows of `evaluation.users`)
    evaluation: metrics.Evaluation
    popularity_evaluation: metrics.Evaluation
    eval_set: EvalSet
    train_item_counts: np.ndarray  # training interactions per catalog item
    users_total: int = 0           # evaluable users before sampling (= metrics["users"] when not sampled)
    settings: tuple = ()           # (target events, max users, sample seed, exclusion): to pair, share them
    item_first_seen: np.ndarray | None = None   # per catalog item: its first known interaction (s; inf: none)
    history_end: float = 0.0       # the newest interaction the models could know (the slices' "now")

    @property
    def sampled(self) -> bool:
        """Whether a seeded sample of the users was evaluated (evaluation.max_users)."""
        return self.users_total > self.metrics.get("users", 0)

    def metrics_entry(self) -> dict:
        """What the version's metrics file records for this split (recsys.version.write_metrics)."""
        return {"dataset_id": self.dataset_id, "model": self.metrics, "popularity": self.popularity_metrics,
                "sources": self.sources, "users_total": self.users_total}


def evaluation_settings(manifest: dict, target_events=None, max_users: int | None = None,
                        sample_seed: int | None = None, exclusion: str | None = None) -> tuple:
    """(target events, max users, sample seed, exclusion) a version is evaluated with: the values given,
    else the version's own config. Versions evaluated with equal settings get the same users and rules."""
    if target_events is None:
        target_events = version_mod.setting(manifest, "evaluation", "target_events", ())
    if max_users is None:
        max_users = version_mod.setting(manifest, "evaluation", "max_users", 100_000)
    if sample_seed is None:
        sample_seed = version_mod.setting(manifest, "evaluation", "sample_seed", 0)
    if exclusion is None:
        exclusion = version_mod.exclusion(manifest, target_events)
    return tuple(target_events), int(max_users), int(sample_seed), exclusion


@dataclass
class HeldOut:
    """What evaluating any version on one dataset split needs besides the version: the (sampled)
    EvalSet, the training counts, and the rows a popularity model published at the split's cut knows.
    The same for every version evaluated with the same settings and history length, so a nightly reads
    and builds it once for all its candidates (`evaluate_version(shared=...)`)."""
    dataset: Dataset
    eval_set: EvalSet
    users_total: int
    train_counts: np.ndarray     # training interactions per catalog item
    known_items: np.ndarray      # item_idx of every row known at the split's cut
    known_times: np.ndarray      # their timestamps
    first_seen: np.ndarray       # per catalog item: its first known interaction (s; inf: none)
    history_end: float


def held_out(dataset: Dataset, split: str, history_length: int, settings: tuple) -> HeldOut:
    """Build the HeldOut of `split` for versions with this history length and `evaluation_settings`.

    Raises:
        DataError: the split is empty or missing.
    """
    target_events, max_users, sample_seed, exclusion = settings
    train = read_split(dataset, "train", target_events)
    evals = eval_sets(dataset, history_length, train=train, target_events=target_events, exclusion=exclusion,
                      splits=(split,))
    if split not in evals:
        raise DataError(f"--split={split!r}: dataset {dataset.id} has no such non-empty split "
                        f"(available: {', '.join(eval_sets(dataset, 1, train=train, target_events=target_events)) or 'none'})")
    ev = evals[split]
    users_total = ev.n_evaluable
    if max_users and users_total > max_users:
        ev = ev.sample(max_users, sample_seed)
    n_items = len(dataset.items)
    train_counts = np.bincount(train["item_idx"].to_numpy(), minlength=n_items).astype(np.float64)
    # The baseline knows what a popularity model published at the split's cut would: for test, train
    # and validation (the same rows a refit version falls back on).
    known = train[["item_idx", "timestamp"]]
    if split == "test":
        known = pd.concat([known, dataset.read("validation", ["item_idx", "timestamp"])], ignore_index=True)
    first_seen = np.full(n_items, np.inf)
    by_item = known.groupby("item_idx")["timestamp"].min()   # ufunc.at is ~10x slower on millions of rows
    first_seen[by_item.index.to_numpy()] = by_item.to_numpy(np.float64)
    history_end = float(known["timestamp"].max()) if len(known) else 0.0
    return HeldOut(dataset, ev, users_total, train_counts, known["item_idx"].to_numpy(),
                   known["timestamp"].to_numpy(np.int64), first_seen, history_end)


def evaluate_version(root: str, version: str, split: str = "test", dataset_id: str | None = None,
                     ks=(10, 20, 50), lv: LoadedVersion | None = None, target_events=None,
                     max_users: int | None = None, sample_seed: int | None = None,
                     progress=None, exclusion: str | None = None, shared: dict | None = None) -> EvaluationResult:
    """Full-catalog metrics of `version` and of the dataset's popularity baseline.

    Args:
        root: the artifact root.
        version: the version id.
        split: "validation" or "test".
        dataset_id: the dataset (default: the one the version was trained on).
        ks: metric cutoffs.
        lv: the version, when the caller has it loaded already.
        target_events: event types whose held-out rows count (None: the version's own
            evaluation.target_events; empty: all rows).
        max_users, sample_seed: evaluate a seeded sample of this many users when there are more
            (None: the version's own evaluation.max_users / sample_seed; 0: everyone). Versions
            evaluated on the same split with the same values get the same users.
        progress: receives users/s and ETA lines every 30 s of a long evaluation (None: quiet).
        exclusion: seen | bought | none (None: the version's own `exclusion`), what each user's
            ranking leaves out, as the service does.
        shared: a dict the caller keeps while it evaluates several versions on one dataset: the
            `HeldOut` data is built once per split, settings and history length and reused.
    Returns:
        The EvaluationResult.
    Raises:
        DataError: the split is empty or missing, or the version was refit on the split it is asked
            to be measured on.
    """
    lv = lv or version_mod.load(root, version)
    if split != "test" and "refit" in lv.manifest:
        before = f" (validation_metrics in its {version_mod.MANIFEST} are from before the refit)" \
            if lv.manifest.get("validation_metrics") else ""
        raise DataError(f"--split={split!r}: version {lv.version} was refit on train + validation, so only "
                        f"test measures it{before}")
    dataset_id = dataset_id or lv.manifest.get("dataset_id")
    settings = evaluation_settings(lv.manifest, target_events, max_users, sample_seed, exclusion)
    key = (dataset_id, split, lv.history_length, settings)
    data = (shared or {}).get(key)
    if data is None:
        data = held_out(Dataset.open(root, dataset_id), split, lv.history_length, settings)
        if shared is not None:
            shared[key] = data
    ev, train_counts, dataset = data.eval_set, data.train_counts, data.dataset
    # the baseline within the version's configured recent window (model.popularity_window_days)
    window_days = int(version_mod.setting(lv.manifest, "model", "popularity_window_days", 0))
    baseline = Popularity(len(dataset.items)).fit(data.known_items, data.known_times, window_days)
    model_ev, sources = evaluate_model(lv.model, ev, ks, train_counts, catalog_ids=dataset.items.ids,
                                       progress=progress)
    users = model_ev.users
    pop_topk = ranking.popular_rows(baseline.order, max(ks), ev.exclude[users])
    pop_ev = metrics.from_topk(pop_topk, users, ev.relevant, ks, train_counts)
    src = sources[model_ev.users]
    return EvaluationResult(lv.version, lv.model_name, dataset.id, split, model_ev.summary(), pop_ev.summary(),
                            {s: int((src == s).sum()) for s in np.unique(src)}, src, model_ev, pop_ev, ev,
                            train_counts, data.users_total, settings, data.first_seen, data.history_end)


def format_table(result: EvaluationResult, ks=(10, 20, 50)) -> str:
    """Model vs popularity, one metric per line."""
    m, p = result.metrics, result.popularity_metrics
    names = [f"{n}@{k}" for k in ks for n in metrics.METRICS + metrics.LIST_METRICS]
    lines = [f"{'metric':<16}{result.model:>12}{'popularity':>12}{'delta':>10}"]
    for n in names:
        if n in m:
            lines.append(f"{n:<16}{m[n]:>12.4f}{p[n]:>12.4f}{m[n] - p[n]:>+10.4f}")
    sample = f" (a seeded sample of {result.users_total})" if result.sampled else ""
    lines.append(f"users evaluated: {m['users']}{sample} ({', '.join(f'{k} {v}' for k, v in result.sources.items())})")
    return "\n".join(lines)


@dataclass
class IndexEvaluation:
    """A version ranked through its serving path (ANN index, the service's exclusion of seen items)
    beside exact full-catalog ranking, on the same users."""
    exact: EvaluationResult
    through_index: metrics.Evaluation
    index_kind: str
    overlap: float                 # mean share of the exact top-k the index path also returns (k = max ks)

    @property
    def metrics(self) -> dict:
        """The index path's metric summary."""
        return self.through_index.summary()

    def loss(self) -> dict:
        """Exact minus index path, per metric (what approximate search costs)."""
        exact, approx = self.exact.metrics, self.metrics
        return {k: exact[k] - approx[k] for k in approx if "@" in k and k in exact}

    def to_dict(self) -> dict:
        """What `recsys evaluate --through-index --json` prints."""
        return {"index_kind": self.index_kind, "exact": self.exact.metrics, "through_index": self.metrics,
                "loss": self.loss(), "top_k_overlap": self.overlap, "users_total": self.exact.users_total}


def evaluate_through_index(root: str, version: str, split: str = "test", dataset_id: str | None = None,
                           ks=(10, 20, 50), target_events=None, max_users: int | None = None,
                           sample_seed: int | None = None) -> IndexEvaluation:
    """Rank the evaluated users as the service would: each known user's stored vector (or a fresh
    history's vector, else popularity) searched in the version's index by `recsys.ranking.rank_rows`, the
    service's over-fetch and seen-item skipping, the items seen before the split's cut excluded.
    Reports the metrics beside exact ranking's (`evaluate_version`, same users).

    Raises:
        DataError: as `evaluate_version`; the version has no index (run `recsys index`).
    """
    lv = version_mod.load(root, version)
    exact = evaluate_version(root, version, split, dataset_id, ks, lv=lv, target_events=target_events,
                             max_users=max_users, sample_seed=sample_seed)
    ev, users = exact.eval_set, exact.evaluation.users
    if lv.personalized:
        idx = version_mod.load_index(root, version, lv.model.item_embeddings)
        kind = idx.kind
    else:
        idx, kind = None, "popularity"
    dataset = Dataset.open(root, exact.dataset_id)
    user_idx, cols, history = model_inputs(lv.model, ev, dataset.items.ids)
    user_idx, history = user_idx[users], history[users]
    # the exclusions, in the version's item space (catalog items it does not know cannot be returned)
    blocked, to_catalog = in_model_items(ev.exclude[users], cols, len(lv.items))
    vecs, sources = ranking.query_vectors(lv.model, user_idx, history)
    kmax = max(ks)
    top, _ = ranking.rank_rows(idx, vecs, sources, lv.popularity, kmax, blocked,
                               first=lv.model.own_items(user_idx, history))
    top = np.where(top >= 0, to_catalog[np.maximum(top, 0)], -1)
    approx = metrics.from_topk(top, users, ev.relevant, ks, exact.train_item_counts)
    exact_top = exact.evaluation.topk[:, :kmax]
    overlap = float(np.mean([len(np.intersect1d(a[a >= 0], b[b >= 0])) / max((b >= 0).sum(), 1)
                             for a, b in zip(top, exact_top)])) if len(users) else 1.0
    return IndexEvaluation(exact, approx, kind, overlap)
