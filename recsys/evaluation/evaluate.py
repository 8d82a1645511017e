"""`recsys evaluate`: a saved version on a dataset split, full catalog, next to popularity.

The version's vocabularies need not match the dataset's (the nightly gate evaluates yesterday's
production version on today's split): users and items are matched by ID string; catalog items the
version does not know can still be relevant and simply count as misses.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from recsys import fsio, registry
from recsys.evaluation import metrics
from recsys.data.dataset import Dataset
from recsys.errors import DataError
from recsys.models.popularity import Popularity
from recsys.scoring import POPULARITY, LoadedVersion, query_vectors
from recsys.data.trainset import EvalSet, eval_sets


def version_scorer(lv: LoadedVersion, ev: EvalSet, catalog_ids: np.ndarray):
    """score_fn(rows) over the dataset's catalog for the users of `ev`, and each user's source."""
    col = lv.items.lookup(catalog_ids)              # version item index per catalog item, -1 unknown
    known_cols = np.flatnonzero(col >= 0)
    pop = np.full(len(catalog_ids), -np.inf, dtype=np.float32)
    pop[known_cols] = lv.popularity_scores[col[known_cols]]
    if not lv.personalized:
        return (lambda rows: np.broadcast_to(pop, (len(rows), len(pop))).copy()), \
            np.full(len(ev.user_ids), POPULARITY, dtype=object)
    u = lv.users.lookup(ev.user_ids)
    # Unknown users are served from the history they have (what the service does with fresh history).
    hist = [col[h[h >= 0]] if u[r] < 0 else np.zeros(0, np.int64) for r, h in enumerate(ev.history)]
    hist = [h[h >= 0] for h in hist]
    vecs, sources = query_vectors(lv, u, hist)
    items_known = lv.item_embeddings[col[known_cols]]

    def score(rows):
        out = np.broadcast_to(pop, (len(rows), len(pop))).copy()
        pers = sources[rows] != POPULARITY
        if pers.any():
            out[np.ix_(pers, known_cols)] = vecs[rows[pers]] @ items_known.T
            unknown = np.setdiff1d(np.arange(len(pop)), known_cols)
            out[np.ix_(pers, unknown)] = -np.inf
        return out
    return score, sources


def evaluate_version(root: str, version: str, split: str = "test", dataset_id: str | None = None,
                     ks=(10, 20, 50), lv: LoadedVersion | None = None) -> dict:
    """Metrics of `version` and of the dataset's popularity baseline; per-user arrays included."""
    lv = lv or LoadedVersion(root, version)
    if split != "test" and "refit" in lv.manifest:
        before = "" if lv.model == "popularity" else " (validation_metrics in its manifest.json are from before the refit)"
        raise DataError(f"--split={split!r}: version {lv.version} was refit on train + validation, so only "
                        f"test measures it{before}")
    dataset = Dataset.open(root, dataset_id or lv.manifest.get("dataset_id"))
    evals = eval_sets(dataset, lv.history_length)
    if split not in evals:
        raise DataError(f"--split={split!r}: dataset {dataset.id} has no such non-empty split "
                        f"(available: {', '.join(evals) or 'none'})")
    ev = evals[split]
    n_items = len(dataset.items)
    train_rows = dataset.read("train", ["item_idx", "timestamp"])
    train_counts = np.bincount(train_rows["item_idx"].to_numpy(), minlength=n_items).astype(np.float64)
    # The baseline knows what a popularity model published at the split's cut would: for test, train
    # and validation (the same rows a refit version falls back on), within the version's configured
    # recent window (model.popularity_window_days).
    known = (pd.concat([train_rows, dataset.read("validation", ["item_idx", "timestamp"])], ignore_index=True)
             if split == "test" else train_rows)
    window_days = int((lv.manifest.get("config") or {}).get("model", {}).get("popularity_window_days") or 0)
    known_counts = Popularity(n_items).fit(known["item_idx"].to_numpy(), known["timestamp"].to_numpy(np.int64),
                                           window_days).counts
    rows = np.arange(len(ev.user_ids))
    score, sources = version_scorer(lv, ev, dataset.items.ids)
    model_ev = metrics.evaluate(score, rows, ev.relevant, ev.exclude, ks, train_counts)
    pop_scores = (known_counts - np.arange(len(known_counts)) * 1e-9).astype(np.float32)
    pop_ev = metrics.evaluate(lambda r: np.broadcast_to(pop_scores, (len(r), len(pop_scores))).copy(),
                              rows, ev.relevant, ev.exclude, ks, train_counts)
    src = sources[model_ev.users]
    return {"version": lv.version, "model": lv.model, "dataset_id": dataset.id, "split": split,
            "model_metrics": model_ev.summary(), "popularity_metrics": pop_ev.summary(),
            "sources": {s: int((src == s).sum()) for s in np.unique(src)}, "user_sources": src,
            "evaluation": model_ev, "popularity_evaluation": pop_ev, "eval_set": ev,
            "train_item_counts": train_counts}


def format_table(result: dict, ks=(10, 20, 50)) -> str:
    """Model vs popularity, one metric per line."""
    m, p = result["model_metrics"], result["popularity_metrics"]
    names = [f"{n}@{k}" for k in ks for n in metrics.METRICS + metrics.LIST_METRICS]
    lines = [f"{'metric':<16}{result['model']:>12}{'popularity':>12}{'delta':>10}"]
    for n in names:
        if n in m:
            lines.append(f"{n:<16}{m[n]:>12.4f}{p[n]:>12.4f}{m[n] - p[n]:>+10.4f}")
    lines.append(f"users evaluated: {m['users']} ({', '.join(f'{k} {v}' for k, v in result['sources'].items())})")
    return "\n".join(lines)


def write_metrics(root: str, result: dict) -> str:
    """metrics.json inside the version directory (summaries only)."""
    path = fsio.join(registry.version_dir(root, result["version"]), "metrics.json")
    existing = json.loads(fsio.read_text(path)) if fsio.exists(path) else {}
    existing[result["split"]] = {"dataset_id": result["dataset_id"], "model": result["model_metrics"],
                                 "popularity": result["popularity_metrics"], "sources": result["sources"]}
    fsio.atomic_write_text(path, json.dumps(existing, indent=2, sort_keys=True))
    return path
