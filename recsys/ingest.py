"""Parsing and validating raw interaction rows, a block at a time (vectorized with Arrow and pandas).

The Beam pipeline and the benchmarks' pandas baseline both call these functions, so the rules for a
good row live in one place. A bad row is never dropped: it comes back in a `rejected` frame with the
source file, the line number, the reason and the original text.
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

# Rejection reasons, in the order they are checked (a row gets the first that applies).
WRONG_COLUMN_COUNT = "wrong_column_count"
UNPARSEABLE = "unparseable"
MISSING_USER = "missing_user_id"
MISSING_ITEM = "missing_item_id"
ID_TOO_LONG = "id_too_long"
CONTROL_CHARS = "control_characters"
MISSING_TIMESTAMP = "missing_timestamp"
BAD_TIMESTAMP = "bad_timestamp"
BAD_RATING = "bad_rating"
RATING_OUT_OF_RANGE = "rating_out_of_range"
UNKNOWN_EVENT = "unknown_event_type"
REJECT_REASONS = (WRONG_COLUMN_COUNT, UNPARSEABLE, MISSING_USER, MISSING_ITEM, ID_TOO_LONG, CONTROL_CHARS,
                  MISSING_TIMESTAMP, BAD_TIMESTAMP, BAD_RATING, RATING_OUT_OF_RANGE, UNKNOWN_EVENT)

FIELDS = ("user", "item", "timestamp", "value", "event")
REJECTED_COLUMNS = ["source", "line", "reason", "raw"]
# Timestamps outside [1970, 2100) are almost always unit mistakes (ms read as s, or garbage).
_MAX_TS = 4102444800

_CONTROL_RE = r"[\x00-\x1f\x7f]"

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


def layout_for(source: SourceConfig) -> Layout:
    """The reading layout implied by `source.format` and `source.columns`."""
    if source.format in _MOVIELENS:
        delim, header, names, mapping = _MOVIELENS[source.format]
        return Layout("delimited", delim, header, tuple(names) if names else None, dict(mapping))
    cols = source.columns
    mapping = {f: getattr(cols, f) for f in FIELDS if getattr(cols, f)}
    if source.format == "csv":
        return Layout("delimited", source.delimiter, source.header, None, mapping)
    return Layout(source.format, "", True, None, mapping)


def empty_rejected() -> pd.DataFrame:
    return pd.DataFrame({"source": pd.Series(dtype=str), "line": pd.Series(dtype=np.int64),
                         "reason": pd.Series(dtype=str), "raw": pd.Series(dtype=str)})


def rejected_frame(source: str, lines, reason, raws) -> pd.DataFrame:
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


def parse_delimited(block: bytes, first_line: int, layout: Layout, names: list[str], source: str):
    """Parse a block of delimited text into string columns.

    Returns (frame with one string column per field plus `_line`, rejected frame). Rows with the wrong
    number of columns are rejected with their original text.
    """
    lines, line_nos = split_lines(block, first_line)
    if not lines:
        return _empty_raw(), empty_rejected()
    delim = layout.delimiter
    original = lines  # rejected rows keep the text as it was in the file
    if len(delim) > 1:  # e.g. MovieLens 1M '::': map to a byte that cannot survive validation anyway
        lines = [ln.replace(delim.encode(), b"\x1f") for ln in lines]
        delim = "\x1f"
    bad_rows: list[int] = []

    def on_invalid(row):
        bad_rows.append(row.number - 1)
        return "skip"

    text = b"\n".join(lines)
    try:
        table = pcsv.read_csv(
            io.BytesIO(text),
            read_options=pcsv.ReadOptions(column_names=names, use_threads=False, block_size=len(text) + 1),
            parse_options=pcsv.ParseOptions(delimiter=delim, invalid_row_handler=on_invalid),
            convert_options=pcsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return _parse_slow(lines, line_nos, layout, names, source, delim, original)
    if table.num_rows + len(bad_rows) != len(lines):
        # A record spanning lines (an unclosed quote, a bare '\r'): Arrow's rows no longer map one to one
        # to input lines, so parse line by line to keep line numbers and original text exact.
        return _parse_slow(lines, line_nos, layout, names, source, delim, original)
    good = np.ones(len(lines), dtype=bool)
    good[bad_rows] = False
    rejected = rejected_frame(source, line_nos[~good], WRONG_COLUMN_COUNT,
                              [_decode(original[i]) for i in np.flatnonzero(~good)])
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
    frame = pd.DataFrame({f: pd.Series(dtype=object) for f in FIELDS})
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
            if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
                arr = pc.cast(arr, pa.string())
            out[f] = arr
        else:
            out[f] = pa.nulls(n, pa.string())
    return pa.table(out).to_pandas()


def parse_jsonl(block: bytes, first_line: int, layout: Layout, source: str):
    """Parse a block of JSON lines; a line that is not a JSON object is rejected as unparseable."""
    lines, line_nos = split_lines(block, first_line)
    records, goods, bad_lines, bad_raw = [], [], [], []
    for ln, no in zip(lines, line_nos):
        try:
            rec = json.loads(ln)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError:
            bad_lines.append(no), bad_raw.append(_decode(ln))
            continue
        records.append(rec)
        goods.append(no)
    cols = {}
    for f in FIELDS:
        key = layout.mapping.get(f)
        vals = [r.get(key) if key else None for r in records]
        cols[f] = pa.array([None if v is None else str(v) for v in vals], type=pa.string())
    frame = pa.table(cols).to_pandas()
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
    frame = _fields_from_table(table, layout)
    frame["_line"] = np.arange(first_row, first_row + table.num_rows, dtype=np.int64)
    return frame, empty_rejected()


def validate(raw: pd.DataFrame, cfg: Config, source: str, raw_text=None):
    """Validate parsed rows. Returns (valid, rejected).

    `valid` has columns user, item (str), timestamp (int64 seconds), value (float32), event (str or
    None), weight (float32: > 0 for positives under the feedback rules, 0 for valid non-positives).
    `raw_text(mask)` rebuilds the original text of the rows selected by `mask` for the dead-letter output.
    """
    s, fb = cfg.source, cfg.feedback
    n = len(raw)
    reason = np.full(n, "", dtype=object)

    def mark(mask, why):
        mask = np.asarray(mask, dtype=bool) & (reason == "")
        reason[mask] = why

    user = pa.array(raw["user"], type=pa.string(), from_pandas=True)
    item = pa.array(raw["item"], type=pa.string(), from_pandas=True)
    user = pc.utf8_trim_whitespace(user)
    item = pc.utf8_trim_whitespace(item)
    mark(_is_empty(user), MISSING_USER)
    mark(_is_empty(item), MISSING_ITEM)
    too_long = pc.or_(pc.greater(pc.utf8_length(user), s.max_id_length),
                      pc.greater(pc.utf8_length(item), s.max_id_length))
    mark(too_long.fill_null(False).to_numpy(zero_copy_only=False), ID_TOO_LONG)
    ctrl = pc.or_(pc.match_substring_regex(user, _CONTROL_RE), pc.match_substring_regex(item, _CONTROL_RE))
    mark(ctrl.fill_null(False).to_numpy(zero_copy_only=False), CONTROL_CHARS)

    ts_raw = raw["timestamp"]
    ts = _parse_timestamps(ts_raw, s.timestamp_unit)
    # Only a field that does not parse can be blank, so test just those (per-row Python otherwise).
    ts_missing = _is_blank(ts_raw, np.isnan(ts))
    mark(ts_missing, MISSING_TIMESTAMP)
    mark(np.isnan(ts) | (ts < 0) | (ts >= _MAX_TS), BAD_TIMESTAMP)

    value = _to_float(raw["value"])
    if fb.mode == "rating":
        mark(np.isnan(value), BAD_RATING)
        lo, hi = fb.rating_range
        mark((value < lo) | (value > hi), RATING_OUT_OF_RANGE)
    else:
        # An empty field is a missing value (as a null in JSON or Parquet), not a malformed one.
        has_value_col = ~_is_blank(raw["value"], np.isnan(value))
        mark(has_value_col & np.isnan(value), BAD_RATING)
    event = raw["event"]
    if fb.mode == "event":
        known = event.isin(list(fb.event_weights)).to_numpy()
        mark(~known, UNKNOWN_EVENT)

    bad = reason != ""
    good = ~bad
    rejected = empty_rejected()
    if bad.any():
        raws = raw_text(bad) if raw_text else _rebuild_text(raw, bad)
        rejected = rejected_frame(source, raw["_line"].to_numpy()[bad], reason[bad], raws)
    if fb.mode == "rating":
        weight = (value >= fb.min_rating).astype(np.float32)
    elif fb.mode == "event":
        weight = event.map(fb.event_weights).to_numpy(dtype=np.float32, na_value=0.0)
    else:
        weight = np.ones(n, dtype=np.float32)
    valid = pd.DataFrame({
        "user": user.filter(pa.array(good)).to_pandas(),
        "item": item.filter(pa.array(good)).to_pandas(),
        "timestamp": ts[good].astype(np.int64),
        "value": value[good].astype(np.float32),
        "event": event.to_numpy()[good],
        "weight": weight[good],
    })
    return valid, rejected


def _is_empty(arr: pa.Array) -> np.ndarray:
    return pc.or_(pc.is_null(arr), pc.equal(pc.utf8_length(arr), 0)).fill_null(True).to_numpy(
        zero_copy_only=False)


def _is_blank(col: pd.Series, where: np.ndarray) -> np.ndarray:
    """Null or whitespace-only fields, looked at only where `where` is set (False elsewhere)."""
    out = np.zeros(len(col), dtype=bool)
    idx = np.flatnonzero(where)
    if len(idx):
        sub = col.iloc[idx]
        out[idx] = sub.isna().to_numpy() | (sub.astype(str).str.strip() == "").to_numpy()
    return out


# Integers exact in float64, parsed by Arrow to the same numbers as pandas ("-0" left to pandas: -0.0 or 0).
_INT_RE = r"^([0-9]{1,15}|-[1-9][0-9]{0,14})$"


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


def _to_float(col: pd.Series) -> np.ndarray:
    """`pd.to_numeric(col, errors="coerce")` as float64 (NaN where not a number), faster: integers
    of up to 15 digits through Arrow, other strings through pandas once per distinct value."""
    try:
        arr = pa.array(col, type=pa.string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return _safe_to_numeric(col)
    is_int = pc.match_substring_regex(arr, _INT_RE).fill_null(False)
    out = pc.cast(pc.if_else(is_int, arr, pa.scalar(None, pa.string())), pa.int64()).cast(pa.float64())
    out = out.fill_null(np.nan).to_numpy(zero_copy_only=False).copy()
    rest = np.flatnonzero(~is_int.to_numpy(zero_copy_only=False))
    if len(rest):
        codes, uniques = pd.factorize(col.iloc[rest])
        if len(uniques):
            parsed = _safe_to_numeric(pd.Series(uniques, dtype=object))
            out[rest] = np.where(codes >= 0, parsed[np.maximum(codes, 0)], np.nan)
        else:
            out[rest] = np.nan
    return out


def _parse_timestamps(col: pd.Series, unit: str) -> np.ndarray:
    """Seconds since the epoch as float64, NaN where unparseable."""
    if unit == "iso":
        parsed = pd.to_datetime(col, errors="coerce", utc=True, format="ISO8601")
        out = parsed.astype("int64").to_numpy().astype(np.float64) / 1e9
        out[parsed.isna().to_numpy()] = np.nan
        return np.floor(out)
    num = _to_float(col)
    if unit == "ms":
        num = num / 1000.0
    return np.floor(num)


def _rebuild_text(raw: pd.DataFrame, mask: np.ndarray) -> list[str]:
    sub = raw.loc[mask, list(FIELDS)]
    return [json.dumps({k: v for k, v in r.items() if v is not None}) for r in sub.to_dict("records")]


def header_names(first_line: bytes, layout: Layout) -> list[str]:
    """Column names from a header line (or the fixed names of a header-less layout)."""
    if layout.names:
        return list(layout.names)
    text = first_line.decode("utf-8", errors="replace").strip("\r\n")
    delim = layout.delimiter
    if len(delim) > 1:
        return [c.strip() for c in text.split(delim)]
    return [c.strip().strip('"') for c in next(__import__("csv").reader([text], delimiter=delim))]


def parse_block(block: bytes, first_line: int, layout: Layout, names: list[str] | None, source: str):
    """Parse one block of a delimited or JSON-lines file (dispatch on the layout)."""
    if layout.kind == "jsonl":
        return parse_jsonl(block, first_line, layout, source)
    return parse_delimited(block, first_line, layout, names, source)


def line_text_lookup(block: bytes, first_line: int):
    """A function mapping line numbers of `block` back to their original text (for dead letters)."""
    lines = block.split(b"\n")

    def lookup(line_numbers) -> list[str]:
        return [_decode(lines[int(n) - first_line].rstrip(b"\r")) for n in line_numbers]
    return lookup


def parse_and_validate(block: bytes, first_line: int, layout: Layout, names, cfg: Config, source: str):
    """Parse then validate a block; returns (valid, rejected) with original text for every rejection."""
    raw, rejected_parse = parse_block(block, first_line, layout, names, source)
    lookup = line_text_lookup(block, first_line) if layout.kind != "parquet" else None
    raw_text = (lambda mask: lookup(raw["_line"].to_numpy()[mask])) if lookup else None
    valid, rejected = validate(raw, cfg, source, raw_text)
    if len(rejected_parse):
        rejected = pd.concat([rejected_parse, rejected], ignore_index=True) if len(rejected) else rejected_parse
    return valid, rejected
