"""tf.distribute training (model.distribute) is correct: every replica's copy of every table stays the
same, and the tables match one process on the global batch. Each run is its own process
(distributed_run.py): devices and TF_CONFIG must be set before TensorFlow starts. Loopback only."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
RUN = os.path.join(HERE, "distributed_run.py")


def run(mode, model, out, env=None, wait=True):
    proc = subprocess.Popen([sys.executable, RUN, mode, model, str(out)], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    finish(proc)


def finish(proc, timeout=240):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, out[-3000:]


def tables(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def max_diff(a, b):
    return max(float(np.abs(a[k] - b[k]).max()) for k in a if not k.startswith("_"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    for model in ("mf", "two_tower"):
        run("none", model, tmp / f"none_{model}.npz")
    return tmp


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mf", "two_tower"])
def test_mirrored_replicas_stay_identical_and_match_one_process(single, model):
    run("mirrored", model, single / f"mirrored_{model}.npz")
    one, two = tables(single / f"none_{model}.npz"), tables(single / f"mirrored_{model}.npz")
    assert set(two["_copies"]) == {2} and float(two["_spread"]) == 0.0      # two replicas, same copies
    assert max_diff(one, two) < 1e-5
    # without the global batch's negatives each replica's softmax sees half the batch: another model
    run("mirrored", model, single / f"local_{model}.npz", env={"GATHER": "0"})
    assert max_diff(one, tables(single / f"local_{model}.npz")) > 1e-2


@pytest.mark.slow
def test_two_local_workers_hold_the_same_tables_and_match_one_process(single):
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = [run("multi_worker", "two_tower", single / f"worker{i}.npz", wait=False,
                 env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
             for i in range(2)]
    try:
        for p in procs:
            finish(p)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    w0, w1 = tables(single / "worker0.npz"), tables(single / "worker1.npz")
    assert max_diff(w0, w1) == 0.0
    assert max_diff(tables(single / "none_two_tower.npz"), w0) < 1e-5


@pytest.mark.slow
def test_a_budget_on_one_worker_stops_every_worker_after_the_same_epoch(single):
    """Each worker's clock is its own: a worker that stopped alone would leave the other waiting forever
    in the next all-reduce. The stop is collective: both stop after epoch 1, with the same tables."""
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = [run("multi_worker", "mf", single / f"budget{i}.npz", wait=False,
                 env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
                      "BUDGET": "1e-6" if i == 1 else "0"})
             for i in range(2)]
    try:
        for p in procs:
            finish(p, timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    w0, w1 = tables(single / "budget0.npz"), tables(single / "budget1.npz")
    assert int(w0["_epochs"]) == int(w1["_epochs"]) == 1 and max_diff(w0, w1) == 0.0


def start_cluster(tmp, n_ps=2):
    """A chief slot for the test's process, one worker and `n_ps` parameter servers on loopback."""
    cluster = {"chief": [f"127.0.0.1:{free_port()}"], "worker": [f"127.0.0.1:{free_port()}"],
               "ps": [f"127.0.0.1:{free_port()}" for _ in range(n_ps)]}
    servers = [run("server", "mf", tmp / "none.npz", wait=False,
                   env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": job, "index": i}})})
               for job, n in (("worker", 1), ("ps", n_ps)) for i in range(n)]
    return cluster, servers


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mf", "two_tower"])
def test_parameter_server_with_sharded_tables_matches_one_process_exactly(single, model):
    """Tables split over 2 parameter servers, the optimizer's moments beside each shard, one worker:
    after 3 epochs every table equals one process's bit for bit; a second fit in the same process (a
    refit) reuses the cluster connection."""
    cluster, servers = start_cluster(single)
    try:
        chief = run("ps", model, single / f"ps_{model}.npz", wait=False,
                    env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}}),
                         "FIT_TWICE": "1"})
        finish(chief, timeout=180)
    finally:
        for p in servers:
            p.kill()
            p.communicate()
    one, ps = tables(single / f"none_{model}.npz"), tables(single / f"ps_{model}.npz")
    assert int(ps["_shards"]) == 2 * int(one["_shards"])          # every table in two shards
    assert max_diff(one, ps) == 0.0


@pytest.mark.parametrize("tf_config,chief", [
    (None, True),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, False),
    ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}, True),
])
def test_only_the_chief_writes(monkeypatch, tf_config, chief):
    from recsys.models.distribute import is_chief
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert is_chief() is chief
