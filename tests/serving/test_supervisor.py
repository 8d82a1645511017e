"""`recsys serve` swaps versions by replacing worker processes: answers never wait for a load."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from recsys import registry, version

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def _wait_for(predicate, timeout: float = 90.0):
    t = time.time()
    while time.time() - t < timeout:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_serve_swaps_processes_without_failing_a_request_and_refuses_a_broken_version(served, tmp_path):
    root = str(tmp_path / "artifacts")
    shutil.copytree(served["root"], root)
    registry.publish(root, served["versions"]["two_tower"])
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "recsys.cli", "serve", "--root", root, "--port", str(port),
                             "--poll-seconds", "0.3"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    failures, answered, stop = [], [], threading.Event()

    def traffic():
        while not stop.is_set():
            try:
                status, body = _get(f"{base}/v1/users/u1/recommendations?k=3")
                answered.append(body["version"])
            except Exception as exc:  # noqa: BLE001 - every failure counts
                failures.append(repr(exc))
    try:
        assert _wait_for(lambda: _get(f"{base}/readyz")[1]["version"] == served["versions"]["two_tower"])
        t = threading.Thread(target=traffic)
        t.start()
        registry.publish(root, served["versions"]["mf"])
        assert _wait_for(lambda: _get(f"{base}/readyz")[1]["version"] == served["versions"]["mf"])
        time.sleep(1.0)
        # a broken version (published by hand: `publish` refuses it) is refused; mf keeps serving
        broken = os.path.join(version.models_dir(root), "broken")
        shutil.copytree(version.version_dir(root, served["versions"]["two_tower"]), broken)
        os.remove(os.path.join(broken, version.USER_EMBEDDINGS))
        with open(os.path.join(root, registry.CURRENT), "w") as fh:
            fh.write("broken\n")
        assert _wait_for(lambda: "broken" in (_get(f"{base}/readyz")[1]["detail"] or ""))
        stop.set()
        t.join()
        assert failures == [] and answered
        assert set(answered) == {served["versions"]["two_tower"], served["versions"]["mf"]}
        assert _get(f"{base}/readyz")[1]["version"] == served["versions"]["mf"]
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
