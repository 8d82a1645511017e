"""recsys/data/ingest.py: validating raw interaction rows, block by block (parsed by recsys/data/readers.py,
whose own tests are in test_readers.py).

The invariant everywhere: every non-blank input line comes back either as a valid row or as a
rejected row carrying the source, its 1-based line number, a reason and the original text.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from recsys.data import ingest, readers
from recsys.config import from_dict

NAMES = ["user_id", "item_id", "rating", "timestamp"]
HEADER = ",".join(NAMES)


def csv_config(**source):
    src = {"format": "csv", "columns": {"value": "rating"}, "items_format": "none"}
    src.update(source)
    return from_dict({"source": src}, base_dir="/tmp")


def run_block(lines, cfg=None, first_line=2, names=NAMES, source="in.csv"):
    """parse_and_validate a block built from `lines` (bytes or str); checks reconciliation."""
    cfg = cfg or csv_config()
    layout = readers.layout_for(cfg.source)
    block = b"".join((ln.encode() if isinstance(ln, str) else ln) + b"\n" for ln in lines)
    valid, rejected = ingest.parse_and_validate(block, first_line, layout, names, cfg, source)
    n_read = len(readers.split_lines(block, first_line)[0])
    assert len(valid) + len(rejected) == n_read
    return valid, rejected


def reasons_by_line(rejected):
    return dict(zip(rejected["line"].tolist(), rejected["reason"].tolist()))


GOOD = "u1,i1,4.0,1000000000"

# One example of each rejection reason a delimited rating file can produce (unknown_event_type is
# event mode only; unparseable needs invalid UTF-8 or broken quoting, covered separately).
BAD_CSV_ROWS = [
    ("u1,i1,4.0", ingest.WRONG_COLUMN_COUNT),
    ("u1,i1,4.0,1000000000,extra", ingest.WRONG_COLUMN_COUNT),
    (",i1,4.0,1000000000", ingest.MISSING_USER),
    ("   ,i1,4.0,1000000000", ingest.MISSING_USER),
    ("u1,,4.0,1000000000", ingest.MISSING_ITEM),
    ("u1," + "i" * 300 + ",4.0,1000000000", ingest.ID_TOO_LONG),
    ("u" * 257 + ",i1,4.0,1000000000", ingest.ID_TOO_LONG),
    ("u\x01x,i1,4.0,1000000000", ingest.CONTROL_CHARS),
    ("u1,i\tj,4.0,1000000000", ingest.CONTROL_CHARS),
    ("u1,i\x7f,4.0,1000000000", ingest.CONTROL_CHARS),
    ("u1,i1,4.0,", ingest.MISSING_TIMESTAMP),
    ("u1,i1,4.0,  ", ingest.MISSING_TIMESTAMP),
    ("u1,i1,4.0,yesterday", ingest.BAD_TIMESTAMP),
    ("u1,i1,4.0,-5", ingest.BAD_TIMESTAMP),
    ("u1,i1,4.0,1600000000000", ingest.BAD_TIMESTAMP),  # milliseconds read as seconds
    ("u1,i1,five,1000000000", ingest.BAD_RATING),
    ("u1,i1,,1000000000", ingest.BAD_RATING),
    ("u1,i1,nan,1000000000", ingest.BAD_RATING),
    ("u1,i1,7,1000000000", ingest.RATING_OUT_OF_RANGE),
    ("u1,i1,0.4,1000000000", ingest.RATING_OUT_OF_RANGE),
    ("u1,i1,inf,1000000000", ingest.RATING_OUT_OF_RANGE),
]


# --- delimited rows: each rejection reason ----------------------------------------------------------

@pytest.mark.parametrize("path", ["fast", "slow"])
@pytest.mark.parametrize("text,reason", BAD_CSV_ROWS)
def test_each_bad_csv_row_is_rejected_with_reason_line_and_text(text, reason, path):
    lines = [GOOD, text, "u2,i2,3.0,1000000001"]
    if path == "slow":  # invalid UTF-8 elsewhere in the block sends it through the line-by-line parser
        lines.append(b"u3,i\xff,4.0,1000000002")
    valid, rejected = run_block(lines, first_line=5)
    assert valid["user"].tolist() == ["u1", "u2"]
    got = rejected[rejected["line"] == 6]
    assert len(got) == 1
    row = got.iloc[0]
    assert (row["source"], row["reason"], row["raw"]) == ("in.csv", reason, text)
    if path == "slow":
        slow = rejected[rejected["line"] == 8].iloc[0]
        assert slow["reason"] == ingest.UNPARSEABLE
        assert slow["raw"] == "u3,i\\xff,4.0,1000000002"
    assert len(rejected) == (2 if path == "slow" else 1)


def test_all_bad_kinds_in_one_block_keep_their_line_numbers():
    lines = [GOOD] + [t for t, _ in BAD_CSV_ROWS] + ["u9,i9,5,1000000009"]
    valid, rejected = run_block(lines, first_line=2)
    assert len(valid) == 2
    expected = {i + 3: reason for i, (_, reason) in enumerate(BAD_CSV_ROWS)}
    assert reasons_by_line(rejected) == expected
    assert dict(zip(rejected["line"], rejected["raw"])) == {i + 3: t for i, (t, _) in enumerate(BAD_CSV_ROWS)}


def test_first_failing_rule_wins():
    valid, rejected = run_block([
        ",,nan,",            # everything wrong: missing user is checked first
        "u1,,nan,x",         # then missing item
        "u1,i\x01,nan,x",    # then control characters
        "u1,i1,nan,x",       # then timestamp
        "u1,i1,99,",         # missing timestamp before the rating
    ])
    assert len(valid) == 0
    assert rejected["reason"].tolist() == [ingest.MISSING_USER, ingest.MISSING_ITEM, ingest.CONTROL_CHARS,
                                           ingest.BAD_TIMESTAMP, ingest.MISSING_TIMESTAMP]


def test_invalid_utf8_is_unparseable_and_raw_is_escaped():
    valid, rejected = run_block([GOOD, b"u\xc3\x28,i1,4,1000000000", "u\u00e9,i\u4e2d,4,1000000001"])
    assert valid["user"].tolist() == ["u1", "u\u00e9"] and valid["item"].tolist() == ["i1", "i\u4e2d"]
    assert rejected[["line", "reason", "raw"]].values.tolist() == [[3, ingest.UNPARSEABLE, "u\\xc3(,i1,4,1000000000"]]


@pytest.mark.parametrize("broken,reason", [
    ('u2,"i2,4.0,1000000001', ingest.WRONG_COLUMN_COUNT),    # the quote runs to the end of the line
    ('u2,i2,4.0,"1000000001,x', ingest.BAD_TIMESTAMP),       # 4 fields, the last one '1000000001,x'
])
def test_unclosed_quote_does_not_swallow_the_following_lines(broken, reason):
    lines = [GOOD, broken, "u3,i3,4.0,1000000003", "u4,i4,4.0,1000000004"]
    valid, rejected = run_block(lines, first_line=2)
    assert valid["user"].tolist() == ["u1", "u3", "u4"]
    assert valid["timestamp"].tolist() == [1000000000, 1000000003, 1000000004]
    assert rejected[["line", "reason", "raw"]].values.tolist() == [[3, reason, broken]]


def test_bare_carriage_return_inside_a_line_is_rejected_not_split():
    valid, rejected = run_block([GOOD, "u2\r,i2,4.0,1000000001", "u3,i3,4.0,1000000003"])
    assert valid["user"].tolist() == ["u1", "u3"]
    assert rejected["line"].tolist() == [3]
    assert rejected["raw"].tolist() == ["u2\r,i2,4.0,1000000001"]


def test_quoted_fields_and_whitespace():
    valid, rejected = run_block(['"u1"," i,1 ",4,1000000000', "  u2  ,i2,  4.5 , 1000000001 "])
    assert len(rejected) == 0
    assert valid["user"].tolist() == ["u1", "u2"]
    assert valid["item"].tolist() == ["i,1", "i2"]
    assert valid["value"].tolist() == [4.0, 4.5]
    assert valid["timestamp"].tolist() == [1000000000, 1000000001]


def test_crlf_line_endings():
    cfg = csv_config()
    layout = readers.layout_for(cfg.source)
    block = b"u1,i1,4,1000000000\r\nu2,i2,9,1000000001\r\n"
    valid, rejected = ingest.parse_and_validate(block, 2, layout, NAMES, cfg, "f")
    assert valid["timestamp"].tolist() == [1000000000]
    assert rejected[["line", "reason", "raw"]].values.tolist() == [[3, ingest.RATING_OUT_OF_RANGE,
                                                                    "u2,i2,9,1000000001"]]


def test_block_of_blank_lines_only():
    valid, rejected = run_block(["", "  ", "\t"])
    assert len(valid) == 0 and len(rejected) == 0


def test_max_id_length_boundary():
    cfg = csv_config(max_id_length=4)
    valid, rejected = run_block(["abcd,wxyz,4,1000000000", "abcde,w,4,1000000000", " abcd ,w,4,1000000000"],
                                cfg=cfg)
    assert valid["user"].tolist() == ["abcd", "abcd"]
    assert reasons_by_line(rejected) == {3: ingest.ID_TOO_LONG}


def test_non_ascii_ids_count_characters_not_bytes():
    cfg = csv_config(max_id_length=3)
    valid, rejected = run_block(["\u00e9\u00e9\u00e9,\u4e2d\u6587,4,1000000000"], cfg=cfg)
    assert len(valid) == 1 and len(rejected) == 0


# --- ratings and feedback ---------------------------------------------------------------------------

def test_rating_range_is_inclusive_and_weight_marks_positives():
    valid, rejected = run_block(["u,a,0.5,1000000000", "u,b,3.49,1000000000", "u,c,3.5,1000000000",
                                 "u,d,5,1000000000", "u,e,5.01,1000000000"])
    assert valid["item"].tolist() == ["a", "b", "c", "d"]
    assert valid["weight"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert valid["value"].dtype == np.float32 and valid["weight"].dtype == np.float32
    assert reasons_by_line(rejected) == {6: ingest.RATING_OUT_OF_RANGE}


def test_implicit_mode_ignores_rating_range_but_rejects_non_numeric_values():
    cfg = from_dict({"source": {"format": "csv", "columns": {"value": "rating"}},
                     "feedback": {"mode": "implicit"}})
    valid, rejected = run_block(["u,a,99,1000000000", "u,b,abc,1000000000"], cfg=cfg)
    assert valid["item"].tolist() == ["a"] and valid["weight"].tolist() == [1.0]
    assert reasons_by_line(rejected) == {3: ingest.BAD_RATING}


def test_implicit_mode_without_value_column():
    cfg = from_dict({"source": {"format": "csv", "columns": {"value": ""}}, "feedback": {"mode": "implicit"}})
    valid, rejected = run_block(["u,a,1000000000"], cfg=cfg, names=["user_id", "item_id", "timestamp"])
    assert len(rejected) == 0
    assert valid["weight"].tolist() == [1.0]
    assert np.isnan(valid["value"].iloc[0])


def event_config(**extra):
    src = {"format": "csv", "columns": {"event": "event", "value": "amount"}}
    return from_dict({"source": src, "feedback": {"mode": "event", "event_weights":
                                                  {"view": 1, "click": 2, "purchase": 5.5}}, **extra})


def test_event_mode_weights_and_unknown_events():
    names = ["user_id", "item_id", "event", "amount", "timestamp"]
    valid, rejected = run_block(["u,a,view,,1000000000", "u,b,click,,1000000001", "u,c,purchase,19.99,1000000002",
                                 "u,d,hover,,1000000003", "u,e,,,1000000004", "u,f,VIEW,,1000000005",
                                 "u,g,purchase,lots,1000000006"],
                                cfg=event_config(), names=names)
    # VIEW is view but for case: merged (and counted), not rejected
    assert valid["item"].tolist() == ["a", "b", "c", "f"]
    assert valid["event"].tolist() == ["view", "click", "purchase", "view"]
    assert valid["weight"].tolist() == [1.0, 2.0, 5.5, 1.0]
    assert valid["value"].iloc[2] == pytest.approx(19.99)
    assert reasons_by_line(rejected) == {5: ingest.UNKNOWN_EVENT, 6: ingest.UNKNOWN_EVENT, 8: ingest.BAD_RATING}
    assert valid.attrs["event_counts"] == {"case_merged_events": {"VIEW": 1}, "unknown_events": {"hover": 1, "": 1}}


def test_min_value_drops_short_events_and_value_weight_scales_the_rest():
    # a media log: plays with a dwell in seconds; a like has none. Short plays are kept at weight 0
    # (not trained on, not relevant, counted as not positive); a missing value is never below a limit
    names = ["user_id", "item_id", "event", "amount", "timestamp"]
    lines = ["u,a,view,3,1000000000", "u,b,view,45,1000000001", "u,c,click,,1000000002", "u,d,click,2,1000000003",
             "u,e,purchase,0.5,1000000004"]
    valid, _ = run_block(lines, cfg=event_config(feedback={"mode": "event", "min_value": {"view": 10},
                         "event_weights": {"view": 1, "click": 2, "purchase": 5.5}}), names=names)
    assert valid["weight"].tolist() == [0.0, 1.0, 2.0, 2.0, 5.5]
    valid, _ = run_block(lines, cfg=event_config(feedback={"mode": "event", "min_value": 2.5,
                         "event_weights": {"view": 1, "click": 2, "purchase": 5.5}}), names=names)
    assert valid["weight"].tolist() == [1.0, 1.0, 2.0, 0.0, 0.0]
    valid, _ = run_block(lines, cfg=event_config(feedback={"mode": "event", "value_weight": "log",
                         "event_weights": {"view": 1, "click": 2, "purchase": 5.5}}), names=names)
    assert valid["weight"].tolist() == pytest.approx([1 + np.log(3), 1 + np.log(45), 2.0, 2 * (1 + np.log(2)), 5.5])
    # an infinite value would be an infinite weight: a dead letter like any value that is not a number
    valid, rejected = run_block(["u,a,view,inf,1000000000", "u,b,view,-Infinity,1000000001", "u,c,view,7,1000000002"],
                                cfg=event_config(), names=names)
    assert valid["item"].tolist() == ["c"] and set(rejected["reason"]) == {ingest.BAD_RATING}


def test_min_value_is_checked_against_the_mode_and_the_event_types():
    from recsys.errors import ConfigError
    src = {"format": "csv", "columns": {"event": "event", "value": "amount"}}
    with pytest.raises(ConfigError, match=r"feedback.min_value.*\['play'\].*event types of feedback.event_weights"):
        from_dict({"source": src, "feedback": {"mode": "event", "event_weights": {"view": 1}, "min_value": {"play": 3}}})
    with pytest.raises(ConfigError, match="feedback.min_value.*only with feedback.mode event or implicit"):
        from_dict({"source": {"format": "csv", "columns": {"value": "r"}},
                   "feedback": {"mode": "rating", "min_value": 3}})
    with pytest.raises(ConfigError, match="source.columns.value.*needs the column of values"):
        from_dict({"source": {"format": "csv"}, "feedback": {"mode": "implicit", "value_weight": "log"}})
    with pytest.raises(ConfigError, match="feedback.min_value"):
        from_dict({"source": src, "feedback": {"mode": "event", "event_weights": {"view": 1}, "min_value": "x"}})
    with pytest.raises(ConfigError, match="per event type needs feedback.mode event"):
        from_dict({"source": {"format": "csv", "columns": {"value": "dwell"}},
                   "feedback": {"mode": "implicit", "min_value": {"play": 30}}})


def test_unknown_events_kept_with_weight_zero_are_counted_and_variants_merged():
    names = ["user_id", "item_id", "event", "amount", "timestamp"]
    cfg = event_config()
    cfg.feedback.unknown_events = "ignore"
    valid, rejected = run_block(["u,a,Play,,1000000000", "u,b,Play,,1000000001", "u,c, Purchase ,,1000000002",
                                 "u,d,skip,,1000000003"], cfg=cfg, names=names)
    assert len(rejected) == 0
    assert valid["event"].tolist() == ["Play", "Play", "purchase", "skip"]
    assert valid["weight"].tolist() == [0.0, 0.0, 5.5, 0.0]
    assert valid.attrs["event_counts"] == {"case_merged_events": {" Purchase ": 1},
                                           "unknown_events": {"Play": 2, "skip": 1}}


# --- timestamps -------------------------------------------------------------------------------------

@pytest.mark.parametrize("unit,text,expected", [
    ("s", "1000000000", 1000000000),
    ("s", "1000000000.9", 1000000000),
    ("s", "0", 0),
    ("s", "4102444799", 4102444799),
    ("s", "4102444800", None),
    ("s", "-1", None),
    ("s", "1e9", 1000000000),
    ("s", "2020-01-01", None),
    ("ms", "1000000000123", 1000000000),
    ("ms", "1000000000999", 1000000000),
    ("ms", "1000000000", 1000000),
    ("ms", "abc", None),
    ("iso", "2001-09-09T01:46:40Z", 1000000000),
    ("iso", "2001-09-09T03:46:40+02:00", 1000000000),
    ("iso", "2001-09-09T01:46:40.750Z", 1000000000),
    ("iso", "2001-09-09 01:46:40", 1000000000),
    ("iso", "2001-09-09", 999993600),
    ("iso", "1969-12-31T23:59:59Z", None),
    ("iso", "2100-01-01T00:00:00Z", None),
    ("iso", "not a date", None),
    ("iso", "1000000000", None),
])
def test_timestamp_units(unit, text, expected):
    cfg = csv_config(timestamp_unit=unit)
    valid, rejected = run_block([f"u,i,4,{text}"], cfg=cfg)
    if expected is None:
        assert rejected["reason"].tolist() == [ingest.BAD_TIMESTAMP]
    else:
        assert len(rejected) == 0
        assert valid["timestamp"].tolist() == [expected]
        assert valid["timestamp"].dtype == np.int64


def test_iso_timestamps_mixed_in_one_block():
    cfg = csv_config(timestamp_unit="iso")
    valid, rejected = run_block(["u,a,4,2020-01-01T00:00:00Z", "u,b,4,garbage", "u,c,4,2020-01-02T00:00:00+00:00"],
                                cfg=cfg)
    assert valid["timestamp"].tolist() == [1577836800, 1577923200]
    assert reasons_by_line(rejected) == {3: ingest.BAD_TIMESTAMP}


# --- JSON lines -------------------------------------------------------------------------------------

def jsonl_config(**extra):
    return from_dict({"source": {"format": "jsonl", "columns": {"user": "u", "item": "i", "timestamp": "t",
                                                                "value": "r"}}, **extra})


def test_jsonl_rows_and_rejections():
    cfg = jsonl_config()
    layout = readers.layout_for(cfg.source)
    lines = [
        json.dumps({"u": 1, "i": "a", "t": 1000000000, "r": 4.5}),
        "not json",
        "[1, 2, 3]",
        "",
        json.dumps({"i": "a", "t": 1000000000, "r": 4}),
        json.dumps({"u": "x", "i": "a", "t": "1000000001", "r": "4", "extra": {"k": 1}}),
        b"{\"u\": \"\xff\"}",
        json.dumps({"u": "y", "i": "b", "t": 1000000002.7, "r": 9}),
        "42",
    ]
    block = b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines)
    valid, rejected = ingest.parse_and_validate(block, 1, layout, None, cfg, "f.jsonl")
    assert len(valid) + len(rejected) == 8
    assert valid[["user", "item", "timestamp"]].values.tolist() == [["1", "a", 1000000000], ["x", "a", 1000000001]]
    assert valid["value"].tolist() == [4.5, 4.0]
    assert reasons_by_line(rejected) == {2: ingest.UNPARSEABLE, 3: ingest.UNPARSEABLE, 5: ingest.MISSING_USER,
                                         7: ingest.UNPARSEABLE, 8: ingest.RATING_OUT_OF_RANGE, 9: ingest.UNPARSEABLE}
    raw = dict(zip(rejected["line"], rejected["raw"]))
    assert raw[2] == "not json" and raw[5] == lines[4] and raw[7] == '{"u": "\\xff"}' and raw[8] == lines[7]
    assert set(rejected["source"]) == {"f.jsonl"}


def test_jsonl_lone_surrogate_is_unparseable_not_a_crash():
    # Valid JSON, but "\ud800" decodes to a str that is not UTF-8: no Arrow string can hold it.
    cfg = jsonl_config()
    lines = [b'{"u": "u\\ud800", "i": "a", "t": 1000000000, "r": 4}',
             b'{"u": "ok", "i": "a", "t": 1000000000, "r": 4, "note": "\\udfff"}',
             b'{"u": "x", "i": {"k": "\\ud800"}, "t": 1000000000, "r": 4}',
             b'{"u": "\\ud83d\\ude00", "i": "a", "t": 1000000000, "r": 4}']
    block = b"".join(ln + b"\n" for ln in lines)
    valid, rejected = ingest.parse_and_validate(block, 1, readers.layout_for(cfg.source), None, cfg, "f.jsonl")
    assert valid["user"].tolist() == ["ok", "x", "\U0001f600"]  # unmapped or non-string fields do not matter
    assert reasons_by_line(rejected) == {1: ingest.UNPARSEABLE}
    assert rejected["raw"].tolist() == [lines[0].decode()]


# --- Parquet batches --------------------------------------------------------------------------------

def parquet_config():
    return from_dict({"source": {"format": "parquet", "columns": {"user": "uid", "item": "sku", "timestamp": "ts",
                                                                  "value": "stars"}}})


def test_parquet_batch_casts_types_and_numbers_rows_from_first_row():
    cfg = parquet_config()
    layout = readers.layout_for(cfg.source)
    batch = pa.RecordBatch.from_pydict({
        "uid": pa.array([1, 2, None, 4], pa.int64()),
        "sku": ["a", "b", "c", ""],
        "ts": pa.array([1000000000, 1000000001, 1000000002, 1000000003], pa.int64()),
        "stars": pa.array([4.0, 6.0, 4.0, 4.0], pa.float32()),
        "other": [1, 2, 3, 4],
    })
    raw, rej0 = readers.parse_arrow_batch(batch, 101, layout, "f.parquet")
    assert len(rej0) == 0
    assert raw["_line"].tolist() == [101, 102, 103, 104]
    valid, rejected = ingest.validate(raw, cfg, "f.parquet")
    assert valid[["user", "item"]].values.tolist() == [["1", "a"]]
    assert reasons_by_line(rejected) == {102: ingest.RATING_OUT_OF_RANGE, 103: ingest.MISSING_USER,
                                         104: ingest.MISSING_ITEM}
    # no original text in a columnar file: the raw field is the row's fields as JSON
    assert json.loads(rejected.set_index("line").loc[102, "raw"]) == {"user": "2", "item": "b",
                                                                      "timestamp": "1000000001", "value": "6"}


def test_parquet_batch_binary_ids_that_are_not_utf8_are_rejected_per_row():
    cfg = parquet_config()
    layout = readers.layout_for(cfg.source)
    batch = pa.RecordBatch.from_pydict({
        "uid": pa.array([b"u1", b"u\xff", None, b"\xc3\xa9"], pa.binary()),
        "sku": pa.array([b"a", b"b", b"c", b"\xe2\x82"], pa.large_binary()),
        "ts": pa.array([1000000000] * 4, pa.int64()),
        "stars": pa.array([4.0] * 4, pa.float32()),
        "other": pa.array([b"\xff"] * 4, pa.binary()),  # not mapped: never looked at
    })
    raw, rej0 = readers.parse_arrow_batch(batch, 11, layout, "f.parquet")
    assert raw["_line"].tolist() == [11, 13]
    assert raw["user"].tolist()[0] == "u1" and raw["item"].tolist() == ["a", "c"]
    assert reasons_by_line(rej0) == {12: ingest.UNPARSEABLE, 14: ingest.UNPARSEABLE}
    assert json.loads(rej0["raw"].iloc[0])["uid"] == "b'u\\xff'"
    valid, rejected = ingest.validate(raw, cfg, "f.parquet")
    assert len(valid) + len(rejected) + len(rej0) == batch.num_rows
    assert valid["user"].tolist() == ["u1"] and reasons_by_line(rejected) == {13: ingest.MISSING_USER}


def test_parquet_batch_missing_column_rejects_every_row():
    cfg = parquet_config()
    layout = readers.layout_for(cfg.source)
    batch = pa.RecordBatch.from_pydict({"uid": [1, 2], "sku": ["a", "b"], "ts": [1000000000, 1000000001]})
    raw, rejected = readers.parse_arrow_batch(batch, 1, layout, "f.parquet")
    assert len(raw) == 0
    assert rejected["reason"].tolist() == [ingest.WRONG_COLUMN_COUNT] * 2
    assert rejected["line"].tolist() == [1, 2]
    assert json.loads(rejected["raw"].iloc[1]) == {"uid": 2, "sku": "b", "ts": 1000000001}


# --- MovieLens layouts ------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,sep", [("movielens_100k", "\t"), ("movielens_1m", "::")])
def test_headerless_movielens_layouts(fmt, sep):
    cfg = from_dict({"source": {"format": fmt}})
    layout = readers.layout_for(cfg.source)
    lines = [sep.join(["1", "10", "4", "881250949"]), sep.join(["2", "20", "6", "881250950"]),
             sep.join(["3", "30", "4"]), sep.join(["4", "4\x1f0", "4", "881250951"])]
    block = "".join(ln + "\n" for ln in lines).encode()
    valid, rejected = ingest.parse_and_validate(block, 1, layout, list(layout.names), cfg, "u.data")
    assert valid[["user", "item", "timestamp"]].values.tolist() == [["1", "10", 881250949]]
    assert valid["value"].tolist() == [4.0]
    assert reasons_by_line(rejected) == {2: ingest.RATING_OUT_OF_RANGE, 3: ingest.WRONG_COLUMN_COUNT,
                                         4: ingest.CONTROL_CHARS if sep == "\t" else ingest.WRONG_COLUMN_COUNT}
    assert dict(zip(rejected["line"], rejected["raw"])) == {2: lines[1], 3: lines[2], 4: lines[3]}


def test_movielens_1m_slow_path_keeps_the_original_text():
    cfg = from_dict({"source": {"format": "movielens_1m"}})
    layout = readers.layout_for(cfg.source)
    lines = [b"1::10::4::881250949", b"2::2\xff0::4::881250950", b"3::30::4", b"4::40::5::881250951"]
    block = b"".join(ln + b"\n" for ln in lines)
    valid, rejected = ingest.parse_and_validate(block, 1, layout, list(layout.names), cfg, "ratings.dat")
    assert valid["user"].tolist() == ["1", "4"]
    assert rejected[["line", "reason", "raw"]].values.tolist() == [
        [2, ingest.UNPARSEABLE, "2::2\\xff0::4::881250950"], [3, ingest.WRONG_COLUMN_COUNT, "3::30::4"]]


def test_missing_optional_value_is_the_same_in_csv_and_jsonl():
    weights = {"view": 1.0}
    csv_cfg = from_dict({"source": {"format": "csv", "columns": {"event": "e", "value": "v"}},
                         "feedback": {"mode": "event", "event_weights": weights}})
    valid, rejected = run_block(["u,a,view, ,1000000000", "u,b,view,,1000000001"], cfg=csv_cfg,
                                names=["user_id", "item_id", "e", "v", "timestamp"])
    assert len(rejected) == 0 and valid["value"].isna().all()
    jl_cfg = from_dict({"source": {"format": "jsonl", "columns": {"event": "e", "value": "v"}},
                        "feedback": {"mode": "event", "event_weights": weights}})
    block = (json.dumps({"user_id": "u", "item_id": "a", "e": "view", "v": None, "timestamp": 1000000000}) + "\n"
             + json.dumps({"user_id": "u", "item_id": "b", "e": "view", "timestamp": 1000000001}) + "\n").encode()
    valid, rejected = ingest.parse_and_validate(block, 1, readers.layout_for(jl_cfg.source), None, jl_cfg, "f")
    assert len(rejected) == 0 and valid["value"].isna().all()


def test_absurd_numbers_are_rejected_not_a_crash():
    """pandas' to_numeric segfaults on some huge exponents; such values are bad rows, not a crash."""
    from recsys.data import ingest
    from recsys.config import from_dict
    cfg = from_dict({"source": {"format": "movielens_csv", "items_format": "none"}})
    layout = readers.layout_for(cfg.source)
    block = b"1,2,1e399999999999999999999,964982703\n1,3,4.0,1e399999999999999999999\n1,4,4.0,964982703\n"
    valid, rejected = ingest.parse_and_validate(block, 2, layout, ["userId", "movieId", "rating", "timestamp"],
                                                cfg, "f.csv")
    assert len(valid) == 1 and sorted(rejected["reason"]) == ["bad_rating", "bad_timestamp"]


def test_ids_that_differ_in_unicode_whitespace_or_separators_are_never_merged(write_file, make_config, build_dataset):
    """' 5' and '5 ' are the ID '5' (ASCII padding); '5' + NBSP is another ID; '5' + \\x1c is a control character."""
    rows = ["user_id,item_id,timestamp", " 5,a,1", "5 ,b,2", "5\u00a0,c,3", "5\x1c,d,4", "6,a,5"]
    path = write_file("ids.csv", "\n".join(rows).encode("utf-8") + b"\n")
    cfg = make_config({"source": {"path": path, "format": "csv", "columns": {"value": ""}},
                       "feedback": {"mode": "implicit"}, "split": {"strategy": "leave_last_n", "leave_last_n": 1}})
    built = build_dataset(cfg)
    assert built.stats["rejected_by_reason"] == {"control_characters": 1}
    users = set(pd.concat([built.read(s, ["user"]) for s in ("train", "validation", "test")])["user"])
    assert users == {"5", "5\u00a0", "6"}


@pytest.mark.parametrize("policy", ["reject", "ignore"])
def test_cart_events_count_by_default_and_unknown_types_follow_the_policy(write_file, make_config, build_dataset,
                                                                        policy):
    """Your own data: `cart` rows used to be dropped as unknown; now a documented default weight."""
    rows = ["user_id,item_id,event,timestamp"] + [f"u{u},i{i},{e},{10 * u + i}" for u in range(4) for i, e in
                                                  enumerate(["view", "cart", "purchase", "wishlist", "view"])]
    path = write_file("events.csv", rows)
    cfg = make_config({"source": {"path": path, "format": "csv", "columns": {"value": "", "event": "event"},
                                  "min_accepted_fraction": 0.5},
                       "feedback": {"mode": "event", "unknown_events": policy},
                       "split": {"strategy": "leave_last_n", "leave_last_n": 1}})
    st = build_dataset(cfg).stats
    if policy == "reject":
        assert st["rejected_by_reason"] == {"unknown_event_type": 4} and st["accepted"] == 16
    else:
        assert st["rejected"] == 0 and st["accepted"] == 20 and st["not_positive"] == 4
    assert st["positives"] == 16            # view, cart, purchase, view for 4 users
