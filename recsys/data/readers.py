"""Readers of the input files, one entry per format: outside this module only config.py names a format.

Interaction files (`source.format`) are read a block at a time: `layout_for` tells how a file is laid
out, `blocks` cuts it into blocks (lines of text, or Parquet record batches) after checking its encoding,
first line and columns, and `parse` turns a block into raw rows (a frame of the string FIELDS and
`_line`) plus the rows it could not parse, dead-lettered as wrong_column_count or unparseable.
`_KINDS` picks, by the layout's kind, how a file is cut and which row parser of `recsys.data.parsing`
reads its blocks (the parsers themselves, the line splitting and the encoding, first-line and column
checks live there). `recsys.data.ingest` applies the row rules to the raw rows. Item and user tables
(`source.items_format`, `source.users_format`) are read whole by `read_columns` (their fixed columns:
`item_columns`, `user_columns`); `sample` reads the start of any file for `recsys init`.

This module is the other modules' one door to reading files: they take the raw-frame names they need
(`FIELDS`, `STRING`, `arrow_frame`, `arrow_strings`, the dead-letter reasons, `rejected_frame`,
`empty_rejected`) from here, not from `recsys.data.parsing`.

Adding a format: its reader here (interaction files: a `layout_for` case and, for a new kind of file, an
entry of `_KINDS` with its row parser in recsys/data/parsing.py; item and user tables: an entry of
`_TABLES`, and of `_ITEM_COLUMNS` / `_USER_COLUMNS` if it fixes its columns; `recsys init`: `_EXTENSIONS`
and `_SAMPLERS`), its name in config.py's format lists, and its case in tests/recsys/data/test_readers.py.
"""
from __future__ import annotations

import csv
import io
import json
import os
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from recsys import fsio
from recsys.config import SourceConfig
from recsys.data.parsing import (FIELDS, MAX_HEADER_BYTES, UNPARSEABLE, WRONG_COLUMN_COUNT, check_columns,
                                 check_first_line, count_lines, empty_rejected, header_names, iter_blocks,
                                 line_spans, line_text_lookup, parse_arrow_batch, parse_delimited, parse_jsonl,
                                 rejected_frame, split_lines, text_start)
# Not used here: the Arrow strings of raw frames, for the modules that read files through this one.
from recsys.data.parsing import STRING as STRING, arrow_frame as arrow_frame, arrow_strings as arrow_strings
from recsys.errors import DataError


# ---- interaction files: layouts -------------------------------------------------------------------

# Fixed layouts of the MovieLens releases: (delimiter, has header, column names, field -> column).
_MOVIELENS = {
    "movielens_csv": (",", True, None,
                      {"user": "userId", "item": "movieId", "timestamp": "timestamp", "value": "rating"}),
    "movielens_100k": ("\t", False, ["user", "item", "rating", "timestamp"],
                       {"user": "user", "item": "item", "timestamp": "timestamp", "value": "rating"}),
    "movielens_1m": ("::", False, ["user", "item", "rating", "timestamp"],
                     {"user": "user", "item": "item", "timestamp": "timestamp", "value": "rating"}),
}


@dataclass(frozen=True)
class Layout:
    """How to read one interaction file: delimiter, header, column names and which column is which (the
    parsers of recsys.data.parsing read its delimiter, names, mapping and timestamp_unit)."""
    kind: str                      # its reader, a key of _KINDS: "delimited", "jsonl" or "parquet"
    delimiter: str
    header: bool
    names: tuple | None            # column names when the file has no header
    mapping: dict                  # field -> column name
    timestamp_unit: str = "s"      # how the timestamp field is written (native Parquet types are converted)


def layout_for(source: SourceConfig) -> Layout:
    """The reading layout implied by `source.format` and `source.columns`."""
    if source.format in _MOVIELENS:
        delim, header, names, mapping = _MOVIELENS[source.format]
        return Layout("delimited", delim, header, tuple(names) if names else None, dict(mapping))
    cols = source.columns
    mapping = {f: getattr(cols, f) for f in FIELDS if getattr(cols, f)}
    if source.format == "csv":
        return Layout("delimited", source.delimiter, source.header, None, mapping, source.timestamp_unit)
    return Layout(source.format, "", True, None, mapping, source.timestamp_unit)


# ---- interaction files: blocks and parsing ---------------------------------------------------------

class ByteRange(NamedTuple):
    """Where a block is in its (uncompressed) file, and the CRC-32 of its bytes to check the re-read
    against: a file rewritten with content of the same size would otherwise mix old and new rows."""
    offset: int
    size: int
    crc32: int


class Parsed(NamedTuple):
    """A block as raw rows: `raw` (string FIELDS and `_line`), `rejected` (the lines or rows that could
    not be parsed, as dead letters), `rows` (the rows the block holds: non-blank lines, or Parquet rows;
    each ends up valid or rejected) and `raw_text(mask)`: the original text of the raw rows selected by
    `mask`, for their dead letters (None: the rules write them as JSON)."""
    raw: pd.DataFrame
    rejected: pd.DataFrame
    rows: int
    raw_text: Callable | None


def blocks(path: str, layout: Layout, block_bytes: int, by_range: bool = False) -> Iterator[tuple]:
    """Cut one interaction file into blocks of about `block_bytes`: (number of the block's first line or
    row, the column names of a delimited file or None, data for `parse`). The encoding, the first line and
    the columns are checked before any row is read. `by_range`: text blocks come as a ByteRange that
    `parse` reads again (a few numbers instead of the bytes; for an uncompressed file only).

    Raises:
        DataError: the file cannot be read as `layout` says (UTF-16, bare carriage returns, a header
            without the configured columns...), naming the file and the problem.
    """
    with fsio.open_read(path) as fh:
        yield from _KINDS[layout.kind].blocks(fh, path, layout, block_bytes, by_range)


def parse(data, first: int, layout: Layout, names: list[str] | None, source: str) -> Parsed:
    """A block of `blocks` (bytes, a ByteRange into `source`, or a Parquet record batch) as raw rows."""
    if isinstance(data, ByteRange):
        data = _read_range(source, data)
    return _KINDS[layout.kind].parse(data, first, layout, names, source)


def _read_range(path: str, where: ByteRange) -> bytes:
    with fsio.open_read(path) as fh:
        fh.seek(where.offset)
        data = fh.read(where.size)
    if len(data) != where.size or zlib.crc32(data) != where.crc32:
        raise DataError(f"{path} changed while the pipeline was reading it")
    return data


def _readline(fh) -> bytes:
    """One line, at most MAX_HEADER_BYTES of it (Beam's compressed files take no limit)."""
    try:
        return fh.readline(MAX_HEADER_BYTES)
    except TypeError:
        return fh.readline()


def _rewind(fh, skip: int) -> None:
    """Back to the start of the text, after a UTF-8 byte order mark of `skip` bytes (a compressed stream
    seeks back to its start cheaply, not to any offset)."""
    fh.seek(0)
    fh.read(skip)


def _text_blocks(first_line: Callable):
    """`blocks` of a text format: `first_line(fh, path, layout, skip)` checks the start of the file and
    returns (column names or None, number of the first line of rows); blocks end on line boundaries."""
    def cut(fh, path: str, layout: Layout, block_bytes: int, by_range: bool):
        # A byte order mark or UTF-16 would turn every row into a dead letter: check before reading.
        skip = text_start(fh.read(4096), path)
        _rewind(fh, skip)
        names, first = first_line(fh, path, layout, skip)
        offset = fh.tell()
        for line_no, block in iter_blocks(fh, block_bytes):
            yield first + line_no - 1, names, ByteRange(offset, len(block), zlib.crc32(block)) if by_range else block
            offset += len(block)
    return cut


def _delimited_first_line(fh, path: str, layout: Layout, skip: int):
    if layout.header:
        header = _readline(fh)
        check_first_line(header, path, header=True)
        names = header_names(header, layout)
        check_columns(names, layout, path)
        return names, 2
    if not layout.names:
        raise DataError(f"source.header: false needs source.format with fixed columns ({path})")
    return list(layout.names), 1


def _jsonl_first_line(fh, path: str, layout: Layout, skip: int):
    check_first_line(_readline(fh), path, header=False)
    _rewind(fh, skip)
    return None, 1


def _text_parser(parse_lines: Callable):
    """`parse` of a text format whose `parse_lines(block, first_line, layout, names, source, spans)`
    returns (raw, rejected)."""
    def parse_text(block: bytes, first_line: int, layout: Layout, names, source: str) -> Parsed:
        spans = line_spans(block)  # one pass over the bytes for the parser, the count and the dead-letter text
        raw, rejected = parse_lines(block, first_line, layout, names, source, spans)
        lookup = line_text_lookup(block, first_line, spans)
        rows = count_lines(block, spans)
        return Parsed(raw, rejected, rows, lambda mask: lookup(raw["_line"].to_numpy()[mask]))
    return parse_text


def _parquet_blocks(fh, path: str, layout: Layout, block_bytes: int, by_range: bool):
    """Record batches (Parquet is cut by rows, not bytes); rows are numbered from 1."""
    pf = pq.ParquetFile(fh)
    check_columns(pf.schema_arrow.names, layout, path)
    first = 1
    for batch in pf.iter_batches(batch_size=262144):
        yield first, None, batch
        first += batch.num_rows


def _parse_parquet(batch: pa.RecordBatch, first: int, layout: Layout, names, source: str) -> Parsed:
    raw, rejected = parse_arrow_batch(batch, first, layout, source)
    return Parsed(raw, rejected, batch.num_rows, None)


class _Kind(NamedTuple):
    blocks: Callable   # (file object, path, layout, block_bytes, by_range) -> (first, names, data) blocks
    parse: Callable    # (data, first, layout, names, source) -> Parsed


# The readers of interaction files, by `Layout.kind` (layout_for maps source.format to one).
_KINDS = {
    "delimited": _Kind(_text_blocks(_delimited_first_line), _text_parser(parse_delimited)),
    "jsonl": _Kind(_text_blocks(_jsonl_first_line), _text_parser(
        lambda block, first_line, layout, names, source, spans: parse_jsonl(block, first_line, layout, source))),
    "parquet": _Kind(_parquet_blocks, _parse_parquet),
}


# ---- item and user tables -------------------------------------------------------------------------

def read_columns(path: str, fmt: str, delimiter: str = ","):
    """Every column of an item or user table as read, plus `_line` (1-based line or row number).
    `fmt`: its source.items_format or source.users_format; `delimiter`: a csv table's (source.delimiter).
    Returns (frame, rejected rows, line-number -> text lookup or None for Parquet).

    Raises:
        DataError: the file cannot be read as `fmt`.
    """
    try:
        return _TABLES[fmt](path, delimiter)
    except (pa.ArrowException, UnicodeDecodeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: cannot read as {fmt}: {msg}") from None


def item_columns(source: SourceConfig) -> dict:
    """field (item, title, genres, year) -> column of the item table: fixed by source.items_format, else
    named in source.item_columns."""
    if source.items_format in _ITEM_COLUMNS:
        return dict(_ITEM_COLUMNS[source.items_format])
    ic = source.item_columns
    return {k: getattr(ic, k) for k in ("item", "title", "genres", "year") if getattr(ic, k)}


def user_columns(source: SourceConfig) -> tuple[str, list[str]]:
    """(user ID column, feature columns) of the user table: fixed by source.users_format, else named in
    source.user_columns."""
    if source.users_format in _USER_COLUMNS:
        user, features = _USER_COLUMNS[source.users_format]
        return user, list(features)
    return source.user_columns.user, list(source.user_columns.features)


def _parquet_table(path: str, delimiter: str = ""):
    table = pq.read_table(pa.BufferReader(fsio.read_bytes(path)))
    # integer columns as strings before pandas, where a null would turn 7 into "7.0"
    table = pa.table({n: pc.cast(c, pa.string()) if pa.types.is_integer(c.type) else c
                      for n, c in zip(table.column_names, table.columns)})
    raw = table.to_pandas()
    raw["_line"] = np.arange(1, len(raw) + 1)
    return raw, empty_rejected(), None


def _jsonl_table(path: str, delimiter: str = ""):
    data = fsio.read_bytes(path)
    raw, rejected = _jsonl_columns(data, path)
    return raw, rejected, line_text_lookup(data, 1)


def _delimited_table(path: str, delimiter: str = ","):
    """A delimited table with a header line."""
    data = fsio.read_bytes(path)
    first_nl = data.find(b"\n")
    header, body = (data, b"") if first_nl < 0 else (data[:first_nl], data[first_nl + 1:])
    if not header.strip():
        raise DataError(f"{path}: empty file, expected a header line")
    names = header_names(header, Layout("delimited", delimiter, True, None, {}))
    if not body.strip():
        return pd.DataFrame({n: pd.Series(dtype=object) for n in names} | {"_line": pd.Series(dtype=np.int64)}), \
            empty_rejected(), None
    raw, rejected = _raw_columns(body, 2, names, delimiter, path)
    return raw, rejected, line_text_lookup(body, 2)


def _raw_columns(body, first, names, delimiter, path):
    """All columns of a delimited metadata file as strings (quoted fields allowed)."""
    lines, line_nos = split_lines(body, first)
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
    rejected = rejected_frame(path, line_nos[~good], WRONG_COLUMN_COUNT,
                              [lines[i].decode("utf-8", "backslashreplace") for i in np.flatnonzero(~good)])
    return raw, rejected


def _jsonl_columns(body, path):
    lines, line_nos = split_lines(body, 1)
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
    return raw, rejected_frame(path, bad_no, UNPARSEABLE, bad_raw)


_MOVIELENS_USER_FEATURES = ["gender", "age", "occupation"]   # users.dat; the zip code is left out


def _movielens_users(path: str, delimiter: str = ""):
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
    raw = pd.DataFrame(rows, columns=["user"] + _MOVIELENS_USER_FEATURES)
    raw["_line"] = np.asarray(good, dtype=np.int64)
    rejected = rejected_frame(path, [n for n, _ in bad], WRONG_COLUMN_COUNT, [t for _, t in bad])
    return raw, rejected, lambda nos: [lines[n - 1] for n in nos]


# The readers of item and user tables, by source.items_format / source.users_format: (path, delimiter)
# -> (frame, rejected, lookup).
_TABLES = {
    "csv": _delimited_table,
    "parquet": _parquet_table,
    "jsonl": _jsonl_table,
    "movielens_movies": lambda path, delimiter: _delimited_table(path, ","),
    "movielens_users": _movielens_users,
}
# Columns a table format fixes (others name them in source.item_columns / source.user_columns).
_ITEM_COLUMNS = {"movielens_movies": {"item": "movieId", "title": "title", "genres": "genres"}}
_USER_COLUMNS = {"movielens_users": ("user", _MOVIELENS_USER_FEATURES)}


# ---- samples (`recsys init`) ----------------------------------------------------------------------

class Sample(NamedTuple):
    """The start of a file as `recsys init` looks at it."""
    frame: pd.DataFrame          # every column (text formats: as strings)
    format: str                  # its source.format / items_format name
    schema: pa.Schema | None     # the file's own column types (Parquet), else None
    delimiter: str | None = None  # delimited text: the delimiter found in the file (`,` `;` tab `|`), else None
    bad_lines: int = 0           # JSON lines: lines of the sample that are not a JSON object (skipped)


def sample(path: str, rows: int, delimiter: str | None = None) -> Sample:
    """The first `rows` rows of the first file matching `path`, its format told by the file name.

    Raises:
        DataError: an extension of no known format, no file matches, the file is empty, or it has a
            header but no rows (one line each). `delimiter`: a delimited file's, over the one found.
    """
    ext = os.path.splitext(path.lower().removesuffix(".gz"))[1]
    if ext not in _EXTENSIONS:
        raise DataError(f"{path}: cannot tell the format from {ext!r} (known: {', '.join(sorted(_EXTENSIONS))})")
    fmt, options = _EXTENSIONS[ext]
    if delimiter and fmt == "csv":
        options = {**options, "delimiter": delimiter}
    files = fsio.match(path)
    if not files:
        raise DataError(f"{path}: no such file")
    with fsio.open_read(files[0]) as fh:
        frame, schema, extra = _SAMPLERS[fmt](fh, rows, options, files[0])
    if frame is None or (len(frame) == 0 and len(frame.columns) == 0):
        raise DataError(f"{files[0]}: the file is empty")
    if len(frame) == 0:
        raise DataError(f"{files[0]}: a header ({', '.join(map(str, frame.columns))}) but no rows")
    return Sample(frame, fmt, schema, **extra)


def _sample_parquet(fh, rows: int, options: dict, path: str):
    pf = pq.ParquetFile(fh)
    batch = next(pf.iter_batches(batch_size=rows), None)
    table = pa.Table.from_batches([batch]) if batch is not None else pf.schema_arrow.empty_table()
    return table.to_pandas(), pf.schema_arrow, {}


def _sample_jsonl(fh, rows: int, options: dict, path: str):
    """Line by line: a line that is not a JSON object is counted and skipped (build-dataset makes it a
    dead letter), not a crash of the whole sample."""
    records, bad = [], 0
    for raw in fh:
        if len(records) >= rows:
            break
        line = raw.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(obj, dict):
            records.append(obj)
        else:
            bad += 1
    if not records and not bad:
        return None, None, {}
    if not records:
        raise DataError(f"{path}: none of the first {bad} lines is a JSON object")
    return pd.DataFrame.from_records(records), None, {"bad_lines": bad}


# delimiters `recsys init` recognises in a CSV sample, the most common first
_DELIMITERS = ",;\t|"


def _sample_csv(fh, rows: int, options: dict, path: str):
    head = fh.read(64 * 1024)
    text = head.decode("utf-8", errors="replace") if isinstance(head, bytes) else head
    if not text.strip():
        return None, None, {}
    delimiter = options.get("delimiter") or _sniff_delimiter(text)
    try:
        fh.seek(0)
        source = fh
    except (io.UnsupportedOperation, OSError, AttributeError):   # a stream: the sample is what was read
        source = io.BytesIO(head.rsplit(b"\n", 1)[0] if len(head) == 64 * 1024 else head)
    frame = pd.read_csv(source, sep=delimiter, nrows=rows, dtype=str, keep_default_na=False)
    return frame, None, {"delimiter": delimiter}


def _sniff_delimiter(text: str) -> str:
    """The delimiter of a CSV sample: the candidate that splits the header and the next lines into the
    same number (> 1) of fields most consistently; `,` when none does."""
    lines = [ln for ln in text.splitlines()[:50] if ln.strip()]
    best, best_score = ",", (0, 0)
    for d in _DELIMITERS:
        counts = [len(next(csv.reader([ln], delimiter=d))) for ln in lines]
        if not counts or counts[0] < 2:
            continue
        score = (sum(c == counts[0] for c in counts), counts[0])
        if score > best_score:
            best, best_score = d, score
    return best


# File name extensions (before .gz) -> (format name, how to read the sample). A .tsv file is sampled with
# tabs (and `recsys init` writes source.delimiter: "\t" for it).
_EXTENSIONS = {".csv": ("csv", {}), ".tsv": ("csv", {"delimiter": "\t"}), ".parquet": ("parquet", {}),
               ".pq": ("parquet", {}), ".jsonl": ("jsonl", {}), ".json": ("jsonl", {}), ".ndjson": ("jsonl", {})}
_SAMPLERS = {"csv": _sample_csv, "parquet": _sample_parquet, "jsonl": _sample_jsonl}
