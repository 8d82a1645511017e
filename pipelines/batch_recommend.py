"""Beam job: top-N for every known user of a version, through the engine the service uses.

Output: `<version>/recommendations/part-NNNNN.parquet` with user_id, rank, item_id, score, model_version.
Written under a temporary directory and renamed when complete (`fsio.atomic_dir`).
"""
from __future__ import annotations

import io
import time

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from recsys import fsio, version as version_mod
from recsys.config import Config

from pipelines.runner import make_runner, pipeline_options

SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
                    ("score", pa.float32()), ("model_version", pa.string())])


def _strings(ids: np.ndarray) -> pa.Array:
    """A vocabulary's IDs as an Arrow string array, straight from the object array (numpy's astype(str)
    would first make a fixed-width copy as wide as the longest ID)."""
    arr = pa.array(ids, from_pandas=True)
    return arr if arr.type == pa.string() else arr.cast(pa.string())


class ScoreUsersFn(beam.DoFn):
    """Loads the engine once per worker; scores a bundle of user rows and writes one Parquet part."""

    def __init__(self, root: str, version: str, k: int, out_dir: str):
        self.root, self.version, self.k, self.out_dir = root, version, k, out_dir
        self.users_scored = Metrics.counter("recsys", "users_scored")

    def setup(self):
        from recsys.progress import Progress, to_stderr
        from recsys.engine import Engine
        self.engine = Engine.load(self.root, self.version)
        # the ID columns are taken from these by index (Arrow's take), not built string by string
        self.user_ids = _strings(self.engine.lv.users.ids)
        self.item_ids = _strings(self.engine.lv.items.ids)
        # this worker's users/s and ETA every 30 s on stderr (as if it scored every user alone)
        self.progress = Progress("batch-recommend", len(self.engine.lv.users), "users", to_stderr)

    def process(self, bundle):
        part, start, stop = bundle
        rows = np.arange(start, stop)
        ids, scores = self.engine.recommend_users(rows, self.k)
        valid = ids >= 0
        n = int(valid.sum())
        version = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([self.version]))
        table = pa.table({"user_id": self.user_ids.take(pa.array(np.repeat(rows, valid.sum(1)))),
                          "rank": pa.array(np.cumsum(valid, axis=1)[valid], pa.int32()),
                          "item_id": self.item_ids.take(pa.array(ids[valid])),
                          "score": pa.array(scores[valid], pa.float32()),
                          "model_version": version.cast(pa.string())}, schema=SCHEMA)
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        fsio.write_bytes(fsio.join(self.out_dir, f"part-{part:05d}.parquet"), sink.getvalue())
        self.users_scored.inc(len(rows))
        self.progress.advance(len(rows))
        yield len(rows)


def run(cfg: Config, root: str, version: str, k: int | None = None, progress=print) -> str:
    """Score every known user of `version` into its recommendations directory (replacing what was there).

    Returns:
        The output directory.
    """
    t0 = time.time()
    k = k or cfg.nightly.batch_top_n
    users, _ = version_mod.load_vocabs(root, version)
    n, per = len(users), cfg.nightly.batch_users_per_bundle
    bundles = [(i, s, min(s + per, n)) for i, s in enumerate(range(0, n, per))]
    final = version_mod.recommendations_dir(root, version)
    with fsio.atomic_dir(final, replace=True) as out_dir:
        with beam.Pipeline(runner=make_runner(cfg), options=pipeline_options(cfg)) as p:
            (p | "Bundles" >> beam.Create(bundles) | "Spread" >> beam.Reshuffle()
             | "ScoreUsers" >> beam.ParDo(ScoreUsersFn(root, version, k, out_dir)))
    progress(f"batch-recommend: {n} users x top {k} for {version} in {time.time() - t0:.1f}s -> {final}")
    return final


def read(root: str, version: str):
    """All batch recommendations of a version as a pandas frame (user_id, rank, item_id, score, model_version)."""
    paths = fsio.match(fsio.join(version_mod.recommendations_dir(root, version), "part-*.parquet"))
    tables = [pq.read_table(pa.BufferReader(fsio.read_bytes(p))) for p in paths]
    return (pa.concat_tables(tables) if tables else SCHEMA.empty_table()).to_pandas()
