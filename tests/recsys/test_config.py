"""recsys/config.py: validation of the YAML mapping into typed objects, and its one-line errors."""
from __future__ import annotations

import os

import pytest
import yaml

from recsys import config as config_mod
from recsys.config import from_dict, is_url, load_config
from recsys.errors import ConfigError, RecsysError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config_error(data, base_dir="/base") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_dict(data, base_dir=base_dir)
    return info.value


def assert_one_line_naming(err: ConfigError, key: str, value) -> str:
    msg = str(err)
    assert "\n" not in msg, msg
    assert msg.startswith("config: "), msg
    assert f"{key}=" in msg, msg
    assert repr(value) in msg, msg
    assert err.key == key
    assert err.value == value
    return msg


# --- defaults ---------------------------------------------------------------------------------------

def test_defaults_are_valid():
    cfg = from_dict({}, base_dir="/base")
    assert cfg.source.format == "movielens_csv"
    assert cfg.feedback.mode == "rating"
    assert cfg.split.strategy == "temporal"
    assert cfg.base_dir == "/base"
    assert from_dict(None, base_dir="/base").to_dict() == cfg.to_dict()


def test_repo_config_loads_and_resolves_against_its_directory():
    path = os.path.join(REPO, "data", "recsys.yaml")
    cfg = load_config(path)
    data_dir = os.path.join(REPO, "data")
    assert cfg.base_dir == data_dir
    assert cfg.resolve(cfg.source.path) == os.path.join(data_dir, "ml-latest-small", "ratings.csv")
    assert cfg.resolve(cfg.artifacts.root) == os.path.join(REPO, "artifacts")
    assert os.path.exists(cfg.resolve(cfg.source.path))
    assert os.path.exists(cfg.resolve(cfg.source.items_path))


def test_load_config_none_gives_defaults_on_data_dir(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None)
    assert cfg.base_dir == os.path.join(str(tmp_path), "data")
    assert cfg.to_dict() == from_dict({}).to_dict()


def test_nested_values_are_applied():
    cfg = from_dict({
        "source": {"path": "x.csv", "format": "csv", "delimiter": ";", "header": False,
                   "columns": {"user": "uid", "item": "sku", "timestamp": "ts", "value": "stars"},
                   "timestamp_unit": "ms", "max_id_length": 10},
        "feedback": {"min_rating": 4, "rating_range": [1, 5]},
        "filters": {"min_user_interactions": 3, "min_item_interactions": 4, "max_rounds": 7},
        "split": {"strategy": "leave_last_n", "leave_last_n": 2},
        "runner": {"shuffle_buckets": 3, "options": {"direct_num_workers": 1}},
        "artifacts": {"root": "out"},
    }, base_dir="/base")
    assert cfg.source.columns.user == "uid" and cfg.source.columns.value == "stars"
    assert cfg.source.columns.event == ""  # untouched fields keep their defaults
    assert cfg.source.delimiter == ";" and cfg.source.header is False
    assert cfg.feedback.min_rating == 4.0 and isinstance(cfg.feedback.min_rating, float)
    assert cfg.filters.max_rounds == 7
    assert cfg.split.leave_last_n == 2
    assert cfg.runner.options == {"direct_num_workers": 1}
    assert cfg.resolve(cfg.artifacts.root) == os.path.normpath("/base/out")


def test_null_section_and_null_string_mean_default_and_empty():
    cfg = from_dict({"split": None, "source": {"items_path": None, "items_format": "none"}}, base_dir="/b")
    assert cfg.split.strategy == "temporal"
    assert cfg.source.items_path == ""


def test_to_dict_round_trips_without_base_dir():
    cfg = from_dict({"filters": {"max_rounds": 9}}, base_dir="/base")
    d = cfg.to_dict()
    assert "base_dir" not in d
    assert d["filters"]["max_rounds"] == 9
    assert from_dict(yaml.safe_load(yaml.safe_dump(d)), base_dir="/base").to_dict() == d


# --- path resolution --------------------------------------------------------------------------------

@pytest.mark.parametrize("path,expected", [
    ("ratings.csv", "/base/dir/ratings.csv"),
    ("../artifacts", "/base/artifacts"),
    ("sub/./x/../y.csv", "/base/dir/sub/y.csv"),
    ("/abs/path.csv", "/abs/path.csv"),
    ("gs://bucket/data/*.csv", "gs://bucket/data/*.csv"),
    ("s3://b/k", "s3://b/k"),
    ("", ""),
])
def test_resolve(path, expected):
    assert from_dict({}, base_dir="/base/dir").resolve(path) == expected


@pytest.mark.parametrize("path,url", [("gs://b/x", True), ("s3://b", True), ("hdfs+x://h/p", True),
                                      ("/local", False), ("rel/x", False), ("c:/x", False), ("", False)])
def test_is_url(path, url):
    assert is_url(path) is url


# --- unknown keys -----------------------------------------------------------------------------------

@pytest.mark.parametrize("data,key,value", [
    ({"sources": {"path": "x"}}, "sources", {"path": "x"}),
    ({"source": {"pth": "x.csv"}}, "source.pth", "x.csv"),
    ({"source": {"columns": {"rating": "stars"}}}, "source.columns.rating", "stars"),
    ({"source": {"item_columns": {"name": "t"}}}, "source.item_columns.name", "t"),
    ({"filters": {"max_round": 3}}, "filters.max_round", 3),
    ({"runner": {"buckets": 4}}, "runner.buckets", 4),
    ({"base_dir": "/elsewhere"}, "base_dir", "/elsewhere"),
])
def test_unknown_key_is_rejected(data, key, value):
    msg = assert_one_line_naming(config_error(data), key, value)
    assert "unknown key" in msg and "allowed:" in msg


def test_unknown_key_message_lists_the_allowed_keys():
    msg = str(config_error({"filters": {"min_users": 3}}))
    for allowed in ("max_rounds", "min_item_interactions", "min_user_interactions"):
        assert allowed in msg


# --- wrong types ------------------------------------------------------------------------------------

@pytest.mark.parametrize("data,key,value,expected", [
    ({"filters": {"max_rounds": "ten"}}, "filters.max_rounds", "ten", "integer"),
    ({"filters": {"max_rounds": 2.5}}, "filters.max_rounds", 2.5, "integer"),
    ({"filters": {"min_user_interactions": True}}, "filters.min_user_interactions", True, "integer"),
    ({"runner": {"shuffle_buckets": [4]}}, "runner.shuffle_buckets", [4], "integer"),
    ({"feedback": {"min_rating": "high"}}, "feedback.min_rating", "high", "number"),
    ({"feedback": {"min_rating": False}}, "feedback.min_rating", False, "number"),
    ({"split": {"test_fraction": "10%"}}, "split.test_fraction", "10%", "number"),
    ({"source": {"header": "yes"}}, "source.header", "yes", "true or false"),
    ({"source": {"header": 1}}, "source.header", 1, "true or false"),
    ({"source": {"path": ["a.csv", "b.csv"]}}, "source.path", ["a.csv", "b.csv"], "string"),
    ({"source": {"format": True}}, "source.format", True, "string"),
    ({"feedback": {"rating_range": "0.5-5"}}, "feedback.rating_range", "0.5-5", "list"),
    ({"feedback": {"event_weights": ["view"]}}, "feedback.event_weights", ["view"], "mapping"),
    ({"runner": {"options": "--foo"}}, "runner.options", "--foo", "mapping"),
    ({"source": "ratings.csv"}, "source", "ratings.csv", "mapping"),
    ({"source": {"columns": ["u", "i"]}}, "source.columns", ["u", "i"], "mapping"),
    ({"filters": 5}, "filters", 5, "mapping"),
])
def test_wrong_type_is_rejected(data, key, value, expected):
    msg = assert_one_line_naming(config_error(data), key, value)
    assert expected in msg


def test_top_level_must_be_a_mapping():
    err = config_error(["source"])
    assert "\n" not in str(err) and "<root>" in str(err) and "mapping" in str(err)


def test_int_is_accepted_for_a_float_and_as_a_string():
    cfg = from_dict({"feedback": {"min_rating": 4}, "source": {"delimiter": 5}}, base_dir="/b")
    assert cfg.feedback.min_rating == 4.0
    assert cfg.source.delimiter == "5"


# --- out-of-range and invalid values ---------------------------------------------------------------

@pytest.mark.parametrize("data,key,value", [
    ({"source": {"format": "xlsx"}}, "source.format", "xlsx"),
    ({"source": {"items_format": "xml"}}, "source.items_format", "xml"),
    ({"source": {"timestamp_unit": "us"}}, "source.timestamp_unit", "us"),
    ({"source": {"delimiter": "::"}}, "source.delimiter", "::"),
    ({"source": {"delimiter": ""}}, "source.delimiter", ""),
    ({"source": {"path": ""}}, "source.path", ""),
    ({"source": {"max_id_length": 0}}, "source.max_id_length", 0),
    ({"source": {"max_id_length": 65537}}, "source.max_id_length", 65537),
    ({"source": {"columns": {"user": ""}}}, "source.columns.user", ""),
    ({"source": {"columns": {"timestamp": None}}}, "source.columns.timestamp", ""),
    ({"feedback": {"mode": "explicit"}}, "feedback.mode", "explicit"),
    ({"model": {"history_items": "shared"}}, "model.history_items", "shared"),
    ({"model": {"loss": "bpr"}}, "model.loss", "bpr"),
    ({"model": {"negative_weight": 0}}, "model.negative_weight", 0.0),
    ({"model": {"negatives": "hard"}}, "model.negatives", "hard"),
    ({"model": {"loss": "bsl", "margin": 0.1}}, "model.margin", 0.1),
    ({"model": {"loss": "softmax", "margin": -0.1}}, "model.margin", -0.1),
    ({"model": {"loss": "softmax", "margin": 2}}, "model.margin", 2.0),
    ({"model": {"negative_weight": 10.5}}, "model.negative_weight", 10.5),
    ({"model": {"uniform_negatives": 2048}}, "model.uniform_negatives", 2048),
    ({"model": {"negatives": "uniform", "uniform_negatives": 1 << 21}}, "model.uniform_negatives", 1 << 21),
    ({"model": {"extra_negatives": 2048}}, "model.extra_negatives", 2048),
    ({"model": {"negatives": "uniform"}}, "model.uniform_negatives", 0),
    ({"model": {"negatives": "mixed", "uniform_negatives": -1}}, "model.uniform_negatives", -1),
    ({"feedback": {"min_rating": 6}}, "feedback.min_rating", 6.0),
    ({"feedback": {"min_rating": 0.0}}, "feedback.min_rating", 0.0),
    ({"feedback": {"rating_range": [5, 1]}}, "feedback.rating_range", [5, 1]),
    ({"feedback": {"rating_range": [1]}}, "feedback.rating_range", [1]),
    ({"feedback": {"rating_range": [1, "5"]}}, "feedback.rating_range", [1, "5"]),
    ({"filters": {"min_user_interactions": 0}}, "filters.min_user_interactions", 0),
    ({"filters": {"min_item_interactions": -1}}, "filters.min_item_interactions", -1),
    ({"filters": {"max_rounds": 0}}, "filters.max_rounds", 0),
    ({"filters": {"max_rounds": 1001}}, "filters.max_rounds", 1001),
    ({"split": {"strategy": "random"}}, "split.strategy", "random"),
    ({"split": {"test_fraction": 0}}, "split.test_fraction", 0.0),
    ({"split": {"test_fraction": 1.0}}, "split.test_fraction", 1.0),
    ({"split": {"validation_fraction": -0.1}}, "split.validation_fraction", -0.1),
    ({"split": {"test_fraction": 0.5, "validation_fraction": 0.5}}, "split.validation_fraction", 0.5),
    ({"split": {"leave_last_n": 0}}, "split.leave_last_n", 0),
    ({"runner": {"name": "PrismRunner"}}, "runner.name", "PrismRunner"),
    ({"runner": {"shuffle_buckets": 0}}, "runner.shuffle_buckets", 0),
    ({"runner": {"shuffle_buckets": 5000}}, "runner.shuffle_buckets", 5000),
    ({"runner": {"block_size_mb": 0}}, "runner.block_size_mb", 0),
    ({"runner": {"spill": "disk"}}, "runner.spill", "disk"),
    ({"artifacts": {"root": ""}}, "artifacts.root", ""),
    ({"source": {"item_columns": {"attributes": {"size": "ordinal"}}}}, "source.item_columns.attributes.size",
     "ordinal"),
    ({"source": {"item_columns": {"attributes": {"tags": {"kind": "multi", "separator": ""}}}}},
     "source.item_columns.attributes.tags.separator", ""),
    ({"source": {"item_columns": {"attributes": {"brand": {"kind": "categorical", "separator": ";"}}}}},
     "source.item_columns.attributes.brand.separator", ";"),
    ({"source": {"item_columns": {"attributes": {"tags": {"kind": "multi", "sep": ";"}}}}},
     "source.item_columns.attributes.tags", {"kind": "multi", "sep": ";"}),
])
def test_out_of_range_value_is_rejected(data, key, value):
    assert_one_line_naming(config_error(data), key, value)


def test_a_removed_key_says_what_replaced_it():
    msg = str(config_error({"model": {"extra_negatives": 2048}}))
    assert "negatives: mixed" in msg and "uniform_negatives" in msg


def test_out_of_range_message_states_the_rule():
    msg = str(config_error({"runner": {"shuffle_buckets": 0}}))
    assert msg == "config: runner.shuffle_buckets=0 is invalid: between 1 and 4096"
    msg = str(config_error({"source": {"format": "xlsx"}}))
    for fmt in config_mod.INTERACTION_FORMATS:
        assert fmt in msg


@pytest.mark.parametrize("value", [1, 1000])
def test_max_rounds_bounds_are_inclusive(value):
    assert from_dict({"filters": {"max_rounds": value}}).filters.max_rounds == value


def test_min_rating_at_range_edges_is_valid():
    assert from_dict({"feedback": {"min_rating": 0.5}}).feedback.min_rating == 0.5
    assert from_dict({"feedback": {"min_rating": 5}}).feedback.min_rating == 5.0


# --- cross-field rules ------------------------------------------------------------------------------

def test_rating_mode_on_generic_csv_needs_a_value_column():
    err = config_error({"source": {"format": "csv"}})
    assert_one_line_naming(err, "source.columns.value", "")
    assert "rating" in str(err)
    cfg = from_dict({"source": {"format": "csv", "columns": {"value": "stars"}}})
    assert cfg.source.columns.value == "stars"


@pytest.mark.parametrize("fmt", ["movielens_csv", "movielens_100k", "movielens_1m"])
def test_movielens_formats_have_a_fixed_rating_column(fmt):
    assert from_dict({"source": {"format": fmt}}).source.format == fmt


def test_event_mode_needs_an_event_column():
    err = config_error({"source": {"format": "jsonl"}, "feedback": {"mode": "event"}})
    assert_one_line_naming(err, "source.columns.event", "")


@pytest.mark.parametrize("weights", [{}, {"view": 0}, {"view": -1.0}, {"view": "high"}])
def test_event_weights_must_be_positive_numbers(weights):
    err = config_error({"source": {"format": "jsonl", "columns": {"event": "type"}},
                        "feedback": {"mode": "event", "event_weights": weights}})
    assert_one_line_naming(err, "feedback.event_weights", weights)


def test_min_rating_is_not_checked_outside_rating_mode():
    cfg = from_dict({"source": {"format": "csv"}, "feedback": {"mode": "implicit", "min_rating": 99}})
    assert cfg.feedback.mode == "implicit"


# --- load_config ------------------------------------------------------------------------------------

def test_load_config_missing_file(tmp_path):
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_one_line_naming(info.value, "--config", path)
    assert "not found" in str(info.value)


def test_load_config_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("source:\n  path: [unclosed\n  format: csv\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "\n" not in str(info.value) and "YAML" in str(info.value)


def test_load_config_errors_name_nested_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("filters:\n  max_rounds: many\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert_one_line_naming(info.value, "filters.max_rounds", "many")


def test_load_config_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    cfg = load_config(str(path))
    assert cfg.base_dir == str(tmp_path)
    assert cfg.to_dict() == from_dict({}).to_dict()


def test_config_error_is_a_recsys_error():
    assert issubclass(ConfigError, RecsysError)


# --- cases that used to be tracebacks (now one-line errors) ---------------------------------------------

@pytest.mark.parametrize("name", ["prismrunner", "Prism", "PRISMRUNNER"])
def test_prism_in_any_case_is_refused(name):
    assert "downloads a binary" in assert_one_line_naming(config_error({"runner": {"name": name}}), "runner.name", name)


def test_an_unknown_runner_name_is_refused_and_known_ones_are_matched_in_any_case():
    msg = assert_one_line_naming(config_error({"runner": {"name": "DaskRunner"}}), "runner.name", "DaskRunner")
    assert "DataflowRunner" in msg and "tagged outputs" in msg
    msg = assert_one_line_naming(config_error({"runner": {"name": "SamzaRunner"}}), "runner.name", "SamzaRunner")
    assert "FlinkRunner" in msg
    assert from_dict({"runner": {"name": "directrunner"}}).runner.name == "DirectRunner"


@pytest.mark.parametrize("key,value", [("eval_users", -1), ("eval_users", 0), ("seed", -1)])
def test_negative_eval_users_or_seed_is_refused(key, value):
    assert_one_line_naming(config_error({"model": {key: value}}), f"model.{key}", value)


def test_a_repeated_yaml_key_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  dim: 8\n  dim: 16\n")
    with pytest.raises(ConfigError, match="'dim' appears twice"):
        load_config(str(path))


@pytest.mark.parametrize("content,what", [(b"\xff\xfe\x00m\x00o", "not UTF-8"), (None, "a directory")])
def test_a_non_utf8_config_or_a_directory_as_config_is_one_line(tmp_path, content, what):
    path = tmp_path / "c.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert what in str(info.value) and "\n" not in str(info.value)


def test_a_bad_beam_option_is_one_line_naming_runner_options(capsys):
    from pipelines.runner import pipeline_options
    cfg = from_dict({"runner": {"options": {"direct_running_mode": "nonsense"}}})
    with pytest.raises(ConfigError) as info:
        pipeline_options(cfg)
    assert "runner.options" in str(info.value) and "invalid choice: 'nonsense'" in str(info.value)
    assert capsys.readouterr().err == ""      # argparse's usage text is not printed


def test_item_attributes_take_a_kind_or_a_kind_and_separator():
    from recsys.config import Attribute, item_attributes
    cfg = from_dict({"source": {"genre_separator": "/", "item_columns": {"attributes": {
        "price": "numeric", "genres2": "multi", "tags": {"kind": "multi", "separator": ";"}, "blurb": "text"}}}})
    assert item_attributes(cfg.source) == {"price": Attribute("numeric", "/"), "genres2": Attribute("multi", "/"),
                                           "tags": Attribute("multi", ";"), "blurb": Attribute("text", "/")}
