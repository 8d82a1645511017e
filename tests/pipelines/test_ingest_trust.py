"""No input is silently lost: encodings, headers and line endings that used to dead-letter every row
(or crash) stop the build with one line, and a build that accepts too little never becomes LATEST."""
import codecs
import os
import subprocess
import sys

import numpy as np

import pytest

from recsys import cli
from recsys.data import dataset as ds
from recsys.errors import ConfigError, DataError

ROWS = ["user_id,item_id,rating,timestamp"] + [f"u{u},i{i},4.0,{1000 + 10 * u + i}" for u in range(6) for i in range(5)]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLUMNS = {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "value": "rating"}


@pytest.fixture
def cfg_for(make_config):
    def make(path, **source):
        return make_config({"source": {"path": path, "format": "csv", "columns": COLUMNS, **source},
                            "split": {"strategy": "leave_last_n", "leave_last_n": 1}})
    return make


def one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 600, msg
    return msg


def test_a_utf8_byte_order_mark_is_read_like_plain_utf8(write_file, cfg_for, build_dataset):
    path = write_file("bom.csv", codecs.BOM_UTF8 + "\n".join(ROWS).encode() + b"\n")
    built = build_dataset(cfg_for(path))
    assert built.stats["accepted"] == built.stats["rows_read"] == 30


def test_a_utf16_file_is_refused_with_one_line(write_file, cfg_for, build_dataset, tmp_path):
    path = write_file("u16.csv", "\n".join(ROWS).encode("utf-16") + b"")
    with pytest.raises(DataError) as exc:
        build_dataset(cfg_for(path))
    assert "UTF-16" in one_line(exc)
    assert ds.latest_dataset_id(str(tmp_path / "artifacts")) is None


def test_a_header_without_the_configured_columns_stops_before_reading_rows(write_file, cfg_for, build_dataset):
    path = write_file("renamed.csv", ["user,item,rating,timestamp"] + ROWS[1:])
    with pytest.raises(DataError) as exc:
        build_dataset(cfg_for(path))
    assert "source.columns.user='user_id' is not a column" in one_line(exc) and "'user'" in str(exc.value)


def test_a_build_that_accepts_nothing_fails_and_keeps_latest(write_file, cfg_for, build_dataset, tmp_path):
    root = str(tmp_path / "artifacts")
    build_dataset(cfg_for(write_file("good.csv", ROWS)), dataset_id="good")
    bad = write_file("bad.csv", [ROWS[0]] + [r.replace(",4.0,", ",x,") for r in ROWS[1:]])
    with pytest.raises(DataError) as exc:
        build_dataset(cfg_for(bad), dataset_id="bad")
    msg = one_line(exc)
    assert "accepted 0 of 30" in msg and "bad_rating 30" in msg and "rejected" in msg
    assert ds.latest_dataset_id(root) == "good"


def test_a_build_under_the_accepted_fraction_fails_naming_the_top_reasons(write_file, cfg_for, build_dataset,
                                                                          tmp_path):
    rows = [ROWS[0]] + [r if k % 3 == 0 else r.replace(",4.0,", ",9.0,") for k, r in enumerate(ROWS[1:])]
    path = write_file("mostly_bad.csv", rows)
    with pytest.raises(DataError) as exc:
        build_dataset(cfg_for(path))
    assert "accepted 10 of 30" in one_line(exc) and "rating_out_of_range 20" in str(exc.value)
    assert build_dataset(cfg_for(path, min_accepted_fraction=0.3), dataset_id="lenient").stats["accepted"] == 10


def test_a_line_break_as_delimiter_is_a_config_error(write_file, cfg_for):
    with pytest.raises(ConfigError, match="source.delimiter"):
        cfg_for(write_file("x.csv", ROWS), delimiter="\n")


def test_bare_carriage_return_line_endings_are_one_line(write_file, cfg_for, build_dataset):
    path = write_file("mac.csv", "\r".join(ROWS).encode() + b"\r")
    with pytest.raises(DataError) as exc:
        build_dataset(cfg_for(path))
    assert "bare carriage return" in one_line(exc)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_huge_file_without_a_line_break_is_one_line(write_file, make_config, build_dataset, fmt):
    path = write_file(f"huge.{fmt}", b"x" * (3 << 20))
    cfg = make_config({"source": {"path": path, "format": fmt, "columns": COLUMNS}})
    with pytest.raises(DataError) as exc:
        build_dataset(cfg)
    assert "no line break" in one_line(exc)


def test_the_cli_prints_the_refusal_as_one_line(write_file, tmp_path, capsys):
    path = write_file("renamed.csv", ["user,item,rating,timestamp"] + ROWS[1:])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"source:\n  path: {path}\n  format: csv\n  items_format: none\n"
                   f"  columns: {{user: user_id, item: item_id, timestamp: timestamp, value: rating}}\n"
                   f"artifacts:\n  root: {tmp_path / 'art'}\n")
    assert cli.main(["build-dataset", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a column" in err


REFUSED = {   # a file the build refuses before reading rows -> what its one line says
    "u16.csv": ("\n".join(ROWS).encode("utf-16"),
                "the file is UTF-16 (byte order mark fffe); interaction files are read as UTF-8"),
    "renamed.csv": ("\n".join(["user,item,rating,timestamp"] + ROWS[1:]).encode() + b"\n",
                    "source.columns.user='user_id' is not a column of the file (its columns: 'user', 'item', "),
    "mac.csv": ("\r".join(ROWS).encode() + b"\r", "lines end with a bare carriage return (\\r)"),
}


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    """The real command in a fresh process (Beam's own logging included), without -v from the environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("RECSYS_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    return subprocess.run([sys.executable, "-m", "recsys.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)


def refused_config(write_file, tmp_path, name: str) -> str:
    path = write_file(name, REFUSED[name][0])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"source:\n  path: {path}\n  format: csv\n  items_format: none\n"
                   f"  columns: {{user: user_id, item: item_id, timestamp: timestamp, value: rating}}\n"
                   f"artifacts:\n  root: {tmp_path / 'art'}\n")
    return str(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REFUSED))
def test_the_command_refuses_a_bad_file_with_one_line_and_no_traceback(name, write_file, tmp_path):
    # Beam logs a failing step's exception with its traceback before raising it: without -v the
    # person at the terminal sees the one line only.
    out = run_cli(["build-dataset", "--config", refused_config(write_file, tmp_path, name)])
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith(f"error: {tmp_path / name}: {REFUSED[name][1]}"), out.stderr
    assert out.stderr.count("\n") == 1 and "while running" not in out.stderr   # nor Beam's step name
    assert ds.latest_dataset_id(str(tmp_path / "art")) is None


@pytest.mark.slow
def test_the_command_shows_the_traceback_with_verbose(write_file, tmp_path):
    out = run_cli(["-v", "build-dataset", "--config", refused_config(write_file, tmp_path, "mac.csv")])
    assert out.returncode != 0 and "Traceback" in out.stderr and "bare carriage return" in out.stderr


@pytest.mark.parametrize("arrow_type,unit", [(("us", "UTC"), "s"), (("ms", None), "ms"), (("s", None), "iso"),
                                             (None, "s")])
def test_native_parquet_timestamps_work_whatever_the_configured_unit(tmp_path, make_config, build_dataset,
                                                                     arrow_type, unit):
    """Your own data: a Parquet log with a native timestamp column was 100% bad_timestamp under unit s."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    n = 60
    when = pa.array(np.datetime64("2026-01-01T00:00:00") + np.arange(n) * np.timedelta64(1, "D")).cast(pa.timestamp("s"))
    ts = when.cast(pa.timestamp(*arrow_type)) if arrow_type else when.cast(pa.date32())   # None: a date column
    table = pa.table({"user_id": [f"u{i % 6}" for i in range(n)], "item_id": [f"i{i % 10}" for i in range(n)],
                      "ts": ts})
    path = str(tmp_path / "events.parquet")
    pq.write_table(table, path)
    cfg = make_config({"source": {"path": path, "format": "parquet", "timestamp_unit": unit,
                                  "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts", "value": ""}},
                       "feedback": {"mode": "implicit"}, "split": {"strategy": "leave_last_n", "leave_last_n": 1}})
    built = build_dataset(cfg)
    assert built.stats["accepted"] == n
    ts = built.read("train", ["timestamp"])["timestamp"]
    assert ts.min() >= 1767225600 and ts.max() < 1767225600 + 86400 * n    # 2026-01-01 onwards, in seconds


def test_a_non_movielens_log_needs_no_catalog_unless_it_names_one(make_config):
    from recsys.config import from_dict
    own = {"source": {"format": "parquet", "columns": {"value": ""}}, "feedback": {"mode": "implicit"}}
    assert from_dict(own).source.items_format == "none"
    assert from_dict({}).source.items_format == "movielens_movies"
    own["source"].update(items_path="c.csv", items_format="csv")
    assert from_dict(own).source.items_format == "csv"
