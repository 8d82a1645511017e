"""`recsys index --model VERSION`: build the item index, measure it against brute force, save it."""
from __future__ import annotations

import time

import numpy as np

from recsys import fsio, index, registry
from recsys.config import Config
from recsys.errors import DataError


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
