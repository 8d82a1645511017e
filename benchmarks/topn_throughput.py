"""Users per second of the two bulk top-N paths, beside the naive per-user loop they replaced.

    .venv/bin/python benchmarks/topn_throughput.py                      # 50k and 200k items
    .venv/bin/python benchmarks/topn_throughput.py --items 50000 --users 20000 --repeat 3
    .venv/bin/python benchmarks/topn_throughput.py --rule --items 50000,1000000   # a rule's vectors

* evaluation: `recsys.evaluation.scorer.evaluate_model` (blocks of 1024 users: one matmul, seen items
  set to -inf, TensorFlow's top_k, hits by sorted keys) against a per-user loop (score the catalog,
  mask, argpartition, sort: what a straightforward implementation does), same model, same users.
* batch recommendations: `Engine.recommend_users` (batched index searches grouped by fetch size)
  against calling `Engine.recommend` once per user (the old batch path), on a brute-force index below
  50k items and ScaNN at and above, as the nightly would build it.

With `--rule`, the vectors are shaped like attribute_popularity's (each item: its popularity within one of
256 category values, plus its global share; each user: shares over 1-12 values, plus the rule's
fallback weight), and both paths run against the exact index `auto` picks for them
(`SparseExactIndex`, the threshold algorithm) beside the one it replaced: brute force (a matmul, or
ScaNN's exact scorer, and top_k) for evaluation, and for batch the index kind the nightly built before
(brute force below 50k items, ScaNN above). The share of identical lists is printed.

The data: item vectors from 200 clusters (d=64, unit norm, like two_tower's), users near one cluster,
each with a lognormal number of seen items (median 12). Every figure is the median of `--repeat` runs;
the naive loops run on a subset of users (`--naive-users`) and are scaled to users/s. The machine's
load is printed first: compare ratios, not absolute figures, across machines.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402


def make_data(n_users: int, n_items: int, dim: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(200, dim)).astype(np.float32)
    items = centers[rng.integers(0, 200, n_items)] + 0.5 * rng.normal(size=(n_items, dim)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    users = centers[rng.integers(0, 200, n_users)] + 0.8 * rng.normal(size=(n_users, dim)).astype(np.float32)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    counts = np.minimum(rng.lognormal(2.5, 0.8, n_users).astype(int) + 1, n_items // 2)
    cols = np.concatenate([rng.choice(n_items, c, replace=False) for c in counts])
    seen = sp.csr_matrix((np.ones(len(cols), np.int8), cols, np.r_[0, np.cumsum(counts)]), shape=(n_users, n_items))
    seen.sort_indices()
    held = rng.integers(0, n_items, n_users)
    relevant = sp.csr_matrix((np.ones(n_users, np.int8), held, np.arange(n_users + 1)), shape=(n_users, n_items))
    return users, items, seen, relevant


def make_rule_data(n_users: int, n_items: int, values: int = 256, seed: int = 0):
    """Rule-shaped vectors (see the module docstring), with `make_data`'s seen and held-out items."""
    from recsys.models.rules import FALLBACK
    rng = np.random.default_rng(seed)
    counts = np.floor(rng.pareto(1.1, n_items) * 3 + 1)
    value = np.minimum(rng.zipf(1.3, n_items) - 1, values - 1)
    within = np.bincount(value, weights=counts, minlength=values)
    items = np.zeros((n_items, values + 1), dtype=np.float32)
    items[np.arange(n_items), value] = counts / within[value]
    items[:, values] = counts / counts.sum()
    users = np.zeros((n_users, values + 1), dtype=np.float32)
    touched = rng.integers(1, 13, n_users)
    for u in range(n_users):
        dims = np.unique(np.minimum(rng.zipf(1.3, touched[u]) - 1, values - 1))
        users[u, dims] = rng.dirichlet(np.ones(len(dims)))
    users[:, values] = FALLBACK
    _, _, seen, relevant = make_data(n_users, n_items, dim=4, seed=seed)
    return users, items, seen, relevant


def rule_rows(args) -> None:
    """--rule: the exact top-50 of rule-shaped vectors, sparse_exact beside what it replaced."""
    from recsys.engine import Engine
    from recsys.retrieval import index
    print(f"{'path (rule vectors)':<34}{'items':>9}{'users/s':>10}{'before: users/s':>17}{'speed-up':>10}{'same lists':>12}")
    for n_items in [int(x) for x in args.items.split(",")]:
        users, items, seen, _ = make_rule_data(args.users, n_items)
        sparse, brute = index.SparseExactIndex(items), index.BruteForceIndex(items)
        got = {}
        fast = timed(lambda: got.__setitem__("sparse", sparse.search_many(users, 50, seen)[0]), args.repeat)
        m = min(len(users), args.naive_users * (4 if n_items < 200_000 else 1))
        slow = timed(lambda: got.__setitem__("brute", brute.search_many(users[:m], 50, seen[:m])[0]), args.repeat)
        same = (got["sparse"][:m] == got["brute"]).all(1).mean()
        print(f"{'exact top-50 (evaluation)':<34}{n_items:>9}{len(users) / fast:>10,.0f}{m / slow:>17,.0f}"
              f"{(len(users) / fast) / (m / slow):>9.1f}x{same:>12.1%}")
        old_kind = "brute_force" if n_items < 50000 else "scann"
        rates = {}
        for kind in ("sparse_exact", old_kind):
            root = tempfile.mkdtemp(prefix="recsys-topn-")
            try:
                engine = Engine.load(root, save_version(root, users, items, seen, kind))
                rows = np.arange(len(users) if kind == "sparse_exact" else m)
                rates[kind] = len(rows) / timed(lambda: got.__setitem__(kind, engine.recommend_users(rows, 50)), args.repeat)
            finally:
                shutil.rmtree(root, ignore_errors=True)
        print(f"{'batch top-50 (sparse_exact vs ' + old_kind + ')':<34}{n_items:>9}{rates['sparse_exact']:>10,.0f}"
              f"{rates[old_kind]:>17,.0f}{rates['sparse_exact'] / rates[old_kind]:>9.1f}x")


def timed(fn, repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def save_version(root: str, users: np.ndarray, items: np.ndarray, seen, index_kind: str) -> str:
    """A saved mf-shaped version with these vectors, so the Engine loads it as the service does."""
    from recsys import version
    from recsys.config import from_dict
    from recsys.models import create
    from recsys.models.popularity import Popularity
    from recsys.retrieval import index
    cfg = from_dict({"index": {"kind": index_kind}})
    model = create("mf", cfg.model)
    model.user_ids = np.asarray([f"u{i}" for i in range(len(users))], dtype=object)
    model.item_ids = np.asarray([f"i{i}" for i in range(len(items))], dtype=object)
    model.user_embeddings, model.item_embeddings = users, items
    model.popularity = Popularity(len(items)).fit(seen.indices)
    model.history_length = 0
    v = version.write_parts(root, model, seen, {"model": "mf", "config": cfg.to_dict(), "dataset_id": "bench",
                                                "history_length": 0})
    version.save_index(root, v, index.build(items, cfg.index))
    return v


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", default="50000,200000")
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--naive-users", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rule", action="store_true", help="rule-shaped vectors: sparse_exact vs what it replaced")
    args = ap.parse_args()
    print("load:", os.popen("uptime").read().strip())
    import recsys  # noqa: F401  (TF quiet)
    if args.rule:
        rule_rows(args)
        return 0
    from recsys.data.trainset import EvalSet
    from recsys.ranking import top_k_masked
    from recsys.evaluation.scorer import evaluate_model
    from recsys.models import create
    from recsys.models.popularity import Popularity
    from recsys.config import from_dict
    from recsys.engine import Engine
    print(f"{'path':<28}{'items':>8}{'users/s':>12}{'naive users/s':>15}{'speed-up':>10}")
    for n_items in [int(x) for x in args.items.split(",")]:
        users, items, seen, relevant = make_data(args.users, n_items)
        model = create("mf", from_dict({}).model)
        model.item_embeddings, model.user_embeddings = items, users
        model.popularity = Popularity(n_items).fit(seen.indices)
        model.user_ids = np.arange(len(users)).astype(str).astype(object)
        model.item_ids = np.arange(n_items).astype(str).astype(object)
        ev = EvalSet(model.user_ids, np.arange(len(users)), relevant, seen, np.full((len(users), 1), -1, np.int32))
        fast = timed(lambda: evaluate_model(model, ev, (20,)), args.repeat)
        m = args.naive_users

        def naive_eval():
            for u in range(m):
                scores = items @ users[u]
                scores[seen.indices[seen.indptr[u]:seen.indptr[u + 1]]] = -np.inf
                top_k_masked(scores[None].astype(np.float32), 20)
        slow = timed(naive_eval, args.repeat)
        print(f"{'evaluate':<28}{n_items:>8}{len(users) / fast:>12,.0f}{m / slow:>15,.0f}{(len(users) / fast) / (m / slow):>9.1f}x")
        root = tempfile.mkdtemp(prefix="recsys-topn-")
        try:
            kind = "brute_force" if n_items < 50000 else "scann"
            v = save_version(root, users, items, seen, kind)
            engine = Engine.load(root, v)
            rows = np.arange(len(users))
            fast = timed(lambda: engine.recommend_users(rows, 50), args.repeat)
            ids = engine.lv.users.ids

            def per_user():
                for u in range(m):
                    engine.recommend(str(ids[u]), 50)
            slow = timed(per_user, args.repeat)
            print(f"{'batch top-50 (' + kind + ')':<28}{n_items:>8}{len(users) / fast:>12,.0f}{m / slow:>15,.0f}"
                  f"{(len(users) / fast) / (m / slow):>9.1f}x")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
