"""Item and user metadata: the readers the dataset build applies to `source.items_path` / `source.users_path`.

Items (title, year, genres) come from MovieLens `movies.csv` or a generic table. Users (categorical
features such as gender, age band, country, for the two_tower query tower) come from MovieLens-1M
`users.dat` (`UserID::Gender::Age::Occupation::Zip-code`) or a generic table (`csv`, `parquet`, `jsonl`)
with `source.user_columns.user` and the `features` columns; each value becomes a token `column=value`.
In both, rows without an ID go to the dead letters and the last row for an ID wins.
"""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from recsys import fsio
from recsys.data import ingest
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
    fmt = s.items_format
    ic = s.item_columns
    if fmt == "movielens_movies":
        mapping = {"item": "movieId", "title": "title", "genres": "genres"}
    else:
        mapping = {k: getattr(ic, k) for k in ("item", "title", "genres", "year") if getattr(ic, k)}
    raw, rejected, lookup = read_columns(path, fmt, s.delimiter if fmt == "csv" else ",")
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
        col = raw[name][~bad] if name in raw else pd.Series([None] * len(items), dtype=object)
        if attr.kind == "numeric":
            items[name] = pd.to_numeric(col, errors="coerce").astype(np.float64).to_numpy()
            continue
        text = col.astype("string").str.strip(ingest.ID_PADDING).fillna("").to_numpy(dtype=object)
        if attr.kind == "multi":
            items[name] = [[x.strip() for x in v.split(attr.separator) if x.strip()] for v in text]
        else:   # categorical, text
            items[name] = [v or None for v in text]
    # The last row for an ID wins, like an upsert; it keeps item features unique per item.
    items = items.drop_duplicates("item", keep="last").reset_index(drop=True)
    return items, rejected


def check_ids(ids: pd.Series, lines: pd.Series, reason: str, path: str, lookup, rejected: pd.DataFrame):
    """IDs of a metadata file, stripped; rows with an empty ID or control characters are dead letters.
    Returns (ids as strings, bad-row mask, `rejected` plus those rows under `reason`)."""
    ids = ids.astype("string").str.strip(ingest.ID_PADDING)
    bad = (ids.isna() | (ids == "") | ids.str.contains(r"[\x00-\x1f\x7f]", regex=True).fillna(True)).to_numpy(bool)
    if bad.any():
        lines = lines.to_numpy()[bad]
        rejected = pd.concat([rejected, ingest.rejected_frame(path, lines, reason,
                                                              lookup(lines) if lookup else [""] * len(lines))],
                             ignore_index=True)
    return ids, bad, rejected


def read_columns(path: str, fmt: str, delimiter: str = ","):
    """Every column of a metadata file (`parquet`, `jsonl`, or delimited with a header) as read, plus
    `_line` (1-based line or row number). Returns (frame, rejected rows, line-number -> text lookup or
    None for Parquet)."""
    data = fsio.read_bytes(path)
    try:
        if fmt == "parquet":
            table = pq.read_table(pa.BufferReader(data))
            # integer columns as strings before pandas, where a null would turn 7 into "7.0"
            table = pa.table({n: pc.cast(c, pa.string()) if pa.types.is_integer(c.type) else c
                              for n, c in zip(table.column_names, table.columns)})
            raw = table.to_pandas()
            raw["_line"] = np.arange(1, len(raw) + 1)
            return raw, ingest.empty_rejected(), None
        if fmt == "jsonl":
            raw, rejected = _jsonl_columns(data, path)
            return raw, rejected, ingest.line_text_lookup(data, 1)
        first_nl = data.find(b"\n")
        header, body = (data, b"") if first_nl < 0 else (data[:first_nl], data[first_nl + 1:])
        if not header.strip():
            raise DataError(f"{path}: empty file, expected a header line")
        names = ingest.header_names(header, ingest.Layout("delimited", delimiter, True, None, {}))
        if not body.strip():
            return pd.DataFrame({n: pd.Series(dtype=object) for n in names} | {"_line": pd.Series(dtype=np.int64)}), \
                ingest.empty_rejected(), None
        raw, rejected = _raw_columns(body, 2, names, delimiter, path)
        return raw, rejected, ingest.line_text_lookup(body, 2)
    except (pa.ArrowException, UnicodeDecodeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: cannot read as {fmt}: {msg}") from None


def _raw_columns(body, first, names, delimiter, path):
    """All columns of a delimited metadata file as strings (quoted fields allowed)."""
    lines, line_nos = ingest.split_lines(body, first)
    bad_rows = []

    def on_invalid(row):
        bad_rows.append(row.number - 1)
        return "skip"
    text = b"\n".join(lines)
    # one thread: the invalid-row handler only gets line numbers from a serial parse
    table = pcsv.read_csv(io.BytesIO(text), read_options=pcsv.ReadOptions(column_names=names, use_threads=False),
                          parse_options=pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
                          convert_options=pcsv.ConvertOptions(column_types={n: pa.string() for n in names}))
    good = np.ones(len(lines), dtype=bool)
    good[bad_rows] = False
    raw = table.to_pandas()
    raw["_line"] = line_nos[good]
    rejected = ingest.rejected_frame(path, line_nos[~good], ingest.WRONG_COLUMN_COUNT,
                                     [lines[i].decode("utf-8", "backslashreplace") for i in np.flatnonzero(~good)])
    return raw, rejected


def _jsonl_columns(body, path):
    lines, line_nos = ingest.split_lines(body, 1)
    recs, goods, bad_no, bad_raw = [], [], [], []
    for ln, no in zip(lines, line_nos):
        try:
            r = json.loads(ln)
            if not isinstance(r, dict):
                raise ValueError
            recs.append(r), goods.append(no)
        except ValueError:
            bad_no.append(no), bad_raw.append(ln.decode("utf-8", "backslashreplace"))
    # object columns keep each value as parsed: 7 stays 7 (then "7"), not 7.0 next to a missing value
    raw = pd.DataFrame(recs, dtype=object)
    raw["_line"] = np.asarray(goods, dtype=np.int64)
    return raw, ingest.rejected_frame(path, bad_no, ingest.UNPARSEABLE, bad_raw)


# ---- users ----------------------------------------------------------------------------------

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
