"""Does the offline verdict predict the future? A generated shop log, cut at a date, run the way a new
team runs recsys, then every candidate asked for each user's top 20 and scored on the real next
purchases.

1. `recsys.data.synthetic.shop_log`: users with category and brand tastes, sessions of views, carts and
   purchases; purchases are drawn from taste x within-category popularity (not from the session's
   views), and the future is the purchases after the cut. Its oracle (top 20 by the true purchase
   probability) is the ceiling.
2. `recsys init` on the log before the cut and the catalog (the config as written), then `recsys nightly`.
3. For every candidate version the nightly trained (models and rules): its offline test metrics (what
   the gate decided on), and its lists through the engine the service uses (`Engine.recommend`, the
   user's known items excluded as the service excludes them) scored on the future purchases.
4. Rules computed straight from the log, beside them: global purchase popularity (with and without the
   user's bought items), "popular in the user's two most viewed categories", buy-again then popularity,
   the Bayes ceiling (`ShopLog.best_from_history`: the generator's own model with the user's tastes
   estimated from their events before the cut, the best any recommender that sees the log can do), the
   oracle (tastes known), and random.

    .venv/bin/python benchmarks/shop_future.py --users 3000
    .venv/bin/python benchmarks/shop_future.py --users 3000 --set model.batch_size=256
    .venv/bin/python benchmarks/shop_future.py --users 3000 --hide brand   # tastes the catalog does not name

Prints one table (offline recall@20 on the held-out split beside recall@20 on the future) and the load.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from recsys import registry, version as version_mod  # noqa: E402
from recsys.config import load_config  # noqa: E402
from recsys.data.synthetic import shop_catalog, shop_log  # noqa: E402
from recsys.init_config import infer, write  # noqa: E402
from recsys.engine import Engine  # noqa: E402

K = 20


def _set(config: dict, assignments: list[str]) -> None:
    """--set a.b=value overrides on the written config (values parsed as YAML)."""
    for item in assignments:
        key, value = item.split("=", 1)
        node = config
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(value)


def rule_lists(log, catalog: pd.DataFrame, users: list) -> dict:
    """The rules a practitioner tries first, from the log before the cut: name -> {user: items}."""
    ev = log.events
    bought = ev[ev["event_type"] == "purchase"]
    pop = bought["item_id"].value_counts()
    order = list(pop.index) + [i for i in catalog["item_id"] if i not in pop.index]
    cat_of = dict(zip(catalog["item_id"], catalog["category"]))
    by_cat = {c: [i for i in order if cat_of[i] == c] for c in catalog["category"].unique()}
    user_bought = bought.groupby("user_id")["item_id"].apply(lambda s: list(dict.fromkeys(s[::-1])))
    views = ev[ev["event_type"] == "view"]
    top_cats = views.assign(category=views["item_id"].map(cat_of)).groupby("user_id")["category"].agg(
        lambda s: list(s.value_counts().index[:2]))
    rng = np.random.default_rng(0)
    items = catalog["item_id"].to_numpy()
    out = {"popularity (nothing removed)": {}, "popularity (bought removed)": {},
           "popular in the user's 2 most viewed categories": {}, "buy again, then popularity": {},
           "random": {}}
    for u in users:
        had = set(user_bought.get(u, []))
        out["popularity (nothing removed)"][u] = order[:K]
        out["popularity (bought removed)"][u] = [i for i in order[:K + len(had)] if i not in had][:K]
        cats = top_cats.get(u, [])
        pool = [i for c in cats for i in by_cat[c][:K]]
        pool.sort(key=lambda i: -pop.get(i, 0))
        out["popular in the user's 2 most viewed categories"][u] = (pool + [i for i in order if i not in pool])[:K]
        again = user_bought.get(u, [])[:K]
        out["buy again, then popularity"][u] = (again + [i for i in order if i not in set(again)])[:K]
        out["random"][u] = list(rng.choice(items, K, replace=False))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--items", type=int, default=2400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=float, default=0.0, help="shop_log's buy-again share")
    ap.add_argument("--hide", default="", help="catalog columns to leave out of what recsys sees, comma "
                    "separated (e.g. brand: a taste the catalog does not describe; the generator still uses it)")
    ap.add_argument("--eval-users", type=int, default=0,
                    help="score the future on a seeded sample of this many users (0: all)")
    ap.add_argument("--set", action="append", default=[], help="config override, e.g. model.batch_size=256")
    ap.add_argument("--root", default=None, help="keep the artifacts here (default: a temp dir)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    print("load:", os.popen("uptime").read().strip())
    work = args.root or tempfile.mkdtemp(prefix="recsys-shop-")
    os.makedirs(work, exist_ok=True)
    t0 = time.time()
    catalog = shop_catalog(args.items, n_categories=8, brands_per_category=3, seed=args.seed)
    log = shop_log(args.users, catalog, seed=args.seed, repeat=args.repeat)
    log.events.to_parquet(os.path.join(work, "events.parquet"))
    hidden = [c for c in args.hide.split(",") if c]
    catalog.drop(columns=hidden).to_csv(os.path.join(work, "catalog.csv"), index=False)
    print(f"log: {len(log.events):,} events before the cut {log.cut}, {len(log.future):,} future purchases "
          f"by {log.future['user_id'].nunique():,} users ({time.time() - t0:.1f}s)")
    inferred = infer(os.path.join(work, "events.parquet"), os.path.join(work, "catalog.csv"),
                     os.path.join(work, "artifacts"))
    _set(inferred.config, args.set)
    path = os.path.join(work, "recsys.yaml")
    write(inferred, path)
    cfg = load_config(path)
    print(f"config: split {cfg.split.strategy}, models {', '.join(cfg.nightly.models)}"
          + (f", overrides {' '.join(args.set)}" if args.set else ""))
    from pipelines import nightly
    t0 = time.time()
    summary = nightly.run(cfg, progress=lambda m: None)
    print(f"nightly: {time.time() - t0:.0f}s; published {summary.get('published') or summary.get('current')}")
    root = cfg.resolve(cfg.artifacts.root)
    users = sorted(log.future["user_id"].unique())
    if args.eval_users and len(users) > args.eval_users:
        users = sorted(np.random.default_rng(args.seed).choice(users, args.eval_users, replace=False))
        log.future = log.future[log.future["user_id"].isin(set(users))]
    rows = []
    for name, version in sorted((m["model"], v) for v, m in
                                ((v, version_mod.read_manifest(root, v)) for v in registry.list_versions(root))):
        manifest = version_mod.read_manifest(root, version)
        offline = (manifest.get("test_metrics") or {}).get(f"recall@{K}")
        val = (manifest.get("validation_metrics") or {}).get(f"recall@{K}")
        engine = Engine.load(root, version)
        lists = {u: engine.recommend(u, K).items for u in users}
        rows.append((name, val, offline, log.recall_at(lists, K),
                     "published" if version == registry.current_version(root) else ""))
    for name, lists in rule_lists(log, catalog, users).items():
        rows.append((name, None, None, log.recall_at(lists, K), "rule from the log"))
    if args.repeat == 0:
        rows.append(("best from the history (Bayes, true model)", None, None,
                     log.recall_at(log.best_from_history(K), K), "ceiling for any recommender"))
    rows.append(("oracle (true purchase probability)", None, None, log.recall_at(log.oracle(K), K), "ceiling"))
    fmt = lambda x: "" if x is None else f"{x:.4f}"   # noqa: E731
    print(f"\n{'what answered':<50}{'validation':>12}{'offline test':>14}{'future':>10}")
    for name, val, offline, future, note in rows:
        print(f"{name:<50}{fmt(val):>12}{fmt(offline):>14}{future:>10.4f}  {note}")
    print("\nvalidation: recall@20 on the validation split (recipes are chosen on it); offline test: on the "
          "held-out split as the gate saw it; future: recall@20 of the engine's (or the rule's) top "
          f"{K} on each user's purchases after the cut ({len(users)} users)")
    print("load:", os.popen("uptime").read().strip())
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([dict(zip(("what", "validation", "offline", "future", "note"), r)) for r in rows], fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
