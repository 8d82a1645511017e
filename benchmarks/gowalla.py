"""Gowalla (LightGCN split): train mf and two_tower with the shipped recipe, evaluate on test.

    .venv/bin/python benchmarks/gowalla.py [--models mf,two_tower] [--data ../shared/data/gowalla]
    .venv/bin/python benchmarks/gowalla.py --smoke     # 2 epochs, to check the script runs

Full-catalog ranking with training items excluded (BENCHMARKS.md definitions); the test split is never
used for training or early stopping: the recipe's epoch count is fixed in benchmarks/gowalla.yaml.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import recsys  # noqa: E402,F401
from recsys.evaluation import metrics  # noqa: E402
from recsys.data import trainset  # noqa: E402
from recsys.evaluation.scorer import evaluate_model  # noqa: E402
from recsys.models import create  # noqa: E402
from recsys.config import load_config  # noqa: E402
from recsys.models.popularity import Popularity  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PUBLISHED = [("SimpleX", 0.1872, 0.1557), ("LightGCN", 0.1820, 0.1547), ("YoutubeDNN", 0.1754, 0.1473),
             ("MF-BPR", 0.1627, 0.1378)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "gowalla"))
    p.add_argument("--config", default=os.path.join(HERE, "gowalla.yaml"))
    p.add_argument("--models", default="mf,two_tower")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    if args.smoke:
        cfg.model.epochs = 2
    t0 = time.time()
    ts = trainset.from_lightgcn(args.data, cfg.model.history_length)
    test = ts.evals["test"]
    print(f"gowalla: {len(ts.user_idx):,} train interactions, {ts.n_users:,} users, {ts.n_items:,} items "
          f"(loaded in {time.time() - t0:.0f}s)", flush=True)
    pop = Popularity(ts.n_items).fit(ts.item_idx)
    import numpy as np
    rows = np.arange(len(test.user_ids))
    results = {"popularity": metrics.evaluate(lambda r: np.array(pop.score_rows(len(r))), rows, test.relevant,
                                              test.exclude, (20, 50), ts.item_counts).summary()}
    for name in args.models.split(","):
        tr = create(name, cfg.model)
        tr.fit(ts, (20, 50), progress=lambda s: print(f"  {name} {s}", flush=True))
        ev = evaluate_model(tr, test, (20, 50), ts.item_counts)[0].summary()
        ev["train_seconds"] = round(tr.report.seconds, 1)
        ev["examples_per_second"] = round(tr.report.examples_per_second)
        results[name] = ev
    print(f"\n{'model':<14}{'recall@20':>10}{'ndcg@20':>9}{'recall@50':>10}{'ndcg@50':>9}{'train s':>9}")
    for name, r in results.items():
        print(f"{name:<14}{r['recall@20']:>10.4f}{r['ndcg@20']:>9.4f}{r['recall@50']:>10.4f}{r['ndcg@50']:>9.4f}"
              f"{r.get('train_seconds', 0):>9.0f}")
    for name, rec, ndcg in PUBLISHED:
        print(f"{name + ' (pub.)':<14}{rec:>10.4f}{ndcg:>9.4f}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
