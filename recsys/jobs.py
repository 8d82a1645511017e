"""What the CLI and the nightly share: train a version, index a version."""
from __future__ import annotations

import time

import numpy as np

from recsys import fsio, registry
from recsys.config import Config
from recsys.data import trainset
from recsys.data.dataset import Dataset
from recsys.errors import DataError
from recsys.retrieval import index


def pick_warm_start(root: str, model_name: str, warm_start: str | None) -> str | None:
    """`auto`: the published version if it is this model, else the newest version of this model."""
    if warm_start in (None, "none", ""):
        return None
    if warm_start != "auto":
        registry.read_manifest(root, warm_start)
        return warm_start
    cur = registry.current_version(root)
    if cur and registry.read_manifest(root, cur).get("model") == model_name:
        return cur
    same = [v for v in registry.list_versions(root) if registry.read_manifest(root, v).get("model") == model_name]
    return same[-1] if same else None


def train_version(cfg: Config, model_name: str, dataset_id: str | None = None, warm_start: str | None = "auto",
                  progress=print, ts: trainset.TrainSet | None = None,
                  full_ts: trainset.TrainSet | None = None) -> str:
    """Train and save a version; returns its id.

    With `model.refit` (default) and a validation split, training early-stops on validation, then
    trains again from the start on train + validation for the epoch count validation chose, and that
    model is saved: the published version has learned from the most recent interactions before the
    test period. `ts` / `full_ts` (train, train + validation) may be passed in to share them.
    """
    from recsys import export
    root = cfg.resolve(cfg.artifacts.root)
    dataset = Dataset.open(root, dataset_id)
    ts = ts or trainset.from_dataset(dataset, cfg.model.history_length)
    refit = cfg.model.refit and "validation" in ts.evals

    def train_plus_validation():
        return full_ts or trainset.from_dataset(dataset, cfg.model.history_length, include_validation=True)

    progress(f"train {model_name}: dataset {dataset.id}: {len(ts.user_idx)} interactions, "
             f"{ts.n_users} users, {ts.n_items} items")
    if model_name == "popularity":
        pop_ts = train_plus_validation() if refit else ts
        version = export.save_version(None, pop_ts, cfg, "popularity", root, dataset.path,
                                      extra={"refit": {"interactions": len(pop_ts.item_idx)}} if refit else None)
        progress(f"train popularity: wrote version {version}" + (" (counts over train + validation)" if refit else ""))
        return version
    if model_name not in ("two_tower", "mf"):
        raise DataError(f"--model={model_name!r} is invalid: allowed: two_tower, mf, popularity")
    from recsys.models import training as train
    prev_version = pick_warm_start(root, model_name, warm_start)
    previous = None
    if prev_version:
        users, items = registry.load_vocabs(root, prev_version)
        previous = (users.ids, items.ids, registry.load_weights(root, prev_version))
    # A refit version has trained on rows that can sit in today's validation split (the days before its
    # test cut; an inactive user's leave-last-N row). Starting the epoch-choosing fit from it would
    # leak them into the choice, so that fit starts cold; the refit itself warm-starts.
    select_from = None if (prev_version and "refit" in registry.read_manifest(root, prev_version)) else previous
    ks = tuple(cfg.evaluation.ks)
    tr = train.fit(ts, model_name, cfg.model, ks, select_from, progress)
    val = {}
    if "validation" in ts.evals:
        val = train.evaluate_trained(tr, ts.evals["validation"], ks, ts.item_counts).summary()
    extra = {"warm_started_from": prev_version, "validation_metrics": val}
    if refit:
        best_epoch = tr.best_epoch
        extra["selection"] = {"best_epoch": best_epoch, "seconds": round(tr.train_seconds, 1), "epochs": tr.history,
                              "warm_started": select_from is not None}
        full = train_plus_validation()
        progress(f"train {model_name}: refit on train + validation ({len(full.user_idx)} interactions, "
                 f"{full.n_users} users) for the {best_epoch} epochs validation chose")
        tr = train.fit(full, model_name, cfg.model, ks, previous, progress, stop_after=best_epoch)
        extra["refit"] = {"epochs": tr.best_epoch, "interactions": int(len(full.user_idx)),
                          "users": int(full.n_users), "seconds": round(tr.train_seconds, 1)}
        tr.train_seconds += extra["selection"]["seconds"]
        ts = full
    version = export.save_version(tr, ts, cfg, model_name, root, dataset.path, extra=extra)
    progress(f"train {model_name}: wrote version {version} in {tr.train_seconds:.0f}s "
             f"({tr.examples_per_second:,.0f} examples/s, best epoch "
             f"{extra['selection']['best_epoch'] if refit else tr.best_epoch}"
             + (f", validation recall@{cfg.model.eval_k} {val.get(f'recall@{cfg.model.eval_k}', float('nan')):.4f}" if val else "")
             + (", refit on train + validation" if refit else "")
             + (f", warm-started from {prev_version}" if prev_version else "") + ")")
    return version


def build_version_index(cfg: Config, root: str, version: str, progress=print) -> dict:
    """Build, measure recall@10/@100 vs exact on real user embeddings, save under `<version>/index/`."""
    d = registry.version_dir(root, version)
    manifest = registry.read_manifest(root, version)
    if manifest["model"] == "popularity":
        progress(f"index: {version} is a popularity model; nothing to index")
        return {}
    items = registry.load_npy(fsio.join(d, "item_embeddings.npy"))
    users = registry.load_npy(fsio.join(d, "user_embeddings.npy"))
    t0 = time.time()
    idx = index.build(items, cfg.index)
    build_s = time.time() - t0
    rng = np.random.default_rng(0)
    sample = users[rng.choice(len(users), min(cfg.index.recall_sample_users, len(users)), replace=False)] \
        if len(users) else items[:cfg.index.recall_sample_users]
    rec = index.recall_vs_exact(idx, items, sample)
    info = {"kind": idx.kind, "n_items": int(len(items)), "build_seconds": round(build_s, 2),
            "params": getattr(idx, "params", {}), **rec}
    if rec["recall@10"] < cfg.index.min_recall_at_10:
        raise DataError(f"index: recall@10 vs brute force is {rec['recall@10']:.3f}, below "
                        f"index.min_recall_at_10={cfg.index.min_recall_at_10}; raise index.leaves_to_search "
                        f"or index.reorder (current: {info['params']})")
    idx.save(fsio.join(d, "index"))
    registry.update_manifest(root, version, index=info)
    progress(f"index: {version}: {idx.kind} over {len(items)} items in {build_s:.1f}s, "
             f"recall@10 {rec['recall@10']:.3f}, recall@100 {rec['recall@100']:.3f} vs brute force "
             f"({rec['queries']} user queries)")
    return info
