"""What the CLI and the nightly share: train a version, index a version."""
from __future__ import annotations

import dataclasses
import gc
import time

import numpy as np

from recsys import registry, version as version_mod
from recsys.config import Config, exclusion_rule
from recsys.data import trainset
from recsys.data.dataset import Dataset
from recsys.errors import DataError
from recsys.evaluation.scorer import validation_metrics
from recsys.models import MODELS, create, distribute
from recsys.retrieval import index


def pick_warm_start(root: str, model_name: str, warm_start: str | None) -> str | None:
    """The version a new `model_name` version starts from.

    Args:
        root: the artifact root.
        model_name: the model being trained.
        warm_start: "auto" (the published version if it is this model, else the newest version of
            this model), "none"/None, or a version id.
    Returns:
        A version id or None.
    """
    if warm_start in (None, "none", ""):
        return None
    if warm_start != "auto":
        version_mod.read_manifest(root, warm_start)
        return warm_start
    cur = registry.current_version(root)
    if cur and version_mod.read_manifest(root, cur).get("model") == model_name:
        return cur
    same = [v for v in registry.list_versions(root) if version_mod.read_manifest(root, v).get("model") == model_name]
    return same[-1] if same else None


# a warm epoch choice stops at its first epoch that loses validation (see train_version)
WARM_PATIENCE = 1

# a warm-started model whose validation recall falls below this share of the previous version's is
# rejected (a warm start is meant to save epochs, not to cost quality)
WARM_START_MIN_SHARE = 0.9


def _warm_start_worse(cfg: Config, root: str, prev_version: str, now: float | None, epochs: int) -> str | None:
    """Why a warm-started model, whose validation recall@eval_k is `now` after the best of at most
    `epochs` epochs, is worse than the version it started from, or None.

    Compares validation recall@eval_k of the warm epoch choice (trained on train only: an honest
    figure) with what the previous version recorded for its own validation split
    (`validation_metrics`). Without a validation split or a recorded figure nothing is compared."""
    key = f"recall@{cfg.model.eval_k}"
    before = (version_mod.read_manifest(root, prev_version).get("validation_metrics") or {}).get(key)
    if now is None or not before or now >= WARM_START_MIN_SHARE * before:
        return None
    return (f"the best of at most {epochs} epochs from {prev_version} reaches validation "
            f"{key} {now:.4f}, below {WARM_START_MIN_SHARE:.0%} of its {before:.4f}")


def training_sets(cfg: Config, dataset: Dataset) -> tuple[trainset.TrainSet, trainset.TrainSet | None]:
    """The dataset's train TrainSet and, when the config refits (`model.refit` and a validation split),
    its train + validation TrainSet (None otherwise); both measured on `evaluation.target_events`."""
    ts = _train_set(cfg, dataset)
    return ts, (_train_set(cfg, dataset, True) if cfg.model.refit and "validation" in ts.evals else None)


def _train_set(cfg: Config, dataset: Dataset, include_validation: bool = False) -> trainset.TrainSet:
    return trainset.from_dataset(dataset, cfg.model.history_length, include_validation=include_validation,
                                 target_events=tuple(cfg.evaluation.target_events),
                                 exclusion=exclusion_rule(cfg.exclusion, cfg.evaluation.target_events))


def _refit_ratio(dataset: Dataset, ts: trainset.TrainSet, full_ts: trainset.TrainSet | None) -> float:
    """A refit epoch's time over a training epoch's: train + validation rows over train's (counted in
    the refit's TrainSet when the caller has it, else from the dataset's stats)."""
    if full_ts is not None:
        return len(full_ts.user_idx) / max(len(ts.user_idx), 1)
    splits = dataset.stats.get("splits", {})
    val_rows = (splits.get("validation") or {}).get("interactions", 0)
    return 1.0 + val_rows / max(len(ts.user_idx), 1)


def train_version(cfg: Config, model_name: str, dataset_id: str | None = None, warm_start: str | None = "auto",
                  progress=print, ts: trainset.TrainSet | None = None,
                  full_ts: trainset.TrainSet | None = None) -> str:
    """Train and save a version of any model in MODELS.

    With `model.refit` (default) and a validation split, training early-stops on validation, then
    trains again from the start on train + validation for the epoch count validation chose, and that
    model is saved: the published version has learned from the most recent interactions before the
    test period. With a previous version (`warm_start`), both fits start from it: the choice from the
    tables that chose its epochs (kept in it), at most `model.warm_start_epochs` epochs when that is
    set; the refit from its own tables.

    Args:
        cfg: the config (`model:` holds the recipe).
        model_name: a key of MODELS.
        dataset_id: the dataset (default: the latest).
        warm_start: see `pick_warm_start`.
        progress: receives progress lines.
        ts, full_ts: the dataset's train and train + validation TrainSets, when the caller already has
            them (the nightly shares them between models).
    Returns:
        The new version id ("" on a worker other than the chief under `model.distribute:
        multi_worker_mirrored`, which trains but does not write).
    Raises:
        DataError: unknown model, missing dataset or version.
    """
    t_start = time.time()
    model = create(model_name, cfg.model)
    root = cfg.resolve(cfg.artifacts.root)
    dataset = Dataset.open(root, dataset_id)
    if ts is None:
        # train only: train + validation is read for the refit, once train is dropped (both at once
        # were the largest part of the 50M-event run's 16.6 GB two_tower step)
        ts = _train_set(cfg, dataset)
    t_loaded = time.time()
    refit = cfg.model.refit and "validation" in ts.evals
    progress(f"train {model_name}: dataset {dataset.id}: {len(ts.user_idx)} interactions, "
             f"{ts.n_users} users, {ts.n_items} items")
    # Models without vectors (popularity) and rules (counted afresh, their choices made on validation)
    # have nothing to carry over.
    carries = model.personalized and not model.rule
    prev_version = pick_warm_start(root, model_name, warm_start) if carries else None
    prev_refit = bool(prev_version) and "refit" in version_mod.read_manifest(root, prev_version)
    # The epoch-choosing fit must start from weights that never saw today's validation rows. A refit
    # version's own tables have (the days before its test cut; an inactive user's validation session
    # is the same today); the selection tables it keeps beside them have not: they trained on its train
    # split, and as a log grows a user's rows only move test -> validation -> train. Without them (a
    # version from before they were kept) the choice starts cold. (The version's own tables are read
    # for the refit, after the choice: the two are never in memory together.)
    select_from = version_mod.load_warm_start(root, prev_version, selection=prev_refit) if prev_version else None
    ks = tuple(cfg.evaluation.ks)
    key = f"recall@{cfg.model.eval_k}"
    # A nightly whose data grew a little: yesterday's weights need a few epochs, not a new search
    # (benchmarks/warm_start.py measured how many). They are still chosen on validation, as a cold
    # search's are: a converged model trained on for a fixed count overfits (measured: two_tower at
    # 3k users lost 31% of its test recall to 4 fixed warm epochs).
    # The choice stops at the first epoch that loses validation (patience WARM_PATIENCE): it starts
    # from a model that had converged, so a loss means it is past its best (measured at 2M events: every
    # warm two_tower epoch after the first lost, 0.1703, 0.1684, 0.1664, 0.1624, and the 3 that patience 3
    # ran cost the night ~85 s; mf's 0.1449, 0.1495, 0.1486 ended where patience 3 chose too).
    warm_epochs = cfg.model.warm_start_epochs if select_from is not None else 0
    fit_cfg = dataclasses.replace(cfg.model, epochs=min(warm_epochs, cfg.model.epochs),
                                  patience=min(cfg.model.patience, WARM_PATIENCE)) if warm_epochs else cfg.model
    if warm_epochs:
        progress(f"train {model_name}: at most {fit_cfg.epochs} epochs from {prev_version} (model.warm_start_epochs)"
                 + (", its selection tables," if prev_refit else "") + " chosen on validation")
    worse = None
    for attempt in ("warm", "cold") if select_from is not None else ("cold",):
        # one budget for the epoch search and the refit after it: the fit keeps the refit's time back
        # (its rows over train's, per epoch), or spends it on more epochs when validation still rises
        model = create(model_name, fit_cfg)
        report = model.fit(ts, ks, select_from, progress, max_seconds=cfg.model.max_train_minutes * 60 or None,
                           validate=validation_metrics, refit_ratio=_refit_ratio(dataset, ts, full_ts) if refit else None)
        # on the validation users early stopping scored (model.eval_users): every one of them cost the
        # 50M-event run more than the rule's whole fit (1.27M users x 1M items)
        val = validation_metrics(model, ts.evals["validation"].at_most(cfg.model.eval_users, cfg.model.seed), ks,
                                 ts.item_counts) if "validation" in ts.evals else {}
        if attempt == "cold" or not (worse := _warm_start_worse(cfg, root, prev_version, val.get(key), fit_cfg.epochs)):
            break
        # the warm start lost too much against what the previous version measured: say so, and search
        # the epoch count from a cold start instead (what the warm start was to save)
        progress(f"train {model_name}: warning: {worse}; training from a cold start instead")
        select_from, warm_epochs, fit_cfg = None, 0, cfg.model
    warm, select_from = select_from is not None, None   # only whether it was warm matters from here
    extra = {"warm_started_from": prev_version if warm else None, "validation_metrics": val}
    if warm_epochs:
        extra["warm_epochs"] = warm_epochs
    if worse:
        extra["warm_start_rejected"] = {"from": prev_version, "why": worse}
    if report.refit_dropped:
        extra["refit_dropped"] = report.refit_dropped
        refit = False
    # what the next night's epoch choice starts from, when this version is refit (see select_from)
    selection_tables = (model.weights(), model.user_ids, model.item_ids) \
        if refit and carries and distribute.is_chief() else None
    if refit:
        best_epoch = report.best_epoch
        extra["selection"] = {"best_epoch": best_epoch, "seconds": round(report.seconds, 1), "epochs": report.epochs,
                              "warm_started": warm, "phases": report.phases,
                              **({"chosen": report.chosen} if report.chosen else {})}
        t_refit = time.time()
        # the choice is made: its model (tables, optimizer moments) and, unless the caller shares them
        # between models (then it passes full_ts too), train's rows are not needed again
        chosen, model = model.chosen_config(), None
        if full_ts is None:
            ts = None
        gc.collect()
        full = full_ts or _train_set(cfg, dataset, include_validation=True)
        t_refit_loaded = time.time()
        progress(f"train {model_name}: refit on train + validation ({len(full.user_idx)} interactions, "
                 f"{full.n_users} users)" + (f" for the {best_epoch} epochs validation chose" if best_epoch else ""))
        # what the selection fit chose on validation carries over (the refit has no validation), and
        # its epoch horizon (a cosine schedule decays over the same epochs)
        model = create(model_name, dataclasses.replace(fit_cfg, **chosen))
        # the refit starts where the choice did: from the previous version's own tables after a warm
        # choice (the refit lineage), cold after a cold one, so it trains the epochs that were chosen
        previous = version_mod.load_warm_start(root, prev_version) if warm else None
        report = model.fit(full, ks, previous, progress, stop_after=best_epoch, validate=validation_metrics)
        previous = None
        report.chosen = extra["selection"].get("chosen") or report.chosen   # with the validation figures
        extra["refit"] = {"epochs": report.best_epoch, "interactions": int(len(full.user_idx)),
                          "users": int(full.n_users), "seconds": round(report.seconds, 1)}
        report.seconds += extra["selection"]["seconds"]   # the manifest's training time: both fits
        ts = full
    if not distribute.is_chief():
        # multi_worker_mirrored: every worker trained the same tables; the chief writes the version
        progress(f"train {model_name}: this worker is not the chief (TF_CONFIG); the chief writes the version")
        return ""
    t_save = time.time()
    version = version_mod.save_fitted(model, ts, cfg, root, dataset, extra=extra, selection=selection_tables)
    saved = version_mod.read_manifest(root, version).get("save_phases", {})
    parts = {"load": round(t_loaded - t_start, 2)}
    if refit:
        parts.update({f"select_{k}": v for k, v in extra["selection"]["phases"].items()})
        parts["refit_load"] = round(t_refit_loaded - t_refit, 2)
        parts.update({f"refit_{k}": v for k, v in report.phases.items()})
    else:
        parts.update(report.phases)
    parts.update(saved)
    parts["write"] = round(time.time() - t_save - sum(saved.values()), 2)
    version_mod.update_manifest(root, version, time_by_part=parts)
    progress(f"train {model_name}: time by part: " + ", ".join(f"{k} {v:.1f}s" for k, v in parts.items()))
    details = []
    if report.epochs:
        details.append(f"{report.examples_per_second:,.0f} examples/s, best epoch "
                       f"{extra['selection']['best_epoch'] if refit else report.best_epoch}")
    val = extra["validation_metrics"]
    if val:
        details.append(f"validation recall@{cfg.model.eval_k} {val.get(f'recall@{cfg.model.eval_k}', float('nan')):.4f}")
    if refit:
        details.append("refit on train + validation")
    if extra["warm_started_from"]:
        details.append(f"warm-started from {prev_version}")
    progress(f"train {model_name}: wrote version {version} in {report.seconds:.0f}s"
             + (f" ({', '.join(details)})" if details else ""))
    return version


def index_version(cfg: Config, root: str, version: str, progress=print) -> dict:
    """Build the item index of a version, measure its recall@10/@100 against brute force on real user
    embeddings, and save it with the version.

    Returns:
        What was recorded in the manifest's `index` section ({} for a model without vectors).
    Raises:
        DataError: the measured recall@10 is below `index.min_recall_at_10`.
    """
    model_name = version_mod.read_manifest(root, version).get("model")
    if model_name not in MODELS:
        raise DataError(f"index: version {version!r} has model={model_name!r}, unknown (known: {', '.join(MODELS)})")
    if not MODELS[model_name].personalized:
        progress(f"index: {version} is a {model_name} model; nothing to index")
        return {}
    # users memory-mapped: only the sampled rows below are read (every user's 257-wide rule vector was
    # 3.3 GB of the 50M-event index step's 16.3 GB)
    items, users = version_mod.load_embeddings(root, version, mmap=True)
    items = np.array(items)
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
    version_mod.save_index(root, version, idx)
    version_mod.update_manifest(root, version, index=info)
    progress(f"index: {version}: {idx.kind} over {len(items)} items in {build_s:.1f}s, "
             f"recall@10 {rec['recall@10']:.3f}, recall@100 {rec['recall@100']:.3f} vs brute force "
             f"({rec['queries']} user queries)")
    return info
