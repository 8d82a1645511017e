"""Readers of the input files, one entry per format: outside this module only config.py names a format.

Interaction files (`source.format`) are read a block at a time: `blocks` cuts a file into blocks (lines
of text, or Parquet record batches) after checking its encoding, first line and columns, and `parse`
turns a block into raw rows (a frame of the string FIELDS and `_line`) plus the rows it could not
parse, dead-lettered as wrong_column_count or unparseable. `recsys.data.ingest` applies the row rules
to the raw rows. Item and user tables (`source.items_format`, `source.users_format`) are read whole by
`read_columns` (their fixed columns: `item_columns`, `user_columns`); `sample` reads the start of any
file for `recsys init`.

Adding a format: its reader here (interaction files: a `layout_for` case and, for a new kind of file, an
entry of `_KINDS`; item and user tables: an entry of `_TABLES`, and of `_ITEM_COLUMNS` / `_USER_COLUMNS`
if it fixes its columns; `recsys init`: `_EXTENSIONS` and `_SAMPLERS`), its name in config.py's format
lists, and its case in tests/recsys/data/test_readers.py.

String columns of raw frames are Arrow-backed (`STRING`, `pd.ArrowDtype(pa.string())`): IDs are never
turned into Python str objects, which is the dominant cost of a block otherwise.
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
from recsys.errors import DataError

# Dead-letter reasons of rows a reader cannot parse (recsys.data.ingest.REJECT_REASONS lists them all).
WRONG_COLUMN_COUNT = "wrong_column_count"
UNPARSEABLE = "unparseable"

FIELDS = ("user", "item", "timestamp", "value", "event")
REJECTED_COLUMNS = ["source", "line", "reason", "raw"]
STRING = pd.ArrowDtype(pa.string())
_STRING_TYPES = {pa.string(): STRING}


# ---- interaction files: layouts, lines and parsers ------------------------------------------------

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
    """How to read one interaction file: delimiter, header, column names and which column is which."""
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


def arrow_frame(table: pa.Table, **options) -> pd.DataFrame:
    """`table.to_pandas(**options)` with string columns left in Arrow (`STRING`): no Python str per value."""
    return table.to_pandas(types_mapper=_STRING_TYPES.get, **options)


def arrow_strings(col) -> pa.Array:
    """A string column (Arrow-backed or object) as one Arrow string array; zero-copy when Arrow-backed."""
    arr = pa.array(col, type=pa.string(), from_pandas=True)
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def empty_rejected() -> pd.DataFrame:
    """A dead-letter frame with no rows (source, line, reason, raw)."""
    return pd.DataFrame({"source": pd.Series(dtype=str), "line": pd.Series(dtype=np.int64),
                         "reason": pd.Series(dtype=str), "raw": pd.Series(dtype=str)})


def rejected_frame(source: str, lines, reason, raws) -> pd.DataFrame:
    """Dead letters: one row per rejected input line, with its source file, line number, reason and text."""
    lines = np.asarray(lines, dtype=np.int64)
    return pd.DataFrame({"source": source, "line": lines,
                         "reason": reason if not np.isscalar(reason) else [reason] * len(lines),
                         "raw": list(raws)}, columns=REJECTED_COLUMNS)


def iter_blocks(fh, block_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Yield (first line number, bytes) blocks of a text file, each ending on a line boundary."""
    line_no = 1
    rest = b""
    while True:
        chunk = fh.read(block_bytes)
        if not chunk:
            break
        data = rest + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            rest = data
            continue
        block, rest = data[:cut + 1], data[cut + 1:]
        yield line_no, block
        line_no += block.count(b"\n")
    if rest:
        yield line_no, rest


def _line_spans(block: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) byte offsets of the lines of `block` as `block.split(b"\n")` cuts them (a final
    empty piece after a trailing newline is not a line)."""
    ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
    starts = np.concatenate(([0], ends + 1))
    if len(block) and block[-1:] != b"\n":
        ends = np.append(ends, len(block))
    return starts[:len(ends)], ends


def _blank_lines(block: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Indices of the lines that are empty or only blanks (spaces, tabs, carriage returns)."""
    data = np.frombuffer(block, dtype=np.uint8)
    first = data[np.minimum(starts, max(len(data) - 1, 0))] if len(data) else np.zeros(0, dtype=np.uint8)
    # Only a line that is empty or starts with a blank can be blank: Python looks at those alone.
    maybe = np.flatnonzero((starts == ends) | (first == 32) | (first == 9) | (first == 13))
    return np.asarray([i for i in maybe.tolist() if not block[starts[i]:ends[i]].strip(b" \r\t")], dtype=np.int64)


def count_lines(block: bytes) -> int:
    """`len(split_lines(block, 1)[0])`, the non-blank lines, without building them."""
    starts, ends = _line_spans(block)
    return len(starts) - len(_blank_lines(block, starts, ends))


def split_lines(block: bytes, first_line: int) -> tuple[list[bytes], np.ndarray]:
    """Non-blank lines of a block and their 1-based line numbers in the file."""
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if lines and b"\r" not in block:
        # Fast path, no per-line Python: only a line that is empty or starts with a blank can be blank.
        starts = np.frombuffer(block, dtype=np.uint8)
        first = np.concatenate(([0], np.flatnonzero(starts == 10)[:len(lines) - 1] + 1))
        first_byte = starts[first]
        maybe_blank = np.flatnonzero((first_byte == 10) | (first_byte == 32) | (first_byte == 9))
        blank = [i for i in maybe_blank.tolist() if not lines[i].strip(b" \t")]
        if not blank:
            return lines, np.arange(first_line, first_line + len(lines))
        keep = np.ones(len(lines), dtype=bool)
        keep[blank] = False
        kept = np.flatnonzero(keep)
        return [lines[i] for i in kept.tolist()], first_line + kept
    keep = [i for i, ln in enumerate(lines) if ln.strip(b" \r\t")]
    if len(keep) == len(lines):
        return [ln.rstrip(b"\r") for ln in lines], np.arange(first_line, first_line + len(lines))
    return [lines[i].rstrip(b"\r") for i in keep], first_line + np.asarray(keep, dtype=np.int64)


def parse_delimited(block: bytes, first_line: int, layout: Layout, names: list[str], source: str, spans=None):
    """Parse a block of delimited text into string columns.

    Returns (frame with one string column per field plus `_line`, rejected frame). Rows with the wrong
    number of columns are rejected with their original text. `spans`: the block's `_line_spans`, when
    the caller has them already.
    """
    starts, ends = spans if spans is not None else _line_spans(block)
    if b"\r" not in block and not len(_blank_lines(block, starts, ends)):
        # Common case: Arrow parses the block as it is; lines are byte spans, never Python objects.
        text = block
        line_nos = np.arange(first_line, first_line + len(starts))

        def original(i):
            return block[starts[i]:ends[i]]
    else:
        lines, line_nos = split_lines(block, first_line)
        text = b"\n".join(lines)
        original = lines.__getitem__
    if not len(line_nos):
        return _empty_raw(), empty_rejected()
    delim = layout.delimiter
    if len(delim) > 1:  # e.g. MovieLens 1M '::': map to a byte that cannot survive validation anyway
        text = text.replace(delim.encode(), b"\x1f")
        delim = "\x1f"
    bad_rows: list[int] = []

    def on_invalid(row):
        bad_rows.append(row.number - 1)
        return "skip"

    def slow():  # rejected rows keep the text as it was in the file
        return _parse_slow(text.split(b"\n")[:len(line_nos)], line_nos, layout, names, source, delim,
                           [original(i) for i in range(len(line_nos))])
    try:
        table = pcsv.read_csv(
            io.BytesIO(text),
            read_options=pcsv.ReadOptions(column_names=names, use_threads=False, block_size=len(text) + 1),
            parse_options=pcsv.ParseOptions(delimiter=delim, invalid_row_handler=on_invalid),
            convert_options=pcsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return slow()
    if table.num_rows + len(bad_rows) != len(line_nos):
        # A record spanning lines (an unclosed quote, a bare '\r'): Arrow's rows no longer map one to one
        # to input lines, so parse line by line to keep line numbers and original text exact.
        return slow()
    good = np.ones(len(line_nos), dtype=bool)
    good[bad_rows] = False
    rejected = rejected_frame(source, line_nos[~good], WRONG_COLUMN_COUNT,
                              [_decode(original(i)) for i in np.flatnonzero(~good).tolist()])
    frame = _fields_from_table(table, layout)
    frame["_line"] = line_nos[good]
    return frame, rejected


def _parse_slow(lines, line_nos, layout, names, source, delim, original=None):
    """Line-by-line fallback for a block Arrow refuses as a whole (invalid UTF-8, broken quoting)."""
    rows, goods, bad_lines, bad_raw, bad_reason = [], [], [], [], []
    for ln, orig, no in zip(lines, original if original is not None else lines, line_nos):
        try:
            text = ln.decode("utf-8")
            fields = next(csv.reader([text], delimiter=delim))
        except (UnicodeDecodeError, csv.Error, StopIteration):
            bad_lines.append(no), bad_raw.append(_decode(orig)), bad_reason.append(UNPARSEABLE)
            continue
        if len(fields) != len(names):
            bad_lines.append(no), bad_raw.append(_decode(orig)), bad_reason.append(WRONG_COLUMN_COUNT)
            continue
        rows.append(fields)
        goods.append(no)
    table = pa.table({n: pa.array([r[i] for r in rows], type=pa.string()) for i, n in enumerate(names)})
    frame = _fields_from_table(table, layout)
    frame["_line"] = np.asarray(goods, dtype=np.int64)
    return frame, rejected_frame(source, bad_lines, bad_reason, bad_raw)


def _decode(b: bytes) -> str:
    return b.decode("utf-8", errors="backslashreplace")


def _empty_raw() -> pd.DataFrame:
    frame = pd.DataFrame({f: pd.Series(dtype=STRING) for f in FIELDS})
    frame["_line"] = pd.Series(dtype=np.int64)
    return frame


def _fields_from_table(table: pa.Table, layout: Layout) -> pd.DataFrame:
    """Select and rename the mapped columns to the canonical field names; missing columns are null."""
    out = {}
    n = table.num_rows
    for f in FIELDS:
        col = layout.mapping.get(f)
        if col and col in table.column_names:
            arr = table.column(col)
            if not pa.types.is_string(arr.type):
                arr = pc.cast(arr, pa.string())
            out[f] = arr
        else:
            out[f] = pa.nulls(n, pa.string())
    return arrow_frame(pa.table(out))


def parse_jsonl(block: bytes, first_line: int, layout: Layout, source: str):
    """Parse a block of JSON lines; a line that is not a JSON object is rejected as unparseable."""
    lines, line_nos = split_lines(block, first_line)
    keys = [layout.mapping.get(f) for f in FIELDS]
    rows, goods, bad_lines, bad_raw = [], [], [], []
    for ln, no in zip(lines, line_nos):
        try:
            rec = json.loads(ln)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
            row = [None if v is None else str(v) for v in (rec.get(k) if k else None for k in keys)]
            # A lone surrogate ("\ud800") is valid JSON but not UTF-8, so no Arrow string can hold it:
            # encoding raises UnicodeEncodeError (a ValueError) and the line is rejected.
            "".join(v for v in row if v is not None).encode("utf-8")
        except ValueError:
            bad_lines.append(no), bad_raw.append(_decode(ln))
            continue
        rows.append(row)
        goods.append(no)
    cols = {f: pa.array([r[k] for r in rows], type=pa.string()) for k, f in enumerate(FIELDS)}
    frame = arrow_frame(pa.table(cols))
    frame["_line"] = np.asarray(goods, dtype=np.int64)
    return frame, rejected_frame(source, bad_lines, UNPARSEABLE, bad_raw)


def parse_arrow_batch(batch: pa.RecordBatch, first_row: int, layout: Layout, source: str):
    """Turn a Parquet record batch into field columns; `line` is the 1-based row number in the file."""
    table = pa.Table.from_batches([batch])
    missing = [c for c in layout.mapping.values() if c not in table.column_names]
    if missing and table.num_rows:
        raws = [json.dumps(r, default=str) for r in table.to_pylist()]
        return _empty_raw(), rejected_frame(source, np.arange(first_row, first_row + table.num_rows),
                                            WRONG_COLUMN_COUNT, raws)
    lines = np.arange(first_row, first_row + table.num_rows, dtype=np.int64)
    table = _native_timestamps(table, layout)
    text, bad = _utf8_columns(table, layout)
    rejected = empty_rejected()
    if bad.any():
        keep = pa.array(~bad)
        raws = [json.dumps(r, default=str) for r in table.filter(pa.array(bad)).to_pylist()]
        rejected = rejected_frame(source, lines[bad], UNPARSEABLE, raws)
        text, lines = text.filter(keep), lines[~bad]
    frame = _fields_from_table(text, layout)
    frame["_line"] = lines
    return frame, rejected


_PER_SECOND = {"s": 1, "ms": 1000, "us": 10 ** 6, "ns": 10 ** 9}


def _native_timestamps(table: pa.Table, layout: Layout) -> pa.Table:
    """A timestamp or date column (Parquet's native types) rewritten in `layout.timestamp_unit`, so a
    native column works whatever the config says the unit of text timestamps is."""
    col = layout.mapping.get("timestamp")
    if col not in table.column_names:
        return table
    arr = table.column(col)
    t = arr.type
    if pa.types.is_timestamp(t):
        seconds = pc.divide(pc.cast(arr, pa.int64()), _PER_SECOND[t.unit])   # integer division: floor for >= 0
    elif pa.types.is_date32(t):
        seconds = pc.multiply(pc.cast(pc.cast(arr, pa.int32()), pa.int64()), 86400)
    elif pa.types.is_date64(t):
        seconds = pc.divide(pc.cast(arr, pa.int64()), 1000)
    else:
        return table
    if layout.timestamp_unit == "ms":
        value = pc.multiply(seconds, 1000)
    elif layout.timestamp_unit == "iso":
        value = pc.strftime(pc.cast(seconds, pa.timestamp("s", tz="UTC")), format="%Y-%m-%dT%H:%M:%SZ")
    else:
        value = seconds
    return table.set_column(table.column_names.index(col), col, value)


def _utf8_columns(table: pa.Table, layout: Layout) -> tuple[pa.Table, np.ndarray]:
    """`table` with its mapped binary columns cast to strings, and the rows where one of them is not
    valid UTF-8 (null there): a string field cannot hold them, and the cast of the whole column fails."""
    bad = np.zeros(table.num_rows, dtype=bool)
    for col in set(layout.mapping.values()) & set(table.column_names):
        arr = table.column(col)
        if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
            continue
        try:
            text = pc.cast(arr, pa.string())
        except pa.ArrowInvalid:
            # Rare: find the bad values one by one.
            invalid = np.array([v is not None and not _is_utf8(v) for v in arr.to_pylist()], dtype=bool)
            bad |= invalid
            text = pc.cast(pc.if_else(pa.array(invalid), pa.scalar(None, arr.type), arr.combine_chunks()),
                           pa.string())
        table = table.set_column(table.column_names.index(col), col, text)
    return table, bad


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_UTF8_BOM = b"\xef\xbb\xbf"
MAX_HEADER_BYTES = 1 << 20


def text_start(head: bytes, path: str) -> int:
    """Check the first bytes of a text input; returns how many to skip (a UTF-8 byte order mark).

    Raises:
        DataError: the file is UTF-16/32 (a byte order mark, or NUL bytes in the first line): every
            row would otherwise be dead-lettered as a missing ID.
    """
    if head.startswith(_UTF8_BOM):
        return len(_UTF8_BOM)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path}: the file is UTF-16 (byte order mark {head[:2].hex()}); interaction files are "
                        f"read as UTF-8: convert it, e.g. iconv -f UTF-16 -t UTF-8")
    if b"\x00" in head.split(b"\n", 1)[0]:
        raise DataError(f"{path}: the first line holds NUL bytes (UTF-16 or binary data?); interaction files "
                        f"are read as UTF-8 text")
    return 0


def check_first_line(line: bytes, path: str, header: bool) -> None:
    """Refuse a first line that cannot be a header or a row: no line break in the first
    MAX_HEADER_BYTES, or lines that end in a bare carriage return (classic Mac OS).

    Raises:
        DataError: naming the file and the problem.
    """
    if not line.endswith(b"\n") and b"\r" in line:
        raise DataError(f"{path}: lines end with a bare carriage return (\\r); use \\n or \\r\\n line endings")
    if len(line) >= MAX_HEADER_BYTES and not line.endswith(b"\n"):
        raise DataError(f"{path}: no line break in the first {MAX_HEADER_BYTES >> 20} MB: "
                        f"not a {'header' if header else 'line of rows'}")


def check_columns(names: list[str], layout: Layout, path: str) -> None:
    """Every configured column must be in the file's columns, before any row is read.

    Raises:
        DataError: naming the config key, the missing column and the columns the file has.
    """
    have = set(names)
    for field, col in layout.mapping.items():
        if col not in have:
            shown = ", ".join(repr(n) for n in names[:20]) + (", ..." if len(names) > 20 else "")
            key = f"source.columns.{field}" if not layout.names else f"source.format={field}"
            raise DataError(f"{path}: {key}={col!r} is not a column of the file (its columns: {shown})")


def header_names(first_line: bytes, layout: Layout) -> list[str]:
    """Column names from a header line (or the fixed names of a header-less layout)."""
    if layout.names:
        return list(layout.names)
    text = first_line.decode("utf-8", errors="replace").strip("\r\n")
    delim = layout.delimiter
    if len(delim) > 1:
        return [c.strip() for c in text.split(delim)]
    return [c.strip().strip('"') for c in next(csv.reader([text], delimiter=delim))]


def line_text_lookup(block: bytes, first_line: int, spans=None):
    """A function mapping line numbers of `block` back to their original text (for dead letters)."""
    starts, ends = spans if spans is not None else _line_spans(block)

    def lookup(line_numbers) -> list[str]:
        idx = np.asarray(line_numbers, dtype=np.int64) - first_line
        return [_decode(block[s:e].rstrip(b"\r")) for s, e in zip(starts[idx].tolist(), ends[idx].tolist())]
    return lookup


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
        spans = _line_spans(block)  # one pass over the bytes for the parser, the count and the dead-letter text
        raw, rejected = parse_lines(block, first_line, layout, names, source, spans)
        lookup = line_text_lookup(block, first_line, spans)
        rows = len(spans[0]) - len(_blank_lines(block, *spans))
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


def sample(path: str, rows: int) -> Sample:
    """The first `rows` rows of the first file matching `path`, its format told by the file name.

    Raises:
        DataError: an extension of no known format, or no file matches.
    """
    ext = os.path.splitext(path.lower().removesuffix(".gz"))[1]
    if ext not in _EXTENSIONS:
        raise DataError(f"{path}: cannot tell the format from {ext!r} (known: {', '.join(sorted(_EXTENSIONS))})")
    fmt, options = _EXTENSIONS[ext]
    files = fsio.match(path)
    if not files:
        raise DataError(f"{path}: no such file")
    with fsio.open_read(files[0]) as fh:
        frame, schema = _SAMPLERS[fmt](fh, rows, options)
    return Sample(frame, fmt, schema)


def _sample_parquet(fh, rows: int, options: dict):
    pf = pq.ParquetFile(fh)
    batch = next(pf.iter_batches(batch_size=rows), None)
    table = pa.Table.from_batches([batch]) if batch is not None else pf.schema_arrow.empty_table()
    return table.to_pandas(), pf.schema_arrow


def _sample_jsonl(fh, rows: int, options: dict):
    return pd.read_json(fh, lines=True, nrows=rows, dtype=False), None


def _sample_csv(fh, rows: int, options: dict):
    return pd.read_csv(fh, sep=options.get("delimiter", ","), nrows=rows, dtype=str, keep_default_na=False), None


# File name extensions (before .gz) -> (format name, how to read the sample). A .tsv file is sampled with
# tabs (but `recsys init` does not write source.delimiter: "\t" into the config for it).
_EXTENSIONS = {".csv": ("csv", {}), ".tsv": ("csv", {"delimiter": "\t"}), ".parquet": ("parquet", {}),
               ".pq": ("parquet", {}), ".jsonl": ("jsonl", {}), ".json": ("jsonl", {}), ".ndjson": ("jsonl", {})}
_SAMPLERS = {"csv": _sample_csv, "parquet": _sample_parquet, "jsonl": _sample_jsonl}
