"""Parsing interaction rows out of bytes, blind to formats: nothing here asks which format a file is.

Text: `iter_blocks` cuts a text file into blocks of whole lines; `split_lines`, `line_spans`, `count_lines`
and `line_text_lookup` find a block's lines, its blank ones, and a line's original text by its number.
Rows: `parse_delimited` (delimited text), `parse_jsonl` (JSON lines) and `parse_arrow_batch` (an Arrow
record batch) turn a block into raw rows (a frame of the string FIELDS and `_line`, the 1-based line or
row number in the file) plus the rows they cannot parse, dead-lettered as wrong_column_count or
unparseable (`rejected_frame`). The start of a file: `text_start` (encoding), `check_first_line`,
`header_names` and `check_columns` read and check it before any row is read.

`recsys.data.readers` decides which of these a file gets (by its format), opens it and sizes its blocks.
Other modules reach this one through the readers, the raw-frame names included (`FIELDS`, `STRING`,
`arrow_frame`, `arrow_strings`, the dead-letter reasons and frames: they live here because the parsers
need them). A `layout` argument is a `readers.Layout`, of which only `delimiter`, `names`, `mapping`
(field -> column) and `timestamp_unit` are read: this module does not import the readers.

String columns of raw frames are Arrow-backed (`STRING`, `pd.ArrowDtype(pa.string())`): IDs are never
turned into Python str objects, which is the dominant cost of a block otherwise.
"""
from __future__ import annotations

import csv
import io
import json
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from recsys.errors import DataError

# Dead-letter reasons of rows a parser cannot parse (recsys.data.ingest.REJECT_REASONS lists them all).
WRONG_COLUMN_COUNT = "wrong_column_count"
UNPARSEABLE = "unparseable"

FIELDS = ("user", "item", "timestamp", "value", "event")
REJECTED_COLUMNS = ["source", "line", "reason", "raw"]
STRING = pd.ArrowDtype(pa.string())
_STRING_TYPES = {pa.string(): STRING}


# ---- raw frames and dead letters ------------------------------------------------------------------

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


def _decode(b: bytes) -> str:
    return b.decode("utf-8", errors="backslashreplace")


def _empty_raw() -> pd.DataFrame:
    frame = pd.DataFrame({f: pd.Series(dtype=STRING) for f in FIELDS})
    frame["_line"] = pd.Series(dtype=np.int64)
    return frame


def _fields_from_table(table: pa.Table, layout) -> pd.DataFrame:
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


# ---- text: blocks and lines -----------------------------------------------------------------------

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


def line_spans(block: bytes) -> tuple[np.ndarray, np.ndarray]:
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


def count_lines(block: bytes, spans=None) -> int:
    """`len(split_lines(block, 1)[0])`, the non-blank lines, without building them. `spans`: the block's
    `line_spans`, when the caller has them already."""
    starts, ends = spans if spans is not None else line_spans(block)
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


def line_text_lookup(block: bytes, first_line: int, spans=None):
    """A function mapping line numbers of `block` back to their original text (for dead letters)."""
    starts, ends = spans if spans is not None else line_spans(block)

    def lookup(line_numbers) -> list[str]:
        idx = np.asarray(line_numbers, dtype=np.int64) - first_line
        return [_decode(block[s:e].rstrip(b"\r")) for s, e in zip(starts[idx].tolist(), ends[idx].tolist())]
    return lookup


# ---- rows: delimited text, JSON lines, Arrow record batches ----------------------------------------

def parse_delimited(block: bytes, first_line: int, layout, names: list[str], source: str, spans=None):
    """Parse a block of delimited text into string columns.

    Returns (frame with one string column per field plus `_line`, rejected frame). Rows with the wrong
    number of columns are rejected with their original text. `spans`: the block's `line_spans`, when
    the caller has them already.
    """
    starts, ends = spans if spans is not None else line_spans(block)
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


def parse_jsonl(block: bytes, first_line: int, layout, source: str):
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


def parse_arrow_batch(batch: pa.RecordBatch, first_row: int, layout, source: str):
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


def _native_timestamps(table: pa.Table, layout) -> pa.Table:
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


def _utf8_columns(table: pa.Table, layout) -> tuple[pa.Table, np.ndarray]:
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


# ---- the start of a file: encoding, first line, columns -------------------------------------------

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


def check_columns(names: list[str], layout, path: str) -> None:
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


def header_names(first_line: bytes, layout) -> list[str]:
    """Column names from a header line (or the fixed names of a header-less layout)."""
    if layout.names:
        return list(layout.names)
    text = first_line.decode("utf-8", errors="replace").strip("\r\n")
    delim = layout.delimiter
    if len(delim) > 1:
        return [c.strip() for c in text.split(delim)]
    return [c.strip().strip('"') for c in next(csv.reader([text], delimiter=delim))]
