"""pipelines/build_dataset.py end to end on small generated inputs (DirectRunner, 2-3 shuffle buckets).

Each test writes its input files to tmp_path, runs the whole Beam pipeline and reads the dataset back
with recsys.data.dataset. The last test runs the default config on the embedded MovieLens data.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import time
import zlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import build_dataset as pipeline
from recsys.data import dataset as ds
from recsys.data import ingest, readers
from recsys.data import interactions
from recsys.config import from_dict, load_config
from recsys.errors import DataError
from recsys.data.vocab import Vocabulary

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE_TS = 1_500_000_000
SPLITS = ("train", "validation", "test")


def row_keys(df: pd.DataFrame, cols=("user", "item", "timestamp")) -> list[tuple]:
    return sorted(map(tuple, df[list(cols)].itertuples(index=False, name=None)))


def assert_reconciled(st: dict) -> None:
    """Every counter in stats.json adds up: nothing is lost between stages."""
    assert st["rows_read"] == st["accepted"] + st["rejected"]
    assert st["rejected"] == sum(st["rejected_by_reason"].values())
    assert st["accepted"] == st["duplicates_removed"] + st["not_positive"] + st["positives"]
    assert st["positives"] == st["kcore_removed"] + st["interactions"]
    assert st["interactions"] == sum(s["interactions"] + s["dropped_unknown_item"] for s in st["splits"].values())


def assert_indices_consistent(dataset, frame: pd.DataFrame) -> None:
    """user_idx / item_idx of written rows are the vocabulary positions (-1 only for new users)."""
    assert (frame["user_idx"].to_numpy() == dataset.users.lookup(frame["user"])).all()
    assert (frame["item_idx"].to_numpy() == dataset.items.lookup(frame["item"])).all()
    assert (frame["item_idx"] >= 0).all()


def reference_kcore(df: pd.DataFrame, min_user: int, min_item: int) -> pd.DataFrame:
    """Plain-pandas k-core: peel users and items under their minimum until nothing changes."""
    while True:
        uc = df.groupby("user")["item"].transform("size")
        ic = df.groupby("item")["user"].transform("size")
        keep = (uc >= min_user) & (ic >= min_item)
        if keep.all():
            return df
        df = df[keep]


# --------------------------------------------------------------------------------------------------
# Dirty input: reconciliation and the dead-letter output
# --------------------------------------------------------------------------------------------------

# One example of each bad-row kind a delimited rating file can have (max_id_length is 16 below).
DIRTY_ROWS = [
    (b"u1,i1,4.0", "wrong_column_count"),
    (b"u1,i1,4.0,1500000000,extra", "wrong_column_count"),
    (b'u1,"i1,4.0,1500000000', "wrong_column_count"),        # unclosed quote: must not eat later lines
    (b",i1,4.0,1500000000", "missing_user_id"),
    (b"u1,,4.0,1500000000", "missing_item_id"),
    (b"u1,item-with-a-very-long-id,4.0,1500000000", "id_too_long"),
    (b"u\x07bell,i1,4.0,1500000000", "control_characters"),
    (b"u1,i1,4.0,", "missing_timestamp"),
    (b"u1,i1,4.0,last tuesday", "bad_timestamp"),
    (b"u1,i1,four,1500000000", "bad_rating"),
    (b"u1,i1,7.5,1500000000", "rating_out_of_range"),
]


def good_rows(users, items, start, rotate=False):
    """Every user rates every item 4 or 5 (all positives), increasing timestamps from `start`.

    With `rotate`, user k starts at item k, so no item is always rated last (leave-last-N splits).
    """
    out, ts = [], start
    for n, u in enumerate(users):
        order = items[n % len(items):] + items[:n % len(items)] if rotate else items
        for k, i in enumerate(order):
            out.append((u, i, 4.0 + (k % 2), ts))
            ts += 10
    return out


def dirty_file(good, bad, extras=()):
    """Lines of a dirty CSV: good rows with bad rows and blank lines interleaved, header first.

    Returns (lines as bytes, {line number: (text, reason)}, [good line numbers]).
    """
    lines = [b"user_id,item_id,rating,timestamp"]
    bad_at, good_at = {}, []
    good = [f"{u},{i},{r},{t}".encode() for u, i, r, t in good] + list(extras)
    queue = list(bad)
    for n, g in enumerate(good):
        lines.append(g)
        good_at.append(len(lines))
        if n % 2 == 1 and queue:
            text, reason = queue.pop(0)
            lines.append(text)
            bad_at[len(lines)] = (text, reason)
        if n % 5 == 2:
            lines.append(b"")  # blank lines are not rows, but they count for line numbers
    for text, reason in queue:
        lines.append(text)
        bad_at[len(lines)] = (text, reason)
    return lines, bad_at, good_at


def test_dirty_input_reconciles_and_every_rejected_row_is_traceable(write_file, make_config, build_dataset,
                                                                    dataset_io):
    # File a: Arrow's fast path, CRLF line endings. File b: invalid UTF-8 sends it line by line.
    good_a = good_rows(["u1", "u2", "u3", "u4"], ["i1", "i2", "i3"], BASE_TS)
    extras_a = [b"u1,i1,2.0,1500000500",             # valid but not a positive
                b"u1,i1,4.0,1500000000"]             # exact duplicate of the first row
    lines_a, bad_a, good_at_a = dirty_file(good_a, DIRTY_ROWS, extras_a)
    path_a = write_file("in/dirty_a.csv", b"".join(ln + b"\r\n" for ln in lines_a))
    good_b = good_rows(["u5"], ["i1", "i2", "i3"], BASE_TS + 5)
    bad_b = [(b"u5,i\xff\xfe,4.0,1500000000", "unparseable")] + DIRTY_ROWS[::3]
    lines_b, bad_b_at, good_at_b = dirty_file(good_b, bad_b)
    path_b = write_file("in/dirty_b.csv", b"".join(ln + b"\n" for ln in lines_b))

    cfg = make_config({"source": {"path": "in/dirty_*.csv", "format": "csv", "columns": {"value": "rating"},
                                  "max_id_length": 16},
                       "split": {"test_fraction": 0.2, "validation_fraction": 0.2}})
    d = build_dataset(cfg)
    st = d.stats

    n_bad = len(bad_a) + len(bad_b_at)
    n_good = len(good_at_a) + len(good_at_b)
    assert st["rows_read"] == n_good + n_bad == st["accepted"] + st["rejected"]
    assert st["accepted"] == n_good
    assert st["rejected"] == n_bad
    expected_reasons = collections.Counter(r for _, r in list(bad_a.values()) + list(bad_b_at.values()))
    assert st["rejected_by_reason"] == dict(expected_reasons)
    assert set(st["rejected_by_reason"]) == set(ingest.REJECT_REASONS) - {ingest.UNKNOWN_EVENT}
    assert st["duplicates_removed"] == 1 and st["not_positive"] == 1
    assert_reconciled(st)

    # Each rejected row: its source file, its line number in that file, its reason and its original text.
    expected = sorted(
        [(path_a, n, reason, t.decode("utf-8", "backslashreplace")) for n, (t, reason) in bad_a.items()]
        + [(path_b, n, reason, t.decode("utf-8", "backslashreplace")) for n, (t, reason) in bad_b_at.items()])
    got = sorted((r["source"], r["line"], r["reason"], r["raw"]) for r in dataset_io.rejected(d))
    assert got == expected
    assert all(set(r) == {"source", "line", "reason", "raw"} for r in dataset_io.rejected(d))
    # The text really is the file's line (CR stripped, bytes that are not UTF-8 escaped).
    for source, line, _, raw in got:
        with open(source, "rb") as fh:
            file_line = fh.read().split(b"\n")[line - 1].rstrip(b"\r")
        assert raw == file_line.decode("utf-8", "backslashreplace")

    # Nothing silently dropped: every accepted positive is in exactly one split.
    out = dataset_io.splits(d)
    assert st["kcore_removed"] == 0 and all(s["dropped_unknown_item"] == 0 for s in st["splits"].values())
    assert row_keys(out, ("user", "item", "value", "timestamp")) == sorted(good_a + good_b)
    assert_indices_consistent(d, out)


def test_line_numbers_hold_across_read_blocks(write_file, make_config, build_dataset, dataset_io):
    # ~2.6 MB: read as three 1 MB blocks, so line numbers must carry over block boundaries.
    lines, bad = ["user_id,item_id,rating,timestamp"], {}
    pad = "x" * 60
    for k in range(30_000):
        if k % 1999 == 5:
            lines.append(f"user{k % 50}-{pad},item{k % 40},4.0,soon")
            bad[len(lines)] = lines[-1]
        elif k % 2503 == 7:
            lines.append("")
        else:
            lines.append(f"user{k % 50}-{pad},item{k % 40},{1 + k % 5}.0,{BASE_TS + k}")
    path = write_file("big.csv", lines)
    assert os.path.getsize(path) > 2.5 * (1 << 20)
    cfg = make_config({"source": {"path": "big.csv", "format": "csv", "columns": {"value": "rating"}},
                       "runner": {"block_size_mb": 1}})
    d = build_dataset(cfg)
    st = d.stats
    n_rows = sum(1 for ln in lines[1:] if ln)
    assert (st["rows_read"], st["rejected"]) == (n_rows, len(bad))
    assert_reconciled(st)
    got = {r["line"]: r["raw"] for r in dataset_io.rejected(d)}
    assert got == bad
    assert st["interactions"] == sum(1 for ln in lines[1:] if ln and ln.split(",")[2] in ("4.0", "5.0")
                                     and ln.split(",")[3] != "soon")


def test_compressed_input_gives_the_same_dataset(write_file, make_config, build_dataset, dataset_io):
    # Blocks of an uncompressed file travel as byte ranges and are read again where they are parsed;
    # blocks of a gzip stream travel as bytes. Both must give the same dataset, over several blocks.
    lines = ["user_id,item_id,rating,timestamp"]
    for k in range(30_000):
        lines.append(f"user{k % 50}-{'x' * 60},item{k % 40},{1 + k % 5}.0,{BASE_TS + k if k % 997 else 'soon'}")
    plain = write_file("plain/in.csv", lines)
    write_file("gz/in.csv.gz", gzip.compress(open(plain, "rb").read()))
    built = {}
    for name, path in (("plain", "plain/in.csv"), ("gz", "gz/in.csv.gz")):
        cfg = make_config({"source": {"path": path, "format": "csv", "columns": {"value": "rating"}},
                           "runner": {"block_size_mb": 1}})
        built[name] = build_dataset(cfg, dataset_id=name)
    # Dead letters and stats name their source file; everything else must be the same bytes.
    files = {name: {f: data for f, data in all_files(d.path).items() if f != "stats.json" and "rejected" not in f}
             for name, d in built.items()}
    assert files["plain"] == files["gz"] and len(files["gz"]) >= 8
    rejected = {name: sorted((r["line"], r["reason"], r["raw"]) for r in dataset_io.rejected(d))
                for name, d in built.items()}
    assert rejected["plain"] == rejected["gz"] and len(rejected["gz"]) == 31
    stats = {name: {k: v for k, v in d.stats.items() if k != "config"} for name, d in built.items()}
    assert stats["plain"] == stats["gz"]


def test_a_block_read_again_must_be_the_one_that_was_cut(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"a,1\nb,2\n")
    cut = readers.ByteRange(4, 4, zlib.crc32(b"b,2\n"))
    assert readers._read_range(str(path), cut) == b"b,2\n"
    path.write_bytes(b"a,1\nb,2,3\n")  # the input changed under the pipeline
    with pytest.raises(DataError, match=re.escape(f"{path} changed")):
        readers._read_range(str(path), cut)
    path.write_bytes(b"a,1\nc,9\n")  # same size, same line count, other rows
    with pytest.raises(DataError, match=re.escape(f"{path} changed")):
        readers._read_range(str(path), cut)


def test_a_failed_shard_write_fails_the_build(write_file, make_config, build_dataset, monkeypatch, tmp_path):
    # Shards are written by a thread: its error must still fail the pipeline, and leave no dataset.
    def full_disk(table, path):
        raise OSError("disk full")
    patch_shard_writes(monkeypatch, full_disk)
    write_file("in.csv", ["user_id,item_id,rating,timestamp", f"u1,i1,4.0,{BASE_TS}"])
    cfg = make_config({"source": {"path": "in.csv", "format": "csv", "columns": {"value": "rating"}}})
    with pytest.raises(Exception, match="disk full"):
        build_dataset(cfg)
    assert not glob.glob(str(tmp_path / "artifacts" / "datasets" / "*" / "stats.json"))


def test_dead_letter_lines_are_exactly_json_dumps_of_each_row():
    rows = pd.DataFrame({"source": ["a.csv"] * 4, "line": np.array([7, 2, 3, 4], dtype=np.int64),
                         "reason": [ingest.BAD_RATING, ingest.MISSING_USER, ingest.BAD_RATING, ingest.CONTROL_CHARS],
                         "raw": ['u,"i",5', "\u00e9\u4e2d\\x", "", "u\x07,i\t,\u2028"]})
    expected = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows.to_dict("records"))
    assert ds._json_lines(rows) == expected
    arrow_backed = rows.astype({c: readers.STRING for c in ("source", "reason", "raw")})
    assert ds._json_lines(arrow_backed) == expected


def test_unknown_event_type_and_unparseable_json_are_rejected(write_file, make_config, build_dataset,
                                                              dataset_io):
    good = [{"who": f"u{u}", "what": f"i{i}", "when": BASE_TS + 10 * u + i, "kind": "view"}
            for u in range(3) for i in range(3)]
    bad = [("{\"who\": \"u1\", \"what\": \"i1\", \"when\": 1500000000, \"kind\": \"hover\"}", "unknown_event_type"),
           ("{\"who\": \"u1\", \"what\": \"i1\", \"when\": 1500000000}", "unknown_event_type"),
           ("{\"who\": \"u1\", \"what\": \"i1\", \"when\": 15", "unparseable"),
           ("[\"u1\", \"i1\"]", "unparseable"),
           ("{\"what\": \"i1\", \"when\": 1500000000, \"kind\": \"view\"}", "missing_user_id")]
    lines = [json.dumps(r) for r in good[:4]] + [t for t, _ in bad] + [json.dumps(r) for r in good[4:]]
    path = write_file("events.jsonl", lines)
    cfg = make_config({"source": {"path": "events.jsonl", "format": "jsonl",
                                  "columns": {"user": "who", "item": "what", "timestamp": "when", "event": "kind"}},
                       "feedback": {"mode": "event", "event_weights": {"view": 1.0, "purchase": 4.0}}})
    d = build_dataset(cfg)
    st = d.stats
    assert (st["rows_read"], st["accepted"], st["rejected"]) == (len(lines), len(good), len(bad))
    assert st["rejected_by_reason"] == {"unknown_event_type": 2, "unparseable": 2, "missing_user_id": 1}
    got = sorted((r["source"], r["line"], r["reason"], r["raw"]) for r in dataset_io.rejected(d))
    assert got == sorted((path, 5 + k, reason, text) for k, (text, reason) in enumerate(bad))
    assert_reconciled(st)


def test_all_rows_rejected_still_gives_a_complete_empty_dataset(write_file, make_config, build_dataset,
                                                               dataset_io):
    """With source.min_accepted_fraction: 0 (the default refuses such a build: test_ingest_trust.py)."""
    write_file("bad.csv", ["user_id,item_id,rating,timestamp"] + [t.decode() for t, _ in DIRTY_ROWS])
    cfg = make_config({"source": {"path": "bad.csv", "format": "csv", "columns": {"value": "rating"},
                                  "max_id_length": 16, "min_accepted_fraction": 0},
                       "runner": {"shuffle_buckets": 3}})
    d = build_dataset(cfg)
    st = d.stats
    assert (st["rows_read"], st["accepted"], st["rejected"]) == (len(DIRTY_ROWS), 0, len(DIRTY_ROWS))
    assert st["interactions"] == 0 and st["vocab"] == {"users": 0, "items": 0}
    assert_reconciled(st)
    for split in SPLITS:
        assert len(d.shards(split)) == 3  # every split still has one (empty) shard per bucket
        assert len(d.read(split)) == 0
    assert len(dataset_io.rejected(d)) == len(DIRTY_ROWS)
    assert len(d.users) == 0 and len(d.items) == 0


# --------------------------------------------------------------------------------------------------
# Vocabulary stability across runs
# --------------------------------------------------------------------------------------------------

def ratings_csv(rows) -> list[str]:
    return ["user_id,item_id,rating,timestamp"] + [f"{u},{i},{r},{t}" for u, i, r, t in rows]


def test_vocabulary_is_stable_across_runs(write_file, make_config, build_dataset, tmp_path):
    users1 = [f"u{k:02d}" for k in range(1, 9)]
    items1 = [f"i{k:02d}" for k in range(1, 7)]
    rows1 = good_rows(users1, items1, BASE_TS, rotate=True)
    write_file("run1/ratings.csv", ratings_csv(rows1))
    overrides = {"source": {"format": "csv", "columns": {"value": "rating"}},
                 "split": {"strategy": "leave_last_n", "leave_last_n": 1}}
    cfg1 = make_config({**overrides, "source": {**overrides["source"], "path": "run1/ratings.csv"}})
    d1 = build_dataset(cfg1, dataset_id="night1")
    assert list(d1.users.ids) == sorted(users1)
    assert list(d1.items.ids) == sorted(items1)

    # Run 2: u08 is gone, new users and items arrive, some sorting before every existing ID.
    new_users = ["a_first", "u99", "00zero"]
    new_items = ["a_item", "i99"]
    kept_users = users1[:-1]
    rows2 = [r for r in rows1 if r[0] != "u08"]
    rows2 += good_rows(new_users, items1[:2] + new_items, BASE_TS - 10_000)  # early: they are train rows
    rows2 += good_rows(kept_users[:2], new_items, BASE_TS - 20_000)
    write_file("run2/ratings.csv", ratings_csv(rows2))
    cfg2 = make_config({**overrides, "source": {**overrides["source"], "path": "run2/ratings.csv"}})
    d2 = build_dataset(cfg2, dataset_id="night2", previous="latest")

    n_users, n_items = len(d1.users), len(d1.items)
    # Every ID of the first run keeps its index ...
    assert list(d2.users.ids[:n_users]) == list(d1.users.ids)
    assert list(d2.items.ids[:n_items]) == list(d1.items.ids)
    assert (d2.users.lookup(d1.users.ids) == np.arange(n_users)).all()
    assert (d2.items.lookup(d1.items.ids) == np.arange(n_items)).all()
    assert d2.users.lookup(["u08"])[0] == d1.users.lookup(["u08"])[0]  # absent tonight, index kept
    # ... and new ones are appended (sorted among themselves), not inserted.
    assert list(d2.users.ids[n_users:]) == sorted(new_users)
    assert list(d2.items.ids[n_items:]) == sorted(new_items)
    assert d2.stats["vocab"] == {"users": n_users + len(new_users), "items": n_items + len(new_items)}

    out2 = pd.concat([d2.read(s) for s in SPLITS], ignore_index=True)
    assert_indices_consistent(d2, out2)
    out1 = pd.concat([d1.read(s) for s in SPLITS], ignore_index=True)
    both = out1.merge(out2, on=["user", "item", "timestamp"], suffixes=("_1", "_2"))
    assert len(both) > 0
    assert (both["user_idx_1"] == both["user_idx_2"]).all() and (both["item_idx_1"] == both["item_idx_2"]).all()
    feats = d2.item_features()
    assert feats["item"].tolist() == list(d2.items.ids)
    assert feats["item_idx"].tolist() == list(range(len(d2.items)))
    assert (tmp_path / "artifacts" / "datasets" / "LATEST").read_text() == "night2\n"

    # An explicit previous id extends that dataset; previous=None starts a fresh, sorted vocabulary.
    d3 = build_dataset(cfg2, dataset_id="night3", previous="night1")
    assert list(d3.users.ids) == list(d2.users.ids)
    fresh = build_dataset(cfg2, dataset_id="fresh", previous=None)
    assert list(fresh.users.ids) == sorted(kept_users + new_users)
    assert list(fresh.items.ids) == sorted(items1 + new_items)


# --------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------

def test_temporal_split(write_file, make_config, build_dataset, dataset_io):
    rng = np.random.default_rng(7)
    core_users = [f"c{k}" for k in range(10)]
    core_items = [f"k{k}" for k in range(6)]
    # 60 train rows (ts +0..59), 20 validation rows (+1000..1019), 20 test rows (+2000..2019).
    train = [(u, i) for u in core_users for i in core_items]
    train = [(u, i, BASE_TS + t) for t, (u, i) in zip(rng.permutation(60), train)]
    val = [(core_users[k % 10], core_items[(k + 1) % 6]) for k in range(15)]
    val += [("c0", "V0"), ("c1", "V0"), ("c2", "V0")]        # item first seen in validation
    val += [("nv0", "k0"), ("nv0", "k1")]                   # user first seen in validation
    val = [(u, i, BASE_TS + 1000 + t) for t, (u, i) in enumerate(val)]
    test = [(core_users[k % 10], core_items[(k + 2) % 6]) for k in range(12)]
    test += [("c3", "T0"), ("c4", "T0"), ("c5", "T0"), ("c6", "T0")]  # item first seen in test
    test += [("nt0", f"k{k}") for k in range(4)]                     # user first seen in test
    test = [(u, i, BASE_TS + 2000 + t) for t, (u, i) in enumerate(test)]
    rows = [(u, i, 4.5, t) for u, i, t in train + val + test]
    order = rng.permutation(len(rows))
    write_file("ratings.csv", ratings_csv([rows[k] for k in order]))
    cfg = make_config({"source": {"path": "ratings.csv", "format": "csv", "columns": {"value": "rating"}},
                       "split": {"strategy": "temporal", "test_fraction": 0.2, "validation_fraction": 0.2}})
    d = build_dataset(cfg)
    st = d.stats
    assert_reconciled(st)
    cuts = st["temporal_cuts"]
    assert cuts == {"validation_start": BASE_TS + 1000, "test_start": BASE_TS + 2000}
    tr, va, te = (d.read(s) for s in SPLITS)

    # No interaction on the wrong side of a cut; validation entirely before test.
    assert (tr["timestamp"] < cuts["validation_start"]).all()
    assert ((va["timestamp"] >= cuts["validation_start"]) & (va["timestamp"] < cuts["test_start"])).all()
    assert (te["timestamp"] >= cuts["test_start"]).all()
    assert va["timestamp"].max() < te["timestamp"].min()
    assert tr["timestamp"].max() < va["timestamp"].min()
    for name, part in zip(SPLITS, (tr, va, te)):
        assert st["splits"][name]["time_range"] == [int(part["timestamp"].min()), int(part["timestamp"].max())]

    # Items unknown to the train vocabulary are dropped from validation/test and counted.
    assert set(d.items.ids) == set(core_items) == set(tr["item"])
    assert "V0" not in set(va["item"]) and "T0" not in set(te["item"])
    assert st["splits"]["validation"]["dropped_unknown_item"] == 3
    assert st["splits"]["test"]["dropped_unknown_item"] == 4
    assert st["splits"]["train"]["dropped_unknown_item"] == 0
    assert (st["splits"]["train"]["interactions"], st["splits"]["validation"]["interactions"],
            st["splits"]["test"]["interactions"]) == (60, 17, 16)
    assert row_keys(tr) == sorted(train)
    assert row_keys(va) == sorted(r for r in val if r[1] != "V0")
    assert row_keys(te) == sorted(r for r in test if r[1] != "T0")

    # New users are kept, with user_idx -1, and counted.
    assert set(d.users.ids) == set(core_users)
    assert va.loc[va["user"] == "nv0", "user_idx"].tolist() == [-1, -1]
    assert te.loc[te["user"] == "nt0", "user_idx"].tolist() == [-1] * 4
    assert (va.loc[va["user"] != "nv0", "user_idx"] >= 0).all() and (te.loc[te["user"] != "nt0", "user_idx"] >= 0).all()
    assert st["splits"]["validation"]["new_users"] == 1 and st["splits"]["test"]["new_users"] == 1
    assert (tr["user_idx"] >= 0).all()
    assert_indices_consistent(d, pd.concat([tr, va, te]))
    assert st["split_strategy"] == "temporal"


def test_temporal_ties_at_the_cut_go_to_the_later_split():
    cfg = from_dict({"split": {"test_fraction": 0.25, "validation_fraction": 0.25}})
    ts = np.array([1, 2, 3, 4, 5, 5, 5, 8])
    val_start, test_start = interactions.temporal_cuts(ts, cfg)
    assert (val_start, test_start) == (5, 5)
    frame = pd.DataFrame({"user": ["u"] * 8, "item": list("abcdefgh"), "timestamp": ts})
    assert interactions.assign_split(frame, cfg, (val_start, test_start)).tolist() == [0, 0, 0, 0, 2, 2, 2, 2]
    assert interactions.temporal_cuts(np.array([], dtype=np.int64), cfg) == (0, 0)
    cfg_no_val = from_dict({"split": {"test_fraction": 0.5, "validation_fraction": 0}})
    assert interactions.temporal_cuts(np.arange(10), cfg_no_val) == (5, 5)


def test_leave_last_n_split(write_file, make_config, build_dataset):
    n = 2
    rng = np.random.default_rng(3)
    items = [f"i{k}" for k in range(5)]
    rows = [("heavy", i, 5.0, BASE_TS + k) for k, i in enumerate(items)]            # every item in train
    rows += [("heavy", i, 5.0, BASE_TS + 10_000 + k) for k, i in enumerate(items)]
    for size in range(1, 8):
        for j in range(size):
            ts = BASE_TS + int(rng.integers(0, 50)) * 100 + (1 if j == 0 and size > 3 else 0)
            rows.append((f"user{size}", items[(j + size) % 5], 4.0, ts))
    rows.append(("user6", "i4", 4.0, BASE_TS + 99_999))   # ties: two latest at the same second,
    rows.append(("user6", "i0", 4.0, BASE_TS + 99_999))   # the item ID breaks the tie
    rows = list({(u, i, t): (u, i, r, t) for u, i, r, t in rows}.values())
    write_file("ratings.csv", ratings_csv(rows))
    cfg = make_config({"source": {"path": "ratings.csv", "format": "csv", "columns": {"value": "rating"}},
                       "split": {"strategy": "leave_last_n", "leave_last_n": n}, "runner": {"shuffle_buckets": 3}})
    d = build_dataset(cfg)
    st = d.stats
    assert_reconciled(st)
    assert st["split_strategy"] == "leave_last_n" and st["temporal_cuts"] is None
    assert all(s["dropped_unknown_item"] == 0 for s in st["splits"].values())
    parts = {s: d.read(s) for s in SPLITS}

    frame = pd.DataFrame(rows, columns=["user", "item", "value", "timestamp"])
    for user, g in frame.groupby("user"):
        g = g.sort_values(["timestamp", "item"])
        keys = list(zip(g["item"], g["timestamp"]))
        size = len(keys)
        exp_test = keys[-n:] if size > n else []
        exp_val = keys[-2 * n:-n] if size > 2 * n else []
        exp_train = [k for k in keys if k not in exp_test and k not in exp_val]
        for split, exp in zip(SPLITS, (exp_train, exp_val, exp_test)):
            p = parts[split]
            p = p[p["user"] == user]
            assert sorted(zip(p["item"], p["timestamp"])) == sorted(exp), (user, split)
        # the test rows are the user's latest; validation rows are the ones just before
        if exp_test:
            later = [k for k in keys if k not in exp_test]
            assert min(t for _, t in exp_test) >= max(t for _, t in later)
    assert parts["test"].loc[parts["test"]["user"] == "user6", "item"].tolist() == ["i0", "i4"]
    assert len(parts["test"]) == n * frame.groupby("user").size().gt(n).sum()
    assert_indices_consistent(d, pd.concat(parts.values()))


def patch_shard_writes(monkeypatch, write) -> None:
    """Shards go to `write(table, path)` instead of the file system (path: out_dir/split/part-...)."""
    monkeypatch.setattr(ds, "write_shard", lambda out_dir, split, shard, n, table: write(
        table, os.path.join(out_dir, ds.shard_name(split, shard, n))))


def bucket_frame(rows) -> pd.DataFrame:
    """A valid frame as ParseValidate emits it, from (user, item, timestamp, value, event) tuples."""
    users, items, ts, values, events = zip(*rows)
    return pd.DataFrame({"user": pd.Series(users, dtype=readers.STRING), "item": pd.Series(items, dtype=readers.STRING),
                         "timestamp": np.asarray(ts, dtype=np.int64), "value": np.asarray(values, dtype=np.float32),
                         "event": pd.Series(events, dtype=readers.STRING), "weight": np.ones(len(rows), np.float32)})


def split_inputs(frames_by_bucket: dict, cfg) -> tuple[list, dict]:
    """{bucket: GroupBuckets' frames} -> (WriteSplits' elements, KCoreAndVocabulary's result), run in process."""
    out = [o for b, frames in frames_by_bucket.items() for o in pipeline._dedupe_bucket((b, frames))]
    edges = [o.value for o in out if getattr(o, "tag", None) == "edges"]
    return ([o for o in out if not hasattr(o, "tag")],
            pipeline._global_step(edges, cfg, Vocabulary([]), Vocabulary([])))


def write_bucket(frames, cfg, monkeypatch) -> dict:
    """GroupBuckets' frames of bucket 0 -> {shard name: table} through DedupePositives, KCoreAndVocabulary and
    WriteSplits, run in process."""
    written = {}
    patch_shard_writes(monkeypatch, lambda table, path: written.__setitem__(os.path.relpath(path, "out"), table))
    buckets, result = split_inputs({0: frames}, cfg)
    fn = pipeline.WriteShardFn(cfg, "out", 1)
    fn.setup()
    fn.start_bundle()
    for kv in buckets:
        list(fn.process(kv, result))
    fn.finish_bundle()
    fn.teardown()
    return written


@pytest.mark.parametrize("strategy", ["temporal", "leave_last_n"])
@pytest.mark.parametrize("event", [None, "click"])
def test_rows_tied_on_user_timestamp_and_item_do_not_depend_on_arrival_order(strategy, event, monkeypatch):
    # A distributed runner hands GroupBuckets' frames over in any order: rows equal on user, timestamp
    # and item but not value must still land in the same split and shard position.
    cfg = from_dict({"split": {"strategy": strategy, "leave_last_n": 1, "test_fraction": 0.2,
                               "validation_fraction": 0.2},
                     "filters": {"min_user_interactions": 1, "min_item_interactions": 1}})
    a = bucket_frame([("u1", "i1", 1, 4.0, event), ("u1", "i2", 2, 4.0, event), ("u1", "i3", 3, 4.0, event),
                      ("u1", "i4", 9, 4.0, event), ("u2", "i1", 5, 4.0, None),
                      ("u3", "i4", 0, 4.0, event)])  # i4 in train: held-out rows of it are kept
    b = bucket_frame([("u1", "i4", 9, 5.0, event), ("u2", "i1", 5, 4.0, "view"), ("u2", "i2", 6, 3.0, event)])
    ab, ba = write_bucket([a, b], cfg, monkeypatch), write_bucket([b, a], cfg, monkeypatch)
    assert sorted(ab) == sorted(ba) and len(ab) == 3
    for name in ab:
        assert ab[name].to_pydict() == ba[name].to_pydict(), name
    test = pd.concat([t.to_pandas() for name, t in ab.items() if name.startswith("test")])
    assert ((test["user"] == "u1") & (test["item"] == "i4")).any()


def two_buckets():
    cfg = from_dict({"filters": {"min_user_interactions": 1, "min_item_interactions": 1}})
    return split_inputs({0: [bucket_frame([("u1", "i1", 1, 4.0, None)])],
                         1: [bucket_frame([("u2", "i1", 2, 4.0, None)])]}, cfg) + (cfg,)


def started_shard_writer(monkeypatch, write):
    """A WriteShardFn in an open bundle over `two_buckets()`, writing through `write(table, path)`."""
    patch_shard_writes(monkeypatch, write)
    buckets, result, cfg = two_buckets()
    fn = pipeline.WriteShardFn(cfg, "out", 2)
    fn.setup()
    fn.start_bundle()
    return fn, buckets, result


def test_shard_writes_of_a_bucket_finish_before_the_next_bucket(monkeypatch):
    # At most one bucket's tables wait for the writer thread, and its errors fail the next element.
    done = []

    def slow_write(table, path):
        time.sleep(0.05)
        if path.startswith("bad"):
            raise OSError("disk full")
        done.append(path)
    fn, buckets, result = started_shard_writer(monkeypatch, slow_write)
    list(fn.process(buckets[0], result))
    list(fn.process(buckets[1], result))
    assert sum("part-00000-" in p for p in done) == 3  # bucket 0's three shards
    fn.out_dir = "bad"
    list(fn.process(buckets[0], result))
    with pytest.raises(OSError, match="disk full"):
        list(fn.process(buckets[1], result))
    fn.teardown()


def test_a_failed_shard_write_still_waits_for_the_other_writes(monkeypatch):
    done = []

    def write(table, path):
        if "train" in path:
            raise OSError("disk full")
        time.sleep(0.05)
        done.append(path)
    fn, buckets, result = started_shard_writer(monkeypatch, write)
    list(fn.process(buckets[0], result))
    with pytest.raises(OSError, match="disk full"):
        fn.finish_bundle()
    assert len(done) == 2  # validation and test were written, not abandoned behind the error
    fn.finish_bundle()     # and nothing is left pending
    fn.teardown()


def test_the_vocabulary_lookup_is_built_once_per_side_input(monkeypatch):
    # Hashing a vocabulary of millions of IDs for each bucket cost more than the bucket's own work.
    built, hashed_vocab, written = [], [], {}
    patch_shard_writes(monkeypatch, lambda table, path: written.__setitem__(path, table))
    init = pipeline._VocabLookup.__init__
    monkeypatch.setattr(pipeline._VocabLookup, "__init__", lambda self, vocab: (built.append(vocab), init(self, vocab))[1])
    index_in = pipeline.pc.index_in
    monkeypatch.setattr(pipeline.pc, "index_in", lambda ids, value_set=None, **kw: (
        hashed_vocab.append(value_set), index_in(ids, value_set=value_set, **kw))[1])
    buckets, result, cfg = two_buckets()
    fn = pipeline.WriteShardFn(cfg, "out", 2)
    fn.setup()
    fn.start_bundle()
    rows = [r for kv in buckets + buckets for r in fn.process(kv, result)]
    assert len(built) == 2 and not hashed_vocab  # users and items, once
    other = dict(result, user_ids=pa.array(["u9", "u2", "u1"]), item_ids=pa.array(["i0", "i1"]))
    list(fn.process(buckets[1], other))
    fn.finish_bundle()
    assert len(built) == 4
    last = pa.concat_tables(written[f"out/{s}/part-00001-of-00002.parquet"] for s in SPLITS)
    assert last.column("user_idx").to_pylist() == [1] and last.column("item_idx").to_pylist() == [1]
    fn.teardown()
    assert [r["new_users"] for r in rows if r["split"] == "train"] == [0, 0, 0, 0]


# --------------------------------------------------------------------------------------------------
# k-core
# --------------------------------------------------------------------------------------------------

def chain(prefix: str, n_users: int, ts: int):
    """User k rates items k and k+1: the ends fall under a minimum of 2, then the next ones, ..."""
    return [(f"{prefix}u{k:02d}", f"{prefix}i{j:02d}", 5.0, ts + 2 * k + (j - k)) for k in range(n_users)
            for j in (k, k + 1)]


def test_kcore_invariant_holds_on_the_output(write_file, make_config, build_dataset, dataset_io):
    rng = np.random.default_rng(11)
    users = [f"u{k:03d}" for k in range(60)]
    items = [f"i{k:03d}" for k in range(40)]
    rows = [("seed", i, 5.0, BASE_TS + k) for k, i in enumerate(items)]  # every item has an early row
    for k, u in enumerate(users):
        n = int(rng.zipf(1.6)) % 15 + 1
        p = 1.0 / np.arange(1, len(items) + 1) ** 0.9
        for i in rng.choice(items, size=min(n, len(items)), replace=False, p=p / p.sum()):
            rows.append((u, i, float(rng.choice([1, 2, 3, 4, 5])), BASE_TS + 1000 + int(rng.integers(0, 10_000))))
    rows += chain("ch", 6, BASE_TS + 500)
    write_file("ratings.csv", ratings_csv(rows))
    min_user, min_item = 3, 3
    cfg = make_config({"source": {"path": "ratings.csv", "format": "csv", "columns": {"value": "rating"}},
                       "filters": {"min_user_interactions": min_user, "min_item_interactions": min_item,
                                   "max_rounds": 8},
                       "runner": {"shuffle_buckets": 3}})
    d = build_dataset(cfg)
    st = d.stats
    assert_reconciled(st)
    out = dataset_io.splits(d)
    assert all(s["dropped_unknown_item"] == 0 for s in st["splits"].values())
    assert st["kcore_removed"] > 0 and st["interactions"] > 0

    # The invariant, over all splits combined (= the post-k-core data, as nothing was dropped).
    assert out.groupby("user").size().min() >= min_user
    assert out.groupby("item").size().min() >= min_item
    assert not out["user"].str.startswith("ch").any()

    # And it is the maximal such subset: exactly what peeling the positives gives.
    frame = pd.DataFrame(rows, columns=["user", "item", "value", "timestamp"])
    ref = reference_kcore(frame[frame["value"] >= 3.5], min_user, min_item)
    assert row_keys(out) == row_keys(ref)
    assert st["kcore_removed"] == int((frame["value"] >= 3.5).sum()) - len(ref)
    assert set(d.users.ids) == set(out.loc[out["split"] == "train", "user"])


def test_kcore_that_does_not_converge_in_max_rounds_fails_clearly(write_file, make_config, build_dataset,
                                                                 tmp_path):
    # A 6x6 block that is already a 2-core, plus a 12-user chain that loses one user at each end per
    # round: it takes exactly 6 rounds to disappear.
    rows = [(f"b{u}", f"bi{i}", 5.0, BASE_TS + 10 * u + i) for u in range(6) for i in range(6)]
    rows += chain("ch", 12, BASE_TS + 1000)
    write_file("ratings.csv", ratings_csv(rows))

    def config(max_rounds):
        return make_config({"source": {"path": "ratings.csv", "format": "csv", "columns": {"value": "rating"}},
                            "filters": {"min_user_interactions": 2, "min_item_interactions": 2,
                                        "max_rounds": max_rounds}})

    with pytest.raises(DataError) as info:
        build_dataset(config(5), dataset_id="short")
    msg = str(info.value)
    assert "\n" not in msg
    assert "k-core" in msg and "filters.max_rounds=5" in msg and "did not converge" in msg
    datasets = tmp_path / "artifacts" / "datasets"
    assert not (datasets / "short").exists()
    assert [p.name for p in datasets.iterdir()] == []  # no temporary directory and no LATEST left behind

    d = build_dataset(config(6), dataset_id="enough")
    out = pd.concat([d.read(s) for s in SPLITS])
    assert set(out["user"]) <= {f"b{u}" for u in range(6)}
    assert d.stats["kcore_removed"] == 24
    assert_reconciled(d.stats)


# --------------------------------------------------------------------------------------------------
# Input formats
# --------------------------------------------------------------------------------------------------

# A small logical data set, written in each format: 6 users x 5 items, ratings 5 or 2 (so some are not
# positives), distinct timestamps; users 1 and 2 come first and between them rate every item 5, so no
# held-out item is unknown to training. Numeric IDs so the MovieLens layouts can hold it.
FORMAT_ROWS = [(str(u), str(10 * i), 5.0 if (u + i) % 3 else 2.0, BASE_TS + 100 * u + i)
               for u in range(1, 7) for i in range(1, 6)]
BAD_RATING_ROW = ("3", "30", 9.0, BASE_TS + 7)  # rating_out_of_range, written as the 4th row
BAD_POS = 10  # past the first Parquet row group (4 rows) and not in the first CSV block position


def _rows_with_bad():
    return FORMAT_ROWS[:BAD_POS] + [BAD_RATING_ROW] + FORMAT_ROWS[BAD_POS:]


def _fmt(x):
    return f"{x:g}" if isinstance(x, float) else str(x)


def write_csv_custom(write_file):
    # Different delimiter, order and names, an extra quoted column containing the delimiter.
    lines = ["when;stars;note;uid;sku"] + [f'{t};{_fmt(r)};"a;b";{u};{i}' for u, i, r, t in _rows_with_bad()]
    write_file("in/custom.csv", lines)
    return ({"path": "in/custom.csv", "format": "csv", "delimiter": ";",
             "columns": {"user": "uid", "item": "sku", "timestamp": "when", "value": "stars"}},
            BAD_POS + 2, lines[BAD_POS + 1])


def write_parquet(write_file):
    rows = _rows_with_bad()
    table = pa.table({"customer": pa.array([int(u) for u, _, _, _ in rows], pa.int64()),
                      "product": pa.array([i for _, i, _, _ in rows], pa.string()),
                      "score": pa.array([r for _, _, r, _ in rows], pa.float32()),
                      "epoch": pa.array([t for _, _, _, t in rows], pa.int64())})
    path = write_file("in/part.parquet", b"")
    pq.write_table(table, path, row_group_size=4)
    raw = json.dumps({"user": "3", "item": "30", "timestamp": str(BAD_RATING_ROW[3]), "value": "9"})
    return ({"path": "in/part.parquet", "format": "parquet",
             "columns": {"user": "customer", "item": "product", "timestamp": "epoch", "value": "score"}},
            BAD_POS + 1, raw)


def write_jsonl(write_file):
    lines = [json.dumps({"u": u, "i": int(i), "r": r, "t": t}) for u, i, r, t in _rows_with_bad()]
    write_file("in/x.jsonl", lines)
    return ({"path": "in/x.jsonl", "format": "jsonl",
             "columns": {"user": "u", "item": "i", "timestamp": "t", "value": "r"}}, BAD_POS + 1, lines[BAD_POS])


def write_movielens_csv(write_file):
    lines = ["userId,movieId,rating,timestamp"] + [f"{u},{i},{_fmt(r)},{t}" for u, i, r, t in _rows_with_bad()]
    write_file("ml/ratings.csv", lines)
    return {"path": "ml/ratings.csv", "format": "movielens_csv"}, BAD_POS + 2, lines[BAD_POS + 1]


def write_movielens_100k(write_file):
    lines = [f"{u}\t{i}\t{int(r)}\t{t}" for u, i, r, t in _rows_with_bad()]
    write_file("ml-100k/u.data", lines)
    return {"path": "ml-100k/u.data", "format": "movielens_100k"}, BAD_POS + 1, lines[BAD_POS]


def write_movielens_1m(write_file):
    lines = [f"{u}::{i}::{int(r)}::{t}" for u, i, r, t in _rows_with_bad()]
    write_file("ml-1m/ratings.dat", lines)
    return {"path": "ml-1m/ratings.dat", "format": "movielens_1m"}, BAD_POS + 1, lines[BAD_POS]


def write_csv_iso(write_file):
    def iso(t):
        return pd.Timestamp(t, unit="s", tz="UTC").isoformat()
    lines = ["user_id,item_id,rating,timestamp"] + [f"{u},{i},{_fmt(r)},{iso(t)}" for u, i, r, t in _rows_with_bad()]
    write_file("in/iso.csv", lines)
    return ({"path": "in/iso.csv", "format": "csv", "timestamp_unit": "iso", "columns": {"value": "rating"}},
            BAD_POS + 2, lines[BAD_POS + 1])


def write_jsonl_ms(write_file):
    lines = [json.dumps({"user_id": u, "item_id": i, "rating": r, "ts_ms": t * 1000 + 999})
             for u, i, r, t in _rows_with_bad()]
    write_file("in/ms.jsonl", lines)
    return ({"path": "in/ms.jsonl", "format": "jsonl", "timestamp_unit": "ms",
             "columns": {"timestamp": "ts_ms", "value": "rating"}}, BAD_POS + 1, lines[BAD_POS])


def write_csv_two_files_crlf(write_file):
    lines = ["user_id,item_id,rating,timestamp"] + [f"{u},{i},{_fmt(r)},{t}" for u, i, r, t in _rows_with_bad()]
    half = len(lines) // 2 + 3
    write_file("multi/b.csv", [lines[0]] + lines[half:], newline="\r\n")
    write_file("multi/a.csv", lines[:half], newline="\r\n")
    return ({"path": "multi/*.csv", "format": "csv", "columns": {"value": "rating"}},
            BAD_POS + 2, lines[BAD_POS + 1])


FORMAT_WRITERS = {
    "csv_custom_columns": write_csv_custom,
    "parquet": write_parquet,
    "jsonl": write_jsonl,
    "movielens_csv": write_movielens_csv,
    "movielens_100k": write_movielens_100k,
    "movielens_1m": write_movielens_1m,
    "csv_timestamp_iso": write_csv_iso,
    "jsonl_timestamp_ms": write_jsonl_ms,
    "csv_glob_crlf": write_csv_two_files_crlf,
}


@pytest.mark.parametrize("fmt", list(FORMAT_WRITERS))
def test_input_format(fmt, write_file, make_config, build_dataset, dataset_io, tmp_path):
    source, bad_line, bad_raw = FORMAT_WRITERS[fmt](write_file)
    cfg = make_config({"source": source})
    d = build_dataset(cfg)
    st = d.stats
    assert (st["rows_read"], st["accepted"], st["rejected"]) == (len(FORMAT_ROWS) + 1, len(FORMAT_ROWS), 1)
    assert st["rejected_by_reason"] == {"rating_out_of_range": 1}
    assert_reconciled(st)
    rejected = dataset_io.rejected(d)
    assert len(rejected) == 1
    first_file = sorted(glob.glob(str(tmp_path / source["path"])))[0]
    assert rejected[0] == {"source": first_file, "line": bad_line, "reason": "rating_out_of_range",
                           "raw": bad_raw}

    out = dataset_io.splits(d)
    assert all(s["dropped_unknown_item"] == 0 for s in st["splits"].values())
    positives = [r for r in FORMAT_ROWS if r[2] >= 3.5]
    assert st["positives"] == len(positives) and st["not_positive"] == len(FORMAT_ROWS) - len(positives)
    assert row_keys(out, ("user", "item", "value", "timestamp")) == sorted(positives)
    assert (out["weight"] == 1.0).all()
    assert out["timestamp"].dtype == np.int64 and out["value"].dtype == np.float32
    assert_indices_consistent(d, out)


def test_event_mode_with_event_weights(write_file, make_config, build_dataset, dataset_io):
    weights = {"view": 1.0, "add_to_cart": 2.5, "purchase": 6.0}
    kinds = list(weights)
    lines = ["ts,user,item,event,price"]
    expected = []
    for u in range(1, 6):
        for i in range(1, 5):
            ev = kinds[(u * i) % 3]
            price = "19.99" if ev == "purchase" else ""  # an empty optional value is not a bad value
            t = BASE_TS + 100 * i + u
            lines.append(f"{t},user{u},item{i},{ev},{price}")
            expected.append((f"user{u}", f"item{i}", t, weights[ev]))
    lines.append(f"{BASE_TS},user1,item1,wishlist,")           # line 22: unknown event type
    lines.append(lines[1])                                     # exact duplicate of line 2
    write_file("events.csv", lines)
    cfg = make_config({"source": {"path": "events.csv", "format": "csv",
                                  "columns": {"user": "user", "item": "item", "timestamp": "ts",
                                              "event": "event", "value": "price"}},
                       "feedback": {"mode": "event", "event_weights": weights}})
    d = build_dataset(cfg)
    st = d.stats
    assert (st["rows_read"], st["accepted"], st["rejected"]) == (22, 21, 1)
    assert st["rejected_by_reason"] == {"unknown_event_type": 1}
    assert st["duplicates_removed"] == 1 and st["not_positive"] == 0
    assert_reconciled(st)
    assert [(r["line"], r["reason"], r["raw"]) for r in dataset_io.rejected(d)] == \
        [(22, "unknown_event_type", lines[21])]
    out = dataset_io.splits(d)
    assert row_keys(out, ("user", "item", "timestamp", "weight")) == sorted(expected)
    purchases = out[out["weight"] == 6.0]
    assert np.allclose(purchases["value"], 19.99)
    assert out.loc[out["weight"] < 6.0, "value"].isna().all()


def test_implicit_mode_every_valid_row_is_a_positive(write_file, make_config, build_dataset, dataset_io):
    rows = [(f"u{u}", f"i{i}", BASE_TS + 10 * u + i) for u in range(4) for i in range(3)]
    write_file("clicks.csv", ["user_id,item_id,timestamp"] + [f"{u},{i},{t}" for u, i, t in rows])
    cfg = make_config({"source": {"path": "clicks.csv", "format": "csv"}, "feedback": {"mode": "implicit"}})
    d = build_dataset(cfg)
    out = dataset_io.splits(d)
    assert row_keys(out) == sorted(rows)
    assert (out["weight"] == 1.0).all() and out["value"].isna().all()
    assert d.stats["not_positive"] == 0


def test_header_false_on_generic_csv_is_a_data_error(write_file, make_config, build_dataset, tmp_path):
    write_file("x.csv", ["u1,i1,4,1500000000"])
    cfg = make_config({"source": {"path": "x.csv", "format": "csv", "header": False, "columns": {"value": "rating"}}})
    with pytest.raises(DataError, match="source.header"):
        build_dataset(cfg)
    assert list((tmp_path / "artifacts" / "datasets").iterdir()) == []


def test_no_matching_input_is_a_data_error(make_config, build_dataset):
    cfg = make_config({"source": {"path": "nothing/*.csv", "format": "csv", "columns": {"value": "rating"}}})
    with pytest.raises(DataError, match=r"source.path='nothing/\*.csv' matches no file"):
        build_dataset(cfg)


def test_existing_dataset_id_is_refused(write_file, make_config, build_dataset):
    write_file("ratings.csv", ratings_csv(good_rows(["u1", "u2"], ["i1", "i2"], BASE_TS)))
    cfg = make_config({"source": {"path": "ratings.csv", "format": "csv", "columns": {"value": "rating"}}})
    build_dataset(cfg, dataset_id="same")
    with pytest.raises(DataError, match="already exists"):
        build_dataset(cfg, dataset_id="same")


def test_item_metadata_from_a_generic_csv(write_file, make_config, build_dataset):
    rows = good_rows(["u1", "u2", "u3"], ["i1", "i2", "i3"], BASE_TS)
    write_file("ratings.csv", [ln.replace(",", "|") for ln in ratings_csv(rows)])
    write_file("items.csv", ["sku|name|year|tags", "i1|First|1999|a,b", "i2|Second||", "i9|Unused|2001|c",
                             "|no id|2000|x", "i2|Second (fixed)|2005|b", "i3|Too|many|fields|here"])
    cfg = make_config({"source": {"path": "ratings.csv", "format": "csv", "columns": {"value": "rating"},
                                  "delimiter": "|", "items_path": "items.csv", "items_format": "csv",
                                  "item_columns": {"item": "sku", "title": "name", "year": "year", "genres": "tags"},
                                  "genre_separator": ",", "max_duplicate_share": 0.5}})
    d = build_dataset(cfg)
    feats = d.item_features().set_index("item")
    assert list(feats.index) == list(d.items.ids) == ["i1", "i2", "i3"]
    assert feats.loc["i1", "title"] == "First" and feats.loc["i1", "year"] == 1999
    assert list(feats.loc["i1", "genres"]) == ["a", "b"]
    assert feats.loc["i2", "title"] == "Second (fixed)" and feats.loc["i2", "year"] == 2005  # last row wins
    assert feats.loc["i3", "title"] == "" and feats.loc["i3", "year"] == 0 and list(feats.loc["i3", "genres"]) == []
    train = d.read("train")
    assert feats["train_count"].to_dict() == train["item"].value_counts().reindex(feats.index, fill_value=0).to_dict()
    # i2 twice (the last row kept, the other counted); i3's row was rejected, so the log's i3 has none
    assert d.stats["items_metadata"] == {"rows": 3, "rejected": 2, "duplicate_ids": 1, "items_without_row": 1}
    with open(os.path.join(d.path, "rejected", "items.jsonl")) as fh:
        rej = [json.loads(line) for line in fh]
    # a row with too many fields is a dead letter (it crashed the build while pyarrow parsed in threads)
    assert sorted((r["line"], r["reason"], r["raw"]) for r in rej) == [
        (5, "missing_item_id", "|no id|2000|x"), (7, "wrong_column_count", "i3|Too|many|fields|here")]


# --------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------

def all_files(path: str) -> dict:
    out = {}
    for dirpath, _, names in os.walk(path):
        for name in names:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, path)] = fh.read()
    return out


def determinism_input(write_file):
    rng = np.random.default_rng(5)
    lines = []
    for u in range(30):
        for _ in range(int(rng.integers(1, 12))):
            i = int(rng.zipf(1.5)) % 25
            t = BASE_TS + int(rng.integers(0, 5000))
            lines.append(f"u{u},i{i},{rng.choice(['2.0', '3.5', '4.0', '5.0'])},{t}")
            if rng.random() < 0.1:
                lines.append(lines[-1])                                # exact duplicate
            if rng.random() < 0.1:
                lines.append(f"u{u},i{i},{rng.choice(['4.5', '1.0'])},{t}")  # same key, another value
    lines += [t.decode() for t, _ in DIRTY_ROWS]
    order = rng.permutation(len(lines))
    lines = [lines[k] for k in order]
    third = len(lines) // 3
    for k, chunk in enumerate((lines[:third], lines[third:2 * third], lines[2 * third:])):
        write_file(f"in/part{k}.csv", ["user_id,item_id,rating,timestamp"] + chunk)
    write_file("items.csv", ["item_id,title,genres"] + [f"i{i},Item {i} ({1990 + i}),G{i % 3}|G{i % 4}"
                                                        for i in range(25)])


@pytest.mark.parametrize("strategy", ["temporal", "leave_last_n"])
def test_same_input_and_config_give_byte_identical_files(strategy, write_file, make_config, build_dataset,
                                                         tmp_path):
    determinism_input(write_file)
    cfg = make_config({"source": {"path": "in/part*.csv", "format": "csv", "columns": {"value": "rating"},
                                  "max_id_length": 16, "items_path": "items.csv", "items_format": "movielens_movies"},
                       "filters": {"min_user_interactions": 2, "min_item_interactions": 2, "max_rounds": 6},
                       "split": {"strategy": strategy}, "runner": {"shuffle_buckets": 3}})
    a = build_dataset(cfg, dataset_id="a", previous=None)
    b = build_dataset(cfg, dataset_id="b", previous=None)
    files_a, files_b = all_files(a.path), all_files(b.path)
    assert sorted(files_a) == sorted(files_b)
    assert {"stats.json", "items.parquet", "vocab/users.txt", "vocab/items.txt"} <= set(files_a)
    assert sum(1 for f in files_a if f.startswith("rejected/")) >= 1
    assert sum(1 for f in files_a if f.endswith(".parquet") and "/part-" in f) == 9
    differing = [f for f in files_a if files_a[f] != files_b[f]]
    assert differing == []
    assert a.stats["interactions"] > 0 and a.stats["duplicates_removed"] > 0 and a.stats["rejected"] > 0


def test_output_rows_do_not_depend_on_the_number_of_buckets(write_file, make_config, build_dataset,
                                                            dataset_io):
    determinism_input(write_file)
    base = {"source": {"path": "in/part*.csv", "format": "csv", "columns": {"value": "rating"},
                       "max_id_length": 16},
            "filters": {"min_user_interactions": 2, "min_item_interactions": 2, "max_rounds": 6}}
    one = build_dataset(make_config({**base, "runner": {"shuffle_buckets": 1}}), dataset_id="one")
    four = build_dataset(make_config({**base, "runner": {"shuffle_buckets": 4}}), dataset_id="four")
    assert list(one.users.ids) == list(four.users.ids) and list(one.items.ids) == list(four.items.ids)
    cols = ["split", "user", "item", "user_idx", "item_idx", "timestamp", "value", "weight"]
    a = dataset_io.splits(one)[cols].sort_values(cols).reset_index(drop=True)
    b = dataset_io.splits(four)[cols].sort_values(cols).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    sa, sb = one.stats, four.stats
    sa.pop("config"), sb.pop("config")
    assert sa == sb
    assert len(four.shards("train")) == 4


def spill_input(write_file, tmp_path, kind: str) -> dict:
    """`determinism_input` as CSV, gzipped CSV or Parquet; returns the source config to read it."""
    determinism_input(write_file)
    source = {"path": "in/part*.csv", "format": "csv", "columns": {"value": "rating"}, "max_id_length": 16,
              "items_path": "items.csv", "items_format": "movielens_movies"}
    for part in sorted(glob.glob(str(tmp_path / "in" / "part*.csv"))):
        if kind == "csv.gz":
            with open(part, "rb") as f:
                write_file(os.path.relpath(part + ".gz", tmp_path), gzip.compress(f.read()))
        elif kind == "parquet":
            with open(part, encoding="utf-8", errors="replace") as f:
                header, *lines = f.read().splitlines()
            rows = [line.split(",") for line in lines if line.count(",") == 3]   # dirty rows stay dirty
            pq.write_table(pa.table({name: [r[j] for r in rows] for j, name in enumerate(header.split(","))}),
                           part.replace(".csv", ".parquet"))
        if kind != "csv":
            os.remove(part)
    if kind != "csv":
        source.update(path=f"in/part*.{kind}", format="parquet" if kind == "parquet" else "csv")
    return source


@pytest.mark.parametrize("kind, staged_blocks", [("csv", False), ("csv.gz", True), ("parquet", True)])
def test_spilled_frames_give_the_same_dataset_and_leave_no_staging_folder(kind, staged_blocks, write_file, tmp_path,
                                                                         make_config, build_dataset, monkeypatch):
    """runner.spill: files shuffles paths of staged frames (and of blocks that carry their data: Parquet
    batches, a compressed file's text) instead of the data; the dataset is the same file for file, and
    the staging folder is gone from it."""
    source = spill_input(write_file, tmp_path, kind)
    handles = collections.Counter()
    put, put_block = pipeline.Frames.put, pipeline.Frames.put_block
    monkeypatch.setattr(pipeline.Frames, "put",
                        lambda self, df: handles.update([type(h := put(self, df)).__name__]) or h)
    monkeypatch.setattr(pipeline.Frames, "put_block",
                        lambda self, b: handles.update(["block:" + type(h := put_block(self, b)).__name__]) or h)
    base = {"source": source,
            "filters": {"min_user_interactions": 2, "min_item_interactions": 2, "max_rounds": 6}}
    spilled = build_dataset(make_config({**base, "runner": {"shuffle_buckets": 3, "spill": "files"}}),
                            dataset_id="spilled", previous=None)
    assert handles["str"] >= 6 and handles["DataFrame"] == 0      # every bucket's frames went through files
    assert handles["block:StagedBlock" if staged_blocks else "block:ByteRange"] == 3   # a block per file
    handles.clear()
    held = build_dataset(make_config({**base, "runner": {"shuffle_buckets": 3, "spill": "off"}}),
                         dataset_id="held", previous=None)
    assert handles["DataFrame"] >= 6 and handles["str"] == 0 and handles["block:StagedBlock"] == 0
    files_a, files_b = all_files(spilled.path), all_files(held.path)
    assert not any(pipeline.STAGING in f for f in files_a)
    assert sorted(files_a) == sorted(files_b) and len(files_a) > 10
    assert [f for f in files_a if f != "stats.json" and files_a[f] != files_b[f]] == []
    stats_a, stats_b = (json.loads(f["stats.json"]) for f in (files_a, files_b))
    assert stats_a.pop("config")["runner"]["spill"] == "files" and stats_b.pop("config")["runner"]["spill"] == "off"
    assert stats_a == stats_b and stats_a["interactions"] > 50


@pytest.mark.parametrize("runner, spill, spilled", [
    ("DirectRunner", "auto", True), ("FnApiRunner", "auto", True), ("FlinkRunner", "auto", False),
    ("DataflowRunner", "auto", False), ("DirectRunner", "off", False), ("PortableRunner", "files", True)])
def test_spill_auto_means_files_only_on_the_in_process_runner(runner, spill, spilled, make_config):
    cfg = make_config({"runner": {"name": runner, "spill": spill}})
    folder = pipeline.spill_folder(cfg, "/out/d")
    assert (folder == os.path.join("/out/d", pipeline.STAGING)) if spilled else folder is None


# --------------------------------------------------------------------------------------------------
# The embedded MovieLens data with the default config
# --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_movielens_end_to_end(tmp_path):
    cfg = load_config(os.path.join(REPO, "data", "recsys.yaml"))
    cfg.artifacts.root = str(tmp_path / "artifacts")  # never write into the repo
    cfg.split.strategy = "temporal"   # the demo measures leave-last-5; this test checks the temporal cut
    d = pipeline.run(cfg, dataset_id="ml", previous=None, progress=lambda *_: None)
    st = d.stats
    ratings = pd.read_csv(cfg.resolve(cfg.source.path), dtype={"userId": str, "movieId": str})
    assert st["rows_read"] == len(ratings) == 100836
    assert st["accepted"] == len(ratings) and st["rejected"] == 0 and st["rejected_by_reason"] == {}
    assert_reconciled(st)
    positives = ratings[ratings["rating"] >= cfg.feedback.min_rating]
    assert st["positives"] == len(positives) and st["duplicates_removed"] == 0

    # k-core against a plain pandas reference on the same positives.
    ref = reference_kcore(positives.rename(columns={"userId": "user", "movieId": "item"}),
                          cfg.filters.min_user_interactions, cfg.filters.min_item_interactions)
    assert st["interactions"] == len(ref)
    splits = {s: d.read(s) for s in SPLITS}
    out = pd.concat(splits.values(), ignore_index=True)
    assert set(row_keys(out)) <= set(row_keys(ref))

    # Temporal split: roughly 80/10/10, in time order; held-out items all known to training.
    n = st["interactions"]
    for name, frac in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
        got = st["splits"][name]["interactions"] + st["splits"][name]["dropped_unknown_item"]
        assert abs(got / n - frac) < 0.01, (name, got, n)
    cuts = st["temporal_cuts"]
    assert splits["train"]["timestamp"].max() < cuts["validation_start"] <= splits["validation"]["timestamp"].min()
    assert splits["validation"]["timestamp"].max() < cuts["test_start"] <= splits["test"]["timestamp"].min()
    train_items = set(splits["train"]["item"])
    assert set(splits["validation"]["item"]) <= train_items and set(splits["test"]["item"]) <= train_items
    assert st["vocab"] == {"users": splits["train"]["user"].nunique(), "items": len(train_items)}
    assert_indices_consistent(d, out)

    # Item features: one row per vocabulary item, with MovieLens titles, years and genres.
    feats = d.item_features()
    assert feats["item"].tolist() == list(d.items.ids)
    assert feats["item_idx"].tolist() == list(range(len(d.items)))
    assert st["items_metadata"] == {"rows": 9742, "rejected": 0, "duplicate_ids": 0, "items_without_row": 0}
    assert (feats["title"] != "").all()
    assert (feats["year"] > 1900).mean() > 0.99
    assert (feats["genres"].map(len) > 0).mean() > 0.99
    toy = feats.set_index("item").loc["1"]
    assert toy["title"] == "Toy Story (1995)" and toy["year"] == 1995
    assert set(toy["genres"]) == {"Adventure", "Animation", "Children", "Comedy", "Fantasy"}
    assert feats["train_count"].sum() == st["splits"]["train"]["interactions"]
    assert not glob.glob(os.path.join(d.path, "rejected", "*"))


def test_a_misspelt_catalog_attribute_is_a_config_error_naming_the_columns(write_file, make_config, build_dataset):
    from recsys.errors import RecsysError
    rows = good_rows(["u1", "u2", "u3"], ["i1", "i2", "i3"], BASE_TS)
    write_file("ratings.csv", ratings_csv(rows))
    write_file("items.csv", ["item_id,title,section", "i1,One,sport", "i2,Two,news", "i3,Three,sport"])
    cfg = make_config({"source": {"path": "ratings.csv", "format": "csv", "columns": {"value": "rating"},
                                  "items_path": "items.csv", "items_format": "csv",
                                  "item_columns": {"item": "item_id", "title": "title", "genres": "",
                                                   "attributes": {"sektion": "categorical"}}}})
    with pytest.raises(RecsysError, match=r"attributes.sektion='sektion' is invalid: not a column of .*items.csv "
                                          r"\(its columns: item_id, title, section\)"):
        build_dataset(cfg)


def test_unknown_and_case_variant_events_are_counted_in_stats_and_said(write_file, make_config):
    """`Play`/`Skip` under event types play/like with unknown_events: ignore used to vanish from training
    with only stats.json's not_positive to show it; now the build names them and their counts."""
    from pipelines import build_dataset as pipeline
    lines = ["user_id,item_id,event,ts"]
    for u in range(6):
        for k, event in enumerate(["play", "Play", "like", "Skip", "share", "play"]):
            lines.append(f"u{u},i{(u + k) % 5},{event},{1_000_000_000 + 100 * u + k}")
    write_file("events.csv", lines)
    cfg = make_config({"source": {"path": "events.csv", "format": "csv",
                                  "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts", "value": "",
                                              "event": "event"}},
                       "feedback": {"mode": "event", "event_weights": {"play": 1, "like": 2, "skip": 0.5},
                                    "unknown_events": "ignore"}})
    said = []
    d = pipeline.run(cfg, dataset_id="ev", previous=None, progress=said.append)
    assert d.stats["case_merged_events"] == {"Play": 6, "Skip": 6}
    assert d.stats["unknown_events"] == {"share": 6}
    text = "\n".join(said)
    assert "'Play' 6" in text and "'Skip' 6" in text
    assert "6 events of types not in feedback.event_weights, kept with weight 0" in text and "'share' 6" in text


def test_constant_or_implausible_event_times_are_warned_about(write_file, make_config):
    from pipelines import build_dataset as pipeline
    from recsys.data.dataset import time_warnings
    lines = ["user_id,item_id,rating,timestamp"] + [f"u{u},i{(u + k) % 6},4,1700000000" for u in range(8) for k in range(5)]
    write_file("same.csv", lines)
    said = []
    pipeline.run(make_config({"source": {"path": "same.csv", "format": "csv", "columns": {"value": "rating"}}}),
                 dataset_id="same", previous=None, progress=said.append)
    assert any("have the same time (2023-11-14 22:13:20 UTC)" in line for line in said), said
    stats = {"interactions": 10, "splits": {"train": {"time_range": [86400, 90000]}, "test": {"time_range": [90000, 95000]}}}
    assert "outside 1995..now" in " ".join(time_warnings(stats, now=1.8e9))
    fine = {"interactions": 10, "splits": {"train": {"time_range": [1.6e9, 1.7e9]}}}
    assert time_warnings(fine, now=1.8e9) == []


def test_a_catalog_whose_ids_repeat_too_often_is_refused_in_one_line(write_file, make_config, build_dataset):
    # keyed by a column that is not unique (a category, a variant's parent): the last row per ID would
    # silently give most items another item's title and attributes
    rows = good_rows(["u1", "u2", "u3"], ["i1", "i2", "i3"], BASE_TS)
    write_file("ratings.csv", ratings_csv(rows))
    write_file("items.csv", ["sku,name", "i1,First", "i2,Second", "i2,Second (red)", "i3,Third"])
    source = {"path": "ratings.csv", "format": "csv", "columns": {"value": "rating"}, "items_path": "items.csv",
              "items_format": "csv", "item_columns": {"item": "sku", "title": "name"}}
    with pytest.raises(DataError, match=r"1 of 4 rows \(25.0%\) repeat an earlier row's ID \(e.g. 'i2'\), above "
                                        r"source.max_duplicate_share=0.05: is source.item_columns.item the key"):
        build_dataset(make_config({"source": source}))
    d = build_dataset(make_config({"source": dict(source, max_duplicate_share=0.25)}), dataset_id="allowed")
    assert d.stats["items_metadata"]["duplicate_ids"] == 1
