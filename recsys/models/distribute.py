"""Training on several devices or workers with `tf.distribute` (`model.distribute`).

`none` is the single-process loop. `mirrored` (the devices of one machine) and `multi_worker_mirrored`
(one replica per worker; TF_CONFIG names the cluster) keep a copy of every table on each replica;
`parameter_server` splits every table over the parameter servers and runs steps on the workers
through a coordinator in the chief's process (moments beside each shard: recsys/models/optim.py).
Each replica computes its share of the global batch; the gradients, sparse ones included, are
all-reduced in replica context (sparse gradients travel as gathered rows, never densified), and the
sparse Adam update runs once per replica copy from that one reduced gradient, in `merge_call`. So
every copy stays identical: the naive way (each replica applying its local gradients to its own
copy) runs without an error and lets the copies drift apart.

In-batch negatives: with `model.gather_candidates` (default true) every replica's candidate
embeddings are all-gathered, so each query's softmax sees the global batch, as one process on the
global batch would; without it each replica's softmax sees its own share only.
"""
from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("none", "mirrored", "multi_worker_mirrored", "parameter_server")


def make_strategy(name: str):
    """The tf.distribute strategy for `model.distribute` (None for `none`). One per process and name:
    a process connects to its cluster once, however many models it trains (selection, refit, ...)."""
    if name == "none":
        return None
    if name not in _STRATEGIES:
        _STRATEGIES[name] = _make(name)
    return _STRATEGIES[name]


def coordinator(strategy):
    """The ClusterCoordinator of a ParameterServerStrategy (one per strategy)."""
    if id(strategy) not in _COORDINATORS:
        _COORDINATORS[id(strategy)] = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
    return _COORDINATORS[id(strategy)]


_STRATEGIES: dict = {}
_COORDINATORS: dict = {}


def _make(name: str):
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "parameter_server":
        # this process is the chief (the coordinator); TF_CONFIG names the "ps" and "worker" tasks,
        # which run tf.distribute.Server (see docs/SCALING.md). Every table is split in as many row
        # ranges as there are parameter servers.
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        n_ps = len(resolver.cluster_spec().as_dict().get("ps", []))
        if not n_ps:
            raise ValueError("model.distribute=parameter_server: TF_CONFIG names no \"ps\" tasks")
        return tf.distribute.experimental.ParameterServerStrategy(
            resolver, variable_partitioner=tf.distribute.experimental.partitioners.FixedShardsPartitioner(n_ps))
    raise ValueError(f"model.distribute={name!r}: one of {', '.join(STRATEGIES)}")


def is_parameter_server(strategy) -> bool:
    """Whether `strategy` is a ParameterServerStrategy (steps go through a coordinator)."""
    return strategy is not None and isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)


def is_chief() -> bool:
    """Whether this process writes results: no TF_CONFIG, or task 0 of the chief / worker job."""
    cfg = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = cfg.get("task") or {}
    if not task:
        return True
    if "chief" in (cfg.get("cluster") or {}):
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


def any_worker(strategy, flag: bool) -> bool:
    """True on every worker when it is true on any (a collective: every worker must call it)."""
    fn = _FLAG_SUMS.get(id(strategy))
    if fn is None:   # in a tf.function: collectives run eagerly are slow and warn
        fn = tf.function(lambda f: strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(f)), axis=None))
        _FLAG_SUMS[id(strategy)] = fn
    return bool(fn(tf.constant(1.0 if flag else 0.0)).numpy() > 0)


_FLAG_SUMS: dict = {}


def scale(grad, factor: float):
    """A gradient times a constant (IndexedSlices stay sparse)."""
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values * factor, grad.indices, grad.dense_shape)
    return grad * factor


def replica_slice(batch: dict, replica_id, n_replicas: int) -> dict:
    """Replica `replica_id`'s contiguous share of a global batch (every worker holds the same global
    batch: the same permutation from the same seed)."""
    out = {}
    for key, value in batch.items():
        size = tf.shape(value)[0] // n_replicas
        out[key] = value[replica_id * size:(replica_id + 1) * size]
    return out


def gather_candidates(c, ids, prob):
    """All replicas' candidates, this replica's first (the loss finds each query's positive at its own
    row): (embeddings, ids, sampling probabilities) of the global batch, rolled to this replica."""
    ctx = tf.distribute.get_replica_context()
    n = ctx.num_replicas_in_sync
    if n == 1:
        return c, ids, prob
    b = tf.shape(c)[0]
    shift = -ctx.replica_id_in_sync_group * b
    all_c = tf.roll(ctx.all_gather(c, axis=0), shift, axis=0)
    all_ids = tf.roll(ctx.all_gather(ids, axis=0), shift, axis=0)
    all_prob = tf.roll(ctx.all_gather(prob, axis=0), shift, axis=0) * tf.cast(n, prob.dtype)
    return all_c, all_ids, all_prob
