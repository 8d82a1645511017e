"""HTTP contract: every endpoint, every error, fallbacks, filters, hot reload."""
import os
import shutil
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recsys import registry, version
from recsys.engine import Engine
from serving.holder import EngineHolder
from serving.main import create_app
from serving.settings import Settings


@pytest.fixture
def client(served):
    settings = Settings(root=served["root"], poll_seconds=0, admin_token="s3cret")
    app = create_app(settings)
    with TestClient(app) as c:
        yield c


def known_user(served):
    return str(served["trainset"].user_ids[0])


def test_user_recommendations_exclude_seen(client, served):
    user = known_user(served)
    r = client.get(f"/v1/users/{user}/recommendations", params={"k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "personalized" and body["version"] == served["versions"]["two_tower"]
    assert len(body["items"]) == 7 and len(body["scores"]) == 7
    assert body["scores"] == sorted(body["scores"], reverse=True)
    engine = Engine.load(served["root"])
    seen = set(engine.lv.items.ids[engine._seen_rows(0)])
    assert seen and not seen & set(body["items"])
    r2 = client.get(f"/v1/users/{user}/recommendations", params={"k": 7, "exclude_seen": "false"})
    assert set(r2.json()["items"]) & seen  # planted clusters: seen items are the best-scored ones


def test_unknown_user_falls_back_to_popularity(client):
    body = client.get("/v1/users/nobody/recommendations", params={"k": 5}).json()
    assert body["source"] == "popularity_fallback" and len(body["items"]) == 5
    body = client.post("/v1/recommendations", json={"user_id": "nobody", "k": 5}).json()
    assert body["source"] == "popularity_fallback"


def test_history_request_ignores_unknown_items(client, served):
    items = [str(x) for x in served["trainset"].item_ids[:3]]
    r = client.post("/v1/recommendations", json={"history": items + ["nope"], "k": 5})
    body = r.json()
    assert r.status_code == 200 and body["source"] == "history"
    assert body["ignored_history"] == ["nope"]
    assert not set(items) & set(body["items"])  # history items count as seen


def test_known_user_with_fresh_history_keeps_their_user_embedding(served):
    """two_tower: the query tower gets the user's ID with the fresh items, as in training."""
    engine = Engine.load(served["root"], served["versions"]["two_tower"])
    user, items = known_user(served), [str(x) for x in served["trainset"].item_ids[:3]]
    model = engine.lv.model
    hist = np.full((1, engine.lv.history_length), -1)
    hist[0, :3] = engine.lv.items.lookup(items)
    with_user = model.history_vectors(hist, engine.lv.users.lookup([user]))[0]
    anonymous = model.history_vectors(hist, np.array([-1]))[0]
    assert not np.allclose(with_user, anonymous)
    got = engine.recommend_for_history(items, user_id=user, k=5, exclude_seen=False)
    assert got.source == "history"
    want = engine.lv.items.ids[np.argsort(-(engine.lv.model.item_embeddings @ with_user))[:5]]
    assert got.items == want.tolist()


def test_filters_still_return_k_items(client, served):
    user = known_user(served)
    r = client.get(f"/v1/users/{user}/recommendations", params={"k": 20, "include": "genre:g3"})
    body = r.json()
    assert len(body["items"]) == 20
    genre_of = {f"i{i}": f"g{i % 5}" for i in range(150)}
    assert all(genre_of[i] == "g3" for i in body["items"])
    top = client.get(f"/v1/users/{user}/recommendations", params={"k": 5}).json()["items"]
    r = client.get(f"/v1/users/{user}/recommendations", params=[("k", 5)] + [("exclude", f"item:{i}") for i in top])
    assert len(r.json()["items"]) == 5 and not set(top) & set(r.json()["items"])
    r = client.get(f"/v1/users/{user}/recommendations", params={"k": 10, "exclude": "genre:all"})
    assert r.status_code == 200 and r.json()["items"] == []  # nothing available: empty, not an error


def test_similar_items(client, served):
    item = str(served["trainset"].item_ids[0])
    body = client.get(f"/v1/items/{item}/similar", params={"k": 5}).json()
    assert len(body["items"]) == 5 and item not in body["items"]
    r = client.get("/v1/items/nope/similar")
    assert r.status_code == 404 and "item_id" in r.json()["error"]


@pytest.mark.parametrize("request_args, field", [
    (("get", "/v1/users/u1/recommendations?k=0"), "k"),
    (("get", "/v1/users/u1/recommendations?k=1001"), "k"),
    (("get", "/v1/users/u1/recommendations?k=abc"), "k"),
    (("get", "/v1/users/u1/recommendations?include=color:red"), "include"),
    (("get", "/v1/users/u1/recommendations?exclude=genre"), "exclude"),
    (("get", "/v1/items/i1/similar?k=5000"), "k"),
    (("post", "/v1/recommendations", {"history": ["i1"], "k": 0}), "k"),
    (("post", "/v1/recommendations", {"history": "i1"}), "history"),
    (("post", "/v1/recommendations", {"history": [], "colour": 1}), "colour"),
    (("post", "/v1/recommendations", {"history": ["i1"], "include": ["bad"]}), "include"),
    (("post", "/v1/recommendations", {"history": ["i1"] * 501}), "history"),
])
def test_bad_input_is_4xx_naming_the_field(client, request_args, field):
    method, url, *body = request_args
    r = client.post(url, json=body[0]) if method == "post" else client.get(url)
    assert 400 <= r.status_code < 500, r.text
    msg = r.json()["error"]
    assert field in msg and "\n" not in msg


def test_malformed_json_is_400_class(client):
    r = client.post("/v1/recommendations", content=b"{not json", headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and "JSON" in r.json()["error"]


def test_health_ready_metrics(client):
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").json()["status"] == "ready"
    client.get("/v1/users/nobody/recommendations")
    text = client.get("/metrics").text
    assert "recsys_requests_total" in text and "recsys_fallbacks_total" in text
    assert "recsys_request_seconds_bucket" in text and "recsys_loaded_version_info" in text


def test_not_ready_without_a_version(tmp_path):
    app = create_app(Settings(root=str(tmp_path), poll_seconds=0))
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 503
        # what to do, in the words of the CLI (it said "pass a version", a flag serve does not have)
        assert "recsys nightly` or `recsys publish VERSION`" in c.get("/readyz").json()["error"]
        assert c.get("/v1/users/u/recommendations").status_code == 503


def test_admin_reload_requires_token(client, served):
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.post("/admin/reload", params={"version": served["versions"]["mf"]},
                    headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and r.json()["version"] == served["versions"]["mf"]
    assert client.get("/v1/users/nobody/recommendations").json()["version"] == served["versions"]["mf"]


def test_hot_reload_under_concurrent_requests(served):
    holder = EngineHolder(served["root"], poll_seconds=0)
    app = create_app(Settings(root=served["root"], poll_seconds=0), holder)
    versions = [served["versions"]["mf"], served["versions"]["two_tower"], served["versions"]["popularity"]]
    failures, answers = [], []
    stop = threading.Event()
    with TestClient(app) as c:
        def hammer(path):
            while not stop.is_set():
                r = c.get(path)
                if r.status_code != 200:
                    failures.append((r.status_code, r.text))
                else:
                    answers.append(r.json()["version"])
        threads = [threading.Thread(target=hammer, args=(p,)) for p in
                   ("/v1/users/u1/recommendations?k=5", "/v1/users/nobody/recommendations?k=5")]
        for t in threads:
            t.start()
        for i in range(6):
            changed, msg = holder.reload(versions[i % 3])
            assert changed, msg
        stop.set()
        for t in threads:
            t.join()
    assert not failures
    assert len(set(answers)) >= 2  # requests were answered by more than one version


def test_broken_version_is_refused_and_old_keeps_serving(served, tmp_path):
    root = served["root"]
    good = served["versions"]["two_tower"]
    broken = good + "-broken"
    shutil.copytree(version.version_dir(root, good), version.version_dir(root, broken))
    with open(os.path.join(version.version_dir(root, broken), version.ITEM_EMBEDDINGS), "wb") as fh:
        fh.write(b"not a numpy file")
    holder = EngineHolder(root, poll_seconds=0)
    app = create_app(Settings(root=root, poll_seconds=0), holder)
    try:
        with TestClient(app) as c:
            assert holder.engine.version == good
            changed, msg = holder.reload(broken)
            assert not changed and "refused" in msg
            assert holder.engine.version == good
            assert c.get("/readyz").json()["version"] == good
            assert c.get("/v1/users/u1/recommendations").status_code == 200
    finally:
        shutil.rmtree(version.version_dir(root, broken))


def test_poller_picks_up_a_new_current(served):
    import time
    root = served["root"]
    holder = EngineHolder(root, poll_seconds=0.05)
    holder.start()
    try:
        assert holder.engine.version == served["versions"]["two_tower"]
        registry.publish(root, served["versions"]["mf"])
        deadline = time.time() + 10
        while holder.engine.version != served["versions"]["mf"] and time.time() < deadline:
            time.sleep(0.05)
        assert holder.engine.version == served["versions"]["mf"]
    finally:
        holder.stop()
        registry.publish(root, served["versions"]["two_tower"])


@pytest.mark.parametrize("model", ["mf", "two_tower", "popularity"])
def test_batch_path_equals_single_requests(served, model):
    """Every known user (and an unknown one, row -1) gets from the batched path what `recommend`
    answers, whatever the model."""
    engine = Engine.load(served["root"], served["versions"][model])
    rows = np.r_[np.arange(len(engine.lv.users)), -1]
    ids, scores = engine.recommend_users(rows, 10)
    for r, row in enumerate(rows):
        single = engine.recommend(str(engine.lv.users.ids[row]) if row >= 0 else "nobody", 10)
        got = ids[r][ids[r] >= 0]
        assert [str(x) for x in engine.lv.items.ids[got]] == single.items
        np.testing.assert_allclose(scores[r][:len(got)], single.scores, rtol=1e-5, atol=1e-6)


def test_every_recommendation_response_matches_its_documented_schema(client, served):
    """Responses are serialized by hand (fast path): check them against the OpenAPI model anyway."""
    from serving.schemas import RecommendationResponse
    user, item = known_user(served), str(served["trainset"].item_ids[0])
    responses = [client.get(f"/v1/users/{user}/recommendations", params={"k": 3}),
                 client.get("/v1/users/nobody/recommendations"),
                 client.post("/v1/recommendations", json={"history": [item, "no-such-item"], "k": 4}),
                 client.get(f"/v1/items/{item}/similar", params={"k": 2})]
    for r in responses:
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        parsed = RecommendationResponse.model_validate_json(r.content)
        assert parsed.model_dump() == r.json()
    assert client.get("/openapi.json").json()["paths"]["/v1/recommendations"]["post"]["responses"]["200"]


def test_loaded_engine_is_kept_out_of_full_garbage_collections(served):
    """After a (re)load the engine's objects are frozen: a full collection no longer walks them."""
    import gc
    import weakref
    holder = EngineHolder(served["root"], poll_seconds=0)
    holder.reload(served["versions"]["mf"])
    first = weakref.ref(holder.engine)
    assert gc.get_freeze_count() > 0
    frozen_before = gc.get_freeze_count()
    holder.reload(served["versions"]["two_tower"])
    gc.collect()
    assert first() is None                       # the previous version was released, not leaked
    assert gc.get_freeze_count() > 0 and gc.get_freeze_count() != frozen_before
    gc.unfreeze()


def test_the_api_docs_load_without_internet(client):
    """/docs used to fetch Swagger UI from a CDN: a blank page offline."""
    page = client.get("/docs")
    assert page.status_code == 200 and "cdn." not in page.text and "jsdelivr" not in page.text
    assets = [a for a in ("swagger-ui-bundle.js", "swagger-ui.css") if a in page.text]
    assert len(assets) == 2
    for asset in assets:
        src = page.text.split(asset)[0].rsplit('"', 1)[1] + asset
        assert client.get(src).status_code == 200, src
    assert client.get("/redoc").status_code == 200


def test_ids_given_as_json_integers_are_the_same_ids_as_strings(client):
    """`{"user_id": 17}` is the user "17" (a 422 before); booleans and floats are not IDs."""
    for body in ({"user_id": 17, "k": 5}, {"history": [3, 4], "k": 5}):
        as_text = {k: (str(v) if k == "user_id" else [str(x) for x in v]) if k != "k" else v for k, v in body.items()}
        a, b = client.post("/v1/recommendations", json=body), client.post("/v1/recommendations", json=as_text)
        assert a.status_code == 200, a.text
        assert a.json()["items"] == b.json()["items"]
    for bad in ({"user_id": True}, {"user_id": 1.5}, {"history": [False]}):
        assert client.post("/v1/recommendations", json=bad).status_code == 422
    schema = client.get("/openapi.json").json()["components"]["schemas"]["HistoryRequest"]["properties"]
    assert {"type": "integer"} in schema["user_id"]["anyOf"][0].get("anyOf", schema["user_id"]["anyOf"])


def test_a_published_popularity_model_answers_as_itself_not_as_a_fallback(served):
    """A rule that is not personalized (popularity) is the model's answer: source "popularity", and
    recsys_fallbacks_total does not count it; mf's unknown user is still a fallback."""
    import re

    def fallbacks(c):
        return sum(float(v) for v in re.findall(r'^recsys_fallbacks_total\{[^}]*\} ([0-9.e+]+)$',
                                                c.get("/metrics").text, re.M))
    with TestClient(create_app(Settings(root=served["root"], poll_seconds=0,
                                        version=served["versions"]["popularity"]))) as c:
        before = fallbacks(c)
        body = c.get(f"/v1/users/{known_user(served)}/recommendations?k=5").json()
        assert body["source"] == "popularity" and len(body["items"]) == 5
        assert c.post("/v1/recommendations", json={"user_id": "nobody", "k": 3}).json()["source"] == "popularity"
        assert fallbacks(c) == before
    with TestClient(create_app(Settings(root=served["root"], poll_seconds=0, version=served["versions"]["mf"]))) as c:
        before = fallbacks(c)
        assert c.get("/v1/users/nobody/recommendations?k=3").json()["source"] == "popularity_fallback"
        assert fallbacks(c) == before + 1
