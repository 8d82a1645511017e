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


def _metric_sum(text: str, name: str, label: str = "") -> float:
    """The sum of a metric's samples whose labels contain `label`."""
    import re
    return sum(float(value) for labels, value in re.findall(rf'^{name}\{{([^}}]*)\}} ([0-9.e+]+)$', text, re.M)
               if label in labels)


@pytest.mark.slow
def test_metrics_sum_every_worker_and_survive_a_swap(served, tmp_path):
    """With 2 workers each scrape of /metrics (answered by either) reads all N requests, and after a
    swap to a new generation of workers the count goes on from N. With --log-format json every log line,
    the supervisor's, the workers' and uvicorn's access lines, is one JSON object."""
    root = str(tmp_path / "artifacts")
    shutil.copytree(served["root"], root)
    registry.publish(root, served["versions"]["mf"])
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "recsys.cli", "serve", "--root", root, "--port", str(port),
                             "--workers", "2", "--poll-seconds", "0.3", "--access-log", "--log-format", "json"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    logged = []
    reader = threading.Thread(target=lambda: logged.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        assert _wait_for(lambda: _get(f"{base}/readyz")[0] == 200), "".join(logged)

        def scrape():
            with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
                return r.read().decode()

        def users_requests(text):
            return _metric_sum(text, "recsys_requests_total", 'endpoint="user_recommendations"')
        n = 20
        for i in range(n):
            _get(f"{base}/v1/users/u{i}/recommendations?k=3")
        assert [users_requests(scrape()) for _ in range(6)] == [n] * 6
        registry.publish(root, served["versions"]["popularity"])
        assert _wait_for(lambda: _get(f"{base}/v1/users/u1/recommendations?k=3")[1]["version"]
                         == served["versions"]["popularity"])
        after = users_requests(scrape())
        assert after > n                                         # the old workers' n are still counted

        def served_now():
            return [line for line in scrape().splitlines()
                    if line.startswith("recsys_loaded_version_info{") and line.endswith(" 1.0")]
        # once the old generation has drained and ended (a second or so), only the new version is served
        assert _wait_for(lambda: len(served_now()) == 1, timeout=60), served_now()
        assert served["versions"]["popularity"] in served_now()[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    lines = [json.loads(line) for line in logged if line.strip()]
    assert all(set(line) >= {"time", "level", "logger", "message"} for line in lines)
    assert all(line["time"].endswith("Z") for line in lines)
    assert any(line["logger"] == "uvicorn.access" and "/v1/users/u1/recommendations" in line["message"]
               for line in lines)
    assert any(line["logger"] == "uvicorn.error" and line["message"].startswith("Started server process")
               for line in lines)
