"""Full-catalog ranking metrics by their standard definitions (those of the LightGCN/BARS evaluation:
recall@k = hits in the top k / held-out items, ndcg@k with binary gains), vectorized over batches of users.

For each evaluated user: score every catalog item, remove the items the user saw in training (and
validation, when scoring test), take the top K, compare with the held-out items. Per-user arrays are
kept so that offline A/B comparisons can pair users.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp

from recsys.ranking import in_rows, top_k_masked
from recsys.schema import LIST_METRICS, RANKING_METRICS as METRICS  # noqa: F401 (the names computed here)


@dataclass
class Evaluation:
    """Per-user metric arrays (keyed "recall@20" ...) plus list-level metrics."""
    users: np.ndarray
    per_user: dict = field(default_factory=dict)
    list_level: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Mean of every per-user metric, the list-level metrics, and the number of users."""
        out = {k: float(np.mean(v)) if len(v) else 0.0 for k, v in self.per_user.items()}
        out.update(self.list_level)
        out["users"] = int(len(self.users))
        return out


def hits_from_topk(topk: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """Boolean matrix: hits[u, r] = item at rank r for user u is relevant (-1 ranks never hit)."""
    return in_rows(topk, relevant)


def ranking_metrics(hits: np.ndarray, n_relevant: np.ndarray, ks) -> dict:
    """Per-user recall, recall_norm, ndcg, hit_rate, map, mrr at each K from a hits matrix."""
    out = {}
    n_rel = n_relevant.astype(np.float64)
    if hits.shape[1] < max(ks):   # a catalog smaller than k: the missing ranks are misses
        hits = np.pad(hits, ((0, 0), (0, max(ks) - hits.shape[1])))
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    for k in ks:
        h = hits[:, :k].astype(np.float64)
        n_hit = h.sum(1)
        denom = np.minimum(k, n_rel)
        out[f"recall@{k}"] = n_hit / n_rel
        out[f"recall_norm@{k}"] = n_hit / denom
        dcg = (h * discounts[:k]).sum(1)
        idcg_table = np.concatenate([[0.0], np.cumsum(discounts[:k])])
        out[f"ndcg@{k}"] = dcg / idcg_table[np.minimum(k, n_rel).astype(int)]
        out[f"hit_rate@{k}"] = (n_hit > 0).astype(np.float64)
        prec_at_r = np.cumsum(h, axis=1) / np.arange(1, k + 1)
        out[f"map@{k}"] = (prec_at_r * h).sum(1) / denom
        first = np.where(h.any(1), h.argmax(1) + 1, 0)
        out[f"mrr@{k}"] = np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0)
    return out


def evaluate(score_fn: Callable[[np.ndarray], np.ndarray], users: np.ndarray, relevant: sp.csr_matrix,
             exclude: sp.csr_matrix, ks=(10, 20, 50), item_popularity: np.ndarray | None = None,
             batch_size: int = 1024) -> Evaluation:
    """Evaluate a scorer on the rows `users` of `relevant` / `exclude` (both user x item CSR).

    `score_fn(user_rows)` returns a (len(user_rows), n_items) score matrix for those rows. Users with no
    relevant item are skipped, as the standard definition says.
    """
    n_rel_all = np.asarray(relevant.sum(1)).ravel()
    users = np.asarray(users)
    users = users[n_rel_all[users] > 0]
    kmax = max(ks)
    tops = []
    for start in range(0, len(users), batch_size):
        rows = users[start:start + batch_size]
        tops.append(top_k_masked(np.require(score_fn(rows), np.float32, ["W"]), kmax, exclude[rows]))
    topk = np.concatenate(tops) if tops else np.zeros((0, kmax), dtype=np.int64)
    return from_topk(topk, users, relevant, ks, item_popularity)


def from_topk(topk: np.ndarray, users: np.ndarray, relevant: sp.csr_matrix, ks=(10, 20, 50),
              item_popularity: np.ndarray | None = None) -> Evaluation:
    """The Evaluation of ranked lists: `topk[j]` (item indices best first, -1 padded) is the list of
    user row `users[j]` of `relevant`; every one of them has at least one relevant item."""
    n_items = relevant.shape[1]
    n_rel = np.asarray(relevant[users].sum(1)).ravel() if len(users) else np.zeros(0)
    kmax = max(ks)
    if topk.shape[1] < kmax:
        topk = np.pad(topk, ((0, 0), (0, kmax - topk.shape[1])), constant_values=-1)
    hits = hits_from_topk(topk, relevant[users]) if len(users) else np.zeros((0, kmax), dtype=bool)
    ev = Evaluation(users=users, per_user=ranking_metrics(hits, n_rel, ks))
    for k in ks:
        rec = topk[:, :k]
        listed = rec[rec >= 0]
        ev.list_level[f"coverage@{k}"] = float(len(np.unique(listed)) / n_items) if n_items else 0.0
        if item_popularity is not None:
            share = item_popularity / max(item_popularity.sum(), 1)
            info = -np.log2(np.maximum(share, 1.0 / max(item_popularity.sum(), 1)))
            per_rank = np.where(rec >= 0, info[np.maximum(rec, 0)], 0.0)
            listed_n = (rec >= 0).sum(1)
            # per-user novelty is kept too: A/B comparisons pair it over users
            ev.per_user[f"novelty@{k}"] = per_rank.sum(1) / np.maximum(listed_n, 1)
            ev.list_level[f"novelty@{k}"] = float(info[listed].mean()) if len(listed) else 0.0
    ev.topk = topk
    return ev
