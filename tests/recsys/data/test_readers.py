"""recsys/data/readers.py: every input format is read by its entry there, and nothing else names one (not
even recsys/data/parsing.py, whose block, line and header functions are tested here too).

Adding a format means its reader in readers.py (for a new kind of file, with its row parser in parsing.py),
its name in config.py's format list, and a writer here: the contract tests below run over config.py's
lists, so a format without a case here fails them.
"""
from __future__ import annotations

import ast
import io
import json
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.config import INTERACTION_FORMATS, ITEM_FORMATS, USER_FORMATS, from_dict
from recsys.data import ingest, metadata, parsing, readers
from recsys.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
NAMES = ["user_id", "item_id", "rating", "timestamp"]


def csv_config(**source):
    src = {"format": "csv", "columns": {"value": "rating"}, "items_format": "none"}
    src.update(source)
    return from_dict({"source": src}, base_dir="/tmp")


# --- interaction files: every format -----------------------------------------------------------------

ROWS = [("u1", "i1", 4.0, 1000000000), ("u2", "i2", 3.5, 1000000100), ("u1", "i3", 5.0, 1000000200),
        ("u3", "i1", 1.0, 1000000300), ("u2", "i3", 2.5, 1000000400)]


def _lines(tmp, name, lines) -> None:
    (tmp / name).write_text("".join(f"{ln}\n" for ln in lines))


def _csv(tmp):
    _lines(tmp, "in.csv", ["uid;sku;stars;ts"] + [f"{u};{i};{r};{t}" for u, i, r, t in ROWS])
    return {"path": "in.csv", "format": "csv", "delimiter": ";",
            "columns": {"user": "uid", "item": "sku", "timestamp": "ts", "value": "stars"}}, 2


def _parquet(tmp):
    users, items, ratings, ts = zip(*ROWS)
    pq.write_table(pa.table({"uid": list(users), "sku": list(items), "stars": pa.array(ratings, pa.float32()),
                             "ts": pa.array(ts, pa.int64())}), tmp / "in.parquet")
    return {"path": "in.parquet", "format": "parquet",
            "columns": {"user": "uid", "item": "sku", "timestamp": "ts", "value": "stars"}}, 1


def _jsonl(tmp):
    _lines(tmp, "in.jsonl", [json.dumps({"uid": u, "sku": i, "stars": r, "ts": t}) for u, i, r, t in ROWS])
    return {"path": "in.jsonl", "format": "jsonl",
            "columns": {"user": "uid", "item": "sku", "timestamp": "ts", "value": "stars"}}, 1


def _movielens_csv(tmp):
    _lines(tmp, "ratings.csv", ["userId,movieId,rating,timestamp"] + [",".join(map(str, r)) for r in ROWS])
    return {"path": "ratings.csv", "format": "movielens_csv"}, 2


def _movielens_100k(tmp):
    _lines(tmp, "u.data", ["\t".join([u, i, str(r), str(t)]) for u, i, r, t in ROWS])
    return {"path": "u.data", "format": "movielens_100k"}, 1


def _movielens_1m(tmp):
    _lines(tmp, "ratings.dat", ["::".join([u, i, str(r), str(t)]) for u, i, r, t in ROWS])
    return {"path": "ratings.dat", "format": "movielens_1m"}, 1


# source.format -> a writer of ROWS in it: (source config, line number of the first row)
INTERACTION_WRITERS = {"csv": _csv, "parquet": _parquet, "jsonl": _jsonl, "movielens_csv": _movielens_csv,
                       "movielens_100k": _movielens_100k, "movielens_1m": _movielens_1m}


def test_every_interaction_format_has_a_case_here():
    assert set(INTERACTION_WRITERS) == set(INTERACTION_FORMATS)


@pytest.mark.parametrize("by_range", [False, True])
@pytest.mark.parametrize("fmt", INTERACTION_FORMATS)
def test_every_interaction_format_reads_the_same_rows(fmt, by_range, tmp_path):
    # Blocks of 16 bytes: text files come in several blocks, each parsed on its own (as the pipeline does).
    source, first_line = INTERACTION_WRITERS[fmt](tmp_path)
    cfg = from_dict({"source": {**source, "items_format": "none"}}, base_dir=str(tmp_path))
    path = cfg.resolve(cfg.source.path)
    layout = readers.layout_for(cfg.source)
    parsed = [readers.parse(data, first, layout, names, path)
              for first, names, data in readers.blocks(path, layout, 16, by_range)]
    assert sum(p.rows for p in parsed) == len(ROWS) and all(len(p.rejected) == 0 for p in parsed)
    raw = pd.concat([p.raw for p in parsed], ignore_index=True)
    assert raw["_line"].tolist() == list(range(first_line, first_line + len(ROWS)))
    valid, rejected = zip(*(ingest.validate_parsed(p, cfg, path) for p in parsed))
    valid = pd.concat(valid, ignore_index=True)
    assert sum(len(r) for r in rejected) == 0
    got = list(zip(valid["user"].tolist(), valid["item"].tolist(), valid["value"].tolist(),
                   valid["timestamp"].tolist()))
    assert got == ROWS


@pytest.mark.parametrize("fmt", INTERACTION_FORMATS)
def test_a_row_a_reader_cannot_parse_is_a_dead_letter_with_its_line(fmt, tmp_path):
    source, first_line = INTERACTION_WRITERS[fmt](tmp_path)
    if fmt == "parquet":   # a columnar file has no malformed rows; a value that is not UTF-8 is one
        pq.write_table(pa.table({"uid": pa.array([b"u1", b"u\xff"], pa.binary()), "sku": ["i1", "i2"],
                                 "stars": [4.0, 4.0], "ts": [1000000000, 1000000001]}), tmp_path / "in.parquet")
    else:
        with open(tmp_path / source["path"], "ab") as fh:
            fh.write(b"\xff\xfe broken\n" if fmt == "jsonl" else b"only one field\n")
    cfg = from_dict({"source": {**source, "items_format": "none"}}, base_dir=str(tmp_path))
    path = cfg.resolve(cfg.source.path)
    layout = readers.layout_for(cfg.source)
    parsed = [readers.parse(data, first, layout, names, path)
              for first, names, data in readers.blocks(path, layout, 1 << 20, True)]
    rejected = pd.concat([p.rejected for p in parsed], ignore_index=True)
    last = 2 if fmt == "parquet" else first_line + len(ROWS)
    assert rejected[["source", "line"]].values.tolist() == [[path, last]]
    assert rejected["reason"].iloc[0] in (readers.UNPARSEABLE, readers.WRONG_COLUMN_COUNT)
    assert sum(p.rows for p in parsed) == sum(len(p.raw) + len(p.rejected) for p in parsed)


# --- item and user tables: every format --------------------------------------------------------------

ITEMS = [("10", "Alpha (1999)", ["Drama"]), ("20", "Beta (2001)", ["Comedy", "Drama"])]


def _item_csv(tmp):
    _lines(tmp, "items.csv", ["item_id,title,genres"] + [f"{i},{t},{'|'.join(g)}" for i, t, g in ITEMS])
    return {"items_path": "items.csv", "items_format": "csv"}


def _item_parquet(tmp):
    pq.write_table(pa.table({"item_id": [int(i) for i, _, _ in ITEMS], "title": [t for _, t, _ in ITEMS],
                             "genres": ["|".join(g) for _, _, g in ITEMS]}), tmp / "items.parquet")
    return {"items_path": "items.parquet", "items_format": "parquet"}


def _item_jsonl(tmp):
    _lines(tmp, "items.jsonl", [json.dumps({"item_id": int(i), "title": t, "genres": "|".join(g)}) for i, t, g in ITEMS])
    return {"items_path": "items.jsonl", "items_format": "jsonl"}


def _item_movielens_movies(tmp):
    _lines(tmp, "movies.csv", ["movieId,title,genres"] + [f'{i},"{t}",{"|".join(g)}' for i, t, g in ITEMS])
    return {"items_path": "movies.csv", "items_format": "movielens_movies"}


ITEM_WRITERS = {"csv": _item_csv, "parquet": _item_parquet, "jsonl": _item_jsonl,
                "movielens_movies": _item_movielens_movies}
USERS = [("7", ["gender=F", "age=25"]), ("8", ["gender=M", "age=35"])]


def _user_columns(tmp, name, write):
    write(tmp / name, pd.DataFrame({"user_id": [u for u, _ in USERS], "gender": ["F", "M"], "age": ["25", "35"]}))
    return {"users_path": name, "user_columns": {"user": "user_id", "features": ["gender", "age"]}}


def _user_csv(tmp):
    return {**_user_columns(tmp, "users.csv", lambda p, df: df.to_csv(p, index=False)), "users_format": "csv"}


def _user_parquet(tmp):
    return {**_user_columns(tmp, "users.parquet", lambda p, df: df.to_parquet(p, index=False)),
            "users_format": "parquet"}


def _user_jsonl(tmp):
    return {**_user_columns(tmp, "users.jsonl", lambda p, df: df.to_json(p, orient="records", lines=True)),
            "users_format": "jsonl"}


def _user_movielens_users(tmp):
    _lines(tmp, "users.dat", ["7::F::25::1::12345", "8::M::35::2::54321"])
    return {"users_path": "users.dat", "users_format": "movielens_users"}


USER_WRITERS = {"csv": _user_csv, "parquet": _user_parquet, "jsonl": _user_jsonl,
                "movielens_users": _user_movielens_users}


def test_every_table_format_has_a_case_here():
    assert set(ITEM_WRITERS) == set(ITEM_FORMATS) - {"none"}
    assert set(USER_WRITERS) == set(USER_FORMATS) - {"none"}


@pytest.mark.parametrize("fmt", [f for f in ITEM_FORMATS if f != "none"])
def test_every_item_table_format_reads_the_same_items(fmt, tmp_path):
    cfg = from_dict({"source": {"format": "movielens_csv", **ITEM_WRITERS[fmt](tmp_path)}}, base_dir=str(tmp_path))
    items, rejected = metadata.read_items(cfg.resolve(cfg.source.items_path), cfg)
    assert len(rejected) == 0
    assert items[["item", "title", "year"]].values.tolist() == [[i, t, int(t[-5:-1])] for i, t, _ in ITEMS]
    assert items["genres"].tolist() == [g for _, _, g in ITEMS]


@pytest.mark.parametrize("fmt", [f for f in USER_FORMATS if f != "none"])
def test_every_user_table_format_reads_the_same_users(fmt, tmp_path):
    cfg = from_dict({"source": {"format": "movielens_csv", "items_format": "none", **USER_WRITERS[fmt](tmp_path)}},
                    base_dir=str(tmp_path))
    users, rejected = metadata.read_users(cfg.resolve(cfg.source.users_path), cfg)
    assert len(rejected) == 0
    got = {u: sorted(f for f in feats if not f.startswith("occupation=")) for u, feats in
           zip(users["user"], users["features"])}
    assert got == {u: sorted(f) for u, f in USERS}


# --- samples for `recsys init` -----------------------------------------------------------------------

@pytest.mark.parametrize("name,fmt", [("log.csv", "csv"), ("log.tsv", "csv"), ("log.parquet", "parquet"),
                                      ("log.jsonl", "jsonl"), ("log.json", "jsonl"), ("log.csv.gz", "csv")])
def test_a_sample_of_each_file_type_has_every_column(name, fmt, tmp_path):
    df = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "item_id": ["a", "b", "a"], "ts": ["1", "2", "3"]})
    path = str(tmp_path / name)
    if fmt == "parquet":
        df.to_parquet(path, index=False)
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_csv(path, sep="\t" if name.endswith(".tsv") else ",", index=False)
    got = readers.sample(path, 2)
    assert got.format == fmt and fmt in INTERACTION_FORMATS
    assert list(got.frame.columns) == ["user_id", "item_id", "ts"] and len(got.frame) == 2
    assert got.frame["user_id"].tolist() == ["u1", "u2"]
    assert (got.schema is not None) == (fmt == "parquet")


def test_a_sample_of_an_unknown_file_type_or_no_file_is_one_line(tmp_path):
    with pytest.raises(DataError, match="cannot tell the format from '.xlsx'"):
        readers.sample(str(tmp_path / "log.xlsx"), 10)
    with pytest.raises(DataError, match="no such file"):
        readers.sample(str(tmp_path / "missing.csv"), 10)


# --- nothing else names a format ---------------------------------------------------------------------

def test_only_the_readers_and_the_config_name_an_input_format():
    """A branch on a format name outside readers.py (`if fmt == "parquet"`) would make adding a format
    touch that module too. The config lists the names (and is the one other place allowed to)."""
    names = (set(INTERACTION_FORMATS) | set(ITEM_FORMATS) | set(USER_FORMATS) | set(readers._KINDS)) - {"none"}
    allowed = {os.path.join("recsys", "data", "readers.py"), os.path.join("recsys", "config.py")}
    found = []
    for top in ("recsys", "pipelines", "serving"):
        for directory, _, files in os.walk(os.path.join(REPO, top)):
            for f in files:
                rel = os.path.relpath(os.path.join(directory, f), REPO)
                if not f.endswith(".py") or rel in allowed:
                    continue
                tree = ast.parse(open(os.path.join(REPO, rel)).read(), rel)
                found += [f"{rel}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
                          if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names]
    assert not found, "\n".join(found)


# --- blocks, lines and headers (parsing.py) ----------------------------------------------------------

@pytest.mark.parametrize("block_bytes", [1, 3, 7, 16, 1 << 20])
@pytest.mark.parametrize("trailing_newline", [True, False])
def test_iter_blocks_cuts_on_line_boundaries_with_exact_line_numbers(block_bytes, trailing_newline):
    lines = [f"line-{i}-" + "x" * (i % 5) for i in range(1, 24)]
    lines[5] = ""  # a blank line still counts for numbering
    data = "\n".join(lines).encode() + (b"\n" if trailing_newline else b"")
    seen = {}
    rebuilt = b""
    for first, block in parsing.iter_blocks(io.BytesIO(data), block_bytes):
        rebuilt += block
        for offset, text in enumerate(block.split(b"\n")[:-1] if block.endswith(b"\n") else block.split(b"\n")):
            seen[first + offset] = text.decode()
    assert rebuilt == data
    assert seen == {i + 1: text for i, text in enumerate(lines)}


def test_iter_blocks_empty_file():
    assert list(parsing.iter_blocks(io.BytesIO(b""), 16)) == []


def test_split_lines_skips_blank_lines_and_keeps_numbers():
    lines, numbers = parsing.split_lines(b"a\r\n\r\n  \t \nb\n\nc", 10)
    assert lines == [b"a", b"b", b"c"]
    assert numbers.tolist() == [10, 13, 15]


def test_header_names():
    layout = readers.layout_for(csv_config().source)
    assert parsing.header_names(b'user_id, "item_id",rating,timestamp\r\n', layout) == NAMES
    tab = readers.layout_for(csv_config(delimiter="\t").source)
    assert parsing.header_names(b"a\tb c\td\n", tab) == ["a", "b c", "d"]
    ml = readers.layout_for(from_dict({"source": {"format": "movielens_1m"}}).source)
    assert parsing.header_names(b"ignored", ml) == ["user", "item", "rating", "timestamp"]


@pytest.mark.parametrize("fmt,kind,delim,header", [
    ("movielens_csv", "delimited", ",", True),
    ("movielens_100k", "delimited", "\t", False),
    ("movielens_1m", "delimited", "::", False),
])
def test_layout_for_movielens(fmt, kind, delim, header):
    layout = readers.layout_for(from_dict({"source": {"format": fmt}}).source)
    assert (layout.kind, layout.delimiter, layout.header) == (kind, delim, header)
    assert set(layout.mapping) == {"user", "item", "timestamp", "value"}


def test_layout_for_generic_formats_uses_the_column_mapping():
    cfg = from_dict({"source": {"format": "parquet", "columns": {"user": "u", "item": "s", "timestamp": "t",
                                                                 "value": "", "event": "kind"}},
                     "feedback": {"mode": "event"}})
    layout = readers.layout_for(cfg.source)
    assert layout.kind == "parquet"
    assert layout.mapping == {"user": "u", "item": "s", "timestamp": "t", "event": "kind"}
    csv = readers.layout_for(csv_config(delimiter=";", header=True).source)
    assert (csv.kind, csv.delimiter, csv.header) == ("delimited", ";", True)


