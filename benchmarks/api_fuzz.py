"""Fuzz the HTTP service with schemathesis against its own /openapi.json.

    .venv/bin/pip install -e '.[dev,bench]'      # schemathesis is a bench dependency
    .venv/bin/python benchmarks/api_fuzz.py [--examples 50] [--seed 0]

What it does: builds a small artifact root (planted clusters, the real nightly: dataset, mf and
popularity, gate, index, publish), starts `recsys serve` on it as users do, and runs `st run` with
every check (server errors, status codes and content types the spec does not document, response
bodies that violate their schema, ...), the admin token included so /admin/reload is reached.
It prints the number of operations and test cases, and every failure schemathesis reports; the goal
is 0 server errors and 0 schema violations. Bounded by --examples per operation (not a timed test).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import recsys  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from recsys.config import from_dict  # noqa: E402
from recsys.data.synthetic import clustered_interactions, clustered_items  # noqa: E402

TOKEN = "fuzz-token"


def build_root(tmp: str) -> str:
    """A published mf version over 300 users x 200 items, made by the nightly job itself."""
    from pipelines import nightly
    clustered_interactions(n_users=300, n_items=200, n_clusters=6, per_user=25, seed=0).to_csv(
        os.path.join(tmp, "events.csv"), index=False)
    clustered_items(200, 6).to_csv(os.path.join(tmp, "items.csv"), index=False)
    cfg = from_dict({
        "source": {"path": "events.csv", "format": "csv", "items_path": "items.csv", "items_format": "csv",
                   "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "value": "rating"},
                   "item_columns": {"item": "item_id", "title": "title", "genres": "genres"}},
        "filters": {"min_user_interactions": 3, "min_item_interactions": 1},
        "split": {"strategy": "leave_last_n", "leave_last_n": 2},
        "runner": {"shuffle_buckets": 2},
        "artifacts": {"root": "artifacts"},
        "model": {"dim": 16, "batch_size": 256, "epochs": 3},
        "nightly": {"models": ["mf", "popularity"]},
    }, base_dir=tmp)
    nightly.run(cfg, progress=lambda *_: None)
    return cfg.resolve(cfg.artifacts.root)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=50, help="test cases per operation")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    bin_dir = os.path.dirname(sys.executable)
    with tempfile.TemporaryDirectory(prefix="recsys-fuzz-") as tmp:
        t0 = time.time()
        root = build_root(tmp)
        print(f"artifact root built in {time.time() - t0:.0f}s", flush=True)
        port = free_port()
        server = subprocess.Popen([os.path.join(bin_dir, "recsys"), "serve", "--root", root, "--port", str(port),
                                   "--admin-token", TOKEN, "--poll-seconds", "0"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if urllib.request.urlopen(f"{base}/readyz", timeout=1).status == 200:
                        break
                except OSError:
                    time.sleep(0.2)
            report = os.path.join(tmp, "fuzz.json")
            cmd = [os.path.join(bin_dir, "st"), "run", f"{base}/openapi.json", "--checks", "all",
                   "--max-examples", str(args.examples), "--seed", str(args.seed),
                   "-H", f"Authorization: Bearer {TOKEN}", "--report", "ndjson", "--report-ndjson-path", report]
            t0 = time.time()
            run = subprocess.run(cmd, capture_output=True, text=True)
            elapsed = time.time() - t0
        finally:
            server.terminate()
            server.wait(timeout=30)
        print(run.stdout.rstrip())
        failures = []
        with open(report) as fh:
            for line in fh:
                event = json.loads(line)
                text = json.dumps(event)
                if '"failure"' in text.lower() and "ScenarioFinished" in text:
                    failures.append(event)
        print(f"\nschemathesis: {elapsed:.0f}s, exit code {run.returncode}; "
              f"{len(failures)} scenario(s) with failures (server errors and schema violations included)")
        return 0 if run.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
