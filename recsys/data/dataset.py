"""The dataset artifact: layout under `<root>/datasets/<id>/` and reading it back.

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
"""
from __future__ import annotations

import datetime as _dt
import json
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys import fsio
from recsys.errors import DataError
from recsys.data.interactions import SPLITS
from recsys.data.vocab import Vocabulary

LATEST = "LATEST"
# The dataset directory's file names: this module and the pipeline that writes them use these.
STATS = "stats.json"
USERS_VOCAB, ITEMS_VOCAB = "vocab/users.txt", "vocab/items.txt"
ITEMS_FILE, USERS_FILE = "items.parquet", "users.parquet"
REJECTED = "rejected"
# items.parquet's own columns; every other column there is a catalog attribute
# (source.item_columns.attributes), and "genres" is the MovieLens one
ITEM_FIXED_COLUMNS = ("item", "item_idx", "title", "year", "genres", "train_count")
# items.parquet records each attribute's kind (config.ATTRIBUTE_KINDS) in its Arrow field metadata, so
# the engine and the trainer tell a text column from a categorical one without the config.
KIND_KEY = b"recsys.kind"
SPLIT_SCHEMA = pa.schema([
    ("user", pa.string()), ("item", pa.string()), ("user_idx", pa.int32()), ("item_idx", pa.int32()),
    ("timestamp", pa.int64()), ("value", pa.float32()), ("weight", pa.float32()), ("event", pa.string()),
])


def with_attribute_kinds(table: pa.Table, kinds: dict[str, str]) -> pa.Table:
    """`table` with each attribute column's kind in its field metadata (what attribute_kinds reads)."""
    fields = [f.with_metadata({KIND_KEY: kinds[f.name].encode()}) if f.name in kinds else f
              for f in table.schema]
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

    def read(self, split: str, columns: list[str] | None = None) -> pd.DataFrame:
        """A whole split in memory (evaluation sets and small datasets)."""
        tables = [pq.read_table(pa.BufferReader(fsio.read_bytes(p)), columns=columns) for p in self.shards(split)]
        if not tables:
            return SPLIT_SCHEMA.empty_table().to_pandas()
        return pa.concat_tables(tables).to_pandas()

    def iter_batches(self, split: str, columns: list[str], batch_size: int = 65536) -> Iterator[dict]:
        """Stream a split as dicts of numpy column chunks, one shard at a time (bounded memory)."""
        for path in self.shards(split):
            with fsio.open_read(path) as fh:
                pf = pq.ParquetFile(fh)
                for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
                    yield {c: batch.column(c).to_numpy(zero_copy_only=False) for c in columns}
