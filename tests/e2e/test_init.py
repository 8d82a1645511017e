"""Your own data: `recsys init` on a shop log (Parquet with native timestamps, view/cart/purchase) and a
catalog CSV writes a config that builds, trains and filters with no edits."""
import json
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys import cli, registry
from recsys.config import load_config
from recsys.errors import DataError, RequestError
from recsys.engine import Engine
from recsys.init_config import infer


def write_shop(tmp, n_users=150, n_items=80, seed=0):
    rng = np.random.default_rng(seed)
    categories, brands = ["Books", "Games", "Garden", "Kitchen"], ["Acme", "Globex", "Initech"]
    item_cat = rng.integers(0, 4, n_items)
    rows = []
    for u in range(n_users):
        fav = rng.integers(0, 4)
        own = np.flatnonzero(item_cat == fav)
        t = np.datetime64("2026-03-01T00:00:00") + np.timedelta64(int(rng.integers(0, 86400 * 30)), "s")
        for _ in range(int(rng.integers(4, 12))):
            item = rng.choice(own) if rng.random() < 0.8 else rng.integers(0, n_items)
            for event in ("view", "cart", "purchase")[: int(rng.integers(1, 4))]:
                t = t + np.timedelta64(int(rng.integers(60, 86400)), "s")
                rows.append((f"c{u}", f"sku{item}", event, t))
    df = pd.DataFrame(rows, columns=["customer_id", "sku", "event_type", "event_time"])
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp / "events.parquet")
    words = {"Books": "paperback novel story", "Games": "console player level", "Garden": "outdoor plant soil",
             "Kitchen": "steel pan cook"}
    pd.DataFrame({"sku": [f"sku{i}" for i in range(n_items)], "name": [f"Product {i}" for i in range(n_items)],
                  "category": [categories[c] for c in item_cat], "brand": [brands[i % 3] for i in range(n_items)],
                  "price": np.round(rng.uniform(3, 120, n_items), 2),
                  "tags": ["eco;sale" if i % 3 == 0 else "sale" if i % 3 == 1 else "new" for i in range(n_items)],
                  "description": [f"A {words[categories[c]]} item number {i} for everyday use"
                                  for i, c in enumerate(item_cat)]}).to_csv(tmp / "catalog.csv", index=False)
    return df


@pytest.mark.slow
def test_init_writes_a_config_that_builds_trains_and_filters_as_is(tmp_path, capsys, monkeypatch):
    events = write_shop(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", "--events", "events.parquet", "--items", "catalog.csv", "--out", "conf/shop.yaml"]) == 0
    out = capsys.readouterr().out
    assert "event_time" in out and "native" in out and "purchase" in out and "price (numeric)" in out
    cfg = load_config("conf/shop.yaml")
    assert cfg.source.columns.user == "customer_id" and cfg.source.columns.item == "sku"
    assert cfg.feedback.mode == "event" and cfg.feedback.event_weights["purchase"] > cfg.feedback.event_weights["view"]
    assert cfg.evaluation.target_events == ["purchase"]
    assert cfg.source.item_columns.attributes == {"category": "categorical", "brand": "categorical",
                                                  "price": "numeric",
                                                  "tags": {"kind": "multi", "separator": ";"},
                                                  "description": "text"}
    assert "text for the model: description" in out
    assert cli.main(["init", "--events", "events.parquet", "--out", "conf/shop.yaml"]) == 2   # no silent overwrite

    capsys.readouterr()
    assert cli.main(["nightly", "--config", "conf/shop.yaml", "--json"]) == 0      # the config as written
    summary = __import__("json").loads(capsys.readouterr().out)
    ev, gate = summary["candidates"], summary["gate"]
    # a personalized model is published and beats popularity on future purchases by a clear margin
    assert gate["publish"] and gate["best"] in ("mf", "two_tower"), gate
    assert ev[gate["best"]]["metrics"]["recall@20"] > 1.5 * ev["popularity_baseline"]["metrics"]["recall@20"]
    root = cfg.resolve(cfg.artifacts.root)
    assert registry.current_version(root) == summary["published"]
    engine = Engine.load(root)
    got = engine.recommend("nobody", 10, include=["category:Books", "price<=60"]).items
    catalog = pd.read_csv(tmp_path / "catalog.csv").set_index("sku")
    assert got and all(catalog.loc[i, "category"] == "Books" and catalog.loc[i, "price"] <= 60 for i in got)
    user = events["customer_id"].iloc[0]
    got = engine.recommend(user, 10, include=["brand:Acme"], exclude=["price>100"]).items
    assert got and all(catalog.loc[i, "brand"] == "Acme" and catalog.loc[i, "price"] <= 100 for i in got)
    got = engine.recommend(user, 10, include=["tags:eco"]).items                    # split on its own ";"
    assert got and all("eco" in catalog.loc[i, "tags"].split(";") for i in got)
    with pytest.raises(RequestError, match="unknown filter key 'description'"):     # text: a feature, no filter
        engine.recommend(user, 10, include=["description:novel"])
    st = __import__("json").load(open(tmp_path / "conf" / "artifacts" / "datasets" /
                                      open(tmp_path / "conf" / "artifacts" / "datasets" / "LATEST").read().strip()
                                      / "stats.json"))
    assert st["rows_read"] == len(events) and st["rejected"] == 0


@pytest.mark.parametrize("content, message", [
    ("", "the file is empty"),
    ("user_id,item_id,timestamp\n", "a header (user_id, item_id, timestamp) but no rows"),
])
def test_init_on_an_empty_or_header_only_file_is_one_line(tmp_path, content, message):
    from recsys.errors import DataError
    (tmp_path / "events.csv").write_text(content)
    with pytest.raises(DataError, match=re.escape(message)):
        infer(str(tmp_path / "events.csv"))


def test_init_reads_a_semicolon_csv_and_skips_a_bad_json_line(tmp_path):
    rows = [f"u{u};i{(u * 3 + k) % 17};{1_700_000_000 + 3600 * k + u}" for u in range(30) for k in range(6)]
    (tmp_path / "events.csv").write_text("user_id;item_id;timestamp\n" + "\n".join(rows) + "\n")
    inferred = infer(str(tmp_path / "events.csv"))
    assert inferred.config["source"]["delimiter"] == ";"
    assert any("delimiter: ';'" in n for n in inferred.notes)
    lines = [json.dumps({"user_id": f"u{u}", "item_id": f"i{k}", "ts": 1_700_000_000 + k * 60 + u})
             for u in range(20) for k in range(5)]
    lines.insert(7, "{not json")
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    inferred = infer(str(tmp_path / "events.jsonl"))
    assert any("1 line(s) of the sample are not JSON objects" in n for n in inferred.notes)


def test_init_guesses_household_and_a_catalog_keyed_id_and_flags_override(tmp_path):
    """A purchase log keyed household_id and a catalog keyed `id` (matched against the log's items),
    then the same files with every column named by flags."""
    rows = [f"h{u},p{(u * 7 + k) % 40},{1_700_000_000 + 86400 * k + u},2" for u in range(60) for k in range(8)]
    (tmp_path / "events.csv").write_text("household_id,product,day,quantity\n" + "\n".join(rows) + "\n")
    (tmp_path / "catalog.csv").write_text("id,department,brand\n" + "\n".join(
        f"p{i},{['dairy', 'bakery', 'produce'][i % 3]},b{i % 5}" for i in range(40)) + "\n")
    with pytest.raises(DataError, match="no column looks like the timestamp .*recsys init --time COLUMN"):
        infer(str(tmp_path / "events.csv"), str(tmp_path / "catalog.csv"))
    inferred = infer(str(tmp_path / "events.csv"), str(tmp_path / "catalog.csv"), columns={"timestamp": "day"})
    src = inferred.config["source"]
    assert src["columns"]["user"] == "household_id" and src["columns"]["item"] == "product"
    assert src["item_columns"]["item"] == "id"                  # the catalog column whose values are the log's items
    named = infer(str(tmp_path / "events.csv"), str(tmp_path / "catalog.csv"),
                  columns={"user": "household_id", "item": "product", "timestamp": "day", "value": "quantity"},
                  catalog_item="id")
    assert named.config["source"]["columns"]["value"] in ("quantity", "")
    assert any("named by flags" in n for n in named.notes)
    with pytest.raises(DataError, match=r"init --user shopper: .* has no such column"):
        infer(str(tmp_path / "events.csv"), columns={"user": "shopper", "timestamp": "day"})


def test_negative_events_get_weight_zero_and_are_said_to(tmp_path, make_config, build_dataset):
    lines = [json.dumps({"visitor": f"v{u}", "content_id": f"c{(u + k) % 30}", "action": a,
                         "ts": f"2024-10-0{1 + k % 9}T10:00:0{u % 10}+02:00"})
             for u in range(40) for k, a in enumerate(["play", "skip", "like", "play", "skip", "share"])]
    (tmp_path / "media.jsonl").write_text("\n".join(lines) + "\n")
    inferred = infer(str(tmp_path / "media.jsonl"))
    weights = inferred.config["feedback"]["event_weights"]
    assert weights["skip"] == 0 and weights["play"] > 0 and weights["like"] > weights["play"]
    assert any(n.startswith("skip: negative feedback, weight 0") for n in inferred.notes)
    cfg = make_config({"source": inferred.config["source"], "feedback": inferred.config["feedback"]})
    d = build_dataset(cfg)
    assert d.stats["not_positive"] == 80                      # the 80 skips: kept, counted, not trained on


def test_a_weight_of_zero_is_accepted_but_not_all_zero():
    from recsys.config import from_dict
    from recsys.errors import ConfigError
    src = {"format": "csv", "columns": {"event": "e"}}
    from_dict({"source": src, "feedback": {"mode": "event", "event_weights": {"view": 1, "skip": 0}}})
    with pytest.raises(ConfigError, match="at least one > 0"):
        from_dict({"source": src, "feedback": {"mode": "event", "event_weights": {"skip": 0}}})
    with pytest.raises(ConfigError, match="weight >= 0"):
        from_dict({"source": src, "feedback": {"mode": "event", "event_weights": {"view": -1, "buy": 2}}})


def test_init_reads_dwell_and_quantity_and_shows_conversion(tmp_path, make_config, build_dataset):
    # a media log with plays carrying a dwell in seconds: the column is read and a threshold proposed
    # from its quantiles (not set); with the threshold set, short plays are counted as not positive
    rng = np.random.default_rng(1)
    lines = [json.dumps({"visitor": f"v{u}", "content_id": f"c{(u + k) % 30}", "action": "play",
                         "dwell_seconds": int(rng.integers(1, 300)), "ts": 1_700_000_000 + 600 * k + u})
             for u in range(40) for k in range(8)]
    (tmp_path / "media.jsonl").write_text("\n".join(lines) + "\n")
    inferred = infer(str(tmp_path / "media.jsonl"))
    assert inferred.config["source"]["columns"]["value"] == "dwell_seconds"
    assert "min_value" not in inferred.config["feedback"]
    note = next(n for n in inferred.notes if n.startswith("'dwell_seconds' reads as time spent"))
    limit = float(re.search(r"feedback.min_value: \{play: ([\d.]+)\}", note).group(1))
    feedback = dict(inferred.config["feedback"], min_value={"play": limit})
    d = build_dataset(make_config({"source": inferred.config["source"], "feedback": feedback}))
    dwell = np.array([json.loads(line)["dwell_seconds"] for line in lines])
    assert d.stats["not_positive"] == int((dwell < limit).sum()) > 0
    # a purchase log without event types, with a quantity: implicit, the amount read, log weighting proposed
    rows = [f"h{u},p{(u * 7 + k) % 40},{1_700_000_000 + 86400 * k + u},{1 + (u + k) % 4}" for u in range(60)
            for k in range(8)]
    (tmp_path / "grocery.csv").write_text("household_id,product_id,timestamp,quantity\n" + "\n".join(rows) + "\n")
    inferred = infer(str(tmp_path / "grocery.csv"))
    assert inferred.config["feedback"]["mode"] == "implicit"
    assert inferred.config["source"]["columns"]["value"] == "quantity"
    assert any(n.startswith("'quantity' reads as an amount") and "value_weight: log" in n for n in inferred.notes)
    # the shop log: each event's conversion to purchase, measured in the sample
    write_shop(tmp_path)
    shop = infer(str(tmp_path / "events.parquet"), str(tmp_path / "catalog.csv"))
    note = next(n for n in shop.notes if n.startswith("conversion to purchase"))
    view, cart = (float(re.search(rf"{e} ([\d.]+)%", note).group(1)) for e in ("view", "cart"))
    assert 0 < view < cart <= 100          # write_shop: a cart follows a view, a purchase follows a cart


def test_init_reads_a_publish_date_as_a_date(tmp_path):
    lines = [json.dumps({"user_id": f"u{u}", "item_id": f"c{(u + k) % 30}", "ts": 1_700_000_000 + 600 * k + u})
             for u in range(20) for k in range(5)]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    pd.DataFrame({"id": [f"c{i}" for i in range(30)], "section": ["news", "sport", "culture"] * 10,
                  "published_at": [f"2024-10-{1 + i % 28:02d}T08:00:00+02:00" for i in range(30)],
                  "year": [2000 + i % 20 for i in range(30)]}).to_csv(tmp_path / "catalog.csv", index=False)
    inferred = infer(str(tmp_path / "events.jsonl"), str(tmp_path / "catalog.csv"))
    attrs = inferred.config["source"]["item_columns"]["attributes"]
    assert attrs["published_at"] == "date" and attrs["section"] == "categorical" and attrs["year"] == "numeric"
    assert any("include=published_at>=2024-10-01" in n and "max_age_days: 365" in n for n in inferred.notes)


def test_an_impossible_guess_still_writes_the_config_with_the_column_marked(tmp_path, capsys):
    rows = [f"h{u},p{(u * 7 + k) % 40},{1_700_000_000 + 86400 * k + u}" for u in range(30) for k in range(4)]
    (tmp_path / "events.csv").write_text("household_id,product,day\n" + "\n".join(rows) + "\n")
    out = tmp_path / "recsys.yaml"
    code = cli.main(["init", "--events", str(tmp_path / "events.csv"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "no column looks like the timestamp" in err and "recsys init --time COLUMN" in err and "FILL_IN" in err
    text = out.read_text()
    assert "timestamp: 'FILL_IN one of: household_id, product, day'" in text and "user: household_id" in text
    code = cli.main(["build-dataset", "--config", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "source.columns.timestamp" in err and "recsys init could not guess it" in err
    # the one line fixed by hand: the config builds
    out.write_text(text.replace("'FILL_IN one of: household_id, product, day'", "day"))
    assert cli.main(["build-dataset", "--config", str(out)]) == 0


def _media_log(tmp):
    """JSON lines: visitor, content_id, action (play/Play/like/share/skip), dwell_seconds on plays, ISO
    times with an offset; a catalog keyed `id` with a section, '|' tags, a publish date, a length and a
    summary. Visitors prefer a section; 15 of the 120 items have no catalog row."""
    rng = np.random.default_rng(5)
    sections = ["news", "sport", "culture", "science"]
    item_section = rng.integers(0, 4, 120)
    lines = []
    for u in range(200):
        fav = rng.integers(0, 4)
        t = pd.Timestamp("2024-10-01T08:00:00+02:00") + pd.Timedelta(minutes=int(rng.integers(0, 5000)))
        for _ in range(int(rng.integers(8, 20))):
            own = np.flatnonzero(item_section == fav)
            item = int(rng.choice(own) if rng.random() < 0.8 else rng.integers(0, 120))
            t += pd.Timedelta(minutes=int(rng.integers(1, 600)))
            action = rng.choice(["play", "play", "Play", "like", "share", "skip"])
            row = {"visitor": f"v{u}", "content_id": f"c{item}", "action": str(action), "ts": t.isoformat()}
            if action.lower() == "play":
                row["dwell_seconds"] = int(rng.integers(1, 900))
            lines.append(json.dumps(row))
    (tmp / "media.jsonl").write_text("\n".join(lines) + "\n")
    pd.DataFrame({"id": [f"c{i}" for i in range(105)], "section": [sections[s] for s in item_section[:105]],
                  "tags": ["live|video" if i % 3 == 0 else "text" for i in range(105)],
                  "published_at": [f"2024-0{1 + i % 9}-{1 + i % 28:02d}T06:00:00Z" for i in range(105)],
                  "length": [60 + 7 * i for i in range(105)],
                  "summary": [f"a story about {sections[s]} number {i} for everyone" for i, s in
                              enumerate(item_section[:105])]}).to_csv(tmp / "catalog.csv", index=False)
    return item_section


def _grocery_log(tmp):
    """A purchase-only semicolon CSV: household_id, product_id, quantity, sales_value, a naive datetime; a
    catalog keyed `id` with department and brand; households rebuy."""
    rng = np.random.default_rng(6)
    rows = []
    for h in range(150):
        basket = rng.choice(80, 6, replace=False)
        t = pd.Timestamp("2017-09-01 09:00:00") + pd.Timedelta(hours=int(rng.integers(0, 48)))
        for _ in range(int(rng.integers(3, 8))):
            t += pd.Timedelta(days=int(rng.integers(2, 9)))
            for p in rng.choice(basket, 3, replace=False):
                q = int(rng.integers(1, 4))
                rows.append(f"{h};P{p};{q};{q * 1.99:.2f};{t:%Y-%m-%d %H:%M:%S}")
    (tmp / "transactions.csv").write_text("household_id;product_id;quantity;sales_value;day_time\n"
                                          + "\n".join(rows) + "\n")
    (tmp / "products.csv").write_text("id;department;brand\n" + "\n".join(
        f"P{i};{['dairy', 'bakery', 'produce', 'frozen'][i % 4]};{['national', 'private'][i % 2]}" for i in range(80))
        + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["media", "grocery"])
def test_init_then_nightly_on_logs_that_do_not_look_like_ours(shape, tmp_path, capsys, monkeypatch):
    """What issue 24 tried as a new user: init's config as written runs the nightly, publishes, and the
    service answers with the filters the catalog allows; nothing is lost without a count."""
    monkeypatch.chdir(tmp_path)
    if shape == "media":
        _media_log(tmp_path)
        argv = ["init", "--events", "media.jsonl", "--items", "catalog.csv", "--out", "recsys.yaml"]
    else:
        _grocery_log(tmp_path)
        argv = ["init", "--events", "transactions.csv", "--items", "products.csv", "--out", "recsys.yaml",
                "--time", "day_time"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    cfg = load_config("recsys.yaml")
    assert cli.main(["nightly", "--config", "recsys.yaml", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["published"] and registry.current_version(cfg.resolve(cfg.artifacts.root)) == summary["published"]
    engine = Engine.load(cfg.resolve(cfg.artifacts.root))
    ds_root = cfg.resolve(cfg.artifacts.root) + "/datasets/"
    stats = json.load(open(ds_root + open(ds_root + "LATEST").read().strip() + "/stats.json"))
    assert stats["rejected"] == 0
    if shape == "media":
        assert cfg.feedback.mode == "event" and cfg.feedback.event_weights["skip"] == 0
        assert cfg.source.columns.value == "dwell_seconds" and cfg.source.item_columns.item == "id"
        assert cfg.source.item_columns.attributes["published_at"] == "date"
        assert stats["not_positive"] > 0                                     # the skips: counted, not trained on
        assert stats["case_merged_events"] == {"Play": stats["case_merged_events"]["Play"]} and \
            stats["case_merged_events"]["Play"] > 0                           # 'Play' merged into play, counted
        assert stats["items_metadata"]["items_without_row"] == 15
        catalog = pd.read_csv(tmp_path / "catalog.csv").set_index("id")
        got = engine.recommend("v1", 20, exclude=["section:sport"]).items
        assert got and all(i in catalog.index and catalog.loc[i, "section"] != "sport" for i in got)
        got = engine.recommend("v2", 20, include=["published_at>=2024-06-01"]).items
        assert got and all(catalog.loc[i, "published_at"] >= "2024-06-01" for i in got)
    else:
        assert cfg.source.delimiter == ";" and cfg.source.columns.user == "household_id"
        assert cfg.feedback.mode == "implicit" and cfg.source.columns.value == "quantity"
        got = engine.recommend("7", 10, include=["department:dairy"]).items
        assert cfg.source.item_columns.item == "id"                            # matched by the log's items
        products = pd.read_csv(tmp_path / "products.csv", sep=";").set_index("id")
        assert got and all(products.loc[i, "department"] == "dairy" for i in got)


def test_init_value_column_by_whole_words_native_dates_and_no_value_flag(tmp_path):
    # 'country' is not a count, and the first telling name that is not numeric does not hide the next
    lines = [json.dumps({"user_id": f"u{u}", "item_id": f"c{(u + k) % 30}", "event": "play", "country": "fr",
                         "watch_count": "many", "dwell_seconds": 10 + k, "ts": 1_700_000_000 + 600 * k + u})
             for u in range(20) for k in range(5)]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.table({"item_id": [f"c{i}" for i in range(30)],
                             "published_at": pa.array(pd.date_range("2024-01-01", periods=30, freq="D", tz="UTC"))}),
                   tmp_path / "catalog.parquet")
    inferred = infer(str(tmp_path / "events.jsonl"), str(tmp_path / "catalog.parquet"))
    assert inferred.config["source"]["columns"]["value"] == "dwell_seconds"
    assert inferred.config["source"]["item_columns"]["attributes"]["published_at"] == "date"   # native timestamps
    none = infer(str(tmp_path / "events.jsonl"), columns={"value": ""})        # --value '': no value column
    assert none.config["source"]["columns"]["value"] == ""


def test_a_fill_in_config_keeps_what_was_found_so_fixing_the_line_builds(tmp_path, capsys):
    # the time is ISO text, the user column has a name nothing guesses: the written config keeps the
    # time format, so filling in the user is the only edit
    rows = [f"x{u},p{(u * 7 + k) % 40},2024-10-0{1 + k}T08:00:0{u % 10}+02:00" for u in range(30) for k in range(4)]
    (tmp_path / "events.csv").write_text("who,item_id,timestamp\n" + "\n".join(rows) + "\n")
    out = tmp_path / "recsys.yaml"
    assert cli.main(["init", "--events", str(tmp_path / "events.csv"), "--out", str(out)]) == 2
    text = out.read_text()
    assert "timestamp_unit: iso" in text and "user: 'FILL_IN one of: who, item_id, timestamp'" in text
    out.write_text(text.replace("'FILL_IN one of: who, item_id, timestamp'", "who"))
    capsys.readouterr()
    assert cli.main(["build-dataset", "--config", str(out)]) == 0
    assert "rejected 0" in capsys.readouterr().out
