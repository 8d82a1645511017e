"""Item and user metadata: what the dataset build takes from `source.items_path` / `source.users_path`.

Items (title, year, genres) come from MovieLens `movies.csv` or a generic table. Users (categorical
features such as gender, age band, country, for the two_tower query tower) come from MovieLens-1M
`users.dat` (`UserID::Gender::Age::Occupation::Zip-code`) or a generic table (`csv`, `parquet`, `jsonl`)
with `source.user_columns.user` and the `features` columns; each value becomes a token `column=value`.
In both, rows without an ID go to the dead letters and the last row for an ID wins. The files are read
by `recsys.data.readers` (`read_columns`, and the columns a format fixes).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.data import ingest, readers
from recsys.config import Config, item_attributes
from recsys.errors import DataError

ITEM_COLUMNS = ["item", "title", "year", "genres"]
_YEAR_RE = r"\((\d{4})\)\s*$"


def empty_items() -> pd.DataFrame:
    """An item metadata frame with no rows (item, title, year, genres)."""
    return pd.DataFrame({"item": pd.Series(dtype=object), "title": pd.Series(dtype=object),
                         "year": pd.Series(dtype=np.int32), "genres": pd.Series(dtype=object)})


def read_items(path: str, cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse one metadata file. Returns (items, rejected); rows without an item ID are rejected."""
    s = cfg.source
    mapping = readers.item_columns(s)
    raw, rejected, lookup = readers.read_columns(path, s.items_format, s.delimiter)
    out = pd.DataFrame({
        "item": raw.get(mapping.get("item"), pd.Series([None] * len(raw))).astype(object),
        "title": raw.get(mapping.get("title"), pd.Series([None] * len(raw))),
        "genres_raw": raw.get(mapping.get("genres"), pd.Series([None] * len(raw))),
        "year_raw": raw.get(mapping.get("year"), pd.Series([None] * len(raw))),
        "_line": raw["_line"].to_numpy(),
    })
    item, bad, rejected = check_ids(out["item"], out["_line"], ingest.MISSING_ITEM, path, lookup, rejected)
    out = out[~bad]
    item = item[~bad]
    title = out["title"].fillna("").astype(str)
    if mapping.get("year"):
        year = pd.to_numeric(out["year_raw"], errors="coerce")
    else:
        year = pd.to_numeric(title.str.extract(_YEAR_RE)[0], errors="coerce")
    genres = out["genres_raw"].fillna("").astype(str).map(
        lambda g: [x for x in g.split(s.genre_separator) if x and x != "(no genres listed)"])
    items = pd.DataFrame({"item": item.astype(object).to_numpy(), "title": title.to_numpy(),
                          "year": year.fillna(0).astype(np.int32).to_numpy(), "genres": genres.to_numpy()})
    for name, attr in item_attributes(s).items():
        if name not in raw:
            # a misspelt attribute would otherwise be an empty column, and every filter on it fail later
            cols = [c for c in raw.columns if not str(c).startswith("_")]
            # (a DataError: raised inside the Beam job, which surfaces only those as one line)
            raise DataError(f"config: source.item_columns.attributes.{name}={name!r} is invalid: not a column of "
                            f"{path} (its columns: {', '.join(map(str, cols))})")
        col = raw[name][~bad]
        if attr.kind == "numeric":
            items[name] = pd.to_numeric(col, errors="coerce").astype(np.float64).to_numpy()
            continue
        if attr.kind == "date":
            items[name] = date_seconds(col)
            continue
        text = col.astype("string").str.strip(ingest.ID_PADDING).fillna("").to_numpy(dtype=object)
        if attr.kind == "multi":
            items[name] = [[x.strip() for x in v.split(attr.separator) if x.strip()] for v in text]
        else:   # categorical, text
            items[name] = [v or None for v in text]
    # (duplicate IDs: the caller keeps the last row per ID, like an upsert, and counts the others)
    return items.reset_index(drop=True), rejected


def date_seconds(values) -> np.ndarray:
    """Epoch seconds (float64; NaN: missing or not a date) of dates or datetimes: ISO 8601 strings with
    or without a time or an offset (naive ones are UTC), or a native timestamp column."""
    col = pd.Series(values)
    if pd.api.types.is_datetime64_any_dtype(col):
        parsed = pd.to_datetime(col, utc=True)
    else:
        text = col.astype("string").str.strip()
        parsed = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
    seconds = (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return seconds.to_numpy(dtype=np.float64, na_value=np.nan)


def check_ids(ids: pd.Series, lines: pd.Series, reason: str, path: str, lookup, rejected: pd.DataFrame):
    """IDs of a metadata file, stripped; rows with an empty ID or control characters are dead letters.
    Returns (ids as strings, bad-row mask, `rejected` plus those rows under `reason`)."""
    ids = ids.astype("string").str.strip(ingest.ID_PADDING)
    bad = (ids.isna() | (ids == "") | ids.str.contains(r"[\x00-\x1f\x7f]", regex=True).fillna(True)).to_numpy(bool)
    if bad.any():
        lines = lines.to_numpy()[bad]
        rejected = pd.concat([rejected, readers.rejected_frame(path, lines, reason,
                                                               lookup(lines) if lookup else [""] * len(lines))],
                             ignore_index=True)
    return ids, bad, rejected


# ---- users ----------------------------------------------------------------------------------

def read_users(path: str, cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse one user metadata file. Returns (users: user, features [list of 'col=value'], rejected)."""
    s = cfg.source
    user_col, feature_cols = readers.user_columns(s)
    raw, rejected, lookup = readers.read_columns(path, s.users_format, s.delimiter)
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
    return users.reset_index(drop=True), rejected   # duplicate IDs: the caller keeps the last and counts them
