"""Transformations on frames of valid interactions: dedupe, feedback, k-core, split.

Each function works on one pandas frame. The Beam pipeline applies them per user bucket (every
interaction of a user lands in the same bucket), so the only global quantities are item counts for the
k-core filter and the time cut of the temporal split; both are passed in.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.config import Config

DEDUPE_KEYS = ["user", "item", "timestamp", "value", "event"]
SPLITS = ("train", "validation", "test")


def user_bucket(users: pd.Series, n_buckets: int) -> np.ndarray:
    """Stable bucket per user ID (same on every machine and run: no Python `hash`)."""
    # Hash each distinct ID once (as str: the bucket of an ID never depends on how it is stored).
    codes, uniques = pd.factorize(users, use_na_sentinel=False)
    hashes = pd.util.hash_array(np.asarray(uniques, dtype=object)) % np.uint64(n_buckets)
    return hashes.astype(np.int64)[codes]


def dedupe_and_keep_positives(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Drop exact duplicate events, then rows the feedback rules do not count as positive."""
    duplicate = df.duplicated(subset=DEDUPE_KEYS).to_numpy()
    positive = df["weight"].to_numpy() > 0
    # One selection for both filters: the frame is copied once.
    return df[~duplicate & positive], {"duplicates": int(duplicate.sum()),
                                       "not_positive": int((~duplicate & ~positive).sum())}


def kcore_codes(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int,
                cfg: Config) -> tuple[np.ndarray, int, int]:
    """The k-core filter on integer codes of all interactions at once.

    `users`, `items`: one code per interaction (in [0, n_users) and [0, n_items)). Runs up to
    `filters.max_rounds` rounds, each dropping items under the item minimum and then users under the
    user minimum, and stops early once a round drops nothing (later rounds would not change anything).
    Returns (mask of the interactions kept, rounds that dropped something, violations: users and items
    left under their minimum, 0 when the k-core converged).
    """
    fl = cfg.filters
    alive = np.ones(len(users), dtype=bool)
    rounds = 0
    for _ in range(fl.max_rounds):
        before = int(alive.sum())
        alive &= np.bincount(items[alive], minlength=n_items)[items] >= fl.min_item_interactions
        alive &= np.bincount(users[alive], minlength=n_users)[users] >= fl.min_user_interactions
        if int(alive.sum()) == before:
            break
        rounds += 1
    uc = np.bincount(users[alive], minlength=n_users)
    ic = np.bincount(items[alive], minlength=n_items)
    violations = int(((uc > 0) & (uc < fl.min_user_interactions)).sum()
                     + ((ic > 0) & (ic < fl.min_item_interactions)).sum())
    return alive, rounds, violations


def temporal_cuts(timestamps: np.ndarray, cfg: Config) -> tuple[int, int]:
    """(validation_start, test_start): the most recent `test_fraction` of interactions form test and
    the `validation_fraction` before them validation. Ties at a cut go to the later split."""
    ts = np.asarray(timestamps, dtype=np.int64)
    n = len(ts)
    if n == 0:
        return 0, 0
    sp = cfg.split
    n_test = max(1, int(round(n * sp.test_fraction)))
    n_val = int(round(n * sp.validation_fraction))
    # Two order statistics of the sorted timestamps; a partition finds them without sorting.
    at_test, at_val = n - n_test, max(0, n - n_test - n_val)
    ts = np.partition(ts, sorted({at_test, at_val}))
    test_start = int(ts[at_test])
    val_start = int(ts[at_val]) if n_val else test_start
    return val_start, test_start


def assign_split(df: pd.DataFrame, cfg: Config, cuts: tuple[int, int] | None) -> np.ndarray:
    """Split name per row: 0 train, 1 validation, 2 test.

    - temporal: one cut time for everyone (`cuts`);
    - last_session: per user, the last session held out whole (test), the one before it validation
      (`_last_sessions_split`), so no event of the held-out visit is in the history;
    - leave_last_n: per user, the last N rows test and the N before validation (rating-style logs).
    """
    if cfg.split.strategy == "temporal":
        val_start, test_start = cuts
        ts = df["timestamp"].to_numpy()
        return np.where(ts >= test_start, 2, np.where(ts >= val_start, 1, 0)).astype(np.int8)
    order = df.sort_values(["user", "timestamp", "item"], kind="stable")
    if cfg.split.strategy == "last_session":
        split = _last_sessions_split(order["user"].to_numpy(), order["timestamp"].to_numpy(),
                                     cfg.split.session_gap_minutes * 60)
        return pd.Series(split, index=order.index).reindex(df.index).to_numpy().astype(np.int8)
    # leave-last-N per user: the N most recent go to test, the N before to validation, when the user
    # has enough interactions left for training (at least one).
    n = cfg.split.leave_last_n
    rank_from_end = order.groupby("user", sort=False).cumcount(ascending=False).to_numpy()
    size = order.groupby("user", sort=False)["item"].transform("size").to_numpy()
    split = np.zeros(len(order), dtype=np.int8)
    split[(rank_from_end < n) & (size > n)] = 2
    split[(rank_from_end >= n) & (rank_from_end < 2 * n) & (size > 2 * n)] = 1
    out = pd.Series(split, index=order.index).reindex(df.index).to_numpy()
    return out.astype(np.int8)


def sessions(user: np.ndarray, timestamp: np.ndarray, gap_seconds: float) -> np.ndarray:
    """Session number per row, for rows sorted by (user, time): a new session starts with a user's
    first row and after every gap of more than `gap_seconds`. Numbers count from 0 over all users."""
    if not len(user):
        return np.zeros(0, dtype=np.int64)
    new = np.ones(len(user), dtype=bool)
    new[1:] = (user[1:] != user[:-1]) | (np.diff(timestamp) > gap_seconds)
    return np.cumsum(new) - 1


def _last_sessions_split(user: np.ndarray, timestamp: np.ndarray, gap_seconds: float) -> np.ndarray:
    """For rows sorted by (user, time): 2 for the user's last session, 1 for the one before, 0 before
    that; a user keeps at least one session for training (2 sessions: train + test; 3+: all three)."""
    session = sessions(user, timestamp, gap_seconds)
    first = np.ones(len(user), dtype=bool)
    first[1:] = user[1:] != user[:-1]
    # per row: the user's first and last session number
    user_no = np.cumsum(first) - 1
    first_session = session[first][user_no]
    last = np.r_[first[1:], True]
    last_session = session[last][user_no]
    n_sessions = last_session - first_session + 1
    from_end = last_session - session                    # 0: the last session
    split = np.zeros(len(user), dtype=np.int8)
    split[(from_end == 0) & (n_sessions >= 2)] = 2
    split[(from_end == 1) & (n_sessions >= 3)] = 1
    return split


def leak_counts(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, split: np.ndarray,
                is_target: np.ndarray, gap_seconds: float) -> dict:
    """The leak detector: for each held-out split (1 validation, 2 test), its target rows and how many
    of them the same user touched (any event on the same item) within `gap_seconds` before, in a row
    that sits in the history that split is queried with (an earlier split). A purchase whose view of
    the same item seconds earlier is in the history is "predicted" by the history, not by taste.

    Args:
        user, item: integer codes per row (any order).
        timestamp: epoch seconds per row.
        split: 0 train, 1 validation, 2 test per row.
        is_target: rows of the target events (evaluation.target_events; all rows when none are set).
        gap_seconds: how recent a touch counts (split.session_gap_minutes).
    Returns:
        {1: (targets, leaked), 2: (targets, leaked)}.
    """
    order = np.lexsort((timestamp, item, user))
    u, i, t, s, tg = user[order], item[order], np.asarray(timestamp, np.float64)[order], split[order], is_target[order]
    group = np.cumsum(np.r_[True, (u[1:] != u[:-1]) | (i[1:] != i[:-1])]) if len(u) else np.zeros(0, np.int64)
    out = {}
    for held in (1, 2):
        candidates = tg & (s == held)
        if not candidates.any():
            out[held] = (0, 0)
            continue
        # the latest history touch at or before each row of the same (user, item): rows are in time
        # order within a group, so it is the running maximum of the history rows' timestamps
        in_history = np.where(s < held, t, -np.inf)
        latest = pd.Series(in_history).groupby(group).cummax().to_numpy()
        leaked = candidates & (t - latest <= gap_seconds)
        out[held] = (int(candidates.sum()), int(leaked.sum()))
    return out


def id_ranks(ids: pa.Array) -> np.ndarray:
    """The position of each ID in `ids` (distinct strings) once sorted: integer stand-ins that order,
    group and compare like the strings."""
    # Arrow sorts strings by UTF-8 bytes, Python by code points: the same order for valid UTF-8.
    rank = np.empty(len(ids), dtype=np.int64)
    rank[pc.array_sort_indices(ids).to_numpy()] = np.arange(len(ids))
    return rank


def canonical_order(user_rank: np.ndarray, timestamp: np.ndarray, item_rank: np.ndarray, tie_keys) -> np.ndarray:
    """Deterministic row order for written shards: by user, timestamp, item (IDs as `id_ranks`), then by
    the arrays `tie_keys()` returns (most significant first). Rows equal on user, timestamp and item
    would otherwise keep their arrival order, which a distributed runner does not fix; `tie_keys` is
    called only when there are such rows."""
    # Logs mostly arrive in time order: then a stable sort by user alone (a radix sort for up to 65,536
    # users) already orders each user's rows, which one linear pass confirms.
    key = user_rank.astype(np.uint16) if len(user_rank) and user_rank.max() < 2 ** 16 else user_rank
    order = np.argsort(key, kind="stable")
    u, t, i = user_rank[order], timestamp[order], item_rank[order]
    if ((u[1:] != u[:-1]) | (t[1:] > t[:-1]) | ((t[1:] == t[:-1]) & (i[1:] > i[:-1]))).all():
        return order
    order = np.lexsort((item_rank, timestamp, user_rank))
    u, t, i = user_rank[order], timestamp[order], item_rank[order]
    if not ((u[1:] == u[:-1]) & (t[1:] == t[:-1]) & (i[1:] == i[:-1])).any():
        return order
    return np.lexsort((*reversed(tie_keys()), item_rank, timestamp, user_rank))
