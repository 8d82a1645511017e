"""The rules for a good interaction row: validating raw rows a block at a time (vectorized with Arrow and
pandas), the feedback rules (rating, event or implicit) and the dead-letter reasons.

`recsys.data.readers` turns a file's blocks into raw rows (string fields); `validate` turns raw rows
into valid rows and rejected ones, and `parse_and_validate` does both for a block. A bad row is never
dropped: it comes back in a `rejected` frame with the source file, the line number, the reason and the
original text.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.config import Config
from recsys.data import readers
from recsys.data.readers import (FIELDS, UNPARSEABLE, WRONG_COLUMN_COUNT, arrow_strings, empty_rejected,
                                 rejected_frame)

# Rejection reasons, in the order they are checked (a row gets the first that applies); the readers
# give the first two, to lines or rows they cannot parse.
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

# Timestamps outside [1970, 2100) are almost always unit mistakes (ms read as s, or garbage).
_MAX_TS = 4102444800


def validate(raw: pd.DataFrame, cfg: Config, source: str, raw_text=None):
    """Validate parsed rows. Returns (valid, rejected).

    `valid` has columns user, item (`readers.STRING`), timestamp (int64 seconds), value (float32), event
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
        mark(has_value_col & ~np.isfinite(value), BAD_RATING)   # inf would be an infinite weight
    event = arrow_strings(raw["event"])
    event_counts: dict = {}
    if fb.mode == "event":
        events = pa.array(list(fb.event_weights), type=pa.string())
        event, event_counts = _merge_case_variants(event, list(fb.event_weights))
        known = pc.is_in(event, value_set=events).fill_null(False).to_numpy(zero_copy_only=False)
        if (~known).any():
            event_counts["unknown_events"] = _top_values(pc.filter(event, pa.array(~known)))
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
    if fb.mode != "rating":
        weight = _value_weight(weight, value, event, fb)
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
    valid.attrs["event_counts"] = event_counts
    return valid, rejected


def _value_weight(weight: np.ndarray, value: np.ndarray, event: pa.Array, fb) -> np.ndarray:
    """feedback.min_value and feedback.value_weight on rows that have a value (NaN: none, untouched)."""
    has = ~np.isnan(value)
    if fb.min_value is not None:
        if isinstance(fb.min_value, dict):
            names = pa.array(list(fb.min_value), type=pa.string())
            limits = pa.array([float(v) for v in fb.min_value.values()], type=pa.float64())
            limit = limits.take(pc.index_in(event, value_set=names)).fill_null(-np.inf).to_numpy(
                zero_copy_only=False)
        else:
            limit = float(fb.min_value)
        weight = np.where(has & (value < limit), np.float32(0), weight)
    if fb.value_weight == "log":
        scale = 1.0 + np.log(np.maximum(np.where(has, value, 1.0), 1.0))
        weight = (weight * scale).astype(np.float32)
    return weight.astype(np.float32, copy=False)


# at most this many distinct unknown or merged event values are counted per block (garbage in an event
# column must not grow the counters without bound)
_MAX_EVENT_VALUES = 20


def _top_values(arr: pa.Array) -> dict:
    """{value: count} of the most frequent values of `arr` (null as "")."""
    counts = pc.value_counts(arr.fill_null(""))
    pairs = sorted(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()), key=lambda p: -p[1])
    return {str(v): int(c) for v, c in pairs[:_MAX_EVENT_VALUES]}


def _merge_case_variants(event: pa.Array, names: list) -> tuple[pa.Array, dict]:
    """Event values that match a configured event type but for case or surrounding spaces (`Play`,
    ` purchase`) become that type. Returns (the events, {"case_merged_events": {value: count}} or {})."""
    folded_names: dict = {}
    for n in names:
        folded_names.setdefault(n.strip().lower(), []).append(n)
    targets = {f: ns[0] for f, ns in folded_names.items() if len(ns) == 1}   # `Play` and `play` both set: exact only
    if not targets:
        return event, {}
    exact = pc.is_in(event, value_set=pa.array(names, pa.string())).fill_null(False)
    folded = pc.utf8_lower(pc.utf8_trim_whitespace(event))
    idx = pc.index_in(folded, value_set=pa.array(list(targets), pa.string()))
    variant = pc.and_(pc.invert(exact), pc.is_valid(idx)).fill_null(False)
    if not pc.any(variant).as_py():
        return event, {}
    canonical = pa.array(list(targets.values()), pa.string()).take(idx)
    merged = pc.if_else(variant, canonical, event)
    return merged, {"case_merged_events": _top_values(pc.filter(event, variant))}


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


def validate_parsed(parsed: readers.Parsed, cfg: Config, source: str):
    """Validate a block the readers parsed. Returns (valid, rejected): the rows the reader could not parse
    first, then those the rules reject."""
    valid, rejected = validate(parsed.raw, cfg, source, parsed.raw_text)
    if len(parsed.rejected):
        rejected = pd.concat([parsed.rejected, rejected], ignore_index=True) if len(rejected) else parsed.rejected
    return valid, rejected


def parse_and_validate(block, first_line: int, layout: readers.Layout, names, cfg: Config, source: str):
    """Parse then validate a block of `readers.blocks`; returns (valid, rejected) with original text for
    every rejection (JSON of the row for Parquet)."""
    return validate_parsed(readers.parse(block, first_line, layout, names, source), cfg, source)
