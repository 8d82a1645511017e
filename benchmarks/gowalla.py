"""Gowalla (LightGCN split): mf and two_tower with the shipped recipe beside implicit's ALS, test once.

    .venv/bin/python benchmarks/gowalla.py [--models mf,two_tower] [--data ../shared/data/gowalla]
    .venv/bin/python benchmarks/gowalla.py --smoke     # 2 epochs, to check the script runs

Protocol (the test split is read once, at the end):
1. Selection: a seeded share of every user's train items is held out as validation
   (`--validation-fraction`, default 0.1). Each model trains on the rest for up to the recipe's epochs
   (early stopping with its patience, within `max_train_minutes`) with validation recall@20 after
   every epoch; the best epoch is the count used below.
2. implicit's AlternatingLeastSquares (the bench extra; the best of six configs measured on test,
   which favours ALS) is fitted on the same selection split, for a like-for-like validation recall, and
   on the full train split for its test row and fit time.
3. Time-to-ALS-quality: the wall time (training plus the per-epoch validation) at which a model's
   validation recall@20 first reaches ALS's test recall@20 (and ALS's own validation recall, the
   like-for-like threshold), next to ALS's fit time.
4. Final: each model retrains on the full train split for the chosen epoch count (within
   `max_train_minutes` again: it stops early rather than run over); test is evaluated once
   (full-catalog ranking, train items excluded; BENCHMARKS.md definitions).
`--epochs N` skips step 1 and trains N epochs (for when the count is already known).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import recsys  # noqa: E402,F401
from recsys.config import load_config  # noqa: E402
from recsys.data import trainset  # noqa: E402
from recsys.evaluation import metrics  # noqa: E402
from recsys.evaluation.scorer import evaluate_model, validation_metrics  # noqa: E402
from recsys.models import create  # noqa: E402
from recsys.models.popularity import Popularity  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
KS = (20, 50)
PUBLISHED = [("BSL-MF", 0.1882, 0.1584), ("SimpleX", 0.1872, 0.1557), ("MF-CCL", 0.1837, 0.1493),
             ("LightGCN", 0.1820, 0.1547), ("MF-BPR", 0.1627, 0.1378)]
ALS = {"factors": 256, "regularization": 5.0, "alpha": 20.0, "iterations": 15}


def als(ts, ev, seed: int = 0) -> tuple[dict, float] | None:
    """implicit's ALS fitted on `ts`, evaluated on `ev`: (metrics, fit seconds), or None without implicit."""
    try:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    ui = trainset.csr_from_pairs(ts.user_idx, ts.item_idx, ts.n_users, ts.n_items)   # duplicates count once
    with threadpool_limits(1, "blas"):   # implicit's own threads do the work (its recommended setting)
        model = AlternatingLeastSquares(**ALS, random_state=seed)   # checks the BLAS threads when built
        t0 = time.time()
        model.fit(ui, show_progress=False)
        seconds = time.time() - t0
    uf, itf = np.asarray(model.user_factors), np.asarray(model.item_factors)
    rows = np.arange(len(ev.user_ids))
    res = metrics.evaluate(lambda r: uf[ev.user_idx[r]] @ itf.T, rows, ev.relevant, ev.exclude, KS, ts.item_counts)
    return res.summary(), seconds


def fit_watch(name: str, cfg, ts, epochs: int | None = None):
    """Fit `name`; returns (model, [(elapsed wall seconds, epoch line)]) from the per-epoch progress."""
    model = create(name, cfg)
    t0, marks = time.time(), []

    def progress(line):
        if line.startswith("epoch"):
            marks.append(time.time() - t0)
        print(f"  {name} {line}", flush=True)
    model.fit(ts, KS, progress=progress, stop_after=epochs, max_seconds=cfg.max_train_minutes * 60 or None,
              validate=validation_metrics)
    return model, list(zip(marks, model.report.epochs))


def first_at(curve, threshold: float):
    """(wall seconds since the fit began, seconds in training steps only, epoch) at which validation
    recall@20 first reaches `threshold`, or Nones. The wall time includes the per-epoch validation."""
    steps = 0.0
    for elapsed, line in curve:
        steps += line["seconds"]
        if line.get("val_recall@20", -1) >= threshold:
            return round(elapsed, 1), round(steps, 1), line["epoch"]
    return None, None, None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "gowalla"))
    p.add_argument("--config", default=os.path.join(HERE, "gowalla.yaml"))
    p.add_argument("--models", default="mf,two_tower")
    p.add_argument("--validation-fraction", type=float, default=0.1)
    p.add_argument("--epochs", type=int, help="skip selection and train this many epochs")
    p.add_argument("--smoke", action="store_true", help="2 epochs, to check the script runs")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    cfg = load_config(args.config).model
    if args.smoke:
        cfg.epochs = 2
    t0 = time.time()
    full = trainset.from_lightgcn(args.data, cfg.history_length)
    test = full.evals["test"]
    print(f"gowalla: {len(full.user_idx):,} train interactions, {full.n_users:,} users, {full.n_items:,} items "
          f"(loaded in {time.time() - t0:.0f}s); recipe {args.config}", flush=True)
    sel = None
    if args.epochs is None:
        sel = trainset.from_lightgcn(args.data, cfg.history_length, args.validation_fraction, seed=cfg.seed)
        sel.evals.pop("test")   # selection never sees test
    results, selection = {}, {}
    pop = Popularity(full.n_items).fit(full.item_idx)
    results["popularity"] = metrics.evaluate(lambda r: np.array(pop.score_rows(len(r))), np.arange(len(test.user_ids)),
                                             test.relevant, test.exclude, KS, full.item_counts).summary()
    als_test = als(full, test, cfg.seed)
    als_val = als(sel, sel.evals["validation"], cfg.seed) if sel is not None and als_test else None
    if als_test:
        results["implicit ALS"] = {**als_test[0], "train_seconds": round(als_test[1], 1)}
        print(f"implicit ALS {ALS}: test recall@20 {als_test[0]['recall@20']:.4f}, fit {als_test[1]:.1f}s"
              + (f"; validation recall@20 {als_val[0]['recall@20']:.4f}" if als_val else ""), flush=True)
    else:
        print("implicit is not installed (pip install -e .[bench]): no ALS row", flush=True)
    for name in args.models.split(","):
        epochs = args.epochs
        if sel is not None:
            cfg.eval_users = max(cfg.eval_users, sel.evals["validation"].n_evaluable)   # every validation user
            _, curve = fit_watch(name, cfg, sel)
            best = max(curve, key=lambda c: c[1].get("val_recall@20", -1))[1]
            epochs = best["epoch"]
            s = {"best_epoch": epochs, "val_recall@20": best["val_recall@20"], "val_ndcg@20": best["val_ndcg@20"],
                 "curve": [{"elapsed": round(e, 1), **{k: round(v, 4) for k, v in line.items()}} for e, line in curve]}
            for key, ref in (("als_test", als_test), ("als_val", als_val)):
                if ref:
                    s[f"to_{key}_recall"] = dict(zip(("wall_seconds", "step_seconds", "epoch"),
                                                     first_at(curve, ref[0]["recall@20"])))
            selection[name] = s
        model, _ = fit_watch(name, cfg, full, epochs)
        ev = evaluate_model(model, test, KS, full.item_counts)[0].summary()
        results[name] = {**ev, "epochs": epochs, "train_seconds": round(model.report.seconds, 1),
                         "examples_per_second": round(model.report.examples_per_second)}

    print(f"\n{'model':<16}{'val r@20':>9}{'recall@20':>10}{'ndcg@20':>9}{'recall@50':>10}{'ndcg@50':>9}"
          f"{'epochs':>7}{'train s':>9}")
    for name, r in results.items():
        val = selection.get(name, {}).get("val_recall@20")
        if name == "implicit ALS" and als_val:
            val = als_val[0]["recall@20"]
        print(f"{name:<16}{(f'{val:.4f}' if val else ''):>9}{r['recall@20']:>10.4f}{r['ndcg@20']:>9.4f}"
              f"{r['recall@50']:>10.4f}{r['ndcg@50']:>9.4f}{r.get('epochs', ''):>7}{r.get('train_seconds', 0):>9.0f}")
    for name, rec, ndcg in PUBLISHED:
        print(f"{name + ' (pub.)':<16}{'':>9}{rec:>10.4f}{ndcg:>9.4f}")
    if als_test:
        print(f"\ntime to ALS quality (ALS fit {als_test[1]:.1f}s on train"
              + (f", {als_val[1]:.1f}s on the selection split" if als_val else "") + "):")
        for name, s in selection.items():
            # like for like first: validation against ALS's validation recall (validation runs ~15% above test)
            for what, key in (("ALS's validation recall", "als_val"), ("ALS's test recall", "als_test")):
                t = s.get(f"to_{key}_recall")
                if t is None:
                    continue
                print(f"  {name}: validation recall@20 reaches {what} "
                      + (f"at epoch {t['epoch']}: {t['wall_seconds']:.0f}s wall with validation "
                         f"({t['wall_seconds'] / als_test[1]:.1f}x ALS's fit), {t['step_seconds']:.0f}s in training "
                         f"steps ({t['step_seconds'] / als_test[1]:.1f}x)" if t["epoch"] else "never"))
    load = os.getloadavg()
    print(f"\nload average at the end (1/5/15 min): {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on "
          f"{os.cpu_count()} cores; wall {time.time() - t0:.0f}s")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"results": results, "selection": selection, "als": ALS, "load_average": load,
                       "als_validation": als_val[0] if als_val else None,
                       "als_selection_fit_seconds": als_val[1] if als_val else None}, fh, indent=2)


if __name__ == "__main__":
    main()
