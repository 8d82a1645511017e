"""MovieLens latest-small (data/recsys.yaml's split, leave-last-5): mf and two_tower vs popularity, cold items.

    .venv/bin/python benchmarks/movielens.py [--seeds 3]

Builds the dataset with data/recsys.yaml into a temporary root, trains each model (early stopping on
validation, then the refit on train + validation unless `--set refit=false`), and evaluates the saved
versions on test through `recsys evaluate`'s code path. Validation columns are from before the refit. The
cold-item slice is recall@20 restricted to held-out items with at most 10 training interactions; it
compares two_tower with and without item features (genres, title tokens, year).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

import recsys  # noqa: E402,F401
from pipelines import build_dataset  # noqa: E402
from recsys import version  # noqa: E402
from recsys.data import trainset  # noqa: E402
from recsys.evaluation import compare, evaluate  # noqa: E402
from recsys.config import from_dict, load_config  # noqa: E402
from recsys.jobs import train_version  # noqa: E402
from recsys.models import MODELS  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=os.path.join(HERE, "..", "data", "recsys.yaml"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--cold-max", type=int, default=10)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model option, e.g. --set refit=false --set history_items=candidate")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    overrides = dict(kv.split("=", 1) for kv in args.set)   # applied together: some keys go in pairs
    if overrides:
        model = {**cfg.to_dict()["model"], **{k: yaml.safe_load(v) for k, v in overrides.items()}}
        cfg = from_dict({**cfg.to_dict(), "model": model}, base_dir=cfg.base_dir)
    cfg.artifacts.root = tempfile.mkdtemp(prefix="ml-bench-")
    ds = build_dataset.run(cfg, previous=None, progress=lambda *_: None)
    ts = trainset.from_dataset(ds, cfg.model.history_length)
    full = trainset.from_dataset(ds, cfg.model.history_length, include_validation=True)
    ks = (10, 20, 50)
    rows = {}
    variants = [("popularity", "popularity", True), ("mf", "mf", True), ("two_tower", "two_tower", True),
                ("two_tower (no item features)", "two_tower", False)]
    for label, model, feats in variants:
        for seed in range(args.seeds if MODELS[model].personalized else 1):   # popularity has no seed
            c = copy.deepcopy(cfg)
            c.model.seed, c.model.use_item_features = seed, feats
            v = train_version(c, model, ds.id, warm_start="none", progress=lambda *_: None, ts=ts, full_ts=full)
            res = {"test": evaluate.evaluate_version(c.artifacts.root, v, "test", ds.id, ks)}
            ev, es = res["test"].evaluation, res["test"].eval_set
            cold = res["test"].train_item_counts <= args.cold_max
            cold_recall, has = compare.group_recall(ev, es.relevant, cold, 20)
            r = rows.setdefault(label, {"val_recall@20": [], "val_ndcg@20": [], "recall@20": [], "ndcg@20": [],
                                        "cold_recall@20": [], "cold_users": 0})
            # Validation figures from before the refit (a refit version has trained on validation).
            val = version.read_manifest(c.artifacts.root, v)["validation_metrics"]
            r["val_recall@20"].append(val["recall@20"])
            r["val_ndcg@20"].append(val["ndcg@20"])
            r["recall@20"].append(res["test"].metrics["recall@20"])
            r["ndcg@20"].append(res["test"].metrics["ndcg@20"])
            r["cold_recall@20"].append(float(cold_recall[has].mean()) if has.any() else 0.0)
            r["cold_users"] = int(has.sum())
            for k in ("recall@20", "ndcg@20"):   # per-user test arrays, for the paired test below
                r.setdefault("per_user_" + k, []).append(ev.per_user[k])
                r["baseline_" + k] = res["test"].popularity_evaluation.per_user[k]
    st = ds.stats
    print(f"dataset: train {st['splits']['train']['interactions']}, validation {st['splits']['validation']['interactions']}"
          f" ({st['splits']['validation']['users']} users), test {st['splits']['test']['interactions']} "
          f"({st['splits']['test']['users']} users, {st['splits']['test']['new_users']} new); mean over {args.seeds} seeds")
    print(f"{'model':<30}{'val R@20':>9}{'val N@20':>9}{'test R@20':>10}{'test N@20':>10}{'cold R@20':>10}")
    for label, r in rows.items():
        print(f"{label:<30}" + "".join(f"{np.mean(r[k]):>{w}.4f}" for k, w in
                                        (("val_recall@20", 9), ("val_ndcg@20", 9), ("recall@20", 10),
                                         ("ndcg@20", 10), ("cold_recall@20", 10))))
    print(f"cold items: <= {args.cold_max} training interactions; {rows['mf']['cold_users']} test users hold one out")
    print("test, model - popularity baseline (per-user metrics averaged over seeds; paired bootstrap 95% CI, "
          "sign-flip permutation p):")
    for label, r in rows.items():
        if not MODELS[dict((lb, m) for lb, m, _ in variants)[label]].personalized:
            continue
        for k in ("recall@20", "ndcg@20"):
            st = compare.paired_stats(r["baseline_" + k], np.mean(r["per_user_" + k], axis=0))
            print(f"  {label:<30}{k:<10} {st.delta:+.4f} [{st.ci_low:+.4f}, {st.ci_high:+.4f}] "
                  f"p={st.p_value:.2f} ({st.n_users} users)")


if __name__ == "__main__":
    main()
