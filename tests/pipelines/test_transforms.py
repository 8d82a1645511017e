"""The Beam transforms of the dataset build, one at a time (TestPipeline + assert_that), on the
in-process runner the product uses."""
import apache_beam as beam
import numpy as np
import pandas as pd
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import build_dataset as pipeline
from pipelines.runner import make_runner
from recsys.data import ingest
from recsys.data.interactions import user_bucket
from recsys.data.vocab import Vocabulary

COLUMNS = {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "value": "rating"}


@pytest.fixture
def cfg_for(make_config):
    def make(path, **overrides):
        return make_config({"source": {"path": path, "format": "csv", "columns": COLUMNS},
                            "feedback": {"mode": "rating", "min_rating": 3.0, "rating_range": [0.5, 5.0]},
                            **overrides})
    return make


def _rows(kv):
    """(bucket, frame) -> comparable (user, item, timestamp) tuples."""
    _, df = kv
    return [(str(u), str(i), int(t)) for u, i, t in zip(df["user"], df["item"], df["timestamp"])]


def test_read_and_validate_splits_valid_rows_from_dead_letters(write_file, cfg_for):
    path = write_file("events.csv", ["user_id,item_id,rating,timestamp", "u1,i1,4.0,10", ",i2,4.0,11",
                                     "u2,i3,4.5,oops", "u2,i4,9.0,13", "u3,i5,1.0,14", "u4,i6,3,15,extra"])
    cfg = cfg_for(path)
    with BeamPipeline(runner=make_runner(cfg)) as p:
        out = p | beam.Create([path]) | pipeline.ReadAndValidate(cfg)
        assert_that(out.valid | "Valid" >> beam.FlatMap(_rows), equal_to([("u1", "i1", 10), ("u3", "i5", 14)]),
                    label="valid rows")
        dead = out.rejected | "Dead" >> beam.FlatMap(lambda kv: list(zip(kv[1]["line"].tolist(), kv[1]["reason"])))
        assert_that(dead, equal_to([(3, ingest.MISSING_USER), (4, ingest.BAD_TIMESTAMP),
                                    (5, ingest.RATING_OUT_OF_RANGE), (7, ingest.WRONG_COLUMN_COUNT)]),
                    label="dead letters")
        read = out.counts | "Read" >> beam.Map(lambda c: (c["rows_read"], c["accepted"], c["rejected"]))
        assert_that(read | beam.CombineGlobally(lambda xs: tuple(map(sum, zip(*xs)))), equal_to([(6, 2, 4)]),
                    label="read == accepted + rejected")


def test_bucket_by_user_puts_every_row_of_a_user_in_one_bucket(cfg_for, write_file):
    cfg = cfg_for(write_file("unused.csv", ["user_id,item_id,rating,timestamp"]),
                  runner={"shuffle_buckets": 3})
    frames = []
    rng = np.random.default_rng(0)
    for part in range(4):   # the same users spread over several input blocks, with an exact duplicate
        users = [f"u{x}" for x in rng.integers(0, 10, 20)]
        frames.append(pd.DataFrame({"user": users, "item": [f"i{x}" for x in rng.integers(0, 5, 20)],
                                    "timestamp": np.arange(20) + 100 * part, "value": 4.0, "event": "",
                                    "weight": 1.0}))
    frames.append(frames[0].iloc[:1].copy())
    keyed = [(int(b), part) for f in frames for b, part in f.groupby(user_bucket(f["user"], 3), sort=False)]
    total = sum(len(f) for f in frames) - 1
    with BeamPipeline(runner=make_runner(cfg)) as p:
        out = p | beam.Create(keyed) | pipeline.BucketByUser()
        owners = out.buckets | "Owners" >> beam.FlatMap(lambda kv: [(u, kv[0]) for u in set(kv[1]["user"])])
        assert_that(owners | "PerUser" >> beam.GroupByKey() | beam.MapTuple(lambda u, bs: (u, len(list(bs)))),
                    equal_to([(f"u{x}", 1) for x in sorted({int(u[1:]) for f in frames for u in f["user"]})]),
                    label="one bucket per user")
        counts = out.counts | beam.Map(lambda c: (c["duplicates"], c["positives"]))
        assert_that(counts | beam.CombineGlobally(lambda xs: tuple(map(sum, zip(*xs)))), equal_to([(1, total)]),
                    label="duplicates dropped")


def test_global_step_runs_the_k_core_and_builds_the_vocabularies(cfg_for, write_file):
    cfg = cfg_for(write_file("unused.csv", ["user_id,item_id,rating,timestamp"]),
                  filters={"min_user_interactions": 2, "min_item_interactions": 2, "max_rounds": 5},
                  split={"strategy": "leave_last_n", "leave_last_n": 1})
    # i9 has one interaction: it goes, and then u9 (whose only other row it was) goes too
    df = pd.DataFrame({"user": ["u1", "u1", "u1", "u2", "u2", "u2", "u9", "u9"],
                       "item": ["i1", "i2", "i3", "i1", "i2", "i3", "i1", "i9"],
                       "timestamp": [1, 2, 3, 1, 2, 3, 1, 2], "value": 4.0, "event": "", "weight": 1.0})
    edges = [pipeline._edges(0, df)]
    with BeamPipeline(runner=make_runner(cfg)) as p:
        result = p | beam.Create(edges) | pipeline.KCoreAndVocabulary(cfg, Vocabulary([]), Vocabulary([]))
        summary = result | beam.Map(lambda r: (r["kept"], r["user_ids"].to_pylist(), r["item_ids"].to_pylist(),
                                               r["removed_items"].to_pylist()))
        # leave-last-1: each user's last item is test and the one before validation; the vocabularies
        # hold the IDs of train rows only
        assert_that(summary, equal_to([(6, ["u1", "u2"], ["i1"], ["i9"])]))
