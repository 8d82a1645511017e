"""One training run for tests/recsys/models/test_distribute.py, in its own process (tf.distribute
needs its devices and TF_CONFIG before TensorFlow starts): `python distributed_run.py MODE MODEL OUT`."""
import os
import sys

MODE, MODEL, OUT = sys.argv[1], sys.argv[2], sys.argv[3]

import numpy as np  # noqa: E402

import recsys  # noqa: E402,F401  (quiet TensorFlow, legacy Keras)
import tensorflow as tf  # noqa: E402

if MODE == "server":     # a parameter server or worker task of TF_CONFIG: serve until killed
    import json
    conf = json.loads(os.environ["TF_CONFIG"])
    tf.distribute.Server(tf.train.ClusterSpec(conf["cluster"]), job_name=conf["task"]["type"],
                         task_index=conf["task"]["index"], protocol="grpc", start=True).join()

if MODE == "mirrored":   # two replicas in this process: split the CPU into two logical devices
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

if MODE == "multi_worker":   # collectives must be set up before TensorFlow runs anything (the seed fit)
    from recsys.models import distribute  # noqa: E402
    distribute.make_strategy("multi_worker_mirrored")

from recsys.config import from_dict  # noqa: E402
from recsys.data import trainset  # noqa: E402
from recsys.models import create  # noqa: E402


def data(n_users=120, n_items=60, per_user=12, seed=0):
    rng = np.random.default_rng(seed)
    u = np.repeat(np.arange(n_users), per_user)
    i = (rng.integers(0, 6, len(u)) * 10 + (u % 10)) % n_items    # some structure
    return trainset.TrainSet(u, i.astype(np.int64), np.ones(len(u), np.float32), trainset.PrecedingItems(u, i, 4, n_users),
                             n_users, n_items, np.arange(n_users).astype(str).astype(object),
                             np.arange(n_items).astype(str).astype(object), None)


GATHER = os.environ.get("GATHER", "1") == "1"
cfg = from_dict({"model": {"gather_candidates": GATHER, "dim": 8, "batch_size": 64, "epochs": 3, "patience": 10, "learning_rate": float(os.environ.get("LR", "0.05")),
                           "history_length": 4, "use_item_features": False,
                           "distribute": {"multi_worker": "multi_worker_mirrored", "ps": "parameter_server"}.get(MODE, MODE)}})
# every mode starts from the same weights (a table sharded over parameter servers is initialized per
# shard, so its random start differs from one process's): one process's tables after one tiny step
import copy  # noqa: E402
from recsys.models.base import WarmStart  # noqa: E402
from recsys.evaluation.scorer import validation_metrics  # noqa: E402
seed_cfg = copy.deepcopy(cfg.model)
seed_cfg.distribute, seed_cfg.epochs, seed_cfg.learning_rate = "none", 1, 1e-9
seed = create(MODEL, seed_cfg)
ts0 = data()
seed.fit(ts0, (10,), progress=lambda *_: None, validate=validation_metrics)
start = WarmStart("seed", ts0.user_ids, ts0.item_ids, seed.weights())
model = create(MODEL, cfg.model)
budget = float(os.environ.get("BUDGET", "0")) or None     # seconds; set on one worker only by a test
if os.environ.get("FIT_TWICE"):   # a process that trains again (a refit) reuses its cluster connection
    create(MODEL, cfg.model).fit(data(), (10,), previous=start, progress=lambda *_: None, validate=validation_metrics)
report = model.fit(data(), (10,), previous=start, progress=lambda *_: None, max_seconds=budget, validate=validation_metrics)
variables = model.query_tower.variables + model.candidate_tower.variables
# tables in tower order as t0, t1, ...; a table sharded over parameter servers is its shards' rows in order
tables = {}
for v in variables:
    tables.setdefault(v.name.split("/part_")[0], []).append(v.numpy())
weights = {f"t{i}": np.concatenate(parts) for i, parts in enumerate(tables.values())}
weights["_shards"] = np.array(len(variables))
if MODE == "ps":
    variables = []
# every replica's copy of every table, for the test to check they are the same
copies = [len(getattr(v, "values", [v])) for v in variables]
spread = max((float(np.abs(c.numpy() - v.numpy()).max()) for v in variables for c in getattr(v, "values", [v])),
             default=0.0)
weights["_copies"] = np.array(copies)
weights["_spread"] = np.array(spread)
weights["_epochs"] = np.array(len(report.epochs))
np.savez(OUT, **{k.replace("/", "__").replace(":", "_"): w for k, w in weights.items()})
print("done", os.getpid())
if os.environ.get("SAVE_TO"):   # the query tower as the version's SavedModel, from this process
    import tensorflow as tf  # noqa: E402,F811
    module = model.query_module()
    tf.saved_model.save(module, os.environ["SAVE_TO"], signatures={"serving_default": module.serve})
    loaded = tf.saved_model.load(os.environ["SAVE_TO"]).signatures["serving_default"]
    users = np.array(["0", "1"], dtype=object)
    out = loaded(user_id=tf.constant(users.astype(str)), history=tf.constant([["1", ""], ["2", "3"]]))["embedding"]
    print("saved", out.shape)
