"""Does the offline verdict predict the future? `recsys init` + the nightly on a generated shop log cut
at a date (the config as written), then the published version asked for each user's top 20 through the
engine the service uses and scored on the purchases after the cut (what benchmarks/shop_future.py
measures at 3,000 users, here smaller)."""
import pytest

from pipelines import nightly
from recsys import registry, version
from recsys.config import load_config
from recsys.data.synthetic import shop_catalog, shop_log
from recsys.init_config import infer, write
from recsys.models import MODELS
from recsys.engine import Engine


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("future")
    catalog = shop_catalog(1500, n_categories=8, brands_per_category=3, seed=7)
    log = shop_log(2000, catalog, seed=7)
    log.events.to_parquet(tmp / "events.parquet")
    catalog.to_csv(tmp / "catalog.csv", index=False)
    inferred = infer(str(tmp / "events.parquet"), str(tmp / "catalog.csv"), str(tmp / "artifacts"))
    write(inferred, str(tmp / "recsys.yaml"))
    cfg = load_config(str(tmp / "recsys.yaml"))
    summary = nightly.run(cfg, progress=lambda *_: None)
    root = cfg.resolve(cfg.artifacts.root)
    return cfg, log, root, registry.current_version(root), summary


def test_init_writes_an_honest_protocol_for_a_shop(published):
    cfg, *_ = published
    assert cfg.split.strategy == "last_session"
    assert "attribute_popularity" in cfg.nightly.models and cfg.model.rule_attribute == ""   # chosen on validation
    assert cfg.exclusion == "none"   # the generator's taste alone makes ~8% of purchases repeats


def test_the_offline_figure_of_the_published_version_predicts_its_future(published):
    cfg, log, root, current, summary = published
    manifest = version.read_manifest(root, current)
    offline = manifest["test_metrics"]["recall@20"]
    engine = Engine.load(root, current)
    users = sorted(log.future["user_id"].unique())
    served = log.recall_at({u: engine.recommend(u, 20).items for u in users}, 20)
    assert abs(served - offline) <= 0.1 * offline, (manifest["model"], offline, served)
    # what is published beats the rules or is a rule: on this log the category rule is close to the
    # models at the recipe init writes, and the gate publishes the best of them all
    rule = version.read_manifest(root, summary["candidates"]["attribute_popularity"]["version"])
    tried = rule["training"]["chosen"]["tried"]
    assert [t["attribute"] for t in tried] == ["tags", "category", "brand"]   # fewest values first
    assert rule["training"]["chosen"]["attribute"] == max(tried, key=lambda t: t["val_recall@20"])["attribute"]
    gate = summary["gate"]
    assert gate["candidate"] == current
    assert MODELS[manifest["model"]].rule or gate["candidate_score"] > gate["best_rule_score"]
    assert served > 1.5 * log.recall_at({u: list(log.events.query("event_type == 'purchase'")["item_id"]
                                                 .value_counts().index[:20]) for u in users}, 20)
    assert served < log.recall_at(log.oracle(20), 20)


@pytest.fixture(scope="module")
def brand_hidden(tmp_path_factory):
    """The same kind of log, but the catalog recsys sees has no brand column: half of each user's taste
    is one the catalog does not describe, so no attribute rule can count it and the models must learn it
    from who bought what together."""
    tmp = tmp_path_factory.mktemp("future_hidden")
    # benchmarks/shop_future.py --users 3000 --hide brand: the same log (at 2,000 users and 1,500
    # items mf led the category rule by only 3% on the future)
    catalog = shop_catalog(2400, n_categories=8, brands_per_category=3, seed=0)
    log = shop_log(3000, catalog, seed=0)
    log.events.to_parquet(tmp / "events.parquet")
    catalog.drop(columns=["brand"]).to_csv(tmp / "catalog.csv", index=False)
    inferred = infer(str(tmp / "events.parquet"), str(tmp / "catalog.csv"), str(tmp / "artifacts"))
    write(inferred, str(tmp / "recsys.yaml"))
    cfg = load_config(str(tmp / "recsys.yaml"))
    summary = nightly.run(cfg, progress=lambda *_: None)
    root = cfg.resolve(cfg.artifacts.root)
    return cfg, log, root, registry.current_version(root), summary


def test_a_model_is_published_when_the_taste_is_not_in_the_catalog_and_beats_every_rule_on_the_future(brand_hidden):
    cfg, log, root, current, summary = brand_hidden
    manifest = version.read_manifest(root, current)
    assert not MODELS[manifest["model"]].rule, manifest["model"]
    users = sorted(log.future["user_id"].unique())

    def served(version_id):
        engine = Engine.load(root, version_id)
        return log.recall_at({u: engine.recommend(u, 20).items for u in users}, 20)

    published = served(current)
    rules = {name: served(c["version"]) for name, c in summary["candidates"].items()
             if name in MODELS and MODELS[name].rule}
    assert set(rules) == {"popularity", "attribute_popularity", "repeat"}
    # measured here: mf 0.2844 against the category rule's 0.2561 (1.11x); the bound leaves room for
    # another CPU's floating point, not for a model that merely ties
    assert published >= 1.05 * max(rules.values()), (published, rules)
    offline = manifest["test_metrics"]["recall@20"]
    assert abs(published - offline) <= 0.1 * offline, (offline, published)
    # and no recommender that sees this log can do much better than about a fifth more
    assert published < log.recall_at(log.best_from_history(20, samples=1000), 20)
