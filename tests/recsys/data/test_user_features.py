"""Optional user features (source.users_path): reading, dead letters, the dataset's users.parquet, and the
two_tower query tower that pools them."""
import json

import numpy as np
import pytest
import tensorflow as tf

from pipelines import build_dataset
from recsys import version
from recsys.evaluation import metrics
from recsys.data import trainset
from recsys.config import from_dict
from recsys.errors import DataError
from recsys.models.popularity import Popularity
from recsys.evaluation.scorer import evaluate_model
from recsys.models import create
from recsys.data.synthetic import clustered_interactions
from recsys.data.metadata import read_users
from recsys.evaluation.scorer import validation_metrics

N_CLUSTERS = 6


def config(tmp, users_path="", users_format="none", features=(), **model):
    return from_dict({
        "source": {"path": str(tmp / "events.csv"), "format": "csv", "items_format": "none",
                   "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "value": "rating"},
                   "users_path": users_path, "users_format": users_format,
                   "user_columns": {"user": "uid", "features": list(features)}},
        "filters": {"min_user_interactions": 3, "min_item_interactions": 1, "max_rounds": 3},
        "split": {"strategy": "leave_last_n", "leave_last_n": 2},
        "runner": {"shuffle_buckets": 2},
        "artifacts": {"root": str(tmp / "artifacts")},
        "model": {"dim": 16, "batch_size": 128, "epochs": 15, "patience": 15, "learning_rate": 0.02,
                  "history_length": 5, **model},
    }, base_dir=str(tmp))


def test_csv_users_with_bad_rows_go_to_dead_letters(tmp_path):
    (tmp_path / "users.csv").write_text("uid,gender,age,country\nu1,F,25,\n,M,30,de\nu2,M,30,de,extra\nu3, M ,,fr\nu1,F,35,nl\n")
    cfg = config(tmp_path, str(tmp_path / "users.csv"), "csv", ["gender", "age", "country", "not_there"])
    users, rejected = read_users(str(tmp_path / "users.csv"), cfg)
    got = dict(zip(users["user"], users["features"]))
    assert got == {"u1": ["gender=F", "age=35", "country=nl"],       # the last row for an ID wins
                   "u3": ["gender=M", "country=fr"]}                   # empty values are skipped, values stripped
    assert sorted(zip(rejected["line"], rejected["reason"])) == [(3, "missing_user_id"), (4, "wrong_column_count")]
    assert rejected.loc[rejected["line"] == 3, "raw"].item() == ",M,30,de"


def test_numeric_ids_with_gaps_stay_integers(tmp_path):
    """A missing value must not turn the other rows' integer IDs and values into '7.0'."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    (tmp_path / "users.jsonl").write_text('{"uid": 7, "age": 30}\n{"age": 41}\n{"uid": 8}\nnot json\n')
    cfg = config(tmp_path, str(tmp_path / "users.jsonl"), "jsonl", ["age"])
    users, rejected = read_users(str(tmp_path / "users.jsonl"), cfg)
    assert dict(zip(users["user"], users["features"])) == {"7": ["age=30"], "8": []}
    assert sorted(zip(rejected["line"], rejected["reason"])) == [(2, "missing_user_id"), (4, "unparseable")]
    pq.write_table(pa.table({"uid": pa.array([7, None, 8], pa.int64()), "age": pa.array([30, 41, None], pa.int64())}),
                   tmp_path / "users.parquet")
    cfg = config(tmp_path, str(tmp_path / "users.parquet"), "parquet", ["age"])
    users, rejected = read_users(str(tmp_path / "users.parquet"), cfg)
    assert dict(zip(users["user"], users["features"])) == {"7": ["age=30"], "8": []}
    assert rejected["reason"].tolist() == ["missing_user_id"]


@pytest.mark.parametrize("content", [b"", b"uid,gender", b"uid,gender\n"])
def test_empty_or_header_only_users_file(tmp_path, content):
    (tmp_path / "users.csv").write_bytes(content)
    cfg = config(tmp_path, str(tmp_path / "users.csv"), "csv", ["gender"])
    if not content:
        with pytest.raises(DataError, match="empty file"):
            read_users(str(tmp_path / "users.csv"), cfg)
        return
    users, rejected = read_users(str(tmp_path / "users.csv"), cfg)
    assert len(users) == 0 and len(rejected) == 0


def test_corrupt_parquet_users_file_is_one_line_error(tmp_path):
    (tmp_path / "users.parquet").write_bytes(b"PAR1 not really parquet")
    cfg = config(tmp_path, str(tmp_path / "users.parquet"), "parquet", ["gender"])
    with pytest.raises(DataError, match="cannot read as parquet"):
        read_users(str(tmp_path / "users.parquet"), cfg)


def test_movielens_users_dat(tmp_path):
    (tmp_path / "users.dat").write_bytes("1::F::1::10::48067\n2::M::56::16::70072\nbroken line\n3::M::25::15::55117\n".encode("latin-1"))
    cfg = config(tmp_path, str(tmp_path / "users.dat"), "movielens_users")
    users, rejected = read_users(str(tmp_path / "users.dat"), cfg)
    assert users["user"].tolist() == ["1", "2", "3"]
    assert users["features"][1] == ["gender=M", "age=56", "occupation=16"]
    assert rejected["line"].tolist() == [3] and rejected["reason"].tolist() == ["wrong_column_count"]


@pytest.fixture(scope="module")
def sparse_users(tmp_path_factory):
    """Few interactions per user, and a `segment` feature that is the user's cluster."""
    tmp = tmp_path_factory.mktemp("userfeat")
    df = clustered_interactions(n_users=400, n_items=180, n_clusters=N_CLUSTERS, per_user=6, seed=7)
    df.to_csv(tmp / "events.csv", index=False)
    item_cluster = df["item_id"].str[1:].astype(int) % N_CLUSTERS
    segment = item_cluster.groupby(df["user_id"]).agg(lambda s: s.mode().iloc[0])
    lines = ["uid,segment,plan"] + [f"{u},s{c},basic" for u, c in segment.items()] + ["nobody,s1,basic", ",s2,basic"]
    (tmp / "users.csv").write_text("\n".join(lines) + "\n")
    cfg = config(tmp, str(tmp / "users.csv"), "csv", ["segment", "plan"])
    ds = build_dataset.run(cfg, dataset_id="d1", previous=None, progress=lambda *_: None)
    return tmp, cfg, ds, trainset.from_dataset(ds, cfg.model.history_length)


def test_dataset_writes_users_parquet_and_rejected_rows(sparse_users):
    tmp, cfg, ds, ts = sparse_users
    frame = ds.user_features()
    # every user the k-core kept has a row; "nobody" and any user the filters dropped do not match
    assert len(frame) == 401 and ds.stats["users_metadata"] == {"rows": 401, "rejected": 1, "duplicate_ids": 0,
                                                                 "matched": len(ds.users)}
    assert frame.loc[frame["user"] == "nobody", "user_idx"].item() == -1      # no interactions: kept, unindexed
    row = frame[frame["user"] == "u5"].iloc[0]
    assert ds.users.lookup(["u5"])[0] == row["user_idx"] and list(row["features"])[1] == "plan=basic"
    dead = [json.loads(x) for x in open(f"{ds.path}/rejected/users.jsonl")]
    assert [(d["reason"], d["raw"]) for d in dead] == [("missing_user_id", ",s2,basic")]
    uf = ts.user_features
    assert uf is not None and uf.values.shape[0] == ts.n_users
    u5 = ts.user_ids.tolist().index("u5")
    assert set(uf.names[uf.values[u5][uf.values[u5] >= 0]]) == set(row["features"])


def test_query_tower_pools_user_features():
    uf = trainset.UserFeatures(np.array([[0, 2], [1, -1], [-1, -1]], np.int32), np.array(["a=1", "a=2", "b=x"]))
    ts = trainset.TrainSet(np.zeros(1, np.int64), np.zeros(1, np.int64), np.ones(1, np.float32),
                           np.full((1, 1), -1, np.int32), 3, 10, np.array(["u0", "u1", "u2"], dtype=object),
                           np.array([f"i{i}" for i in range(10)], dtype=object), user_features=uf)
    qt, ct = create("two_tower", from_dict({"model": {"dim": 8}}).model).build_towers(ts)
    batch = {"user_idx": tf.constant([0, 1, 2, -1]), "history": tf.fill([4, 2], -1)}
    with tf.GradientTape() as tape:
        q = qt(batch)
    grad = tape.gradient(q, qt.user_feature_embedding.embeddings)
    assert grad is not None
    before = q.numpy()
    qt.user_feature_embedding.embeddings.assign_add(tf.ones_like(qt.user_feature_embedding.embeddings))
    after = qt(batch).numpy()
    assert not np.allclose(after[:2], before[:2])                   # users with features move
    np.testing.assert_allclose(after[2:], before[2:], atol=1e-6)      # no features, unknown user: unchanged


def _test_recall(tr, ts):
    return evaluate_model(tr, ts.evals["test"], (20,), ts.item_counts)[0].summary()["recall@20"]


def test_user_features_help_users_with_few_interactions(sparse_users):
    tmp, cfg, ds, ts = sparse_users
    with_f = create("two_tower", cfg.model)
    with_f.fit(ts, (20,), progress=lambda *_: None, validate=validation_metrics)
    cfg_without = config(tmp, use_user_features=False)
    without = create("two_tower", cfg_without.model)
    without.fit(ts, (20,), progress=lambda *_: None, validate=validation_metrics)
    pop = Popularity(ts.n_items).fit(ts.item_idx)
    ev = ts.evals["test"]
    pop_recall = metrics.evaluate(lambda r: np.array(pop.score_rows(len(r))), np.arange(len(ev.user_ids)),
                                  ev.relevant, ev.exclude, (20,)).summary()["recall@20"]
    r_with, r_without = _test_recall(with_f, ts), _test_recall(without, ts)
    assert r_with > 1.2 * r_without and r_with > 1.5 * pop_recall, (r_with, r_without, pop_recall)

    # the exported version answers with the same embeddings, features included
    root = cfg.resolve(cfg.artifacts.root)
    lv = version.load(root, version.save_fitted(with_f, ts, cfg, root, ds))
    hist = trainset.user_histories(ts, cfg.model.history_length, ds)
    users = np.arange(ts.n_users)
    np.testing.assert_allclose(lv.model.user_vectors(users, hist), lv.model.user_embeddings, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lv.model.user_embeddings, with_f.user_vectors(users, hist), rtol=1e-5, atol=1e-5)
