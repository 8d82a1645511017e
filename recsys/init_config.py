"""`recsys init`: read a sample of a team's files and write a config that works as it is.

It infers which columns hold the user, the item, the time, the event type or the rating, how time is
written (a native timestamp type, epoch seconds or milliseconds, ISO strings), which event types occur
(with proposed weights), and which catalog columns can be filters (categorical, multi-valued, numeric).
What it could not decide is said, not guessed silently.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys import fsio
from recsys.config import UNGUESSED, SplitConfig
from recsys.data import readers
from recsys.data.metadata import date_seconds
from recsys.data.interactions import sessions
from recsys.errors import DataError

SAMPLE_ROWS = 20_000
# Column names that usually mean a field, most telling first.
_NAMES = {
    "user": ("user_id", "userid", "user", "customer_id", "customer", "visitor_id", "visitorid", "visitor",
             "client_id", "client", "household_id", "household_key", "household", "member_id", "member",
             "account_id", "account", "buyer_id", "shopper_id", "session_id"),
    "item": ("item_id", "itemid", "item", "product_id", "productid", "product", "sku", "movie_id", "movieid",
             "article_id", "content_id"),
    "timestamp": ("timestamp", "ts", "event_time", "time", "datetime", "date", "created_at", "event_timestamp"),
    "event": ("event_type", "event", "action", "type", "interaction", "behavior", "behaviour"),
    "value": ("rating", "score", "stars", "value"),
}
# Numeric columns of an event or implicit log that can threshold or scale a row's weight: a time spent
# (feedback.min_value drops short plays) or an amount (feedback.value_weight: log)
_DURATION_WORDS = ("dwell", "duration", "seconds", "secs", "sec", "watch", "watched", "spent", "played", "listen",
                   "listened", "ms")
_AMOUNT_WORDS = ("quantity", "qty", "units", "count")


def _words(name) -> set:
    """The words of a column name (dwell_seconds -> {dwell, seconds}; 'country' is not 'count')."""
    return set(re.split(r"[^a-z0-9]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", str(name)).lower())) - {""}


def _reads_as(name, words) -> bool:
    return bool(_words(name) & set(words))


# Events that say "not this": weight 0 (kept, counted, never trained on nor relevant)
_NEGATIVE_EVENTS = {"skip", "skipped", "dislike", "unlike", "hide", "hidden", "return", "returned", "refund",
                    "remove_from_cart", "removefromcart", "cart_remove", "remove", "thumbs_down", "block", "report"}
# Proposed weights for event names a shop or media log usually has (anything else: 1).
_EVENT_WEIGHTS = {"view": 1.0, "click": 1.0, "detail": 1.0, "play": 1.0, "like": 2.0, "cart": 2.0,
                  "add_to_cart": 2.0, "addtocart": 2.0, "wishlist": 2.0, "purchase": 3.0, "order": 3.0,
                  "buy": 3.0, "transaction": 3.0, "checkout": 3.0}


@dataclass
class Inferred:
    """What `infer` found: the config mapping and the notes a human should read."""
    config: dict
    notes: list = field(default_factory=list)


class Unguessed(DataError):
    """A required column could not be guessed; `inferred` is the config so far, the column marked."""

    def __init__(self, message: str, inferred: Inferred):
        super().__init__(message)
        self.inferred = inferred


# `recsys init` flags that name a column (they win over any guess): field -> flag
FLAGS = {"user": "--user", "item": "--item", "timestamp": "--time", "event": "--event", "value": "--value"}


def _pick(columns, field_name: str) -> str | None:
    lower = {str(c).lower(): c for c in columns}
    for name in _NAMES[field_name]:
        if name in lower:
            return lower[name]
    return None


def _named(columns, name: str, flag: str, path: str) -> str:
    """A column a flag names: it must be one of the file's (exactly, or but for case)."""
    if name in columns:
        return name
    lower = {str(c).lower(): c for c in columns}
    if name.lower() in lower:
        return lower[name.lower()]
    raise DataError(f"init {flag} {name}: {path} has no such column (its columns: {', '.join(map(str, columns))})")


def _catalog_key(cat: pd.DataFrame, log_items: pd.Series, log_column: str) -> str | None:
    """The catalog's item ID column: a name that says so (the log's own, item_id, sku, ... or `id`), the
    one whose values match the sampled log's items best when several could. None if none matches."""
    candidates = [c for c in (_pick(cat.columns, "item"), log_column if log_column in cat.columns else None,
                              next((c for c in cat.columns if str(c).lower() in ("id", "key", "code")), None))
                  if c is not None]
    if not candidates:
        return None
    seen = set(log_items.astype(str))
    overlap = {c: cat[c].astype(str).isin(seen).mean() for c in dict.fromkeys(candidates)}
    best = max(overlap, key=lambda c: (overlap[c], -candidates.index(c)))
    return best if overlap[best] > 0 or len(overlap) == 1 else None


def _seconds(col: pd.Series, unit: str) -> np.ndarray:
    """Epoch seconds of a sampled time column written in `unit` (NaN where unreadable)."""
    if unit == "iso" or pd.api.types.is_datetime64_any_dtype(col):
        parsed = pd.to_datetime(col, errors="coerce", utc=True, format="ISO8601" if unit == "iso" else None)
        return (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    num = pd.to_numeric(col, errors="coerce").to_numpy(np.float64)
    return num / 1000 if unit == "ms" else num


def _user_times(df: pd.DataFrame, cols: dict, unit: str) -> pd.DataFrame:
    """The sample's user IDs (as strings) and times (epoch seconds), row for row."""
    return pd.DataFrame({"user": df[cols["user"]].astype(str).to_numpy(), "t": _seconds(df[cols["timestamp"]], unit)})


# last_session needs users who came back: below this share (or count) of the sample's users with two
# or more sessions, the held-out sessions would measure too few users and a temporal cut is written
_MIN_RETURNING_SHARE, _MIN_RETURNING_USERS = 0.1, 50


def _split(df: pd.DataFrame, cols: dict, unit: str, events: bool) -> tuple[dict, str]:
    """The split a written config starts with, and the note saying why."""
    if not events:
        return ({"strategy": "leave_last_n", "leave_last_n": 2},
                "split: each user's last 2 positives are test and the 2 before validation (leave_last_n: a "
                "rating log has no funnel to leak)")
    gap = SplitConfig().session_gap_minutes
    frame = _user_times(df, cols, unit).dropna().sort_values(["user", "t"])
    session = sessions(frame["user"].to_numpy(), frame["t"].to_numpy(), gap * 60)
    per_user = pd.Series(session).groupby(frame["user"].to_numpy()).nunique()
    returning = int((per_user >= 2).sum())
    share = returning / max(len(per_user), 1)
    seen = f"{returning} of {len(per_user)} sampled users ({share:.0%}) have 2+ sessions ({gap:g}-minute gaps)"
    if returning >= _MIN_RETURNING_USERS and share >= _MIN_RETURNING_SHARE:
        return ({"strategy": "last_session", "session_gap_minutes": gap},
                f"split: each user's last session is test, the one before validation (last_session): the "
                f"history a model is queried with ends before the visit, so a purchase's own view is not in "
                f"it; {seen}")
    return ({"strategy": "temporal", "test_fraction": 0.1, "validation_fraction": 0.1},
            f"split: the last 10% of time is test, the 10% before validation (temporal): only {seen}, "
            f"too few for last_session")


# at least this share of repeat purchases (an item the user already had, again): keep it recommendable.
# Measured on the generated shop log (benchmarks/shop_future.py, 3,000 users, 8% of purchases repeats
# from taste alone): removing bought items cut global popularity's recall@20 on the real next purchases
# from 0.148 to 0.112, so even a few percent of repeats is worth more than the 20th new candidate
_REPEAT_SHARE = 0.03


def _exclusion(df: pd.DataFrame, cols: dict, unit: str, purchase: list) -> tuple[str, str]:
    """What users are never recommended, from the sample's repeat share: `none` when they come back to
    items they had (groceries, music), else `bought` (purchases are the target) or `seen`."""
    frame = _user_times(df, cols, unit).assign(item=df[cols["item"]].astype(str).to_numpy())
    what = "interactions"
    if purchase:
        frame = frame[df[cols["event"]].astype(str).isin(purchase).to_numpy()]
        what = "/".join(purchase)
    frame = frame.sort_values(["user", "t"], kind="stable")
    share = float(frame.duplicated(["user", "item"]).mean()) if len(frame) else 0.0
    measured = f"{share:.0%} of the sample's {what} ({len(frame)}) are of an item the same user had before"
    if share >= _REPEAT_SHARE:
        return "none", (f"exclusion: none (users' own items stay recommendable): {measured}; repeats are common "
                        f"enough that removing them would hide what users come back for")
    rule = "bought" if purchase else "seen"
    return rule, (f"exclusion: {rule} (items a user {'bought' if purchase else 'had'} are not recommended to "
                  f"them, served and offline alike): {measured}")


def _timestamp_unit(col: pd.Series, schema_type) -> tuple[str, str]:
    """(unit for the config, how it was decided)."""
    if schema_type is not None and (pa.types.is_timestamp(schema_type) or pa.types.is_date(schema_type)):
        return "s", f"a native {schema_type} column (read as it is)"
    num = pd.to_numeric(col, errors="coerce")
    if num.notna().mean() > 0.95:
        median = float(num.dropna().median())
        if median > 1e14:
            raise DataError(f"timestamps look like micro- or nanoseconds (median {median:.0f}): "
                            f"source.timestamp_unit takes s or ms; convert them first")
        return ("ms", f"epoch milliseconds (median {median:.0f})") if median > 1e11 else \
            ("s", f"epoch seconds (median {median:.0f})")
    parsed = pd.to_datetime(col, errors="coerce", utc=True, format="ISO8601")
    if parsed.notna().mean() > 0.95:
        return "iso", "ISO 8601 strings"
    raise DataError(f"cannot tell how time is written in column {col.name!r} (e.g. {col.iloc[0]!r}): "
                    f"set source.timestamp_unit by hand")


_SEPARATORS = ("|", ";", ",")
# the training budget a written config starts with: two models of 10 minutes keep a 10M-event nightly
# within about 30 minutes on 2 cores (docs/RESULTS.md, benchmarks/scale.py)
_TRAIN_MINUTES = 10
# the epochs a warm-started nightly trains: on a log 3% bigger than yesterday's, 4 epochs from yesterday's
# weights reached 97-98% of a cold epoch search's best validation recall (mf: the cold run's epoch 9 of
# 28; two_tower: between its epochs 5 and 6 of 13) at a tenth of its epochs (benchmarks/warm_start.py)
_WARM_EPOCHS = 4


def _attributes(items: pd.DataFrame, skip: set) -> dict:
    """Catalog columns by kind: numeric, date (ISO dates or datetimes), multi (values joined by a
    separator), categorical (few distinct values) or text (free text such as a description: tokens for the model, not a filter)."""
    out: dict = {}
    n = max(len(items), 1)
    for col in items.columns:
        if col in skip or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", str(col)):
            continue
        values = items[col].dropna()
        if values.empty:
            continue
        if pd.api.types.is_datetime64_any_dtype(values):      # a native timestamp (Parquet)
            out[col] = "date"
            continue
        num = pd.to_numeric(values, errors="coerce")
        if num.notna().mean() > 0.95:
            out[col] = "numeric"
            continue
        text = values.astype(str)
        if (
                text.str.match(r"^\d{4}-\d\d-\d\d").mean() > 0.95
                and (~np.isnan(date_seconds(text))).mean() > 0.95):   # as build-dataset will read them
            out[col] = "date"     # range filters (published_at>=2024-10-01) and {kind: date, max_age_days}
            continue
        words = text.str.split().str.len().mean()
        sep = next((x for x in _SEPARATORS
                    # a list, not prose: short parts, and a comma-joined sentence is not a list
                    if text.str.contains(re.escape(x)).mean() > 0.2
                    and text.str.split(re.escape(x)).explode().str.split().str.len().mean() <= 3), None)
        if sep is not None:
            out[col] = "multi" if sep == "|" else {"kind": "multi", "separator": sep}
        elif text.nunique() <= max(50, n // 20):
            out[col] = "categorical"
        elif words >= 3:
            out[col] = "text"
        # else: an identifier-like column (a SKU, a URL): neither a filter nor a feature
    return out


def _kind(spec) -> str:
    return spec["kind"] if isinstance(spec, dict) else spec


def infer(events: str, items: str | None = None, root: str = "artifacts", columns: dict | None = None,
          delimiter: str | None = None, catalog_item: str | None = None) -> Inferred:
    """The config mapping for these files, and notes on what was inferred.

    Args:
        columns: field (user, item, timestamp, event, value) -> the column to use, over any guess
            (`recsys init --user household_id`); "" for event or value: none.
        delimiter: the CSV delimiter, over the one found in the file.
        catalog_item: the catalog's item ID column, over the guess.
    Raises:
        DataError: a file cannot be read, a column a flag names is not in it, or a required column
            (user, item, time) cannot be found (the message names the flag to pass).
    """
    columns = {k: v for k, v in (columns or {}).items() if v is not None}
    smp = readers.sample(events, SAMPLE_ROWS, delimiter)
    df, fmt, schema = smp.frame, smp.format, smp.schema
    notes = [f"events: {events} ({fmt}, {len(df)} sample rows; columns: {', '.join(map(str, df.columns))})"]
    if smp.bad_lines:
        notes.append(f"{smp.bad_lines} line(s) of the sample are not JSON objects: skipped here; build-dataset "
                     "makes them dead letters with the reason")
    cols = {f: (_named(df.columns, columns[f], FLAGS[f], events) if columns.get(f) else
                None if f in columns else _pick(df.columns, f)) for f in _NAMES}
    missing = [f for f in ("user", "item", "timestamp") if cols[f] is None]
    if missing:
        listed = ", ".join(map(str, df.columns))
        partial = {"source": {"path": events, "format": fmt,
                              "columns": {f: cols[f] or (f"{UNGUESSED} one of: {listed}" if f in missing else "")
                                          for f in _NAMES}}}
        if smp.delimiter and smp.delimiter != ",":
            partial["source"]["delimiter"] = smp.delimiter
        if cols["timestamp"]:
            ts_type = schema.field(cols["timestamp"]).type if schema is not None else None
            partial["source"]["timestamp_unit"], how = _timestamp_unit(df[cols["timestamp"]], ts_type)
            notes.append(f"time: {cols['timestamp']!r} as {how}")
        partial["feedback"] = _feedback(df, cols, columns, partial["source"], notes, events)
        partial["artifacts"] = {"root": root}
        notes.append("the split, the exclusion" + (" and the catalog (--items)" if items else "") + " are not in "
                     "this file: rerunning init with the flag infers them too")
        flags = " ".join(f"{FLAGS[f]} COLUMN" for f in missing)
        raise Unguessed(f"{events}: no column looks like the {' or the '.join(missing)} (columns: {listed}); "
                        f"name it: recsys init {flags}",
                        Inferred(partial, notes + [f"source.columns.{f}: not guessed, marked {UNGUESSED}: name a "
                                                   f"column of the file ({FLAGS[f]} COLUMN)" for f in missing]))
    named = [f"{f} {cols[f]!r}" for f in columns if cols.get(f)]
    if named:
        notes.append("named by flags (not guessed): " + ", ".join(named))
    ts_type = schema.field(cols["timestamp"]).type if schema is not None else None
    unit, how = _timestamp_unit(df[cols["timestamp"]], ts_type)
    notes.append(f"user: {cols['user']!r}, item: {cols['item']!r}, time: {cols['timestamp']!r} as {how}")
    source = {"path": events, "format": fmt, "timestamp_unit": unit,
              "columns": {"user": cols["user"], "item": cols["item"], "timestamp": cols["timestamp"],
                          "value": cols["value"] or "", "event": cols["event"] or ""}}
    if smp.delimiter and smp.delimiter != ",":
        source["delimiter"] = smp.delimiter
        notes.append(f"delimiter: {smp.delimiter!r} ({'--delimiter' if delimiter else 'found in the file'})")
    feedback = _feedback(df, cols, columns, source, notes, events)
    evaluation: dict = {}
    purchase = [e for e in feedback.get("event_weights", {}) if e.lower() in ("purchase", "order", "buy",
                                                                              "transaction", "checkout")]
    if purchase:
        evaluation["target_events"] = purchase
        conversion = _conversion(df, cols, unit, purchase, feedback["event_weights"])
        if conversion:
            notes.append(f"conversion to {', '.join(purchase)} in the sample (of the user-item pairs with the event, "
                         "the share bought at or after it): " + ", ".join(f"{e} {c:.1%}" for e, c in conversion.items())
                         + "; the weights above are not proportional to it: weighting views by their conversion "
                         "(view 0.1, cart 0.3, purchase 3) lost 11% validation recall on a generated shop log")
        notes.append(f"models train on every event and are measured on {', '.join(purchase)} "
                     f"(evaluation.target_events)")
    if items:
        cat_smp = readers.sample(items, SAMPLE_ROWS, delimiter)
        cat, cat_fmt = cat_smp.frame, cat_smp.format
        if smp.delimiter and cat_smp.delimiter and cat_smp.delimiter != smp.delimiter:
            raise DataError(f"{items}: its delimiter is {cat_smp.delimiter!r} and the events' {smp.delimiter!r}; "
                            "both are read with source.delimiter: write them with the same one")
        item_col = (_named(cat.columns, catalog_item, "--catalog-item", items) if catalog_item else
                    _catalog_key(cat, df[cols["item"]], cols["item"]))
        if item_col is None:
            raise DataError(f"{items}: no column looks like the item ID (columns: {', '.join(map(str, cat.columns))}); "
                            "name it: recsys init --catalog-item COLUMN")
        title = next((c for c in cat.columns if c.lower() in ("title", "name", "product_name")), "")
        attrs = _attributes(cat, {item_col, title})
        source.update(items_path=items, items_format=cat_fmt,
                      item_columns={"item": item_col, "title": title, "genres": "", "attributes": attrs})
        rule_attribute = _rule_attribute(cat, attrs)
        filters = [f"{a} ({_kind(k)})" for a, k in attrs.items() if _kind(k) != "text"]
        text = [a for a, k in attrs.items() if _kind(k) == "text"]
        notes.append(f"catalog: {items} (item {item_col!r}, title {title or '-'}); filters: "
                     + (", ".join(filters) or "none") + (f"; text for the model: {', '.join(text)}" if text else ""))
        for a in [a for a, k in attrs.items() if _kind(k) == "date"]:
            notes.append(f"{a!r} is a date: filter with include={a}>=2024-10-01; to never recommend items older "
                         f"than a year, write it as {a}: {{kind: date, max_age_days: 365}}")
    else:
        source["items_format"] = "none"
    notes.append(f"each model trains at most {_TRAIN_MINUTES} minutes (model.max_train_minutes; 0: no limit), "
                 f"epoch search and refit together, so the nightly fits a night's window at any log size (on a "
                 f"log too big for both, the refit gives way to more epochs while validation still rises); "
                 f"once a version exists, the next night "
                 f"trains {_WARM_EPOCHS} epochs from it instead of searching again (model.warm_start_epochs; "
                 f"0: always search)")
    split, why = _split(df, cols, unit, bool(cols["event"]))
    notes.append(why)
    exclusion, why = _exclusion(df, cols, unit, purchase)
    notes.append(why)
    model = {"max_train_minutes": _TRAIN_MINUTES, "warm_start_epochs": _WARM_EPOCHS}
    nightly = {}
    models = ["two_tower", "mf", "popularity"]
    if items and rule_attribute:
        models.append("attribute_popularity")
        notes.append(f"the nightly also fits the rule attribute_popularity (popular items in each user's most "
                     f"frequent values of a catalog column: {rule_attribute} are tried and the best on "
                     f"validation kept; model.rule_attribute fixes one): a model is published only where it "
                     f"beats every rule")
    if exclusion == "none":
        models.append("repeat")
        notes.append("the nightly also fits the rule repeat (buy again: each user's own items by frequency, then "
                     "recency, then popularity), since users come back to their items")
    if len(models) > 3:
        nightly["models"] = models
    config = {"source": source, "feedback": feedback, "exclusion": exclusion,
              "filters": {"min_user_interactions": 2, "min_item_interactions": 2},
              "model": model,
              "split": split,
              "artifacts": {"root": root}}
    if evaluation:
        config["evaluation"] = evaluation
    if nightly:
        config["nightly"] = nightly
    return Inferred(config, notes)


def _conversion(df: pd.DataFrame, cols: dict, unit: str, purchase: list, weights: dict) -> dict:
    """{event: share of the user-item pairs with that event whose item the user bought at or after its
    first occurrence} for the positive non-target events of the sample."""
    pairs = pd.DataFrame({"u": df[cols["user"]].astype(str), "i": df[cols["item"]].astype(str),
                          "e": df[cols["event"]].astype(str), "t": _seconds(df[cols["timestamp"]], unit)})
    bought = pairs[pairs["e"].isin(purchase)].groupby(["u", "i"])["t"].max().rename("bought")
    out = {}
    for event in [e for e, w in weights.items() if w > 0 and e not in purchase]:
        first = pairs[pairs["e"] == event].groupby(["u", "i"])["t"].min()
        if len(first) >= 20:
            joined = first.to_frame("t").join(bought, how="left")
            out[event] = float((joined["bought"] >= joined["t"]).mean())
    return out


def _is_rating(df: pd.DataFrame, name: str) -> bool:
    """A rating column: named like one, or a few values on a small scale (1-5 stars, 0-10 scores), not a
    quantity or a dwell time."""
    if str(name).lower() in ("rating", "score", "stars"):
        return True
    v = pd.to_numeric(df[name], errors="coerce").dropna()
    return len(v) > 0 and v.nunique() <= 21 and v.min() >= 0 and v.max() <= 10 and (v.max() - v.min()) >= 1 \
        and not _reads_as(name, _DURATION_WORDS + _AMOUNT_WORDS)


def _feedback(df: pd.DataFrame, cols: dict, columns: dict, source: dict, notes: list, events: str) -> dict:
    """feedback: event types with proposed weights, a rating scale, or implicit (every row a positive)."""
    feedback: dict
    if cols["event"]:
        raw = df[cols["event"]].astype(str).value_counts()
        # 'Play' and 'play' are one event type: the most frequent spelling is kept, build-dataset merges the
        # others into it (and counts them)
        key = raw.index.str.strip().str.lower()
        canonical = {k: raw.index[key == k][0] for k in dict.fromkeys(key)}
        counts = raw.groupby([canonical[k] for k in key], sort=False).sum().sort_values(ascending=False)
        merged = [f"{v!r} into {canonical[k]!r}" for v, k in zip(raw.index, key) if v != canonical[k]]
        if merged:
            notes.append(f"event values that differ only by case or spaces are one type: {', '.join(merged)} "
                         "(build-dataset merges and counts them)")
        weights = {str(e): 0.0 if str(e).strip().lower() in _NEGATIVE_EVENTS else _EVENT_WEIGHTS.get(str(e).lower(), 1.0)
                   for e in counts.index}
        if not any(w > 0 for w in weights.values()):
            raise DataError(f"{events}: every event type in the sample ({', '.join(weights)}) reads as negative; "
                            "name the column of positive events with --event, or --event '' for none")
        feedback = {"mode": "event", "event_weights": weights, "unknown_events": "ignore"}
        negative = [e for e, w in weights.items() if w == 0]
        if negative:
            notes.append(f"{', '.join(negative)}: negative feedback, weight 0: kept and counted, never trained "
                         "on nor counted relevant (give a weight > 0 in feedback.event_weights to use it)")
        notes.append("event types (sample count -> proposed weight): "
                     + ", ".join(f"{e} {counts[e]} -> {weights[str(e)]:g}" for e in counts.index))
        if cols["value"] and "value" not in columns:
            notes.append(f"column {cols['value']!r} is not used (feedback.mode: event)")
            source["columns"]["value"] = ""
        _value_column(df, cols, columns, source, notes, list(weights))
    elif cols["value"] and _is_rating(df, cols["value"]):
        v = pd.to_numeric(df[cols["value"]], errors="coerce")
        lo, hi = float(v.min()), float(v.max())
        feedback = {"mode": "rating", "rating_range": [lo, hi], "min_rating": round(lo + 0.7 * (hi - lo), 2)}
        notes.append(f"ratings from {lo:g} to {hi:g}: positives are >= {feedback['min_rating']:g} (check it)")
    else:
        feedback = {"mode": "implicit"}
        notes.append("no event type or rating column: every row is a positive (feedback.mode: implicit)")
        _value_column(df, cols, columns, source, notes, [])
    return feedback


def _value_column(df: pd.DataFrame, cols: dict, columns: dict, source: dict, notes: list, events: list) -> None:
    """An event or implicit log's numeric column of time spent or amount (or the one --value names):
    read as source.columns.value, with the threshold or the scaling it could set proposed from its
    sample quantiles (a proposal in the notes: whether it helps is for validation to say)."""
    def numeric(c) -> bool:
        v = pd.to_numeric(df[c], errors="coerce")
        present = df[c].notna() & (df[c].astype(str).str.strip() != "")
        return bool(present.any()) and v[present].isna().mean() <= 0.01
    if "value" in columns:              # --value COLUMN, or --value '' for none
        name = cols["value"]
        if name and not numeric(name):
            notes.append(f"column {name!r} (--value) is not used: more than 1% of its sample values are not "
                         "numbers (source.columns.value would make those rows dead letters)")
            return
    else:                               # the first numeric column named like a time spent or an amount
        name = next((c for c in df.columns if c not in cols.values()
                     and _reads_as(c, _DURATION_WORDS + _AMOUNT_WORDS) and numeric(c)), None)
    if not name:
        return
    v = pd.to_numeric(df[name], errors="coerce")
    source["columns"]["value"] = name
    q = v.dropna().quantile([0.1, 0.25, 0.5]).round(2)
    evidence = f"sample 10% / 25% / median {q[0.1]:g} / {q[0.25]:g} / {q[0.5]:g}"
    if _reads_as(name, _DURATION_WORDS):
        scope = f"{{{events[0]}: {q[0.25]:g}}}" if events else f"{q[0.25]:g}"
        notes.append(f"{name!r} reads as time spent ({evidence}): to train only on engaged events, set "
                     f"feedback.min_value: {scope} (rows under it get weight 0); not set: check it on validation")
    else:
        notes.append(f"{name!r} reads as an amount ({evidence}): feedback.value_weight: log weighs a row by "
                     "1 + ln(amount); not set: check it on validation")


def _rule_attribute(catalog: pd.DataFrame, attrs: dict) -> str:
    """The categorical columns the rule attribute_popularity can count taste in (those with 2 or more
    values, fewest first), as text for the config's comments, or "" without one."""
    spans = {a: catalog[a].nunique() for a, k in attrs.items() if _kind(k) == "categorical" and a in catalog}
    return ", ".join(sorted((a for a, n in spans.items() if n >= 2), key=lambda a: (spans[a], a)))


def write(inferred: Inferred, path: str) -> None:
    """The config as commented YAML (atomic write)."""
    import yaml
    head = ["# Written by `recsys init`: check the lines below, then `recsys nightly --config " + path + "`.",
            *[f"# - {n}" for n in inferred.notes], "# Every key: docs/CONFIG.md", ""]
    fsio.atomic_write_text(path, "\n".join(head) + yaml.safe_dump(inferred.config, sort_keys=False))
