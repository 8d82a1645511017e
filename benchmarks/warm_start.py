"""What a warm-started nightly costs against a cold one, on a log that grew by ~3% overnight.

    .venv/bin/python benchmarks/warm_start.py                         # 300k events, two models
    .venv/bin/python benchmarks/warm_start.py --events 1000000 --users 100000 --items 20000

Day 1: a generated shop log (`recsys.data.synthetic.shop_log`, as benchmarks/scale.py: purchases drawn
from taste, not from the session's views) up to a date; build the dataset and train each model cold
with early stopping (`refit: false`, so the version has seen only day 1's train split). Day 2: the same
log up to the date at which it has `--new` (3%) more events (the same users' next sessions);
build the dataset again (same vocabulary, new IDs appended) and train each model twice with early
stopping on day 2's validation split: cold, and warm-started from day 1's version. Printed per model:
the validation recall@20 after every epoch of both, the best epoch and its recall, and the first warm
epoch that reaches the cold run's best recall (what `model.warm_start_epochs` should be).

With `refit: false` neither run has seen day 2's validation rows (day 1's version trained on day 1's
train split only), so the comparison is fair.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--users", type=int, default=30_000)
    ap.add_argument("--items", type=int, default=6_000)
    ap.add_argument("--new", type=float, default=0.03)
    ap.add_argument("--models", default="mf,two_tower")
    args = ap.parse_args()
    print("load:", os.popen("uptime").read().strip())
    import recsys  # noqa: F401
    from pipelines import build_dataset
    from recsys import jobs, version
    from recsys.config import load_config
    from recsys.data.synthetic import shop_catalog, shop_log
    from recsys.init_config import infer, write
    work = tempfile.mkdtemp(prefix="recsys-warm-")
    catalog = shop_catalog(args.items)
    catalog.to_csv(os.path.join(work, "catalog.csv"), index=False)
    # events before the cut per user and session: 4 views, 0.8 carts, 0.4 purchases, 85% of the days
    log = shop_log(args.users, catalog, seed=0, sessions_per_user_mean=max(args.events / args.users / (5.2 * 0.85), 1.0))
    day1 = log.events
    # overnight: the same users' next sessions, up to the time the log has grown by --new
    after = log.log[log.log["timestamp"] >= log.cut].sort_values("timestamp", kind="stable")
    extra = after.iloc[:int(len(day1) * args.new)]
    day2 = pd.concat([day1, extra], ignore_index=True)
    os.makedirs(os.path.join(work, "d1"))
    os.makedirs(os.path.join(work, "d2"))
    day1.to_parquet(os.path.join(work, "d1", "events.parquet"), index=False)
    day2.to_parquet(os.path.join(work, "d2", "events.parquet"), index=False)
    write(infer(os.path.join(work, "d1", "events.parquet"), os.path.join(work, "catalog.csv"), root="artifacts"),
          os.path.join(work, "recsys.yaml"))
    cfg = load_config(os.path.join(work, "recsys.yaml"))
    cfg.model.refit = False
    cfg.model.max_train_minutes = 0
    quiet = lambda *_: None  # noqa: E731
    ds1 = build_dataset.run(cfg, previous=None, progress=quiet)
    cfg2 = copy.deepcopy(cfg)
    cfg2.source.path = os.path.join(work, "d2", "events.parquet")
    print(f"day 1: {len(day1):,} events; day 2: +{len(extra):,} ({len(extra) / len(day1):.1%})")
    root = cfg.resolve(cfg.artifacts.root)
    first = {}
    for name in args.models.split(","):
        first[name] = jobs.train_version(cfg, name, ds1.id, "none", quiet)
    ds2 = build_dataset.run(cfg2, previous="latest", progress=quiet)
    print(f"{'model':<10}{'run':<6}{'best epoch':>11}{'best recall@20':>16}{'seconds':>9}  per-epoch validation recall@20")
    for name in args.models.split(","):
        curves = {}
        for run, warm in (("cold", "none"), ("warm", first[name])):
            t = time.time()
            v = jobs.train_version(cfg2, name, ds2.id, warm, quiet)
            m = version.read_manifest(root, v)["training"]
            curve = [e["val_recall@20"] for e in m["epochs"]]
            curves[run] = curve
            print(f"{name:<10}{run:<6}{m['best_epoch']:>11}{max(curve):>16.4f}{time.time() - t:>9.0f}  "
                  + " ".join(f"{x:.4f}" for x in curve))
        target = max(curves["cold"])
        reach = next((i + 1 for i, x in enumerate(curves["warm"]) if x >= target), None)
        print(f"{name}: the warm run reaches the cold run's best ({target:.4f}) at epoch {reach}; "
              f"the cold run needed {int(np.argmax(curves['cold'])) + 1}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
