"""One YAML file, validated into typed objects. Every option has a default that works on `data/`.

Relative paths in the file are resolved against the file's own directory, so a config can travel with
its data; URLs with a scheme (gs://, s3://, ...) are left as they are.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from recsys.errors import ConfigError
from recsys.fsio import is_url
from recsys.schema import ITEM_FIXED_COLUMNS, RANKING_METRICS

INTERACTION_FORMATS = ("csv", "parquet", "jsonl", "movielens_csv", "movielens_100k", "movielens_1m")
ITEM_FORMATS = ("none", "movielens_movies", "csv", "parquet", "jsonl")
USER_FORMATS = ("none", "movielens_users", "csv", "parquet", "jsonl")
TIMESTAMP_UNITS = ("s", "ms", "iso")
FEEDBACK_MODES = ("rating", "event", "implicit")
SPLIT_STRATEGIES = ("temporal", "last_session", "leave_last_n")
EXCLUSIONS = ("auto", "seen", "bought", "none")
# Beam runners that work here or on a cluster (the PrismRunner downloads a binary at start).
RUNNERS = ("DirectRunner", "FnApiRunner", "DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner")


@dataclass
class Columns:
    """Which input column holds each field. `value` and `event` may be empty when the data has none."""
    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    value: str = ""
    event: str = ""


@dataclass
class ItemColumns:
    item: str = "item_id"
    title: str = "title"
    genres: str = "genres"
    year: str = ""
    # more catalog columns, by kind: categorical (one value), multi (values split by genre_separator, or
    # {kind: multi, separator: ";"}), numeric, date (ISO dates or datetimes; {kind: date, max_age_days: 365}
    # never recommends items older than that), text. All but text become filters of the service
    # (category:Books, tags:new, price<=50, published_at>=2024-10-01); all feed the two_tower candidate
    # tower (item_attributes()).
    attributes: dict = field(default_factory=dict)


ATTRIBUTE_KINDS = ("categorical", "multi", "numeric", "date", "text")
# what `recsys init` writes for a column it could not guess; validate refuses it, naming the key
UNGUESSED = "FILL_IN"


@dataclass(frozen=True)
class Attribute:
    """One catalog attribute: its kind (ATTRIBUTE_KINDS), for `multi` the separator of its values, for
    `date` the age in days past which an item is not recommended (0: any age)."""
    kind: str
    separator: str = "|"
    max_age_days: float = 0.0


def item_attributes(source: "SourceConfig") -> dict[str, Attribute]:
    """`source.item_columns.attributes` as {column: Attribute}.

    A value is a kind (`price: numeric`) or a mapping (`tags: {kind: multi, separator: ";"}`); a `multi`
    attribute without its own separator splits on `source.genre_separator`.
    """
    out = {}
    for name, spec in source.item_columns.attributes.items():
        if isinstance(spec, dict):
            out[name] = Attribute(spec.get("kind", ""), spec.get("separator") or source.genre_separator,
                                  float(spec.get("max_age_days") or 0))
        else:
            out[name] = Attribute(spec, source.genre_separator)
    return out


@dataclass
class UserColumns:
    user: str = "user_id"
    features: list = field(default_factory=list)   # categorical columns, e.g. [gender, age, country]


@dataclass
class SourceConfig:
    path: str = "ml-latest-small/ratings.csv"
    format: str = "movielens_csv"
    delimiter: str = ","
    header: bool = True
    columns: Columns = field(default_factory=Columns)
    timestamp_unit: str = "s"
    max_id_length: int = 256
    # A build that accepts fewer rows than this share of those read (or none at all) fails and does
    # not move datasets/LATEST: a wrong header or encoding must not publish an empty dataset.
    min_accepted_fraction: float = 0.5
    items_path: str = "ml-latest-small/movies.csv"
    items_format: str = "movielens_movies"
    item_columns: ItemColumns = field(default_factory=ItemColumns)
    genre_separator: str = "|"
    users_path: str = ""
    users_format: str = "none"
    # the share of catalog (or users file) rows that may repeat an earlier row's ID (the last one is kept);
    # above it the build stops: most often the key is the wrong column, or the file has a row per variant
    max_duplicate_share: float = 0.05
    user_columns: UserColumns = field(default_factory=UserColumns)


@dataclass
class FeedbackConfig:
    mode: str = "rating"
    min_rating: float = 3.5
    rating_range: list = field(default_factory=lambda: [0.5, 5.0])
    # mode: event. The weight of each event type as a training example; the defaults follow a shop's
    # funnel (docs/CONFIG.md).
    event_weights: dict = field(default_factory=lambda: {"view": 1.0, "click": 1.0, "cart": 2.0, "purchase": 3.0})
    unknown_events: str = "reject"  # reject: dead letter `unknown_event_type`; ignore: valid, weight 0 (not_positive)
    # modes event and implicit, with source.columns.value (a dwell time, a quantity): rows whose value is
    # below min_value get weight 0 (kept and counted as not positive, like a skip). A number applies to
    # every event type, {event: number} to those named. Rows without a value are not affected.
    min_value: float | dict | None = None
    # none | log: a row with a value v >= 1 weighs its event weight x (1 + ln v): 3 units of a product,
    # or a 300-second play, count more than one, but not 3x or 300x
    value_weight: str = "none"


@dataclass
class FiltersConfig:
    min_user_interactions: int = 5
    min_item_interactions: int = 2
    max_rounds: int = 50


@dataclass
class SplitConfig:
    strategy: str = "temporal"
    test_fraction: float = 0.1
    validation_fraction: float = 0.1
    leave_last_n: int = 1
    # last_session: a session ends after a gap of more than this many minutes; the leak detector counts
    # a held-out target touched (same user, same item) this recently before, in the query history
    session_gap_minutes: float = 30.0


@dataclass
class RunnerConfig:
    name: str = "DirectRunner"
    options: dict = field(default_factory=dict)
    shuffle_buckets: int = 8
    block_size_mb: int = 16
    # where build-dataset's row frames cross its shuffles: "files" (staging files in the dataset folder,
    # only paths through the runner), "off" (through the runner's own shuffle), "auto" (files on the
    # in-process runner, which holds every shuffled collection whole in memory; off elsewhere)
    spill: str = "auto"


@dataclass
class ArtifactsConfig:
    root: str = "../artifacts"


@dataclass
class Config:
    source: SourceConfig = field(default_factory=SourceConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    artifacts: ArtifactsConfig = field(default_factory=ArtifactsConfig)
    model: "ModelConfig" = field(default_factory=lambda: ModelConfig())
    evaluation: "EvaluationConfig" = field(default_factory=lambda: EvaluationConfig())
    index: "IndexConfig" = field(default_factory=lambda: IndexConfig())
    nightly: "NightlyConfig" = field(default_factory=lambda: NightlyConfig())
    gate: "GateConfig" = field(default_factory=lambda: GateConfig())
    # what a user is never recommended, served and offline alike: seen (every item they interacted
    # with) | bought (items of evaluation.target_events: a shop whose users rarely rebuy) | none (a
    # grocery's repeat purchases) | auto (bought with target_events, else seen)
    exclusion: str = "auto"
    base_dir: str = "."

    def resolve(self, path: str) -> str:
        """Resolve a path from the config against the config file's directory (URLs pass through)."""
        if not path or is_url(path) or os.path.isabs(path):
            return path
        return os.path.normpath(os.path.join(self.base_dir, path))

    def to_dict(self) -> dict:
        """The config as plain data (what a version's manifest records), without `base_dir`."""
        d = dataclasses.asdict(self)
        d.pop("base_dir")
        return d


# keys that were removed, with what replaced them (a plain "unknown key" would not say)
RENAMED = {"model.extra_negatives": "replaced by negatives: mixed with uniform_negatives: N (which, unlike "
                                    "extra_negatives, puts no logQ correction on the uniform draws)"}


def _build(cls, data: Any, prefix: str):
    """Build dataclass `cls` from a dict, rejecting unknown keys and wrong types with a named key."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(prefix or "<root>", data, "expected a mapping")
    known = {f.name: f for f in dataclasses.fields(cls) if f.name != "base_dir"}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in known:
            if full in RENAMED:
                raise ConfigError(full, value, RENAMED[full])
            raise ConfigError(full, value, f"unknown key; allowed: {', '.join(sorted(known))}")
        default = known[key].default_factory() if known[key].default_factory is not dataclasses.MISSING \
            else known[key].default
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value, full)
        else:
            kwargs[key] = _coerce(full, value, default)
    return cls(**kwargs)


def _coerce(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(key, value, "expected true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, value, "expected an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, value, "expected a number")
        return float(value)
    if isinstance(default, str):
        if value is None:
            return ""
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise ConfigError(key, value, "expected a string")
        return str(value)
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(key, value, "expected a list")
        return value
    if isinstance(default, dict):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(key, value, "expected a mapping")
        return value
    return value


def _check(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(key, value, allowed)


def _one_of(key: str, value: Any, choices) -> None:
    _check(value in choices, key, value, "allowed: " + ", ".join(choices))


def _is_number(v) -> bool:
    """A finite int or float from YAML (true/false are not numbers here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate(cfg: Config) -> Config:
    """Check value ranges and cross-field rules; raises ConfigError naming the first bad key."""
    s = cfg.source
    _check(bool(s.path), "source.path", s.path, "a path or glob to the interaction files is required")
    _one_of("source.format", s.format, INTERACTION_FORMATS)
    _one_of("source.items_format", s.items_format, ITEM_FORMATS)
    reserved = (*ITEM_FIXED_COLUMNS, "genre")              # "genre" is the filter key of "genres"
    for name, spec in s.item_columns.attributes.items():
        key = f"source.item_columns.attributes.{name}"
        _check(bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", str(name))) and name not in reserved,
               "source.item_columns.attributes", name,
               f"a column name of letters, digits and _, not one of {', '.join(reserved)}")
        if isinstance(spec, dict):
            _check(set(spec) <= {"kind", "separator", "max_age_days"}, key, spec,
                   "a kind, or a mapping with kind and separator (multi) or max_age_days (date)")
            _one_of(f"{key}.kind", spec.get("kind"), ATTRIBUTE_KINDS)
            sep = spec.get("separator")
            _check(sep is None or (isinstance(sep, str) and sep != ""), f"{key}.separator", sep,
                   "a non-empty string")
            _check(sep is None or spec.get("kind") == "multi", f"{key}.separator", sep,
                   "only a multi attribute has a separator")
            age = spec.get("max_age_days")
            _check(age is None or spec.get("kind") == "date", f"{key}.max_age_days", age,
                   "only a date attribute has a max_age_days")
            _check(age is None or (_is_number(age) and age > 0),
                   f"{key}.max_age_days", age, "a number of days > 0")
        else:
            _one_of(key, spec, ATTRIBUTE_KINDS)
    _one_of("source.users_format", s.users_format, USER_FORMATS)
    _check(s.users_format == "none" or bool(s.users_path), "source.users_path", s.users_path,
           f"a path is required when source.users_format is {s.users_format}")
    _check(all(isinstance(c, str) and c for c in s.user_columns.features), "source.user_columns.features",
           s.user_columns.features, "a list of column names")
    _check(s.users_format in ("none", "movielens_users") or bool(s.user_columns.features),
           "source.user_columns.features", s.user_columns.features,
           f"name at least one feature column when source.users_format is {s.users_format}")
    _one_of("source.timestamp_unit", s.timestamp_unit, TIMESTAMP_UNITS)
    _check(len(s.delimiter) == 1 and s.delimiter not in "\n\r\"", "source.delimiter", s.delimiter,
           "a single character other than a line break or a quote")
    _check(0.0 <= s.min_accepted_fraction <= 1.0, "source.min_accepted_fraction", s.min_accepted_fraction,
           "between 0 and 1")
    _check(0.0 <= s.max_duplicate_share <= 1.0, "source.max_duplicate_share", s.max_duplicate_share,
           "between 0 and 1 (1: never refuse)")
    _check(1 <= s.max_id_length <= 65536, "source.max_id_length", s.max_id_length, "between 1 and 65536")
    for name in ("user", "item", "timestamp"):
        _check(bool(getattr(s.columns, name)), f"source.columns.{name}", getattr(s.columns, name),
               "a column name is required")
    for name in ("user", "item", "timestamp", "event", "value"):
        _check(not str(getattr(s.columns, name)).startswith(UNGUESSED), f"source.columns.{name}",
               getattr(s.columns, name), "recsys init could not guess it: name a column of the file")
    f = cfg.feedback
    _one_of("feedback.mode", f.mode, FEEDBACK_MODES)
    r = f.rating_range
    _check(len(r) == 2 and all(isinstance(x, (int, float)) for x in r) and r[0] <= r[1],
           "feedback.rating_range", r, "[low, high] with low <= high")
    if f.mode == "rating":
        _check(r[0] <= f.min_rating <= r[1], "feedback.min_rating", f.min_rating,
               f"within feedback.rating_range {r}")
        _check(bool(s.columns.value) or s.format.startswith("movielens"), "source.columns.value",
               s.columns.value, "feedback.mode=rating needs a rating column")
    if f.mode == "event":
        _check(bool(s.columns.event), "source.columns.event", s.columns.event,
               "feedback.mode=event needs an event-type column")
        # 0: a known event that is not trained on and never relevant (a skip, a return): counted, not rejected
        _check(bool(f.event_weights) and all(_is_number(v) and v >= 0 for v in f.event_weights.values())
               and any(v > 0 for v in f.event_weights.values()),
               "feedback.event_weights", f.event_weights,
               "a mapping of event type to weight >= 0 with at least one > 0 (0: drop the event from training "
               "and relevance)")
    _one_of("feedback.unknown_events", f.unknown_events, ("reject", "ignore"))
    _one_of("feedback.value_weight", f.value_weight, ("none", "log"))
    if f.min_value is not None:
        _check(_is_number(f.min_value) or (isinstance(f.min_value, dict) and bool(f.min_value)
                                           and all(_is_number(v) for v in f.min_value.values())),
               "feedback.min_value", f.min_value, "a number, or a mapping of event type to a number")
        if isinstance(f.min_value, dict):
            _check(f.mode == "event", "feedback.min_value", f.min_value,
                   "a number: per event type needs feedback.mode event")
            unknown = sorted(set(f.min_value) - set(f.event_weights))
            _check(not unknown, "feedback.min_value", unknown, "event types of feedback.event_weights")
    if f.min_value is not None or f.value_weight != "none":
        what = "feedback.min_value" if f.min_value is not None else "feedback.value_weight"
        _check(f.mode in ("event", "implicit"), what, f.min_value if f.min_value is not None else f.value_weight,
               "only with feedback.mode event or implicit (a rating is thresholded by feedback.min_rating)")
        _check(bool(s.columns.value), "source.columns.value", s.columns.value,
               f"{what} needs the column of values (a dwell time, a quantity)")
    fl = cfg.filters
    _check(fl.min_user_interactions >= 1, "filters.min_user_interactions", fl.min_user_interactions, ">= 1")
    _check(fl.min_item_interactions >= 1, "filters.min_item_interactions", fl.min_item_interactions, ">= 1")
    _check(1 <= fl.max_rounds <= 1000, "filters.max_rounds", fl.max_rounds, "between 1 and 1000")
    sp = cfg.split
    _one_of("split.strategy", sp.strategy, SPLIT_STRATEGIES)
    _check(0 < sp.test_fraction < 1, "split.test_fraction", sp.test_fraction, "strictly between 0 and 1")
    _check(0 <= sp.validation_fraction < 1, "split.validation_fraction", sp.validation_fraction,
           "between 0 and 1")
    _check(sp.test_fraction + sp.validation_fraction < 1, "split.validation_fraction",
           sp.validation_fraction, "test_fraction + validation_fraction must be < 1")
    _check(sp.leave_last_n >= 1, "split.leave_last_n", sp.leave_last_n, ">= 1")
    _check(0 < sp.session_gap_minutes <= 7 * 24 * 60, "split.session_gap_minutes", sp.session_gap_minutes,
           "more than 0 and at most a week (10080)")
    ru = cfg.runner
    refused = {"prism": "PrismRunner downloads a binary at start (fails offline)",
               "dask": "DaskRunner has no Impulse translation and mixes tagged outputs (silently wrong results)",
               "interactive": "InteractiveRunner is for notebooks"}
    why = refused.get(str(ru.name).lower().replace("runner", ""))
    _check(why is None, "runner.name", ru.name, f"{why}; use one of {', '.join(RUNNERS)}")
    canonical = {r.lower(): r for r in RUNNERS}
    _check(ru.name.lower() in canonical, "runner.name", ru.name, f"one of {', '.join(RUNNERS)}")
    ru.name = canonical[ru.name.lower()]
    _check(1 <= ru.shuffle_buckets <= 4096, "runner.shuffle_buckets", ru.shuffle_buckets, "between 1 and 4096")
    _check(1 <= ru.block_size_mb <= 1024, "runner.block_size_mb", ru.block_size_mb, "between 1 and 1024")
    _one_of("runner.spill", ru.spill, ("auto", "files", "off"))
    m = cfg.model
    _check(1 <= m.dim <= 4096, "model.dim", m.dim, "between 1 and 4096")
    _check(0 < m.temperature <= 10, "model.temperature", m.temperature, "in (0, 10]")
    _one_of("model.loss", m.loss, ("softmax", "bsl"))
    _check(0 < m.negative_weight <= 10, "model.negative_weight", m.negative_weight, "in (0, 10]")
    _check(0 <= m.margin < 2, "model.margin", m.margin, "in [0, 2)")
    # in the bsl form the positive is outside the normalizer: a margin only shifts the loss by a constant
    _check(m.margin == 0 or m.loss == "softmax", "model.margin", m.margin, "0 with loss: bsl (it would change nothing)")
    _one_of("model.negatives", m.negatives, ("in_batch", "uniform", "mixed"))
    if m.negatives == "in_batch":
        _check(m.uniform_negatives == 0, "model.uniform_negatives", m.uniform_negatives,
               "0 with negatives: in_batch (set negatives: uniform or mixed to use them)")
    else:
        _check(1 <= m.uniform_negatives <= 1 << 20, "model.uniform_negatives", m.uniform_negatives,
               f"between 1 and 1048576 with negatives: {m.negatives}")
    _check(1 <= m.history_length <= 1000, "model.history_length", m.history_length, "between 1 and 1000")
    _one_of("model.history_items", m.history_items, ("own", "candidate"))
    _check(0 <= m.batch_size <= 1 << 20, "model.batch_size", m.batch_size,
           "between 1 and 1048576, or 0 (from the training set's size)")
    _check(0 < m.learning_rate < 10, "model.learning_rate", m.learning_rate, "in (0, 10)")
    _one_of("model.lr_schedule", m.lr_schedule, ("constant", "cosine"))
    _check(1 <= m.epochs <= 10000, "model.epochs", m.epochs, "between 1 and 10000")
    _check(m.eval_users >= 1, "model.eval_users", m.eval_users, ">= 1")
    _check(0 <= m.seed < 2 ** 32, "model.seed", m.seed, "between 0 and 2**32 - 1")
    _check(m.patience >= 1, "model.patience", m.patience, ">= 1")
    _check(m.max_train_minutes >= 0, "model.max_train_minutes", m.max_train_minutes, ">= 0 (0: no budget)")
    _one_of("model.distribute", m.distribute, ("none", "mirrored", "multi_worker_mirrored", "parameter_server"))
    _check(m.warm_start_epochs >= 0, "model.warm_start_epochs", m.warm_start_epochs, ">= 0 (0: always search)")
    _check(m.eval_k >= 1, "model.eval_k", m.eval_k, ">= 1")
    _check(m.popularity_window_days >= 0, "model.popularity_window_days", m.popularity_window_days, ">= 0 (0 = all)")
    _check(isinstance(cfg.evaluation.target_events, list)
           and all(isinstance(e, str) and e for e in cfg.evaluation.target_events),
           "evaluation.target_events", cfg.evaluation.target_events, "a list of event types (empty: all)")
    _check(cfg.feedback.mode != "event" or set(cfg.evaluation.target_events) <= set(cfg.feedback.event_weights),
           "evaluation.target_events", cfg.evaluation.target_events,
           f"event types of feedback.event_weights ({', '.join(cfg.feedback.event_weights)})")
    ks = cfg.evaluation.ks
    _check(bool(ks) and all(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 10000 for k in ks),
           "evaluation.ks", ks, "a non-empty list of integers in [1, 10000]")
    _check(cfg.evaluation.max_users >= 0, "evaluation.max_users", cfg.evaluation.max_users,
           ">= 0 (0: every user)")
    ix = cfg.index
    _one_of("index.kind", ix.kind, ("auto", "brute_force", "sparse_exact", "scann"))
    _check(ix.brute_force_below >= 0, "index.brute_force_below", ix.brute_force_below, ">= 0")
    _check(ix.num_leaves >= 0, "index.num_leaves", ix.num_leaves, ">= 0 (0 = from catalog size)")
    _check(ix.leaves_to_search >= 0, "index.leaves_to_search", ix.leaves_to_search, ">= 0 (0 = from catalog size)")
    _check(ix.reorder >= 1, "index.reorder", ix.reorder, ">= 1")
    _one_of("index.partitioning", ix.partitioning, ("auto", "spherical", "generic"))
    _check(ix.dimensions_per_block in (1, 2, 4, 8), "index.dimensions_per_block", ix.dimensions_per_block,
           "one of 1, 2, 4, 8")
    _check(0 <= ix.min_recall_at_10 <= 1, "index.min_recall_at_10", ix.min_recall_at_10, "between 0 and 1")
    _check(ix.recall_sample_users >= 1, "index.recall_sample_users", ix.recall_sample_users, ">= 1")
    nc = cfg.nightly
    # the names in nightly.models are checked where models are created (recsys.models.check_names):
    # the model registry sits above this module
    _check(bool(nc.models) and all(isinstance(m, str) for m in nc.models), "nightly.models", nc.models,
           "a non-empty list of model names")
    _check(bool(re.fullmatch(rf"({'|'.join(RANKING_METRICS)})@\d+", nc.primary_metric))
           and int(nc.primary_metric.split("@")[1]) in cfg.evaluation.ks,
           "nightly.primary_metric", nc.primary_metric,
           f"<metric>@<k> with <metric> one of {', '.join(RANKING_METRICS)} and k in evaluation.ks {cfg.evaluation.ks}")
    _check(nc.tolerance >= 0, "nightly.tolerance", nc.tolerance, ">= 0")
    _check(nc.keep_versions >= 2, "nightly.keep_versions", nc.keep_versions, ">= 2 (published + previous)")
    _check(nc.keep_datasets >= 1, "nightly.keep_datasets", nc.keep_datasets, ">= 1")
    _check(nc.lock_stale_hours > 0, "nightly.lock_stale_hours", nc.lock_stale_hours, "> 0")
    _check(1 <= nc.batch_top_n <= 1000, "nightly.batch_top_n", nc.batch_top_n, "between 1 and 1000")
    _check(nc.batch_users_per_bundle >= 1, "nightly.batch_users_per_bundle", nc.batch_users_per_bundle, ">= 1")
    _check(bool(cfg.artifacts.root), "artifacts.root", cfg.artifacts.root, "a directory or URL is required")
    _one_of("exclusion", cfg.exclusion, EXCLUSIONS)
    g = cfg.gate
    _check(0 <= g.max_slice_loss <= 1, "gate.max_slice_loss", g.max_slice_loss, "between 0 and 1 (0: no slice guard)")
    _check(g.new_item_days >= 0, "gate.new_item_days", g.new_item_days, ">= 0")
    _check(g.short_history >= 0, "gate.short_history", g.short_history, ">= 0")
    _check(cfg.exclusion != "bought" or bool(cfg.evaluation.target_events), "exclusion", cfg.exclusion,
           "bought needs evaluation.target_events (the events that are purchases)")
    return cfg


def exclusion_rule(exclusion: str, target_events) -> str:
    """The exclusion in force: `auto` is bought with target events, else seen."""
    if exclusion == "auto":
        return "bought" if target_events else "seen"
    return exclusion


def from_dict(data: dict | None, base_dir: str = ".") -> Config:
    """Validate a config mapping (as parsed from YAML) into a Config."""
    cfg = _build(Config, data or {}, "")
    cfg.base_dir = base_dir
    source = (data or {}).get("source") or {}
    if cfg.source.format not in ("movielens_csv", "movielens_100k", "movielens_1m") and \
            "items_format" not in source and "items_path" not in source:
        # The MovieLens catalog is the default only for MovieLens logs: a team's own log has no
        # item metadata unless its config names a catalog.
        cfg.source.items_format = "none"
    return validate(cfg)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the last one would win silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (line {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path: str | None) -> Config:
    """Load and validate a YAML config file; `None` gives the defaults (resolved against `data/`)."""
    if path is None:
        return from_dict({}, base_dir=os.path.join(os.getcwd(), "data"))
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise ConfigError("--config", path, "file not found") from None
    except IsADirectoryError:
        raise ConfigError("--config", path, "a directory, not a YAML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("--config", path, f"not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError("--config", path, f"cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError("--config", path, f"not valid YAML ({' '.join(str(exc).split())[:300]})") from None
    return from_dict(data, base_dir=os.path.dirname(os.path.abspath(path)))


@dataclass
class ModelConfig:
    """Retrieval model and training options; defaults are the ones that measured best (docs/RESULTS.md)."""
    dim: int = 64
    normalize: bool = True
    temperature: float = 0.1
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    # the loss: softmax | bsl (τ2 · logsumexp(negatives) - positive, τ2 = negative_weight; recsys/models/loss.py).
    # bsl 1.22 measured better on validation on MovieLens (mf +7.5%, two_tower +7.3% recall@20) and
    # Gowalla (+3.1%); docs/RESULTS.md
    loss: str = "bsl"
    negative_weight: float = 1.22
    # negatives: in_batch (the batch's other positives, logQ-corrected) | uniform (uniform_negatives items
    # drawn uniformly, shared by the batch, no correction) | mixed (both)
    negatives: str = "in_batch"
    uniform_negatives: int = 0
    margin: float = 0.0             # subtracted from the positive's cosine before the temperature
    use_item_features: bool = True
    # a learned per-item bias added to the score (an extra column of the item vectors, 1 in the query
    # vectors): popularity need not be squeezed into the directions of normalized vectors. Off: on the
    # generated 3,000-user shop log it lowered validation recall@20 (two_tower 0.2661 -> 0.2505, mf
    # 0.2510 -> 0.2224; benchmarks/shop_future.py --set model.item_bias=true, docs/RESULTS.md)
    item_bias: bool = False
    # two_tower: a user ID embedding beside the pooled history (without: validation recall@20 0.2661 ->
    # 0.2367 on the generated 3,000-user shop log, where the history alone looks most like the rule)
    use_user_id: bool = True
    use_user_features: bool = True  # two_tower: categorical user features from source.users_path, if any
    history_length: int = 20
    history_items: str = "own"      # two_tower history table: own | candidate (the item tower's, no gradient)
    # 0: from the training set's size (recsys.models.training.auto_batch_size): 256 below ~131k training
    # rows, 512 above. Chosen on validation of the generated shop log at 133k and 1.5M training rows,
    # where 2048 lost 10-28% (benchmarks/shop_future.py; docs/RESULTS.md).
    batch_size: int = 0
    learning_rate: float = 0.01
    lr_schedule: str = "constant"   # constant | cosine (decays to 0 over `epochs`)
    epochs: int = 30
    patience: int = 3
    refit: bool = True              # after early stopping, retrain on train + validation for the chosen epochs
    # each model's training time budget in minutes, epoch selection and refit together (0: none): the
    # selection fit keeps back the refit's time, or gives up the refit for more epochs while validation
    # still rises (recsys.models.training.after_epoch)
    max_train_minutes: float = 0.0
    # > 0: when a previous version of the model exists, train this many epochs from its weights (on
    # train + validation with refit) instead of an epoch search; 0: always search (benchmarks/warm_start.py)
    warm_start_epochs: int = 0
    # tf.distribute: none | mirrored (this machine's devices) | multi_worker_mirrored | parameter_server
    # (TF_CONFIG names the cluster; docs/SCALING.md), and
    # whether every replica's positives are every query's negatives (the global batch's softmax)
    distribute: str = "none"
    gather_candidates: bool = True
    eval_k: int = 20
    seed: int = 0
    popularity_window_days: int = 0
    # attribute_popularity: the catalog attribute whose values a user's taste is counted in ("": genres
    # when the catalog has them, else its first categorical attribute); `recsys init` writes one
    rule_attribute: str = ""
    eval_users: int = 5000          # validation users sampled for the per-epoch early-stopping check


@dataclass
class EvaluationConfig:
    ks: list = field(default_factory=lambda: [10, 20, 50])
    target_events: list = field(default_factory=list)   # e.g. [purchase]: train on all events, measure these
    # more evaluable users than this: a seeded random sample of this many is evaluated (0: all); the
    # sample size is reported beside the confidence intervals
    max_users: int = 100_000
    sample_seed: int = 0


@dataclass
class IndexConfig:
    """ScaNN index settings; 0 means "follow the catalog size" (recsys/retrieval/index.py default_params)."""
    kind: str = "auto"                 # auto | brute_force | sparse_exact (rules' vectors) | scann
    brute_force_below: int = 50000
    num_leaves: int = 0                # 0 = 2 sqrt(n), at most 4000
    leaves_to_search: int = 0          # 0 = 1% of the leaves, at least 8 and enough to cover ~10,000 items
    reorder: int = 200                 # AH candidates re-scored exactly (benchmarks/ann.py)
    partitioning: str = "auto"         # auto (spherical when every item vector is unit-norm) | spherical | generic
    dimensions_per_block: int = 2
    anisotropic_threshold: float = 0.2
    training_sample_size: int = 250000
    recall_sample_users: int = 1000
    min_recall_at_10: float = 0.9


@dataclass
class GateConfig:
    """Slices the nightly gate guards beside the primary metric (recsys.evaluation.compare.slice_losses)."""
    # a candidate that loses more than this share of production's primary metric on a slice is held,
    # when the loss is significant (its 95% CI below 0) and the slice has enough users; 0 disables
    max_slice_loss: float = 0.2
    new_item_days: int = 14          # "new items": first seen within this many days before the test period
    short_history: int = 5           # "short histories": users with at most this many known interactions


@dataclass
class NightlyConfig:
    models: list = field(default_factory=lambda: ["two_tower", "mf", "popularity"])
    primary_metric: str = "recall@20"     # the metric training early-stops on, too (model.eval_k)
    tolerance: float = 0.0          # publish if candidate >= production - tolerance on the primary metric
    keep_versions: int = 6          # prune older versions beyond this (never the published or previous one)
    batch_top_n: int = 50
    batch_users_per_bundle: int = 2000
    keep_datasets: int = 6          # prune older datasets beyond this (never LATEST or a kept version's)
    lock_stale_hours: float = 12.0  # a nightly lock older than this is taken over (see pipelines/nightly.py)
    # run each step (build, each model's training, evaluate + gate, index, batch) in a process of its
    # own: what a step allocated goes back to the OS when it ends, so the run's peak memory is its
    # largest step's, not their sum, and the nightly's own process never loads TensorFlow
    isolate_steps: bool = True
