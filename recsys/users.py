"""User metadata (categorical features such as gender, age band, country) for the two_tower query tower.

Read from MovieLens-1M `users.dat` (`UserID::Gender::Age::Occupation::Zip-code`) or a generic table
(`csv`, `parquet`, `jsonl`) with `source.user_columns.user` and the `features` columns. Each value becomes
a token `column=value`; empty values are skipped. Rows without a user ID go to the dead letters.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from recsys import fsio, ingest
from recsys.config import Config
from recsys.items import check_ids, read_columns

MOVIELENS_USER_FEATURES = ["gender", "age", "occupation"]   # users.dat; the zip code is left out


def read_users(path: str, cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse one user metadata file. Returns (users: user, features [list of 'col=value'], rejected)."""
    s = cfg.source
    if s.users_format == "movielens_users":
        raw, rejected, lookup = _movielens_users(path)
        user_col, feature_cols = "user", MOVIELENS_USER_FEATURES
    else:
        raw, rejected, lookup = read_columns(path, s.users_format, s.delimiter if s.users_format == "csv" else ",")
        user_col, feature_cols = s.user_columns.user, list(s.user_columns.features)
    user, bad, rejected = check_ids(raw.get(user_col, pd.Series([None] * len(raw), dtype=object)), raw["_line"],
                                    ingest.MISSING_USER, path, lookup, rejected)
    raw, user = raw[~bad], user[~bad]
    tokens = [[] for _ in range(len(raw))]
    for col in feature_cols:
        if col not in raw:
            continue   # a column missing from this file: no tokens from it
        values = raw[col].astype("string").str.strip().fillna("").to_numpy(dtype=object)
        for row, v in enumerate(values):
            if v:
                tokens[row].append(f"{col}={v}")
    users = pd.DataFrame({"user": user.astype(object).to_numpy(), "features": tokens})
    # The last row for an ID wins, like an upsert.
    return users.drop_duplicates("user", keep="last").reset_index(drop=True), rejected


def _movielens_users(path: str):
    """users.dat: '::'-separated, no header, Latin-1."""
    lines = fsio.read_bytes(path).decode("latin-1").splitlines()
    rows, good, bad = [], [], []
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != 5:
            bad.append((no, line))
            continue
        rows.append(parts[:4])
        good.append(no)
    raw = pd.DataFrame(rows, columns=["user"] + MOVIELENS_USER_FEATURES)
    raw["_line"] = np.asarray(good, dtype=np.int64)
    rejected = ingest.rejected_frame(path, [n for n, _ in bad], ingest.WRONG_COLUMN_COUNT, [t for _, t in bad])
    return raw, rejected, lambda nos: [lines[n - 1] for n in nos]
