"""Beam pipeline: raw interaction logs -> a clean, split, vocabularized training dataset.

Stages (each a labelled composite transform):
  ReadAndValidate   files -> blocks -> (valid frames, rejected frames); blocks are parsed with Arrow and
                    valid rows split by a stable hash of the user ID (the user bucket)
  BucketByUser      shuffle frames by user bucket; dedupe; keep positives
  KCoreAndVocabulary one step on integer codes of every bucket's interactions: the iterative k-core, the
                    temporal cut, the train split of the surviving rows and the vocabularies (the
                    previous dataset's with the new train users/items appended)
  WriteSplits       per bucket: drop what the k-core removed, split (global temporal cut or leave-last-N
                    per user), Parquet shards per split
  Finalize          vocab files, items.parquet, stats.json; asserts read == accepted + rejected

Elements are pandas frames (one per block or bucket), never single rows: per-row Python in Beam is the
slow path on the DirectRunner (see docs/DECISIONS.md). Their ID columns stay Arrow-backed from parsing to
the Parquet shards (`readers.STRING`), so frames cross stage boundaries through FrameCoder (Arrow IPC)
without converting strings; transforms that emit frames declare it with `.with_output_types(...)` so
Beam picks that coder. Every stage boundary costs fixed runner time, so the vocabularies come from the
global step rather than from a combine over the split buckets.

On the in-process runner the data does not cross the three shuffles itself (`runner.spill`, `Frames`):
each frame, Parquet batch or compressed block is written to a file in the dataset's staging folder and
only its path is shuffled, because that runner holds every shuffled collection whole in memory (a 50M-event
build peaked at 14.8 GB, 18.0 GB on a warm night; spilled, 5.7 and 7.1 GB: one bucket's work and the
k-core's integer codes, docs/RESULTS.md). Distributed runners shuffle the data themselves.
"""
from __future__ import annotations

import logging
import pickle
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Tuple

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.metrics import Metrics

from recsys import fsio
from recsys.config import Config, item_attributes
from recsys.data import dataset as ds
from recsys.data import ingest, interactions, metadata, readers
from recsys.data.interactions import SPLITS
from recsys.data.vocab import Vocabulary
from recsys.errors import DataError
from recsys.progress import Progress, to_stderr

from pipelines.runner import IN_PROCESS, make_runner, pipeline_options

log = logging.getLogger(__name__)


def _ipc_stream(data) -> bytes:
    """A table or record batch as an Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as writer:
        writer.write(data)
    return sink.getvalue().to_pybytes()


class FrameCoder(beam.coders.Coder):
    """pandas frames as Arrow IPC streams (dtypes kept; not the index: frames here are sets of rows, read
    by position); pickle for what Arrow cannot hold."""

    _ARROW, _PICKLE = b"A", b"P"

    def encode(self, df: pd.DataFrame) -> bytes:
        try:
            # One thread: columns are numbers or Arrow already, and a thread pool per frame costs more.
            table = pa.Table.from_pandas(df, nthreads=1, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return self._PICKLE + pickle.dumps(df, protocol=pickle.HIGHEST_PROTOCOL)
        return self._ARROW + _ipc_stream(table)

    def decode(self, data: bytes) -> pd.DataFrame:
        if data[:1] == self._PICKLE:
            return pickle.loads(data[1:])
        with pa.ipc.open_stream(pa.py_buffer(data)[1:]) as reader:
            return readers.arrow_frame(reader.read_all(), split_blocks=True)

    def estimate_size(self, df: pd.DataFrame) -> int:
        # Beam samples element sizes for its metrics; the default would encode the whole frame to measure it.
        return sum(df[c].array.nbytes for c in df.columns)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return pd.DataFrame


beam.coders.registry.register_coder(pd.DataFrame, FrameCoder)
Bucket = Tuple[int, pd.DataFrame]  # a user bucket: (bucket number, frame); typed so Beam uses FrameCoder
STAGING = "_staging"   # the spilled frames' folder inside the dataset being built; Finalize deletes it


class StagedBlock(NamedTuple):
    """A block of input spilled to a file: a Parquet record batch (`arrow`) or decompressed text."""
    path: str
    arrow: bool


class Frames:
    """How the build's row frames, and the blocks of input files, cross its shuffles (`runner.spill`).

    In the runner's collections (`folder` None), or spilled: each frame written to a file under
    `folder` (FrameCoder's bytes) and only its path shuffled. The in-process runner holds every
    shuffled collection whole in memory, decoded frames and encoded copies at once: about 300 bytes per
    event. Spilled, the build holds one bucket at a time and the k-core's integer codes, and the disk
    holds ~130 bytes per event until the end. Files are never deleted by a reader (a retried bundle
    reads them again); the folder goes with Finalize, or with the whole dataset folder when the build
    fails.
    """

    def __init__(self, folder: str | None):
        self.folder = folder

    @property
    def element_type(self):
        """The type hint of a (bucket, frame-or-path) element, so Beam picks the matching coder."""
        return Bucket if self.folder is None else Tuple[int, str]

    def put(self, df: pd.DataFrame):
        """The frame itself, or the path of the file it was spilled to."""
        if self.folder is None:
            return df
        # A fresh name per attempt: a retried bundle never overwrites a file a slower attempt still reads.
        path = fsio.join(self.folder, f"{uuid.uuid4().hex}.arrow")
        fsio.write_bytes(path, _CODER.encode(df))
        return path

    def get(self, frame_or_path) -> pd.DataFrame:
        """The frame `put` returned a handle to."""
        if isinstance(frame_or_path, str):
            return _CODER.decode(fsio.read_bytes(frame_or_path))
        return frame_or_path

    def put_block(self, block):
        """A block of `readers.blocks` as it is (a ByteRange: a few numbers, read again by the parser), or
        spilled when it carries the data (a Parquet record batch, a compressed file's text)."""
        if self.folder is None or isinstance(block, readers.ByteRange):
            return block
        path = fsio.join(self.folder, f"{uuid.uuid4().hex}.block")
        if isinstance(block, pa.RecordBatch):
            fsio.write_bytes(path, _ipc_stream(block))
            return StagedBlock(path, True)
        fsio.write_bytes(path, block)
        return StagedBlock(path, False)

    @staticmethod
    def get_block(block):
        """The block `put_block` returned a handle to."""
        if not isinstance(block, StagedBlock):
            return block
        data = fsio.read_bytes(block.path)
        if not block.arrow:
            return data
        with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
            return reader.read_next_batch()


_CODER = FrameCoder()
IN_MEMORY = Frames(None)   # the frames themselves cross the shuffles


def spill_folder(cfg: Config, out_dir: str) -> str | None:
    """The staging folder of a build under `runner.spill` (None: frames go through the runner)."""
    spill = cfg.runner.spill
    if spill == "off" or (spill == "auto" and cfg.runner.name not in IN_PROCESS):
        return None
    return fsio.join(out_dir, STAGING)


def merge_counts(dicts) -> dict:
    """Sum dicts of counters (nested one level for per-reason counts)."""
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, dict):
                sub = out.setdefault(k, {})
                for k2, v2 in v.items():
                    sub[k2] = sub.get(k2, 0) + int(v2)
            else:
                out[k] = out.get(k, 0) + int(v)
    return out


class ReadBlocksFn(beam.DoFn):
    """A file -> ((file, block number), (source, first line, names, block)) work units of about
    `block_bytes` each, keyed for SpreadBlocks (`readers.blocks`).

    For an uncompressed file the block is a ByteRange that ParseValidate reads again: a few numbers cross
    the shuffle instead of the data (moving bytes between stages costs more than reading them twice).
    Compressed streams cannot seek cheaply, so their blocks go as bytes, and Parquet's as record batches;
    spilled (`Frames.put_block`), those two go as staged files: a whole 50M-event Parquet file decoded
    in the in-process runner's shuffle was 8-9 GB."""

    def __init__(self, layout: readers.Layout, block_bytes: int, frames: Frames = IN_MEMORY):
        self.layout, self.block_bytes, self.frames = layout, block_bytes, frames

    def process(self, path):
        by_range = CompressionTypes.detect_compression_type(path) == CompressionTypes.UNCOMPRESSED
        for k, (first, names, block) in enumerate(readers.blocks(path, self.layout, self.block_bytes, by_range)):
            yield (path, k), (path, first, names, self.frames.put_block(block))


class ParseValidateFn(beam.DoFn):
    """Parse and validate blocks. Main output: (user bucket, valid frame), one per bucket present in a
    block; tagged 'rejected': (dead-letter shard, rejected frame), and 'counts'."""

    def __init__(self, cfg: Config, layout: readers.Layout, frames: Frames = IN_MEMORY):
        self.cfg, self.layout, self.n, self.frames = cfg, layout, cfg.runner.shuffle_buckets, frames
        self.rows_read = Metrics.counter("recsys", "rows_read")
        self.rows_rejected = Metrics.counter("recsys", "rows_rejected")

    def setup(self):
        # this worker's rows/s every 30 s on stderr (a runner's workers each report their own)
        self.progress = Progress("build-dataset: read and validated", None, "rows", to_stderr)

    def process(self, keyed_units):
        for unit in keyed_units[1]:
            yield from self._block(*unit)

    def _block(self, source, first, names, block):
        parsed = readers.parse(self.frames.get_block(block), first, self.layout, names, source)
        valid, rejected = ingest.validate_parsed(parsed, self.cfg, source)
        read = parsed.rows
        # Reconciliation per block: a row is either accepted or rejected, never lost.
        assert read == len(valid) + len(rejected), (source, first, read, len(valid), len(rejected))
        self.rows_read.inc(read)
        self.rows_rejected.inc(len(rejected))
        self.progress.advance(read)
        reasons = rejected["reason"].value_counts().to_dict() if len(rejected) else {}
        yield beam.pvalue.TaggedOutput("counts", {"rows_read": read, "accepted": len(valid),
                                                  "rejected": len(rejected), "rejected_by_reason": reasons,
                                                  **valid.attrs.get("event_counts", {})})
        if len(rejected):
            shard = int(interactions.user_bucket(pd.Series([source]), self.n)[0])
            yield beam.pvalue.TaggedOutput("rejected", (shard, self.frames.put(rejected)))
        if len(valid):
            buckets = interactions.user_bucket(valid["user"], self.n)
            for b, part in valid.groupby(buckets, sort=False):
                yield int(b), self.frames.put(part)


class ReadAndValidate(beam.PTransform):
    """Interaction files -> (user bucket, valid frame) (main), (shard, rejected frame), counters.

    SpreadBlocks groups the blocks by their unique key: a fusion break, so that a runner can parse the
    blocks of one file on many workers (what Reshuffle does, without its four extra steps)."""

    def __init__(self, cfg: Config, frames: Frames = IN_MEMORY):
        super().__init__()
        self.cfg, self.frames = cfg, frames

    def expand(self, files):
        layout = readers.layout_for(self.cfg.source)
        return (files
                | "ReadBlocks" >> beam.ParDo(ReadBlocksFn(layout, self.cfg.runner.block_size_mb << 20, self.frames))
                | "SpreadBlocks" >> beam.GroupByKey()
                | "ParseValidate" >> beam.ParDo(ParseValidateFn(self.cfg, layout, self.frames)).with_output_types(
                    self.frames.element_type, rejected=self.frames.element_type, counts=dict).with_outputs(
                    "rejected", "counts", main="valid"))


def _dedupe_bucket(kv, frames: Frames = IN_MEMORY):
    bucket, parts = kv
    df = pd.concat([frames.get(part) for part in parts], ignore_index=True)
    df, counts = interactions.dedupe_and_keep_positives(df)
    counts["positives"] = len(df)
    yield beam.pvalue.TaggedOutput("counts", counts)
    yield beam.pvalue.TaggedOutput("edges", _edges(bucket, df))
    yield bucket, frames.put(df)


class BucketByUser(beam.PTransform):
    """(bucket, valid frame) -> (bucket, frame of positives) with every interaction of a user in one
    bucket; tagged 'edges' (the bucket's codes for KCoreAndVocabulary) and 'counts'. Frames in and out
    are `Frames` handles."""

    def __init__(self, frames: Frames = IN_MEMORY):
        super().__init__()
        self.frames = frames

    def expand(self, parts):
        return (parts
                | "GroupBuckets" >> beam.GroupByKey()
                | "DedupePositives" >> beam.FlatMap(_dedupe_bucket, self.frames).with_output_types(
                    self.frames.element_type).with_outputs("counts", "edges", main="buckets"))


def _codes(col: pd.Series) -> tuple[np.ndarray, pa.Array]:
    """(int32 code per row, the distinct IDs) of an ID column."""
    enc = pc.dictionary_encode(readers.arrow_strings(col))
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False), enc.dictionary


def _edges(bucket: int, df: pd.DataFrame):
    """A bucket's interactions as integer codes (plus distinct IDs and timestamps) for the global step."""
    users, user_ids = _codes(df["user"])
    items, item_ids = _codes(df["item"])
    return bucket, users, user_ids, items, item_ids, df["timestamp"].to_numpy()


def _global_step(edges: list, cfg: Config, prev_users: Vocabulary, prev_items: Vocabulary) -> dict:
    """K-core, temporal cut and vocabularies from every bucket's codes at once.

    Returns the IDs each bucket must drop, the cuts (temporal split), the vocabularies as Arrow arrays
    (`user_ids`, `item_ids`: the previous ones with the new train IDs appended) and k-core statistics.
    """
    edges = sorted(edges, key=lambda e: e[0])
    temporal = cfg.split.strategy == "temporal"
    if not edges:
        return {"removed_items": pa.array([], pa.string()), "removed_users": {}, "positives": 0, "kept": 0,
                "rounds": 0, "violations": 0,
                "cuts": interactions.temporal_cuts(np.array([], dtype=np.int64), cfg) if temporal else None,
                "user_ids": pa.array(prev_users.ids, pa.string()), "item_ids": pa.array(prev_items.ids, pa.string())}
    # Items get global codes (one per distinct ID over all buckets); a user lives in one bucket only.
    enc = pc.dictionary_encode(pa.concat_arrays([e[4] for e in edges]))
    item_codes, item_ids = enc.indices.to_numpy(zero_copy_only=False), enc.dictionary
    item_offsets = np.cumsum([0] + [len(e[4]) for e in edges])
    user_offsets = np.cumsum([0] + [len(e[2]) for e in edges])
    row_offsets = np.cumsum([0] + [len(e[1]) for e in edges])
    code = np.int32 if max(len(item_ids), user_offsets[-1]) < 2 ** 31 else np.int64
    items = np.concatenate([item_codes[item_offsets[k]:item_offsets[k + 1]].astype(code)[e[3]]
                            for k, e in enumerate(edges)])
    users = np.concatenate([e[1].astype(code) + code(user_offsets[k]) for k, e in enumerate(edges)])
    alive, rounds, violations = interactions.kcore_codes(users, items, int(user_offsets[-1]), len(item_ids), cfg)
    # A row is dropped exactly when its item or its user is (each filter drops all rows of an item or a
    # user), so buckets can apply the result by ID whatever their row order.
    item_alive = np.bincount(items[alive], minlength=len(item_ids)) > 0
    user_alive = np.bincount(users[alive], minlength=int(user_offsets[-1])) > 0
    removed_users = {}
    for k, e in enumerate(edges):
        gone = ~user_alive[user_offsets[k]:user_offsets[k + 1]]
        if gone.any():
            removed_users[e[0]] = e[2].filter(pa.array(gone))
    cuts = interactions.temporal_cuts(np.concatenate([e[5] for e in edges])[alive], cfg) if temporal else None
    # The train split of the surviving rows, bucket by bucket (leave-last-N is per user), as WriteSplits
    # will assign it; its users and items extend the vocabularies.
    item_rank = interactions.id_ranks(item_ids)[items]
    train_users, train_items = [], []
    for k, e in enumerate(edges):
        rows = slice(row_offsets[k], row_offsets[k + 1])
        kept = alive[rows]
        u, i = e[1][kept], e[3][kept]
        # Rows tied on user, timestamp and item may rank otherwise here than in WriteSplits (which breaks
        # the ties by value and event), but they share their user and item: the train IDs are the same.
        train = _assign_split(interactions.id_ranks(e[2])[u], item_rank[rows][kept], e[5][kept], cfg, cuts) == 0
        train_users.append(e[2].take(np.unique(u[train])))
        train_items.append(e[4].take(np.unique(i[train])))
    users_vocab = prev_users.extended(pa.concat_arrays(train_users).to_pylist())
    items_vocab = prev_items.extended(pa.concat_arrays(train_items).to_pylist())
    return {"removed_items": item_ids.filter(pa.array(~item_alive)), "removed_users": removed_users,
            "positives": len(alive), "kept": int(alive.sum()), "rounds": rounds, "violations": violations,
            "cuts": cuts, "user_ids": pa.array(users_vocab.ids, pa.string()),
            "item_ids": pa.array(items_vocab.ids, pa.string())}


class KCoreAndVocabulary(beam.PTransform):
    """Every bucket's edges -> one dict: the iterative k-core (rounds: items under the item minimum by
    global counts, then light users), the temporal cut and the vocabularies.

    One global step runs the rounds on integer codes of all interactions (held by one worker: about
    16 bytes per interaction with the timestamps), stopping when a round drops nothing or after
    `filters.max_rounds` (Finalize then fails on the violations left). Unrolling max_rounds Beam stages
    instead costs about 0.1 s of fixed runner overhead per round, converged or not. The buckets' codes
    reach the step as a side input: a combine into a list would add two stages.
    """

    def __init__(self, cfg: Config, prev_users: Vocabulary, prev_items: Vocabulary):
        super().__init__()
        self.cfg, self.prev_users, self.prev_items = cfg, prev_users, prev_items

    def expand(self, edges):
        cfg, prev_users, prev_items = self.cfg, self.prev_users, self.prev_items
        return (edges.pipeline | "Once" >> beam.Impulse()
                | "Rounds" >> beam.Map(lambda _, all_edges: _global_step(all_edges, cfg, prev_users, prev_items),
                                       beam.pvalue.AsList(edges)))


def _assign_split(user_rank, item_rank, timestamp, cfg: Config, cuts) -> np.ndarray:
    """`interactions.assign_split` with integer stand-ins for the IDs (same order and groups, cheaper)."""
    frame = pd.DataFrame({"user": user_rank, "item": item_rank, "timestamp": timestamp})
    return interactions.assign_split(frame, cfg, cuts)


def _tie_keys(df: pd.DataFrame, rows: np.ndarray) -> list:
    """Value, event and weight of `rows`: what can still tell apart rows equal on user, timestamp and
    item (dedupe dropped the rows equal on all of them)."""
    event = pc.dictionary_encode(readers.arrow_strings(df["event"]).take(rows))
    # A null event (index -1) takes the -1 appended to the ranks: it orders before every event.
    event_rank = np.append(interactions.id_ranks(event.dictionary), -1)[
        event.indices.fill_null(-1).to_numpy(zero_copy_only=False)]
    return [df["value"].to_numpy()[rows], event_rank, df["weight"].to_numpy()[rows]]


def _is_in(ids: pa.Array, value_set: pa.Array) -> np.ndarray:
    return pc.is_in(ids, value_set=value_set).to_numpy(zero_copy_only=False)


class _VocabLookup:
    """Vocabulary index of IDs (int32, -1 for IDs not in `vocab`). The hash table of the vocabulary is
    built once: `pc.index_in` builds it again from the whole vocabulary on every call (0.6 s at 2M IDs),
    for a bucket that holds a small part of it."""

    def __init__(self, vocab: pa.Array):
        self.vocab = vocab
        self._index = pd.Index(vocab.to_numpy(zero_copy_only=False))

    def __call__(self, ids: pa.Array) -> np.ndarray:
        return self._index.get_indexer(ids.to_numpy(zero_copy_only=False)).astype(np.int32)


class WriteShardFn(beam.DoFn):
    """Per bucket: drop what the k-core removed, assign splits, write a Parquet shard per split; emit
    per-split statistics.

    Works on integer codes of the user and item columns (each ID hashed once per bucket): every step
    below would otherwise hash or compare the strings again. A thread encodes and writes a bucket's
    shards (Arrow releases the GIL), overlapping the next bucket's work on a second core; the next
    bucket and the end of the bundle wait for them."""

    def __init__(self, cfg: Config, out_dir: str, n_shards: int, frames: Frames = IN_MEMORY):
        self.cfg, self.out_dir, self.n, self.frames = cfg, out_dir, n_shards, frames

    def setup(self):
        self._writer = ThreadPoolExecutor(1)
        self._lookups = None

    def _vocab_lookups(self, result: dict) -> tuple[_VocabLookup, _VocabLookup]:
        """(users, items) lookups of the side input's vocabularies: built for the first bucket and again
        only when the runner hands over another side input."""
        if (self._lookups is None or self._lookups[0].vocab is not result["user_ids"]
                or self._lookups[1].vocab is not result["item_ids"]):
            self._lookups = (_VocabLookup(result["user_ids"]), _VocabLookup(result["item_ids"]))
        return self._lookups

    def start_bundle(self):
        self._pending = []

    def finish_bundle(self):
        self._wait_for_writes()

    def _wait_for_writes(self):
        """Wait for every pending shard write, then re-raise the first failure (the bundle fails): none
        is left running behind the error."""
        pending, self._pending = self._pending, []
        errors = [write.exception() for write in pending]
        for error in errors:
            if error is not None:
                raise error

    def teardown(self):
        self._writer.shutdown()

    def process(self, kv, result: dict):
        # One bucket's shards in flight at most: the tables waiting for the thread stay bounded, and a
        # failed write fails this element rather than the end of the bundle.
        self._wait_for_writes()
        bucket, df = kv[0], self.frames.get(kv[1])
        users, user_ids = _codes(df["user"])
        items, item_ids = _codes(df["item"])
        keep = np.ones(len(df), dtype=bool)
        if len(result["removed_items"]):
            keep &= ~_is_in(item_ids, result["removed_items"])[items]
        gone = result["removed_users"].get(bucket)
        if gone is not None:
            keep &= ~_is_in(user_ids, gone)[users]
        rows = np.flatnonzero(keep)
        timestamp = df["timestamp"].to_numpy()
        user_rank, item_rank = interactions.id_ranks(user_ids)[users[rows]], interactions.id_ranks(item_ids)[items[rows]]
        # Sorted once, before the split: leave-last-N then ranks a user's rows in this total order (its
        # stable sort keeps it), not in arrival order, and each split's rows, selected from it, are in
        # canonical order too.
        order = interactions.canonical_order(user_rank, timestamp[rows], item_rank, lambda: _tie_keys(df, rows))
        rows = rows[order]
        split = _assign_split(user_rank[order], item_rank[order], timestamp[rows], self.cfg, result["cuts"])
        user_lookup, item_lookup = self._vocab_lookups(result)
        user_vocab, item_vocab = user_lookup(user_ids), item_lookup(item_ids)
        columns = {"timestamp": timestamp, "value": df["value"].to_numpy(), "weight": df["weight"].to_numpy(),
                   "event": readers.arrow_strings(df["event"])}   # Arrow all the way: no Python str per row
        leaks = self._leaks(columns["event"], rows, users, items, timestamp, split, item_vocab)
        for code, name in enumerate(SPLITS):
            part = rows[split == code]
            # Evaluation ranks the training catalog, so a held-out item never seen in training cannot be
            # ranked: it is dropped here and counted (stats.json: dropped_unknown_item). New users stay.
            known = item_vocab[items[part]] >= 0
            part = part[known]
            u, i = users[part], items[part]
            arrays = {"user": user_ids.take(u), "item": item_ids.take(i), "user_idx": user_vocab[u],
                      "item_idx": item_vocab[i],
                      **{c: (v.take(pa.array(part)) if isinstance(v, pa.Array) else v[part]) for c, v in columns.items()}}
            self._pending.append(self._writer.submit(
                ds.write_shard, self.out_dir, name, bucket, self.n, ds.shard_table(arrays)))
            in_part = np.bincount(u, minlength=len(user_ids)) > 0
            item_counts = np.bincount(i, minlength=len(item_ids))
            present = np.flatnonzero(item_counts)
            yield {"bucket": bucket, "split": name, "interactions": len(part),
                   "dropped_unknown_item": int((~known).sum()),
                   "users": int(in_part.sum()), "new_users": int((in_part & (user_vocab < 0)).sum()),
                   "items": item_ids.take(present),
                   "min_ts": int(timestamp[part].min()) if len(part) else None,
                   "max_ts": int(timestamp[part].max()) if len(part) else None,
                   "train_item_counts": (item_ids.take(present), item_counts[present]) if code == 0 else None,
                   "leak": leaks.get(code, (0, 0))}

    def _leaks(self, event: pa.Array, rows, users, items, timestamp, split, item_vocab) -> dict:
        """The leak detector's counts for this bucket (`interactions.leak_counts`): held-out target rows
        (evaluation.target_events, all rows without them) of items evaluation can rank."""
        targets = self.cfg.evaluation.target_events
        if targets:
            is_target = pc.fill_null(pc.is_in(event.take(pa.array(rows)), value_set=pa.array(list(targets), pa.string())), False)
            is_target = is_target.to_numpy(zero_copy_only=False)
        else:
            is_target = np.ones(len(rows), dtype=bool)
        is_target &= item_vocab[items[rows]] >= 0
        return interactions.leak_counts(users[rows], items[rows], timestamp[rows], split, is_target,
                                        self.cfg.split.session_gap_minutes * 60)


def _write_rejected(kv, out_dir: str, n: int, frames: Frames = IN_MEMORY):
    key, parts = kv
    yield ds.write_rejected(out_dir, key, n, pd.concat([frames.get(part) for part in parts], ignore_index=True))


def _train_counts(split_rows, item_ids: pa.Array) -> np.ndarray:
    """Train interactions per item of `item_ids` (int64; 0 for an item with none), summed over buckets."""
    counts = [r["train_item_counts"] for r in split_rows if r["train_item_counts"] is not None]
    if not counts:
        return np.zeros(len(item_ids), dtype=np.int64)
    # A bincount, not Table.group_by: that would import Arrow's query engine (0.1 s) for a few sums.
    enc = pc.dictionary_encode(pa.concat_arrays([c[0] for c in counts]))
    total = np.bincount(enc.indices.to_numpy(zero_copy_only=False), weights=np.concatenate([c[1] for c in counts]),
                        minlength=len(enc.dictionary)).astype(np.int64)
    idx = pc.index_in(item_ids, value_set=enc.dictionary).fill_null(-1).to_numpy(zero_copy_only=False)
    return np.where(idx >= 0, total[idx], 0).astype(np.int64)


class FinalizeFn(beam.DoFn):
    """Vocabularies, item features and stats.json; the pipeline's own reconciliation checks."""

    def __init__(self, cfg: Config, out_dir: str, n_shards: int, frames: Frames = IN_MEMORY):
        self.cfg, self.out_dir, self.n, self.frames = cfg, out_dir, n_shards, frames

    def process(self, _, read_counts, bucket_counts, split_rows, rejected_written, result):
        if self.frames.folder:
            # Every reader of the spilled data is done: this step waits for all of WriteSplits.
            fsio.delete(self.frames.folder)
        c = merge_counts([*read_counts, *bucket_counts, {"kcore_removed": result["positives"] - result["kept"]}])
        if c.get("rows_read", 0) != c.get("accepted", 0) + c.get("rejected", 0):
            raise DataError(f"reconciliation failed: read {c.get('rows_read')} != accepted {c.get('accepted')}"
                            f" + rejected {c.get('rejected')}")
        if sum(rejected_written) != c.get("rejected", 0):
            raise DataError(f"dead-letter output has {sum(rejected_written)} rows, expected {c.get('rejected')}")
        if result["violations"]:
            raise DataError(f"k-core filter did not converge in filters.max_rounds={self.cfg.filters.max_rounds} "
                            f"rounds ({result['violations']} users/items still under the minimum); "
                            f"raise filters.max_rounds")
        ds.write_empty_shards(self.out_dir, self.n, {r["bucket"] for r in split_rows})
        users, items = Vocabulary(result["user_ids"].to_pylist()), Vocabulary(result["item_ids"].to_pylist())
        ds.write_vocabularies(self.out_dir, users, items)
        meta, meta_rejected, meta_duplicates = self._item_metadata()
        attributes = item_attributes(self.cfg.source)
        ds.write_items(self.out_dir, items, meta, {n: a.kind for n, a in attributes.items()},
                       _train_counts(split_rows, pa.array(items.ids, pa.string())),
                       {n: a.max_age_days for n, a in attributes.items() if a.max_age_days})
        user_stats = self._user_metadata(users)
        stats = self._stats(c, split_rows, users, items, result["cuts"], len(meta), meta_rejected)
        if len(meta):
            # items the model knows that the catalog says nothing about (no title, no attributes)
            known = pd.Index(meta["item"].astype(str))
            stats["items_metadata"].update(duplicate_ids=meta_duplicates,
                                           items_without_row=int((known.get_indexer(pd.Index(items.ids)) < 0).sum()))
        if user_stats is not None:
            stats["users_metadata"] = user_stats
        ds.write_stats(self.out_dir, stats)   # last: its presence marks the dataset complete
        yield stats

    def _user_metadata(self, users: Vocabulary) -> dict | None:
        """users.parquet (user, user_idx or -1 for users without interactions here, features) from
        source.users_path; bad rows to rejected/users.jsonl. Returns counts for stats.json (rows
        written, rows rejected, rows matched to a user of the vocabulary)."""
        if self.cfg.source.users_format == "none":
            return None
        meta, n_rejected, n_duplicates = self._read_metadata("users_path", metadata.read_users, "user")
        user_idx = users.lookup(meta["user"]).astype(np.int32)
        ds.write_users(self.out_dir, meta, user_idx)
        return {"rows": len(meta), "rejected": n_rejected, "duplicate_ids": n_duplicates,
                "matched": int((user_idx >= 0).sum())}

    def _item_metadata(self):
        if self.cfg.source.items_format == "none" or not self.cfg.source.items_path:
            return metadata.empty_items(), 0, 0
        return self._read_metadata("items_path", metadata.read_items, "item")

    def _read_metadata(self, path_key: str, read, id_column: str):
        """Every file matching source.<path_key>, read with `read(path, cfg)` -> (rows, rejected); bad
        rows to rejected/<id_column>s.jsonl. Returns (rows, the last row per ID winning; rejected count;
        rows dropped as duplicate IDs)."""
        pattern = getattr(self.cfg.source, path_key)
        frames, rejected = [], []
        for p in fsio.match(self.cfg.resolve(pattern)):
            meta, rej = read(p, self.cfg)
            frames.append(meta)
            rejected.append(rej)
        if not frames:
            raise DataError(f"source.{path_key}={pattern!r} matches no file")
        rej = pd.concat(rejected, ignore_index=True)
        if len(rej):
            ds.write_metadata_rejected(self.out_dir, id_column, rej)
        every = pd.concat(frames, ignore_index=True)
        meta = every.drop_duplicates(id_column, keep="last")
        duplicates, limit = len(every) - len(meta), self.cfg.source.max_duplicate_share
        if duplicates > limit * len(every):
            example = every.loc[every[id_column].duplicated(keep=False), id_column].iloc[0]
            key = "source.item_columns.item" if id_column == "item" else "source.user_columns.user"
            raise DataError(f"source.{path_key}: {duplicates} of {len(every)} rows ({duplicates / len(every):.1%}) "
                            f"repeat an earlier row's ID (e.g. {example!r}), above source.max_duplicate_share="
                            f"{limit:g}: is {key} the key column? Dedupe the file, or raise the share to keep "
                            "the last row per ID")
        return meta, len(rej), duplicates

    def _stats(self, c, split_rows, users, items, cuts, n_meta, meta_rejected):
        splits = {}
        for split in SPLITS:
            rows = [r for r in split_rows if r["split"] == split]
            n = sum(r["interactions"] for r in rows)
            its = pc.count_distinct(pa.chunked_array([r["items"] for r in rows], pa.string())).as_py()
            nu = sum(r["users"] for r in rows)
            mins = [r["min_ts"] for r in rows if r["min_ts"] is not None]
            maxs = [r["max_ts"] for r in rows if r["max_ts"] is not None]
            splits[split] = {"interactions": n, "users": nu, "items": its,
                             "new_users": sum(r["new_users"] for r in rows),
                             "dropped_unknown_item": sum(r["dropped_unknown_item"] for r in rows),
                             "density": n / (nu * its) if nu and its else 0.0,
                             "time_range": [min(mins), max(maxs)] if mins else None}
        leak = {"window_minutes": self.cfg.split.session_gap_minutes,
                "target_events": list(self.cfg.evaluation.target_events)}
        for split in SPLITS[1:]:
            held, leaked = (sum(r["leak"][j] for r in split_rows if r["split"] == split) for j in (0, 1))
            leak[split] = {"targets": held, "leaked": leaked, "share": leaked / held if held else 0.0}
        kept = c.get("positives", 0) - c.get("kcore_removed", 0)
        split_total = sum(s["interactions"] + s["dropped_unknown_item"] for s in splits.values())
        if kept != split_total:
            raise DataError(f"reconciliation failed: {kept} rows after k-core but {split_total} in splits")
        return {
            "rows_read": c.get("rows_read", 0), "accepted": c.get("accepted", 0), "rejected": c.get("rejected", 0),
            "rejected_by_reason": dict(sorted(c.get("rejected_by_reason", {}).items())),
            "duplicates_removed": c.get("duplicates", 0), "not_positive": c.get("not_positive", 0),
            # event values outside feedback.event_weights (rejected, or kept with weight 0 under
            # unknown_events: ignore) and case / space variants merged into a configured type
            "unknown_events": dict(sorted(c.get("unknown_events", {}).items(), key=lambda p: -p[1])),
            "case_merged_events": dict(sorted(c.get("case_merged_events", {}).items(), key=lambda p: -p[1])),
            "positives": c.get("positives", 0), "kcore_removed": c.get("kcore_removed", 0),
            "interactions": kept, "splits": splits,
            "vocab": {"users": len(users), "items": len(items)},
            "items_metadata": {"rows": n_meta, "rejected": meta_rejected},
            "split_strategy": self.cfg.split.strategy, "leak": leak,
            "temporal_cuts": {"validation_start": cuts[0], "test_start": cuts[1]} if cuts else None,
            "config": self.cfg.to_dict(),
        }


def build(p: beam.Pipeline, cfg: Config, files: list[str], out_dir: str,
          prev_users: Vocabulary, prev_items: Vocabulary):
    """Add the whole dataset build to pipeline `p`; returns the stats PCollection."""
    n = cfg.runner.shuffle_buckets
    frames = Frames(spill_folder(cfg, out_dir))
    parsed = p | "Files" >> beam.Create(files) | "ReadAndValidate" >> ReadAndValidate(cfg, frames)
    bucketed = parsed.valid | "BucketByUser" >> BucketByUser(frames)
    result = beam.pvalue.AsSingleton(bucketed.edges | "KCoreAndVocabulary" >> KCoreAndVocabulary(cfg, prev_users, prev_items))
    rows = bucketed.buckets | "WriteSplits" >> beam.ParDo(WriteShardFn(cfg, out_dir, n, frames), result)
    rejected_written = (parsed.rejected
                        | "GroupRejected" >> beam.GroupByKey()
                        | "WriteRejected" >> beam.FlatMap(_write_rejected, out_dir, n, frames))
    # Side inputs, not combines: every combine costs stages of fixed runner time, and these are small.
    return (p | "Start" >> beam.Impulse()
            | "Finalize" >> beam.ParDo(FinalizeFn(cfg, out_dir, n, frames), beam.pvalue.AsList(parsed.counts),
                                       beam.pvalue.AsList(bucketed.counts), beam.pvalue.AsList(rows),
                                       beam.pvalue.AsList(rejected_written), result))


def _check_accepted(cfg: Config, dataset: ds.Dataset, st: dict, root: str) -> None:
    """Refuse a build that accepted nothing, or less than `source.min_accepted_fraction` of the rows it
    read: LATEST keeps naming the previous dataset, and the message says why rows were rejected.

    Raises:
        DataError: one line with the counts, the top rejection reasons and the dead-letter folder.
    """
    read, accepted, frac = st["rows_read"], st["accepted"], cfg.source.min_accepted_fraction
    if frac == 0 or (accepted > 0 and accepted >= frac * read):
        return   # 0: the team has said any build may become LATEST, an empty one too
    reasons = sorted(st.get("rejected_by_reason", {}).items(), key=lambda kv: -kv[1])[:3]
    top = ", ".join(f"{r} {n}" for r, n in reasons) or "none"
    latest = ds.latest_dataset_id(root)
    raise DataError(f"build-dataset: accepted {accepted} of {read} rows read (source.min_accepted_fraction="
                    f"{cfg.source.min_accepted_fraction}); top rejection reasons: {top}; dead letters in "
                    f"{dataset.file(ds.REJECTED)}; datasets/LATEST still names {latest or 'no dataset'}")


def run(cfg: Config, dataset_id: str | None = None, previous: str | None = "latest", progress=print) -> ds.Dataset:
    """Build a dataset from `cfg.source` under `cfg.artifacts.root`; returns the opened Dataset.

    `previous`: a dataset id whose vocabularies to extend ("latest" = the newest one, None = fresh).
    """
    t0 = time.time()
    root = cfg.resolve(cfg.artifacts.root)
    dataset_id = dataset_id or ds.new_dataset_id()
    final = fsio.child(ds.datasets_dir(root), dataset_id, "dataset-id")
    files = fsio.match(cfg.resolve(cfg.source.path))
    if not files:
        raise DataError(f"source.path={cfg.source.path!r} matches no file (resolved: {cfg.resolve(cfg.source.path)})")
    prev_users, prev_items = Vocabulary([]), Vocabulary([])
    prev_id = ds.latest_dataset_id(root) if previous == "latest" else previous
    if prev_id:
        prev = ds.Dataset.open(root, prev_id)
        prev_users, prev_items = prev.users, prev.items
    if fsio.exists(fsio.join(final, ds.STATS)):
        raise DataError(f"dataset id {dataset_id!r} already exists under {ds.datasets_dir(root)!r}")
    progress(f"build-dataset: {len(files)} input file(s), runner={cfg.runner.name}, "
             f"previous vocab={prev_id or 'none'} ({len(prev_users)} users, {len(prev_items)} items)")
    # Object stores have no atomic directory rename: there stats.json, written last, marks
    # completeness, and LATEST is moved last.
    try:
        with fsio.atomic_dir(final) as out_dir:
            with beam.Pipeline(runner=make_runner(cfg), options=pipeline_options(cfg)) as p:
                build(p, cfg, files, out_dir, prev_users, prev_items)
    except Exception as exc:
        # Beam wraps DoFn errors; surface our own one-line error when that is the cause.
        cause = exc
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__ or cause.__context__
        # Beam raises a copy with " [while running '<step>']" appended, in the context of the original.
        while isinstance(cause, DataError) and isinstance(cause.__context__, DataError) \
                and str(cause).startswith(str(cause.__context__)):
            cause = cause.__context__
        if cause is not None:
            raise DataError(str(cause)) from None
        for line in str(exc).splitlines():
            if "DataError:" in line:
                raise DataError(line.split("DataError:", 1)[1].strip()) from None
        raise
    dataset = ds.Dataset(final)
    st = dataset.stats
    _check_accepted(cfg, dataset, st, root)
    ds.write_latest(root, dataset_id)
    progress(f"build-dataset: {dataset_id} in {time.time() - t0:.1f}s: read {st['rows_read']}, "
             f"accepted {st['accepted']}, rejected {st['rejected']}; "
             + ", ".join(f"{k} {v['interactions']} ({v['users']} users, {v['items']} items)"
                         for k, v in ((s, st["splits"][s]) for s in SPLITS))
             + f"; vocab {st['vocab']['users']} users, {st['vocab']['items']} items -> {final}")
    if st.get("case_merged_events"):
        progress("build-dataset: event values merged into the configured type of the same name but for case "
                 "or spaces: " + ", ".join(f"{v!r} {n}" for v, n in list(st["case_merged_events"].items())[:8]))
    if st.get("unknown_events"):
        unknown = sum(st["unknown_events"].values())
        how = ("rejected (feedback.unknown_events: reject)" if cfg.feedback.unknown_events == "reject" else
               "kept with weight 0: not trained on, not relevant (feedback.unknown_events: ignore)")
        progress(f"build-dataset: {unknown} events of types not in feedback.event_weights, {how}: "
                 + ", ".join(f"{v!r} {n}" for v, n in list(st["unknown_events"].items())[:8])
                 + "; give them a weight there to use them")
    meta = st.get("items_metadata") or {}
    if meta.get("rows"):
        progress(f"build-dataset: catalog: {meta['rows']} items, {meta.get('rejected', 0)} rows rejected, "
                 f"{meta.get('duplicate_ids', 0)} duplicate IDs (the last row kept), "
                 f"{meta.get('items_without_row', 0)} of the {st['vocab']['items']} items in the log without a row "
                 "(no title; attribute filters fail closed on them)")
    for line in ds.time_warnings(st):
        progress(line)
    warning = ds.leak_warning(st)
    if warning:
        progress(warning)
    return dataset

