"""`recsys evaluate`: a saved version on a dataset split, full catalog, next to popularity.

Scoring goes through recsys/evaluation/scorer.py, the same rule training validates with. The
version's vocabularies need not match the dataset's (the nightly gate evaluates yesterday's production
version on today's split).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys import version as version_mod
from recsys.data.dataset import Dataset
from recsys.data.trainset import EvalSet, eval_sets
from recsys.errors import DataError
from recsys.evaluation import metrics
from recsys.evaluation.scorer import evaluate_model, popularity_order
from recsys.retrieval.index import popularity_topk
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

    @property
    def sampled(self) -> bool:
        """Whether a seeded sample of the users was evaluated (evaluation.max_users)."""
        return self.users_total > self.metrics.get("users", 0)

    def metrics_entry(self) -> dict:
        """What the version's metrics file records for this split (recsys.version.write_metrics)."""
        return {"dataset_id": self.dataset_id, "model": self.metrics, "popularity": self.popularity_metrics,
                "sources": self.sources, "users_total": self.users_total}


def evaluate_version(root: str, version: str, split: str = "test", dataset_id: str | None = None,
                     ks=(10, 20, 50), lv: LoadedVersion | None = None, target_events=None,
                     max_users: int | None = None, sample_seed: int | None = None) -> EvaluationResult:
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
    dataset = Dataset.open(root, dataset_id or lv.manifest.get("dataset_id"))
    if target_events is None:
        target_events = version_mod.setting(lv.manifest, "evaluation", "target_events", ())
    evals = eval_sets(dataset, lv.history_length, target_events=tuple(target_events))
    if split not in evals:
        raise DataError(f"--split={split!r}: dataset {dataset.id} has no such non-empty split "
                        f"(available: {', '.join(evals) or 'none'})")
    ev = evals[split]
    if max_users is None:
        max_users = int(version_mod.setting(lv.manifest, "evaluation", "max_users", 100_000))
    if sample_seed is None:
        sample_seed = int(version_mod.setting(lv.manifest, "evaluation", "sample_seed", 0))
    users_total = ev.n_evaluable
    if max_users and users_total > max_users:
        ev = ev.sample(max_users, sample_seed)
    n_items = len(dataset.items)
    train_rows = dataset.read("train", ["item_idx", "timestamp"])
    train_counts = np.bincount(train_rows["item_idx"].to_numpy(), minlength=n_items).astype(np.float64)
    # The baseline knows what a popularity model published at the split's cut would: for test, train
    # and validation (the same rows a refit version falls back on), within the version's configured
    # recent window (model.popularity_window_days).
    known = (pd.concat([train_rows, dataset.read("validation", ["item_idx", "timestamp"])], ignore_index=True)
             if split == "test" else train_rows)
    window_days = int(version_mod.setting(lv.manifest, "model", "popularity_window_days", 0))
    baseline = Popularity(n_items).fit(known["item_idx"].to_numpy(), known["timestamp"].to_numpy(np.int64),
                                       window_days)
    model_ev, sources = evaluate_model(lv.model, ev, ks, train_counts, catalog_ids=dataset.items.ids)
    users = model_ev.users
    pop_topk = popularity_topk(popularity_order(baseline.scores.astype(np.float32)), max(ks), ev.exclude[users])
    pop_ev = metrics.from_topk(pop_topk, users, ev.relevant, ks, train_counts)
    src = sources[model_ev.users]
    return EvaluationResult(lv.version, lv.model_name, dataset.id, split, model_ev.summary(), pop_ev.summary(),
                            {s: int((src == s).sum()) for s in np.unique(src)}, src, model_ev, pop_ev, ev,
                            train_counts, users_total)


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
