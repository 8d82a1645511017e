"""One training run for tests/recsys/models/test_distribute.py, in its own process (tf.distribute
needs its devices and TF_CONFIG before TensorFlow starts): `python distributed_run.py MODE MODEL OUT`."""
import os
import sys

MODE, MODEL, OUT = sys.argv[1], sys.argv[2], sys.argv[3]

import numpy as np  # noqa: E402

import recsys  # noqa: E402,F401  (quiet TensorFlow, legacy Keras)
import tensorflow as tf  # noqa: E402

if MODE == "mirrored":   # two replicas in this process: split the CPU into two logical devices
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

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
cfg = from_dict({"model": {"gather_candidates": GATHER, "dim": 8, "batch_size": 64, "epochs": 3, "patience": 10, "learning_rate": 0.05,
                           "history_length": 4, "use_item_features": False,
                           "distribute": "multi_worker_mirrored" if MODE == "multi_worker" else MODE}})
model = create(MODEL, cfg.model)
budget = float(os.environ.get("BUDGET", "0")) or None     # seconds; set on one worker only by a test
report = model.fit(data(), (10,), progress=lambda *_: None, max_seconds=budget)
variables = model.query_tower.variables + model.candidate_tower.variables
weights = {v.name: v.numpy() for v in variables}
# every replica's copy of every table, for the test to check they are the same
copies = [len(getattr(v, "values", [v])) for v in variables]
spread = max((float(np.abs(c.numpy() - v.numpy()).max()) for v in variables for c in getattr(v, "values", [v])),
             default=0.0)
weights["_copies"] = np.array(copies)
weights["_spread"] = np.array(spread)
weights["_epochs"] = np.array(len(report.epochs))
np.savez(OUT, **{k.replace("/", "__").replace(":", "_"): w for k, w in weights.items()})
print("done", os.getpid())
