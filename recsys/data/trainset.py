"""Index arrays the trainer and the evaluator use: train interactions, item features, held-out sets.

Loaded from a built dataset (recsys/data/dataset.py) or from the LightGCN `train.txt`/`test.txt` format
(Gowalla and friends), so the same trainer and evaluator run on both.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from recsys.config import exclusion_rule
from recsys.data.dataset import Dataset
from recsys.schema import ITEM_FIXED_COLUMNS
from recsys.errors import DataError

PAD = -1  # history padding (no item)


def csr_from_pairs(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> sp.csr_matrix:
    """A binary user x item matrix (duplicates collapse to 1)."""
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_rows, n_cols))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


@dataclass
class ItemFeatures:
    """Padded index matrices per item (row = item index); -1 pads."""
    genres: np.ndarray          # [n_items, G]
    title_tokens: np.ndarray    # [n_items, T]
    year_bucket: np.ndarray     # [n_items]
    n_genres: int
    n_tokens: int
    n_year_buckets: int
    genre_names: np.ndarray | None = None   # genre / token string per index (warm start matches by name)
    token_names: np.ndarray | None = None


@dataclass
class UserFeatures:
    """Padded index matrix per user (row = user index); -1 pads. Values index `names`."""
    values: np.ndarray          # [n_users, F]
    names: np.ndarray           # 'column=value' tokens, sorted


def user_features_from_frame(frame: pd.DataFrame | None, users, max_values: int = 8) -> UserFeatures | None:
    """Feature tokens of the users in `users` (a Vocabulary), matched by ID string; None without data."""
    if frame is None or not len(frame):
        return None
    names = np.asarray(sorted({t for toks in frame["features"] for t in toks}), dtype=object)
    if not len(names):
        return None
    index = pd.Index(names)
    out = np.full((len(users), max_values), PAD, dtype=np.int32)
    rows = users.lookup(frame["user"])
    for row, toks in zip(rows, frame["features"]):
        if row >= 0 and len(toks):
            v = index.get_indexer(list(toks)[:max_values])
            out[row, :len(v)] = v
    return UserFeatures(out, names)


@dataclass
class EvalSet:
    """Held-out interactions for evaluation. Row r of `relevant`/`exclude` is user `user_ids[r]`."""
    user_ids: np.ndarray        # string IDs of the evaluated users
    user_idx: np.ndarray        # index in the user vocabulary, -1 for users new since training
    relevant: sp.csr_matrix     # [n_eval_users, n_items] held-out items
    exclude: sp.csr_matrix      # [n_eval_users, n_items] items seen before (train, + validation for test)
    history: np.ndarray         # [n_eval_users, L] most recent seen items, newest first, -1 padded

    def sample(self, n: int, seed: int = 0) -> "EvalSet":
        """A seeded random subset of `n` of the users with held-out items (all of them when there are
        no more than `n`), in row order. The same seed on the same EvalSet gives the same users, so
        two versions sampled alike stay paired."""
        rows = np.flatnonzero(np.diff(self.relevant.indptr) > 0)
        if len(rows) > n:
            rows = np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))
        return EvalSet(self.user_ids[rows], self.user_idx[rows], self.relevant[rows], self.exclude[rows],
                       self.history[rows])

    def at_most(self, n: int, seed: int = 0) -> "EvalSet":
        """This set when it has at most `n` users, else `sample(n, seed)`: the validation users an
        epoch or a rule's choice is scored on (`model.eval_users`, `model.seed`)."""
        return self.sample(n, seed) if len(self.user_ids) > n else self

    @property
    def n_evaluable(self) -> int:
        """Users with at least one held-out item (the ones metrics are computed over)."""
        return int((np.diff(self.relevant.indptr) > 0).sum())


@dataclass
class TrainSet:
    user_idx: np.ndarray
    item_idx: np.ndarray
    weight: np.ndarray
    history: "PrecedingItems | UserItems | np.ndarray"   # [n, L] per row, newest first (built per batch)
    n_users: int
    n_items: int
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_features: ItemFeatures | None = None
    user_features: UserFeatures | None = None
    item_counts: np.ndarray = field(default=None)
    evals: dict = field(default_factory=dict)   # split name -> EvalSet
    dataset_id: str = ""
    includes_validation: bool = False           # the validation split is part of the training rows
    timestamp: np.ndarray | None = None         # per row (epoch seconds); None for data without time
    item_table: pd.DataFrame | None = None      # items.parquet (item_idx, attributes) for rules; None without

    def __post_init__(self):
        if self.item_counts is None:
            self.item_counts = np.bincount(self.item_idx, minlength=self.n_items).astype(np.int64)


def history_windows(users: np.ndarray, items: np.ndarray, length: int) -> np.ndarray:
    """For rows sorted by (user, time): the previous `length` items of the same user, newest first."""
    n = len(users)
    out = np.full((n, length), PAD, dtype=np.int32)
    for o in range(1, length + 1):
        if o >= n:
            break
        same = users[o:] == users[:-o]
        out[o:, o - 1] = np.where(same, items[:-o], PAD)
    return out


class PrecedingItems:
    """The `history` of training rows sorted by (user, time): for row r, the `length` items the same
    user interacted with before it, newest first, -1 padded, as `history_windows` gives them.

    Built per batch (`history[rows]`) from the rows' own item column and one first-row index per user,
    so it costs 8 bytes per user beside columns the TrainSet holds anyway, not `length` x 4 bytes per
    interaction (80 bytes at length 20: 8 GB at 100M interactions).
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, length: int, n_users: int | None = None):
        self.users, self.items, self.length = users, items, int(length)
        n_users = int(users.max()) + 1 if n_users is None and len(users) else (n_users or 0)
        self.first = np.searchsorted(users, np.arange(n_users), side="left")   # users are sorted

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.items), self.length

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, rows) -> np.ndarray:
        one = np.ndim(rows) == 0 and not isinstance(rows, slice)
        rows = np.arange(len(self.items))[rows] if isinstance(rows, slice) else np.atleast_1d(np.asarray(rows))
        rows = rows.astype(np.int64)
        back = rows[:, None] - np.arange(1, self.length + 1)[None, :]
        own = back >= self.first[self.users[rows]][:, None]
        out = np.where(own, self.items[np.maximum(back, 0)], PAD).astype(np.int32)
        return out[0] if one else out

    def __array__(self, dtype=None, copy=None):
        out = self[np.arange(len(self.items))]
        return out.astype(dtype) if dtype is not None else out


class UserItems:
    """The `history` of training rows that all get their user's one history (a split without time
    order, e.g. LightGCN's files): row r -> table[users[r]]."""

    def __init__(self, users: np.ndarray, table: np.ndarray):
        self.users, self.table = users, table

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.users), self.table.shape[1]

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, rows) -> np.ndarray:
        return self.table[self.users[rows]]

    def __array__(self, dtype=None, copy=None):
        out = self.table[self.users]
        return out.astype(dtype) if dtype is not None else out


def last_items(users: np.ndarray, items: np.ndarray, n_rows: int, length: int) -> np.ndarray:
    """Per user row (0..n_rows-1) the `length` most recent items, newest first; input sorted by time.

    One stable sort of the user column, then `length` gathers of each user run's k-th row from its
    end: the temporaries are the sort order and the sorted users (~12 bytes a row), not a dozen
    row-length arrays (~70 bytes a row, ~2.8 GB on 40M rows: the 50M two_tower save's peak).
    """
    out = np.full((n_rows, length), PAD, dtype=np.int32)
    if len(users) == 0 or length == 0:
        return out
    users = np.asarray(users)
    key = users.astype(np.int32, copy=False) if n_rows < 2 ** 31 else users
    order = np.argsort(key, kind="stable")   # by user, time order kept within a user
    u = key[order]
    del key
    ends = np.flatnonzero(u[1:] != u[:-1])   # the last sorted position of every user run but the last
    ends = np.append(ends, len(u) - 1)
    starts = np.r_[0, ends[:-1] + 1]
    run_user = u[ends]
    del u
    items = np.asarray(items)
    for k in range(length):
        pos = ends - k
        ok = pos >= starts
        if not ok.any():
            break
        out[run_user[ok], k] = items[order[pos[ok]]]
    return out


_TOKEN_RE = re.compile(r"[a-z0-9]+")


def _attribute_tokens(feats: pd.DataFrame) -> list[list[str]]:
    """Per item row, a token per catalog attribute value (`category=Books`, `tags=new`, and for a numeric
    attribute its decile, `price=q3`): they share the genres' embedding bag in the candidate tower."""
    out = [[] for _ in range(len(feats))]
    kinds = feats.attrs.get("kinds", {})
    for col in feats.columns:
        if col in ITEM_FIXED_COLUMNS or kinds.get(col) == "text":
            continue
        values = feats[col]
        if pd.api.types.is_numeric_dtype(values):
            v = values.to_numpy(np.float64)
            ok = ~np.isnan(v)
            if ok.sum() < 2:
                continue
            edges = np.unique(np.quantile(v[ok], np.linspace(0.1, 0.9, 9)))
            bucket = np.searchsorted(edges, v, side="right")
            for r in np.flatnonzero(ok):
                out[r].append(f"{col}=q{bucket[r]}")
            continue
        for r, value in enumerate(values):
            if value is None or (isinstance(value, float) and np.isnan(value)):
                continue
            for x in ([value] if isinstance(value, str) else list(value)):
                out[r].append(f"{col}={x}")
    return out


def item_features_from_frame(feats: pd.DataFrame, n_items: int, max_tokens: int = 8,
                             max_genres: int = 6, max_attribute_tokens: int = 10,
                             vocab_size: int = 20000, max_text_tokens: int = 24) -> ItemFeatures:
    """Genres and catalog attributes (one bag of tokens), title tokens (minus the year) and year
    buckets as padded index matrices."""
    feats = feats.sort_values("item_idx").reset_index(drop=True)
    attributes = _attribute_tokens(feats)
    genres = np.full((n_items, max_genres + (max_attribute_tokens if any(attributes) else 0)), PAD, dtype=np.int32)
    genre_index: dict = {}
    token_counts: dict = {}
    titles = [re.sub(r"\(\d{4}\)\s*$", "", str(t)).lower() for t in feats["title"]]
    # text attributes (a description) join the title's bag of words, after it
    text_cols = [c for c, k in feats.attrs.get("kinds", {}).items() if k == "text" and c in feats]
    if text_cols:
        extra = [" ".join(str(v) for v in row if isinstance(v, str)).lower()
                 for row in zip(*(feats[c] for c in text_cols))]
        titles = [f"{t} {e}" for t, e in zip(titles, extra)]
        max_tokens += max_text_tokens
    tokens = np.full((n_items, max_tokens), PAD, dtype=np.int32)
    for t in titles:
        for tok in set(_TOKEN_RE.findall(t)):
            token_counts[tok] = token_counts.get(tok, 0) + 1
    # Tokens seen in at least two titles; rarer ones carry no shared signal.
    token_index = {t: i for i, t in enumerate(sorted(k for k, c in token_counts.items() if c >= 2)[:vocab_size])}
    for row, (idx, gs, title) in enumerate(zip(feats["item_idx"], feats["genres"], titles)):
        for j, g in enumerate(list(gs)[:max_genres] + attributes[row][:max_attribute_tokens]):
            genres[idx, j] = genre_index.setdefault(g, len(genre_index))
        # each word once, in order: a word repeated in a description must not crowd out the others
        toks = [token_index[t] for t in dict.fromkeys(_TOKEN_RE.findall(title)) if t in token_index][:max_tokens]
        tokens[idx, :len(toks)] = toks
    year = np.zeros(n_items, dtype=np.int32)
    y = np.zeros(n_items, dtype=np.int64)
    y[feats["item_idx"].to_numpy()] = feats["year"].to_numpy()
    # 5-year buckets from 1900; bucket 0 = unknown year
    year = np.where(y > 0, np.clip((y - 1900) // 5 + 1, 1, 40), 0).astype(np.int32)
    return ItemFeatures(genres, tokens, year, max(1, len(genre_index)), max(1, len(token_index)), 41,
                        np.asarray(list(genre_index), dtype=str), np.asarray(list(token_index), dtype=str))


def excluded_rows(frame: pd.DataFrame, exclusion: str, target_events=()) -> np.ndarray:
    """Which rows of a user's known interactions exclude their item from what they are recommended
    (`config.exclusion_rule`): seen -> all; bought -> rows of `target_events`; none -> no row."""
    if exclusion == "none":
        return np.zeros(len(frame), dtype=bool)
    if exclusion == "bought" and target_events:
        return frame["event"].isin(list(target_events)).to_numpy()
    return np.ones(len(frame), dtype=bool)


def _eval_set(df: pd.DataFrame, seen: pd.DataFrame, users, items_n: int, history_len: int,
              target_events=(), exclusion: str | None = None) -> EvalSet:
    """Build an EvalSet from held-out rows `df` and earlier rows `seen` (train, + validation).

    `exclusion` (None: bought with `target_events`, else seen) decides which earlier items are excluded
    from the ranking (`excluded_rows`): with bought, an item the user viewed or carted stays rankable
    for a purchase, as the service ranks it."""
    # Users are matched by their vocabulary index: the ID strings are read only for held-out rows (and
    # earlier rows) of users the vocabulary does not know, so train's rows stay integers (a Python
    # string per row cost ~1 GB at 10M rows and an isin over all of them)
    n_known = len(users)
    new_ids = pd.Index(pd.unique(np.concatenate([_new_user_ids(df), _new_user_ids(seen)])))

    def key(frame):
        k = frame["user_idx"].to_numpy(np.int64).copy()
        unknown = k < 0
        if unknown.any():
            names = frame.loc[unknown, "user"].astype(object).to_numpy()
            # -1 in the dataset, but known to a refit's vocabulary (users first seen in validation)
            found = users.lookup(names)
            k[unknown] = np.where(found >= 0, found, n_known + new_ids.get_indexer(names))
        return k
    held_keys = key(df)
    keys = np.unique(held_keys)
    known = keys < n_known
    ids = np.empty(len(keys), dtype=object)
    ids[known] = np.asarray(users.ids)[keys[known]]
    ids[~known] = np.asarray(new_ids, dtype=object)[keys[~known] - n_known]
    order = np.argsort(ids, kind="stable")       # the evaluated users in ID order, as before (object compare)
    ids, keys = ids[order], keys[order]
    row_of = pd.Index(keys)
    relevant = csr_from_pairs(row_of.get_indexer(held_keys), df["item_idx"].to_numpy(), len(ids), items_n)
    seen_keys = key(seen)
    inside = row_of.get_indexer(seen_keys)
    seen = seen[inside >= 0]
    by_time = np.argsort(seen["timestamp"].to_numpy(), kind="stable")
    seen, seen_rows = seen.iloc[by_time], inside[inside >= 0][by_time]
    done = excluded_rows(seen, exclusion or exclusion_rule("auto", target_events), target_events)
    exclude = csr_from_pairs(seen_rows[done], seen["item_idx"].to_numpy()[done], len(ids), items_n)
    history = last_items(seen_rows, seen["item_idx"].to_numpy(), len(ids), history_len)
    return EvalSet(ids, np.where(keys < n_known, keys, -1), relevant, exclude, history)


def _new_user_ids(frame: pd.DataFrame) -> np.ndarray:
    """The user IDs of rows whose user the vocabulary does not know (user_idx -1)."""
    if "user" not in frame or not len(frame):
        return np.zeros(0, dtype=object)
    return frame.loc[frame["user_idx"].to_numpy() < 0, "user"].astype(object).to_numpy()


_COLS = ["user", "user_idx", "item_idx", "timestamp", "weight"]
# train rows: every user is in the vocabulary (train defines it), so no ID strings
_TRAIN_COLS = ["user_idx", "item_idx", "timestamp", "weight"]


def _no_event_types(dataset: Dataset, target_events) -> DataError:
    return DataError(f"evaluation.target_events={list(target_events)!r} is invalid: dataset {dataset.id} has no "
                     f"event types (source.columns.event, feedback.mode: event; rebuild the dataset)")


def read_split(dataset: Dataset, split: str, target_events) -> pd.DataFrame:
    """A split's rows, with the event type when evaluation looks at event types (train's without the
    user ID strings: its user_idx is always known)."""
    cols = _TRAIN_COLS if split == "train" else _COLS
    if not target_events:
        return dataset.read(split, cols, unknown_user_ids_only=True)
    try:
        frame = dataset.read(split, cols + ["event"], unknown_user_ids_only=True)
    except (KeyError, ValueError, pa.ArrowException):   # shards written before they kept the event type
        raise _no_event_types(dataset, target_events) from None
    if len(frame) and frame["event"].isna().all():
        raise _no_event_types(dataset, target_events)
    return frame


def _targets(frame: pd.DataFrame, target_events) -> pd.DataFrame:
    """The held-out rows that count as relevant: those of `target_events` (all rows when empty);
    `frame` comes from `read_split` with the same `target_events`, so it has the event column."""
    if not target_events:
        return frame
    return frame[frame["event"].isin(list(target_events)).to_numpy()]


def eval_sets(dataset: Dataset, history_len: int = 20, train: pd.DataFrame | None = None,
              target_events=(), exclusion: str | None = None, splits=("validation", "test")) -> dict:
    """Validation and test EvalSets of a built dataset (test excludes train and validation items).

    Args:
        dataset: the built dataset.
        history_len: how many recent items each evaluated user's history holds.
        train: the train rows, when the caller has read them.
        target_events: event types whose held-out rows are relevant (e.g. ["purchase"]: models train on
            every event and are measured on purchases); empty: every held-out row.
        exclusion: seen | bought | none, the items excluded from each user's ranking (`excluded_rows`;
            None: bought with target events, else seen).
        splits: the EvalSets to build (an evaluation on test needs no validation EvalSet).
    """
    if train is None:
        train = read_split(dataset, "train", target_events)
    val = read_split(dataset, "validation", target_events)
    out = {}
    val_targets = _targets(val, target_events)
    if len(val_targets) and "validation" in splits:
        out["validation"] = _eval_set(val_targets, train, dataset.users, len(dataset.items), history_len,
                                      target_events, exclusion)
    test_targets = _targets(read_split(dataset, "test", target_events), target_events) \
        if "test" in splits else []
    if len(test_targets):
        out["test"] = _eval_set(test_targets, pd.concat([train, val], ignore_index=True),
                                dataset.users, len(dataset.items), history_len, target_events, exclusion)
    return out


def from_dataset(dataset: Dataset, history_len: int = 20, include_validation: bool = False,
                 target_events=(), exclusion: str | None = None) -> TrainSet:
    """Train arrays, item features and validation/test EvalSets from a built dataset.

    `include_validation`: train on train + validation (the refit after early stopping has chosen the
    epoch count). Users first seen in validation are appended to the user vocabulary, so the refit
    model knows them; the only EvalSet is then test. `target_events`: see `eval_sets`.
    """
    train = read_split(dataset, "train", target_events)
    if len(train) == 0:
        raise DataError(f"dataset {dataset.id}: the train split is empty")
    users = dataset.users
    if include_validation:
        val = read_split(dataset, "validation", target_events)
        users = users.extended(val.loc[val["user_idx"].to_numpy() < 0, "user"])   # appended: indices stay
        _index_new_users(val, users)
        train = pd.concat([train, val], ignore_index=True)
    # shards are sorted by (user, timestamp, item) within a shard and a user lives in one shard;
    # validation rows come after a user's train rows in time
    train = train.sort_values(["user_idx", "timestamp"], kind="stable").reset_index(drop=True)
    u = train["user_idx"].to_numpy(np.int64)
    i = train["item_idx"].to_numpy(np.int64)
    n_users, n_items = len(users), len(dataset.items)
    table = dataset.item_features()
    feats = item_features_from_frame(table, n_items)
    ts = TrainSet(u, i, train["weight"].to_numpy(np.float32), PrecedingItems(u, i, history_len, len(users)),
                  n_users, n_items, users.ids, dataset.items.ids, feats,
                  user_features_from_frame(dataset.user_features(), users), dataset_id=dataset.id,
                  includes_validation=include_validation, timestamp=train["timestamp"].to_numpy(np.int64),
                  item_table=table if len(table) else None)
    if include_validation:
        test = _targets(read_split(dataset, "test", target_events), target_events)
        if len(test):
            ts.evals["test"] = _eval_set(test, train, users, n_items, history_len, target_events, exclusion)
    else:
        ts.evals = eval_sets(dataset, history_len, train, target_events, exclusion)
    return ts


def _read_lightgcn(path: str):
    users, items = [], []
    with open(path) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 2:
                continue
            its = np.asarray(parts[1:], dtype=np.int64)
            users.append(np.full(len(its), int(parts[0]), dtype=np.int64))
            items.append(its)
    return np.concatenate(users), np.concatenate(items)


def from_lightgcn(directory: str, history_len: int = 20, validation_fraction: float = 0.0,
                  seed: int = 0) -> TrainSet:
    """The LightGCN/NGCF split (`train.txt`, `test.txt`: `user item item ...` per line).

    The files carry no timestamps, so "the items before this one" is undefined: every training example
    of a user gets the history the user has at evaluation time (their last `history_len` train items
    in file order), so the query tower sees the same inputs in training and at test. With
    `validation_fraction` > 0 a random share of each user's train items is held out as validation, so
    early stopping never looks at test.
    """
    tr_u, tr_i = _read_lightgcn(os.path.join(directory, "train.txt"))
    te_u, te_i = _read_lightgcn(os.path.join(directory, "test.txt"))
    n_users = int(max(tr_u.max(), te_u.max()) + 1)
    n_items = int(max(tr_i.max(), te_i.max()) + 1)
    va_mask = np.zeros(len(tr_u), dtype=bool)
    if validation_fraction > 0:
        va_mask = np.random.default_rng(seed).random(len(tr_u)) < validation_fraction
    fit_u, fit_i = tr_u[~va_mask], tr_i[~va_mask]
    user_ids = np.asarray([str(x) for x in range(n_users)], dtype=object)
    item_ids = np.asarray([str(x) for x in range(n_items)], dtype=object)
    ts = TrainSet(fit_u, fit_i, np.ones(len(fit_u), np.float32),
                  UserItems(fit_u, last_items(fit_u, fit_i, n_users, history_len)),
                  n_users, n_items, user_ids, item_ids, None, dataset_id=os.path.basename(directory.rstrip("/")))
    all_users = np.arange(n_users)

    def es(rel_u, rel_i, seen_u, seen_i):
        return EvalSet(user_ids, all_users, csr_from_pairs(rel_u, rel_i, n_users, n_items),
                       csr_from_pairs(seen_u, seen_i, n_users, n_items),
                       last_items(seen_u, seen_i, n_users, history_len))
    if va_mask.any():
        ts.evals["validation"] = es(tr_u[va_mask], tr_i[va_mask], fit_u, fit_i)
    ts.evals["test"] = es(te_u, te_i, tr_u, tr_i)
    return ts


def user_histories(ts: TrainSet, length: int, dataset: Dataset | None = None) -> np.ndarray:
    """Each known user's `length` most recent items (newest first) from train, then validation.

    Validation interactions precede test in time, so the stored embeddings use everything a service
    would know before the test period, and nothing from it.
    """
    users, items = ts.user_idx, ts.item_idx
    if dataset is not None and not ts.includes_validation:
        val = _split_rows(ts, dataset, "validation", ["user", "item_idx", "timestamp"])
        val = val.sort_values("timestamp", kind="stable")
        users = np.concatenate([users, val["user_idx"].to_numpy(np.int64)])
        items = np.concatenate([items, val["item_idx"].to_numpy(np.int64)])
    return last_items(users, items, ts.n_users, length)


def seen_items(ts: TrainSet, dataset: Dataset | None, exclusion: str = "seen", target_events=()) -> sp.csr_matrix:
    """Known users x the items the service excludes for them, from every split: with `exclusion` seen,
    every item they interacted with; bought, the items of `target_events`; none, nothing."""
    if exclusion == "none":
        return sp.csr_matrix((ts.n_users, ts.n_items), dtype=np.int8)
    if exclusion == "bought" and target_events and dataset is not None:
        rows, cols = [], []
        for split in ("train", "validation", "test"):
            df = _split_rows(ts, dataset, split, ["user", "item_idx", "event"])
            df = df[excluded_rows(df, exclusion, target_events)]
            rows.append(df["user_idx"].to_numpy(np.int64))
            cols.append(df["item_idx"].to_numpy(np.int64))
    else:
        rows, cols = [ts.user_idx], [ts.item_idx]
        if dataset is not None:
            for split in ("validation", "test"):
                df = _split_rows(ts, dataset, split, ["user", "item_idx"])
                rows.append(df["user_idx"].to_numpy(np.int64))
                cols.append(df["item_idx"].to_numpy(np.int64))
    r, c = np.concatenate(rows), np.concatenate(cols)
    m = sp.csr_matrix((np.ones(len(r), np.int8), (r, c)), shape=(ts.n_users, ts.n_items))
    m.sum_duplicates()
    m.data[:] = 1
    return m


def _split_rows(ts: TrainSet, dataset: Dataset, split: str, columns: list) -> pd.DataFrame:
    """Rows of a dataset split whose user and item the TrainSet knows, with `user_idx` in `ts`'s
    vocabulary (which may extend the dataset's: a refit appends users first seen in validation)."""
    from recsys.data.vocab import Vocabulary
    df = dataset.read(split, sorted(set(columns) | {"user", "user_idx"}), unknown_user_ids_only=True)
    if len(ts.user_ids) > len(dataset.users):        # a refit's vocabulary, extended by validation's users
        _index_new_users(df, Vocabulary(ts.user_ids))
    return df[(df["user_idx"] >= 0) & (df["item_idx"] >= 0)]


def _index_new_users(frame: pd.DataFrame, users) -> None:
    """Rows the dataset's vocabulary does not know (user_idx -1) get their index in `users`, a vocabulary
    that extends it (Vocabulary.extended: the dataset's indices stay), found by their ID string (which
    `Dataset.read(unknown_user_ids_only=True)` keeps on exactly those rows)."""
    unknown = frame["user_idx"].to_numpy() < 0
    if unknown.any():
        frame["user_idx"] = frame["user_idx"].astype(np.int64)
        frame.loc[unknown, "user_idx"] = users.lookup(frame.loc[unknown, "user"])
