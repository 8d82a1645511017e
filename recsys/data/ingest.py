"""Parsing and validating raw interaction rows, a block at a time (vectorized with Arrow and pandas).

The Beam pipeline and the benchmarks' pandas baseline both call these functions, so the rules for a
good row live in one place. A bad row is never dropped: it comes back in a `rejected` frame with the
source file, the line number, the reason and the original text.

String columns of parsed and valid frames are Arrow-backed (`STRING`, `pd.ArrowDtype(pa.string())`):
IDs are never turned into Python str objects, which is the dominant cost of a block otherwise.
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from recsys.config import Config, SourceConfig
from recsys.errors import DataError

# Rejection reasons, in the order they are checked (a row gets the first that applies).
WRONG_COLUMN_COUNT = "wrong_column_count"
UNPARSEABLE = "unparseable"
MISSING_USER = "missing_user_id"
MISSING_ITEM = "missing_item_id"
ID_TOO_LONG = "id_too_long"
CONTROL_CHARS = "control_characters"
ID_PADDING = " \t"     # what is trimmed from the ends of an ID
MISSING_TIMESTAMP = "missing_timestamp"
BAD_TIMESTAMP = "bad_timestamp"
BAD_RATING = "bad_rating"
RATING_OUT_OF_RANGE = "rating_out_of_range"
UNKNOWN_EVENT = "unknown_event_type"
REJECT_REASONS = (WRONG_COLUMN_COUNT, UNPARSEABLE, MISSING_USER, MISSING_ITEM, ID_TOO_LONG, CONTROL_CHARS,
                  MISSING_TIMESTAMP, BAD_TIMESTAMP, BAD_RATING, RATING_OUT_OF_RANGE, UNKNOWN_EVENT)

FIELDS = ("user", "item", "timestamp", "value", "event")
REJECTED_COLUMNS = ["source", "line", "reason", "raw"]
STRING = pd.ArrowDtype(pa.string())
_STRING_TYPES = {pa.string(): STRING}
# Timestamps outside [1970, 2100) are almost always unit mistakes (ms read as s, or garbage).
_MAX_TS = 4102444800


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
    kind: str                      # "delimited", "jsonl" or "parquet"
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
    import csv
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


def validate(raw: pd.DataFrame, cfg: Config, source: str, raw_text=None):
    """Validate parsed rows. Returns (valid, rejected).

    `valid` has columns user, item (`STRING`), timestamp (int64 seconds), value (float32), event
    (`STRING`, null when absent), weight (float32: > 0 for positives under the feedback rules, 0 for
    valid non-positives). `raw_text(mask)` rebuilds the original text of the rows selected by `mask` for
    the dead-letter output.
    """
    s, fb = cfg.source, cfg.feedback
    n = len(raw)
    reason = np.zeros(n, dtype=np.int8)  # 1 + position in REJECT_REASONS; 0 while the row is valid

    def mark(mask, why):
        reason[np.asarray(mask, dtype=bool) & (reason == 0)] = REJECT_REASONS.index(why) + 1

    # Only ASCII padding is trimmed: Unicode whitespace (NBSP) stays part of the ID, and the
    # separators \x1c-\x1f stay to be rejected as control characters, so distinct raw IDs never merge.
    user = pc.utf8_trim(arrow_strings(raw["user"]), characters=ID_PADDING)
    item = pc.utf8_trim(arrow_strings(raw["item"]), characters=ID_PADDING)
    mark(_is_empty(user), MISSING_USER)
    mark(_is_empty(item), MISSING_ITEM)
    mark(_too_long(user, s.max_id_length) | _too_long(item, s.max_id_length), ID_TOO_LONG)
    mark(_has_control_chars(user) | _has_control_chars(item), CONTROL_CHARS)

    ts_raw = arrow_strings(raw["timestamp"])
    ts = _parse_timestamps(ts_raw, s.timestamp_unit)
    # Only a field that does not parse can be blank, so test just those (per-row Python otherwise).
    ts_missing = _is_blank(ts_raw, np.isnan(ts))
    mark(ts_missing, MISSING_TIMESTAMP)
    mark(np.isnan(ts) | (ts < 0) | (ts >= _MAX_TS), BAD_TIMESTAMP)

    value_raw = arrow_strings(raw["value"])
    value = _to_float(value_raw)
    if fb.mode == "rating":
        mark(np.isnan(value), BAD_RATING)
        lo, hi = fb.rating_range
        mark((value < lo) | (value > hi), RATING_OUT_OF_RANGE)
    else:
        # An empty field is a missing value (as a null in JSON or Parquet), not a malformed one.
        has_value_col = ~_is_blank(value_raw, np.isnan(value))
        mark(has_value_col & np.isnan(value), BAD_RATING)
    event = arrow_strings(raw["event"])
    if fb.mode == "event":
        events = pa.array(list(fb.event_weights), type=pa.string())
        known = pc.is_in(event, value_set=events).fill_null(False).to_numpy(zero_copy_only=False)
        if fb.unknown_events == "reject":
            mark(~known, UNKNOWN_EVENT)   # else: a valid row of weight 0, counted as not positive

    bad = reason != 0
    good = ~bad
    rejected = empty_rejected()
    if bad.any():
        raws = raw_text(bad) if raw_text else _rebuild_text(raw, bad)
        reasons = np.asarray(REJECT_REASONS, dtype=object)[reason[bad] - 1]
        rejected = rejected_frame(source, raw["_line"].to_numpy()[bad], reasons, raws)
    if fb.mode == "rating":
        weight = (value >= fb.min_rating).astype(np.float32)
    elif fb.mode == "event":
        weights = pa.array([float(w) for w in fb.event_weights.values()], type=pa.float64())
        weight = weights.take(pc.index_in(event, value_set=events)).fill_null(0.0).to_numpy(
            zero_copy_only=False).astype(np.float32)
    else:
        weight = np.ones(n, dtype=np.float32)
    keep = pa.array(good)

    def strings(arr):
        return pd.arrays.ArrowExtensionArray(arr.filter(keep) if bad.any() else arr)
    # copy=False: the columns are fresh arrays; pandas would otherwise copy the numbers into blocks.
    valid = pd.DataFrame({
        "user": strings(user),
        "item": strings(item),
        "timestamp": ts[good].astype(np.int64),
        "value": value[good].astype(np.float32),
        "event": strings(event),
        "weight": weight[good],
    }, copy=False)
    return valid, rejected


def _is_empty(arr: pa.Array) -> np.ndarray:
    return pc.or_(pc.is_null(arr), pc.equal(pc.binary_length(arr), 0)).fill_null(True).to_numpy(
        zero_copy_only=False)


def _too_long(arr: pa.Array, limit: int) -> np.ndarray:
    """More than `limit` characters; null is not too long."""
    # A string has at least as many bytes as characters: count characters only when some are long.
    if (pc.max(pc.binary_length(arr)).as_py() or 0) <= limit:
        return np.zeros(len(arr), dtype=bool)
    return pc.greater(pc.utf8_length(arr), limit).fill_null(False).to_numpy(zero_copy_only=False)


def _has_control_chars(arr: pa.Array) -> np.ndarray:
    """Strings with a character in [\\x00-\\x1f\\x7f]; null is False.

    A scan of the array's bytes instead of a regex: in UTF-8 these bytes never occur inside a multi-byte
    character, so a byte match is a character match."""
    out = np.zeros(len(arr), dtype=bool)
    _, offsets, data = arr.buffers()
    if not len(arr) or data is None:
        return out
    offsets = np.frombuffer(offsets, dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]
    body = np.frombuffer(data, dtype=np.uint8)[offsets[0]:offsets[-1]]
    hits = np.flatnonzero((body < 32) | (body == 127)) + offsets[0]
    if len(hits):
        out[np.unique(np.searchsorted(offsets, hits, side="right") - 1)] = True
        out &= arr.is_valid().to_numpy(zero_copy_only=False)
    return out


def _is_blank(arr: pa.Array, where: np.ndarray) -> np.ndarray:
    """Null or whitespace-only fields, looked at only where `where` is set (False elsewhere)."""
    out = np.zeros(len(arr), dtype=bool)
    idx = np.flatnonzero(where)
    if len(idx):
        out[idx] = [v is None or v.strip() == "" for v in arr.take(idx).to_pylist()]
    return out


_HUGE_EXP = re.compile(r"[eE][+-]?0*[0-9]{4,}")


def _safe_to_numeric(col: pd.Series) -> np.ndarray:
    """pd.to_numeric (coerce) that never sees absurd strings: pandas segfaults on huge exponents (e.g.
    '1e399999999999999999999'). Over 32 characters, or an exponent of 4+ digits, is not a number here."""
    s = col.astype(object)
    too_long = s.map(lambda v: isinstance(v, str) and (len(v) > 32 or _HUGE_EXP.search(v) is not None)
                     ).to_numpy(dtype=bool)
    if too_long.any():
        s = s.where(~too_long, None)
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _to_float(arr: pa.Array) -> np.ndarray:
    """`pd.to_numeric(strings, errors="coerce")` as float64 (NaN where not a number), faster: unsigned
    integers of up to 15 digits (exact in float64) through Arrow, other strings through pandas once per
    distinct value."""
    is_int = pc.and_(pc.ascii_is_decimal(arr), pc.less_equal(pc.binary_length(arr), 15)).fill_null(False)
    ints = is_int.to_numpy(zero_copy_only=False)
    out = np.full(len(arr), np.nan)
    if ints.any():
        out[ints] = pc.cast(arr.filter(is_int), pa.int64()).to_numpy().astype(np.float64)
    rest = ~ints
    if rest.any():
        codes = pc.dictionary_encode(arr.filter(pa.array(rest)))
        parsed = _safe_to_numeric(pd.Series(codes.dictionary.to_pylist(), dtype=object))
        idx = codes.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        out[rest] = np.where(idx >= 0, parsed[np.maximum(idx, 0)] if len(parsed) else np.nan, np.nan)
    return out


def _parse_timestamps(arr: pa.Array, unit: str) -> np.ndarray:
    """Seconds since the epoch as float64, NaN where unparseable."""
    if unit == "iso":
        parsed = pd.to_datetime(arr.to_pandas(), errors="coerce", utc=True, format="ISO8601")
        out = parsed.astype("int64").to_numpy().astype(np.float64) / 1e9
        out[parsed.isna().to_numpy()] = np.nan
        return np.floor(out)
    num = _to_float(arr)
    if unit == "ms":
        num = num / 1000.0
    return np.floor(num)


def _rebuild_text(raw: pd.DataFrame, mask: np.ndarray) -> list[str]:
    keep = pa.array(mask)
    rows = pa.table({f: arrow_strings(raw[f]).filter(keep) for f in FIELDS}).to_pylist()
    return [json.dumps({k: v for k, v in r.items() if v is not None}) for r in rows]


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
    return [c.strip().strip('"') for c in next(__import__("csv").reader([text], delimiter=delim))]


def parse_block(block: bytes, first_line: int, layout: Layout, names: list[str] | None, source: str, spans=None):
    """Parse one block of a delimited or JSON-lines file (dispatch on the layout)."""
    if layout.kind == "jsonl":
        return parse_jsonl(block, first_line, layout, source)
    return parse_delimited(block, first_line, layout, names, source, spans)


def line_text_lookup(block: bytes, first_line: int, spans=None):
    """A function mapping line numbers of `block` back to their original text (for dead letters)."""
    starts, ends = spans if spans is not None else _line_spans(block)

    def lookup(line_numbers) -> list[str]:
        idx = np.asarray(line_numbers, dtype=np.int64) - first_line
        return [_decode(block[s:e].rstrip(b"\r")) for s, e in zip(starts[idx].tolist(), ends[idx].tolist())]
    return lookup


def parse_and_validate(block: bytes, first_line: int, layout: Layout, names, cfg: Config, source: str):
    """Parse then validate a block; returns (valid, rejected) with original text for every rejection."""
    spans = _line_spans(block)  # one pass over the bytes for the parser and the dead-letter text
    raw, rejected_parse = parse_block(block, first_line, layout, names, source, spans)
    lookup = line_text_lookup(block, first_line, spans) if layout.kind != "parquet" else None
    raw_text = (lambda mask: lookup(raw["_line"].to_numpy()[mask])) if lookup else None
    valid, rejected = validate(raw, cfg, source, raw_text)
    if len(rejected_parse):
        rejected = pd.concat([rejected_parse, rejected], ignore_index=True) if len(rejected) else rejected_parse
    return valid, rejected
