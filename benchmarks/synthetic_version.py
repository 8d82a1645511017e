"""A synthetic "mf" model version for benchmarks/serving_latency.py, and the requests that go with it.

The version (`synthesize`), written with the product's own writer (recsys.version.write_parts, given an
`MF` model holding the arrays), in the layout of recsys/version.py:

* --items item IDs i0, i1, ... x 64-dim embeddings from a Gaussian mixture: one cluster per 500 items
  (at least 8), centres ~ N(0, I/64), per-cluster noise --spread x U(0.5, 1.5) relative to the centre
  norm, every vector L2-normalised;
* --users user embeddings u0, u1, ... from the same mixture, each user in one cluster;
* seen.npz with 10-30 (mean 20) items per user, 80 % of them from the user's own cluster;
* popularity counts with a Zipf shape (about 200,000 / rank^1.05).

No SavedModel: an "mf" version folds a history in by least squares (recsys/models/embedding.py
fold_in), which is the request-time path of POST /v1/recommendations.

`prepare` reuses the version published under the root when it was made with the same data parameters
(`synth_params`) and has an index with the default settings for its size; otherwise it synthesizes one,
builds its index with recsys.jobs.index_version and the default config (ScaNN at 1M items, brute force
below index.brute_force_below = 50,000) and publishes it (recsys.registry.publish).

Requests: `make_users` (random known user IDs) and `make_histories` (5-20 distinct items of one
random cluster, a user's taste).

The mixture itself (`normalize`, `mixture_clusters`, `mixture_vectors`) is also benchmarks/ann.py's
synthetic data set. recsys and scipy (and, through ScaNN, TensorFlow) are imported inside `synthesize`
and `prepare` only, so importing this module costs numpy alone.
"""
from __future__ import annotations

import os
import time

import numpy as np

DIM = 64
ITEMS_PER_CLUSTER = 500


# --------------------------------------------------------------------------------------------------
# Gaussian mixture (shared with ann.py)
# --------------------------------------------------------------------------------------------------

def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32 (all-zero rows stay zero)."""
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def mixture_clusters(rng: np.random.Generator, n_clusters: int, dim: int,
                     spread: float) -> tuple[np.ndarray, np.ndarray]:
    """(centres [n_clusters, dim] ~ N(0, I/dim), per-cluster noise scale spread x U(0.5, 1.5)), float32."""
    centers = rng.normal(size=(n_clusters, dim)).astype(np.float32) / np.sqrt(dim)
    scale = (spread * rng.uniform(0.5, 1.5, n_clusters)).astype(np.float32)
    return centers, scale


def mixture_vectors(rng: np.random.Generator, centers: np.ndarray, scale: np.ndarray,
                    labels: np.ndarray) -> np.ndarray:
    """One L2-normalised draw per label: centre + scale x N(0, I/dim), in chunks of 2^18 rows."""
    dim = centers.shape[1]
    out = np.empty((len(labels), dim), dtype=np.float32)
    step = 1 << 18
    for s in range(0, len(labels), step):
        c = labels[s:s + step]
        noise = rng.standard_normal((len(c), dim), dtype=np.float32) / np.sqrt(dim)
        out[s:s + len(c)] = normalize(centers[c] + scale[c, None] * noise)
    return out


# --------------------------------------------------------------------------------------------------
# The version
# --------------------------------------------------------------------------------------------------

def synth_params(args) -> dict:
    """What the data depends on; stored in the manifest ("synthetic") to decide whether to reuse it."""
    return {"items": args.items, "users": args.users, "dim": DIM, "seed": args.seed,
            "items_per_cluster": ITEMS_PER_CLUSTER, "spread": args.spread, "seen_per_user": "10-30, 80% own cluster"}


def _item_clusters(args):
    """The first draws of the seed: (rng, n_clusters, centres, scales, each item's cluster)."""
    rng = np.random.default_rng(args.seed)
    n_clusters = max(8, args.items // ITEMS_PER_CLUSTER)
    centers, scale = mixture_clusters(rng, n_clusters, DIM, args.spread)
    return rng, n_clusters, centers, scale, rng.integers(0, n_clusters, args.items)


def synthesize(root: str, args) -> tuple[str, dict]:
    """Write the version; returns (version, data needed to make requests)."""
    import scipy.sparse as sp
    from recsys import version as version_mod
    from recsys.config import from_dict
    from recsys.models import create
    from recsys.models.popularity import Popularity
    n_items, n_users = args.items, args.users
    rng, n_clusters, centers, scale, item_cluster = _item_clusters(args)
    user_cluster = rng.integers(0, n_clusters, n_users)
    items = mixture_vectors(rng, centers, scale, item_cluster)
    users = mixture_vectors(rng, centers, scale, user_cluster)

    # seen: 10-30 items per user, 80 % from the user's cluster
    order = np.argsort(item_cluster, kind="stable")
    starts = np.searchsorted(item_cluster[order], np.arange(n_clusters))
    sizes = np.bincount(item_cluster, minlength=n_clusters)
    counts = rng.integers(10, 31, n_users)
    rows = np.repeat(np.arange(n_users), counts)
    own = rng.random(len(rows)) < 0.8
    c = user_cluster[rows]
    pos = starts[c] + (rng.random(len(rows)) * np.maximum(sizes[c], 1)).astype(np.int64)
    cols = np.where(own & (sizes[c] > 0), order[np.minimum(pos, n_items - 1)], rng.integers(0, n_items, len(rows)))
    seen = sp.csr_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n_users, n_items))
    seen.sum_duplicates()
    seen.data[:] = 1

    rank = rng.permutation(n_items) + 1
    popularity = np.floor(200_000.0 / rank ** 1.05).astype(np.int64) + rng.integers(0, 3, n_items)

    item_ids = np.array([f"i{i}" for i in range(n_items)], dtype=object)
    user_ids = np.array([f"u{u}" for u in range(n_users)], dtype=object)
    cfg = from_dict({})
    model = create("mf", cfg.model)
    model.load_state(user_ids, item_ids, items, users, None, cfg.model.history_length)
    model.popularity = Popularity(n_items, popularity)
    version = version_mod.write_parts(root, model, seen, {
        "dataset_id": "synthetic-serving-latency", "config": cfg.to_dict(),
        "history_length": cfg.model.history_length, "synthetic": synth_params(args)})
    return version, {"item_cluster": item_cluster, "n_clusters": n_clusters}


def prepare(root: str, args) -> tuple[str, dict]:
    """Reuse the published version under `root` if it was made with the same parameters, else build one."""
    from recsys import jobs, registry, version as version_mod
    from recsys.config import from_dict
    from recsys.retrieval import index as rindex
    cur = registry.current_version(root) if os.path.exists(os.path.join(root, "CURRENT")) else None
    if cur:
        m = version_mod.read_manifest(root, cur)
        icfg = from_dict({}).index
        kind = icfg.kind if icfg.kind != "auto" else ("brute_force" if args.items < icfg.brute_force_below else "scann")
        want = {} if kind == "brute_force" else rindex.default_params(args.items, icfg)
        have = m.get("index", {}).get("params")
        # settings left to "auto" are resolved at build time: any stored value matches them
        same_index = isinstance(have, dict) and set(have) == set(want) and all(
            have[k] == v for k, v in want.items() if v != "auto")
        if (m.get("synthetic") == synth_params(args) and version_mod.has_index(root, cur)
                and same_index):
            print(f"reusing version {cur} under {root} (same data parameters and index settings)")
            _, n_clusters, _, _, item_cluster = _item_clusters(args)
            return cur, {"item_cluster": item_cluster, "n_clusters": n_clusters}
    t = time.perf_counter()
    version, data = synthesize(root, args)
    print(f"synthesized {version}: {args.items:,} items, {args.users:,} users, dim {DIM} "
          f"in {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    try:
        info = jobs.index_version(from_dict({}), root, version, progress=lambda m: print(m, flush=True))
    except Exception as exc:
        raise SystemExit(f"index build refused: {exc}\n(the synthetic data is too hard for the default index "
                         f"settings; a smaller --spread makes tighter clusters)") from None
    print(f"index built in {time.perf_counter() - t:.1f}s: {info.get('kind')} {info.get('params', {})}")
    registry.publish(root, version, reason="serving_latency benchmark")
    return version, data


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------

def make_histories(data: dict, n: int, seed: int) -> list[list[str]]:
    """n histories of 5-20 distinct items, each from one random cluster (a user's taste)."""
    rng = np.random.default_rng(seed + 1)
    ic = data["item_cluster"]
    order = np.argsort(ic, kind="stable")
    starts = np.searchsorted(ic[order], np.arange(data["n_clusters"] + 1))
    out = []
    for _ in range(n):
        c = rng.integers(0, data["n_clusters"])
        members = order[starts[c]:starts[c + 1]]
        if len(members) < 5:
            members = rng.integers(0, len(ic), 40)
        size = int(rng.integers(5, 21))
        out.append([f"i{x}" for x in rng.choice(members, min(size, len(members)), replace=False)])
    return out


def make_users(n_users: int, n: int, seed: int) -> list[str]:
    """n user IDs drawn uniformly (with repeats) from the version's n_users users."""
    rng = np.random.default_rng(seed + 2)
    return [f"u{u}" for u in rng.integers(0, n_users, n)]
