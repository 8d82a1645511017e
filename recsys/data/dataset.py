"""The dataset artifact: layout under `<root>/datasets/<id>/`, writing its files and reading them back.

```
train/ validation/ test/   part-NNNNN-of-MMMMM.parquet (user, item, user_idx, item_idx, timestamp, value, weight)
vocab/users.txt vocab/items.txt   one ID per line; the line number is the index
items.parquet              item, item_idx, title, year, genres, train_count
users.parquet              user, user_idx (-1: no interactions here), features ['col=value', ...]
                           (only with source.users_format)
rejected/                  part-*.jsonl: source, line, reason, raw
stats.json
```
Splits are Parquet, not TFRecord: Arrow reads them in column chunks straight into numpy (and from there
into `tf.data`) far faster than per-row `tf.train.Example` parsing.

The writers (`write_*`, `shard_table`) are what the dataset build (pipelines/build_dataset.py) calls: the
names and formats of these files live here only.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
from json.encoder import encode_basestring
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys import fsio
from recsys.errors import DataError
from recsys.data.interactions import SPLITS
from recsys.data.vocab import Vocabulary
from recsys.schema import ITEM_FIXED_COLUMNS

LATEST = "LATEST"
# The dataset directory's file names (the writers below and the readers use these).
STATS = "stats.json"
USERS_VOCAB, ITEMS_VOCAB = "vocab/users.txt", "vocab/items.txt"
ITEMS_FILE, USERS_FILE = "items.parquet", "users.parquet"
REJECTED = "rejected"
# items.parquet's own columns; every other column there is a catalog attribute
# (source.item_columns.attributes), and "genres" is the MovieLens one
# items.parquet records each attribute's kind (config.ATTRIBUTE_KINDS) in its Arrow field metadata, so
# the engine and the trainer tell a text column from a categorical one without the config.
KIND_KEY = b"recsys.kind"
MAX_AGE_KEY = b"recsys.max_age_days"   # a date attribute's recency limit (config: {kind: date, max_age_days})
SPLIT_SCHEMA = pa.schema([
    ("user", pa.string()), ("item", pa.string()), ("user_idx", pa.int32()), ("item_idx", pa.int32()),
    ("timestamp", pa.int64()), ("value", pa.float32()), ("weight", pa.float32()), ("event", pa.string()),
])


def with_attribute_kinds(table: pa.Table, kinds: dict[str, str], max_age: dict | None = None) -> pa.Table:
    """`table` with each attribute column's kind in its field metadata (what attribute_kinds reads)."""
    max_age = max_age or {}
    fields = [f.with_metadata({KIND_KEY: kinds[f.name].encode(),
                               **({MAX_AGE_KEY: str(max_age[f.name]).encode()} if f.name in max_age else {})})
              if f.name in kinds else f for f in table.schema]
    return table.cast(pa.schema(fields, metadata=table.schema.metadata))


def attribute_kinds(schema: pa.Schema) -> dict[str, str]:
    """{attribute column: kind} of an items.parquet schema. Files written before kinds were recorded
    get them from the Arrow type: list -> multi, number -> numeric, else categorical."""
    out = {}
    for f in schema:
        if f.name in ITEM_FIXED_COLUMNS:
            continue
        kind = (f.metadata or {}).get(KIND_KEY)
        if kind:
            out[f.name] = kind.decode()
        elif pa.types.is_list(f.type) or pa.types.is_large_list(f.type):
            out[f.name] = "multi"
        elif pa.types.is_integer(f.type) or pa.types.is_floating(f.type):
            out[f.name] = "numeric"
        else:
            out[f.name] = "categorical"
    return out


def read_items(data: bytes, columns: list[str] | None = None, exclude=()) -> pd.DataFrame:
    """An items.parquet's columns (None: all but `exclude`) as a frame, with `attrs["kinds"]`."""
    schema = pq.read_schema(pa.BufferReader(data))
    if columns is None:
        columns = [c for c in schema.names if c not in exclude]
    frame = pq.read_table(pa.BufferReader(data), columns=columns).to_pandas()
    frame.attrs["kinds"] = {k: v for k, v in attribute_kinds(schema).items() if k in columns}
    frame.attrs["max_age_days"] = {f.name: float(f.metadata[MAX_AGE_KEY]) for f in schema
                                   if f.name in columns and MAX_AGE_KEY in (f.metadata or {})}
    return frame


def datasets_dir(root: str) -> str:
    """`<root>/datasets`: where datasets and the LATEST pointer live."""
    return fsio.join(root, "datasets")


def new_dataset_id(now: _dt.datetime | None = None) -> str:
    """A UTC timestamp id for a new dataset."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    # milliseconds: two builds started in the same second get different ids
    return f"{now.strftime('%Y%m%dT%H%M%S')}{now.microsecond // 1000:03d}Z"


def latest_dataset_id(root: str) -> str | None:
    """The dataset named by `datasets/LATEST`, or None when there is none yet."""
    path = fsio.join(datasets_dir(root), LATEST)
    if not fsio.exists(path):
        return None
    return fsio.read_text(path).strip() or None


def list_datasets(root: str) -> list[str]:
    """Complete datasets (with stats.json), oldest first."""
    return sorted(n for n in fsio.list_dir(datasets_dir(root))
                  if fsio.is_plain_name(n) and fsio.exists(fsio.join(datasets_dir(root), n, STATS)))


def prune_datasets(root: str, keep: int, protected=()) -> list[str]:
    """Delete the oldest datasets beyond `keep`; never LATEST or one named in `protected` (the
    datasets of the versions still kept). Returns the ids removed."""
    safe = set(protected) | {latest_dataset_id(root)}
    ids = list_datasets(root)
    removable = [d for d in ids if d not in safe]
    removed = removable[:max(0, len(ids) - keep)]
    for d in removed:
        fsio.delete(fsio.join(datasets_dir(root), d))
    return removed


def shard_name(split: str, shard: int, n_shards: int) -> str:
    """The relative path of one Parquet shard of a split."""
    return f"{split}/part-{shard:05d}-of-{n_shards:05d}.parquet"


# ---- writing (the dataset build) ---------------------------------------------------------------

# Shards carry the pandas metadata that `pa.Table.from_pandas` writes for object string columns, whatever
# the in-memory string type, so a shard's bytes depend on its rows alone.
_SHARD_SCHEMA = SPLIT_SCHEMA.with_metadata(pa.Table.from_pandas(
    pd.DataFrame({f.name: pd.Series(dtype=f.type.to_pandas_dtype()) for f in SPLIT_SCHEMA}),
    schema=SPLIT_SCHEMA, preserve_index=False).schema.metadata)


def _write_parquet(table: pa.Table, path: str) -> None:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    fsio.write_bytes(path, sink.getvalue())


def shard_table(columns: dict) -> pa.Table:
    """One shard's rows as the table `write_shard` takes: `columns` maps every SPLIT_SCHEMA column to an
    Arrow or numpy array."""
    return pa.Table.from_arrays([pa.array(columns[f.name], type=f.type) for f in _SHARD_SCHEMA],
                                schema=_SHARD_SCHEMA)


def write_shard(out_dir: str, split: str, shard: int, n_shards: int, table: pa.Table) -> None:
    """One Parquet shard of a split (a `shard_table`)."""
    _write_parquet(table, fsio.join(out_dir, shard_name(split, shard, n_shards)))


def write_empty_shards(out_dir: str, n_shards: int, present: set) -> None:
    """Shards with no rows for the shard numbers not in `present`, so every split has exactly n files."""
    for b in range(n_shards):
        if b in present:
            continue
        sink = io.BytesIO()
        pq.write_table(SPLIT_SCHEMA.empty_table(), sink, compression="zstd")
        for split in SPLITS:
            fsio.write_bytes(fsio.join(out_dir, shard_name(split, b, n_shards)), sink.getvalue())


def write_rejected(out_dir: str, shard: int, n_shards: int, rows: pd.DataFrame) -> int:
    """One dead-letter file of interaction rows (source, line, reason, raw), in file and line order.
    Returns the number of rows written."""
    rows = rows.sort_values(["source", "line"], kind="stable")
    fsio.write_bytes(fsio.join(out_dir, REJECTED, f"part-{shard:05d}-of-{n_shards:05d}.jsonl"),
                     _json_lines(rows).encode("utf-8"))
    return len(rows)


def _json_lines(df: pd.DataFrame) -> str:
    """`"".join(json.dumps(r, ensure_ascii=False) + "\n" for r in df.to_dict("records"))` for columns of
    strings and integers, built a column at a time (each distinct string encoded once)."""
    encoded = []
    for c in df.columns:
        if pd.api.types.is_integer_dtype(df[c].dtype):
            encoded.append([str(v) for v in df[c].tolist()])
            continue
        codes, uniques = pd.factorize(df[c], use_na_sentinel=False)
        # encode_basestring is what json.dumps(ensure_ascii=False) writes for a str, without its overhead.
        texts = [encode_basestring(v) if v is not None else "null"
                 for v in pa.array(uniques, type=pa.string(), from_pandas=True).to_pylist()]
        encoded.append([texts[k] for k in codes.tolist()])
    template = "{" + ", ".join(json.dumps(c, ensure_ascii=False).replace("%", "%%") + ": %s" for c in df.columns) + "}\n"
    return "".join(template % row for row in zip(*encoded))


def write_metadata_rejected(out_dir: str, id_column: str, rows: pd.DataFrame) -> None:
    """The dead letters of the item or user tables: rejected/<id_column>s.jsonl."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows.to_dict("records"))
    fsio.write_bytes(fsio.join(out_dir, REJECTED, f"{id_column}s.jsonl"), text.encode("utf-8"))


def write_vocabularies(out_dir: str, users: Vocabulary, items: Vocabulary) -> None:
    """vocab/users.txt and vocab/items.txt."""
    users.save(fsio.join(out_dir, *USERS_VOCAB.split("/")))
    items.save(fsio.join(out_dir, *ITEMS_VOCAB.split("/")))


def write_items(out_dir: str, items: Vocabulary, meta: pd.DataFrame, kinds: dict[str, str],
                train_count: np.ndarray, max_age: dict | None = None) -> None:
    """items.parquet: a row per item of the vocabulary (in its order) with its metadata (`meta`: item,
    title, year, genres and attribute columns, one row per item at most; missing: empty), the attributes'
    `kinds` (config.ATTRIBUTE_KINDS, by column), date attributes' `max_age` in days, and its train
    interactions (`train_count`, in vocabulary order)."""
    feats = pd.DataFrame({"item": items.ids, "item_idx": np.arange(len(items), dtype=np.int32)})
    feats = feats.merge(meta, on="item", how="left")
    feats["title"] = feats["title"].fillna("")
    feats["year"] = feats["year"].fillna(0).astype(np.int32)
    # One shared empty list, not one per item: allocating ~10k lists can set off a full garbage
    # collection of the whole heap (0.1 s), and this frame is only converted to Arrow.
    no_genres: list = []
    feats["genres"] = [g if isinstance(g, list) else no_genres for g in feats["genres"].tolist()]
    kinds = {n: k for n, k in kinds.items() if n in feats}
    for name, kind in kinds.items():
        if kind == "multi":
            feats[name] = [v if isinstance(v, list) else no_genres for v in feats[name].tolist()]
        elif kind in ("categorical", "text"):
            feats[name] = feats[name].astype(object).where(feats[name].notna(), None)
        elif kind in ("numeric", "date"):
            feats[name] = feats[name].astype(np.float64)      # epoch seconds for a date; NaN: unknown
    feats["train_count"] = train_count
    table = with_attribute_kinds(pa.Table.from_pandas(feats, preserve_index=False), kinds, max_age)
    _write_parquet(table, fsio.join(out_dir, ITEMS_FILE))


def write_users(out_dir: str, users: pd.DataFrame, user_idx: np.ndarray) -> None:
    """users.parquet: `users` (user, features: lists of 'col=value') with their index in the user
    vocabulary (`user_idx`, int32; -1 for a user without interactions in this dataset)."""
    table = pa.table({"user": pa.array(users["user"], pa.string()),
                      "user_idx": pa.array(user_idx),
                      "features": pa.array(users["features"].tolist(), pa.list_(pa.string()))})
    _write_parquet(table, fsio.join(out_dir, USERS_FILE))


def write_stats(out_dir: str, stats: dict) -> None:
    """stats.json. Write it last: its presence marks the dataset complete (what `Dataset.open` checks)."""
    fsio.write_bytes(fsio.join(out_dir, STATS), json.dumps(stats, indent=2, sort_keys=True).encode())


def write_latest(root: str, dataset_id: str) -> None:
    """Point `datasets/LATEST` at `dataset_id` (atomically)."""
    fsio.atomic_write_text(fsio.join(datasets_dir(root), LATEST), dataset_id + "\n")


class Dataset:
    """A built dataset directory."""

    def __init__(self, path: str):
        self.path = path
        if not fsio.exists(fsio.join(path, STATS)):
            raise DataError(f"dataset: {path!r} is not a complete dataset (no {STATS})")
        self._users = self._items = None

    @classmethod
    def open(cls, root: str, dataset_id: str | None = None) -> "Dataset":
        """Open `dataset_id` under `root`, or the latest one."""
        dataset_id = dataset_id or latest_dataset_id(root)
        if not dataset_id:
            raise DataError(f"dataset: no dataset under {root!r}; run `recsys build-dataset` first")
        path = fsio.child(datasets_dir(root), dataset_id, "dataset")
        if not fsio.exists(fsio.join(path, STATS)):
            raise DataError(f"dataset: id {dataset_id!r} not found under {datasets_dir(root)!r}")
        return cls(path)

    def file(self, name: str) -> str:
        """The path of one of the dataset's files (names: the constants above)."""
        return fsio.join(self.path, *name.split("/"))

    @property
    def id(self) -> str:
        """The dataset id (its directory name)."""
        return self.path.rstrip("/").split("/")[-1]

    @property
    def stats(self) -> dict:
        """stats.json: counts read, accepted, rejected, per split, the config it was built with."""
        return json.loads(fsio.read_text(fsio.join(self.path, STATS)))

    @property
    def users(self) -> Vocabulary:
        """The user vocabulary (row i = user index i)."""
        if self._users is None:
            self._users = Vocabulary.load(self.file(USERS_VOCAB))
        return self._users

    @property
    def items(self) -> Vocabulary:
        """The item vocabulary (row i = item index i)."""
        if self._items is None:
            self._items = Vocabulary.load(self.file(ITEMS_VOCAB))
        return self._items

    @property
    def item_features_path(self) -> str:
        """items.parquet: item attributes (a version copies it for its filters)."""
        return self.file(ITEMS_FILE)

    def item_features(self) -> pd.DataFrame:
        """items.parquet as a frame: item, item_idx, title, year, genres, train_count, the catalog
        attributes; `frame.attrs["kinds"]` maps each attribute to its kind."""
        return read_items(fsio.read_bytes(self.item_features_path))

    def user_features(self) -> pd.DataFrame | None:
        """users.parquet (user, user_idx, features), or None when the dataset was built without one."""
        path = self.file(USERS_FILE)
        if not fsio.exists(path):
            return None
        return pq.read_table(pa.BufferReader(fsio.read_bytes(path))).to_pandas()

    def shards(self, split: str) -> list[str]:
        """The Parquet shards of a split, sorted.

        Raises:
            DataError: an unknown split name.
        """
        if split not in SPLITS:
            raise DataError(f"dataset: split={split!r} is invalid: allowed: {', '.join(SPLITS)}")
        return fsio.match(fsio.join(self.path, split, "part-*.parquet"))

    def read(self, split: str, columns: list[str] | None = None, unknown_user_ids_only: bool = False) -> pd.DataFrame:
        """A whole split in memory (evaluation sets and small datasets).

        `unknown_user_ids_only` (with "user" and "user_idx" among `columns`): the user ID string only on
        rows whose user the vocabulary does not know (user_idx -1), None elsewhere: the index says who
        the others are, and a Python string per row is most of a large split's memory."""
        tables = [pq.read_table(pa.BufferReader(fsio.read_bytes(p)), columns=columns) for p in self.shards(split)]
        if not tables:
            return SPLIT_SCHEMA.empty_table().to_pandas()
        table = pa.concat_tables(tables)
        if not (unknown_user_ids_only and "user" in table.column_names):
            return table.to_pandas()
        unknown = table["user_idx"].to_numpy() < 0
        frame = table.drop_columns(["user"]).to_pandas()
        user = np.full(len(frame), None, dtype=object)
        if unknown.any():
            user[unknown] = table["user"].filter(pa.array(unknown)).to_numpy(zero_copy_only=False)
        frame.insert(table.column_names.index("user"), "user", user)
        return frame

    def iter_batches(self, split: str, columns: list[str], batch_size: int = 65536) -> Iterator[dict]:
        """Stream a split as dicts of numpy column chunks, one shard at a time (bounded memory)."""
        for path in self.shards(split):
            with fsio.open_read(path) as fh:
                pf = pq.ParquetFile(fh)
                for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
                    yield {c: batch.column(c).to_numpy(zero_copy_only=False) for c in columns}


LEAK_WARNING_SHARE = 0.05


# event times outside [1995-01-01, now + 1 day) are almost always a unit or parsing mistake
_EARLIEST_PLAUSIBLE = 788918400


def time_warnings(stats: dict, now: float | None = None) -> list[str]:
    """Warning lines about the events' times (stats.json splits' time_range): every event at one
    instant (the time column is a constant: nothing can be ordered, splits and sessions are arbitrary),
    or times before 1995 or in the future (often milliseconds read as seconds, or a wrong column)."""
    import time as _time
    now = _time.time() if now is None else now
    ranges = [s["time_range"] for s in (stats.get("splits") or {}).values() if s.get("time_range")]
    cuts = [c for c in (stats.get("temporal_cuts") or {}).values() if c is not None]
    if cuts:   # a temporal split of one instant puts every row past both cuts (train ends up empty)
        ranges.append([min(cuts), max(cuts)])
    if not ranges:
        return []
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    out = []
    if lo == hi and stats.get("interactions", 0) > 1:
        out.append(f"warning: all {stats['interactions']} events have the same time ({_iso(lo)}): the time column "
                   "orders nothing, so the split and sessions are arbitrary; check source.columns.timestamp")
    if lo < _EARLIEST_PLAUSIBLE or hi > now + 86400:
        out.append(f"warning: event times run from {_iso(lo)} to {_iso(hi)}, outside 1995..now: check "
                   "source.timestamp_unit (s, ms, us) and source.columns.timestamp")
    return out


def _iso(seconds: float) -> str:
    import datetime as _dt
    try:
        return _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return str(seconds)


def leak_warning(stats: dict) -> str | None:
    """A warning line when more than 5% of the test targets were touched by the same user shortly before
    and that touch sits in the history the model is queried with (stats.json "leak"), else None."""
    leak = (stats.get("leak") or {}).get("test") or {}
    if leak.get("share", 0.0) <= LEAK_WARNING_SHARE:
        return None
    what = "/".join(stats["leak"].get("target_events") or []) or "held-out rows"
    fix = "split.strategy: last_session" if stats.get("split_strategy") != "last_session" \
        else "a larger split.session_gap_minutes"
    return (f"warning: {leak['share']:.0%} of test {what} ({leak['leaked']} of {leak['targets']}) were touched by "
            f"the same user within {stats['leak']['window_minutes']:g} minutes before, in the history the model "
            f"is queried with: offline metrics measure that, not the future; use {fix}")
