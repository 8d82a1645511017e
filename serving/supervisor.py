"""`recsys serve`: worker processes on one listening socket, and hot swaps done by replacing them.

Loading a version takes the Python GIL for long stretches (ScaNN rebuilds its searcher in C++ for
~0.7 s at 1M items), so a swap inside the serving process pauses every answer. Here a swap is a new
generation of worker processes: the supervisor notices a new CURRENT, validates it, starts new workers
on the same socket, and only once every one of them has loaded the version does it ask the old ones to
stop (uvicorn's graceful shutdown: requests in flight are answered). Answers never wait for a load;
for the length of a swap the machine holds two copies of the version.

A version that fails validation, or that a new worker cannot load (it reports another version, or
none), is refused: the old generation keeps serving and the refusal is logged; the workers' own
/readyz reports versions that fail validation (their poller checks, it does not swap).
"""
from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from recsys import registry, version as version_mod
from recsys.errors import DataError

log = logging.getLogger("recsys.serving")


class Supervisor:
    """Start, watch and replace generations of worker processes (see the module docstring)."""

    def __init__(self, root: str, host: str, port: int, workers: int = 1, poll_seconds: float = 10.0,
                 admin_token: str = "", ready_timeout: float = 600.0, access_log: bool = False):
        self.root, self.workers, self.poll_seconds = root, workers, poll_seconds
        self.ready_timeout = ready_timeout
        self.env = dict(os.environ, RECSYS_ROOT=root, RECSYS_POLL_SECONDS=str(poll_seconds),
                        RECSYS_SWAP_IN_PROCESS="0", RECSYS_ACCESS_LOG="1" if access_log else "0")
        if admin_token:
            self.env["RECSYS_ADMIN_TOKEN"] = admin_token
        # every worker, of every generation, writes its metrics here; /metrics sums them (serving/prometheus.py)
        self.metrics_dir = tempfile.mkdtemp(prefix="recsys-metrics-")
        self.env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(2048)
        self.sock.set_inheritable(True)
        self.generation: list[subprocess.Popen] = []
        self.serving: str | None = None
        self.refused: str | None = None   # the last version refused; retried when CURRENT names it anew
        self._stop = False

    def _start(self, version: str | None) -> tuple[list[subprocess.Popen], list[int]]:
        procs, pipes = [], []
        for _ in range(self.workers):
            r, w = os.pipe()
            env = dict(self.env, RECSYS_READY_FD=str(w), RECSYS_SOCKET_FD=str(self.sock.fileno()),
                       RECSYS_VERSION=version or "")
            # own session: a Ctrl-C in the terminal reaches the supervisor, which retires the workers
            procs.append(subprocess.Popen([sys.executable, "-m", "serving.worker"], env=env,
                                          pass_fds=(w, self.sock.fileno()), start_new_session=True))
            os.close(w)
            pipes.append(r)
        return procs, pipes

    def _wait_ready(self, procs, pipes) -> set[str]:
        """The versions the new workers report once loaded ('' for a worker that died or timed out)."""
        loaded, pending, deadline = {}, dict(zip(pipes, procs)), time.time() + self.ready_timeout
        buffers = {r: b"" for r in pipes}
        while pending and time.time() < deadline and not self._stop:
            ready, _, _ = select.select(list(pending), [], [], 0.5)
            for r in ready:
                chunk = os.read(r, 4096)
                buffers[r] += chunk
                if not chunk or b"\n" in buffers[r]:
                    loaded[r] = buffers[r].decode().removeprefix("ready ").strip()
                    del pending[r]
            for r, p in list(pending.items()):
                if p.poll() is not None:
                    loaded[r] = ""
                    del pending[r]
        for r in pipes:
            os.close(r)
        return {loaded.get(r, "") for r in pipes}

    def _retired(self, procs) -> None:
        """Workers that ended: their gauges stop counting (their counters keep adding up)."""
        from prometheus_client import multiprocess
        for p in procs:
            if p.poll() is not None:
                multiprocess.mark_process_dead(p.pid, self.metrics_dir)

    def _stop_generation(self, procs, timeout: float = 30.0, drain: float = 1.0) -> None:
        alive = [p for p in procs if p.poll() is None]
        for p in alive:
            p.send_signal(signal.SIGUSR1)       # stop accepting (serving/worker.py); the new generation takes over
        if alive and drain:
            time.sleep(drain)                   # requests on connections accepted just before arrive and start
        for p in alive:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)   # uvicorn: answer what is in flight, close idle connections, exit
        for p in procs:
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._retired(procs)

    def _swap(self, target: str | None) -> bool:
        """A new generation on `target` (None: what CURRENT names, with the holder's fall-back); it
        replaces the running one only if every new worker loaded the same version."""
        procs, pipes = self._start(target)
        loaded = self._wait_ready(procs, pipes)
        ok = len(loaded) == 1 and "" not in loaded and (target is None or loaded == {target})
        if not ok or self._stop:
            self._stop_generation(procs, timeout=5, drain=0)
            if target is not None and not self._stop:
                self.refused = target
                log.error("version %s refused: the new workers loaded %s; %s keeps serving",
                          target, sorted(v or "nothing" for v in loaded), self.serving)
            return False
        old, self.generation = self.generation, procs
        self.serving = next(iter(loaded)) if len(loaded) == 1 else None
        self._stop_generation(old)
        log.warning("serving version %s", self.serving)
        return True

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM."""
        def stop(*_):
            self._stop = True
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        if not self._swap(None):   # the first generation: what CURRENT names (or the holder's fall-back)
            # nothing loadable yet: serve anyway (503 until a version loads), as a single process would
            self.generation, self._first_pipes = self._start(None)   # kept open: the workers write to them
        failures, last_poll = 0, 0.0
        try:
            while not self._stop:
                time.sleep(0.2)
                if self._stop:
                    break
                if any(p.poll() is not None for p in self.generation):
                    log.error("a worker exited; starting a new generation on %s", self.serving)
                    if self._swap(self.serving):
                        failures = 0
                    else:   # back off: a worker that cannot start must not be restarted in a loop
                        failures += 1
                        if failures >= 5:
                            raise RuntimeError("workers keep failing to start; see their errors above")
                        time.sleep(min(60.0, 2.0 ** failures))
                    continue
                if self.poll_seconds <= 0 or time.time() - last_poll < self.poll_seconds:
                    continue
                last_poll = time.time()
                try:
                    cur = registry.current_version(self.root)
                    if not cur or cur == self.serving:
                        self.refused = None if cur == self.serving else self.refused
                        continue
                    if cur == self.refused:
                        continue
                    version_mod.validate(self.root, cur)
                except DataError as exc:
                    self.refused = cur
                    log.error("version %s refused: %s", cur, exc)
                    continue
                except Exception as exc:  # noqa: BLE001 - a read error now is not a verdict on the version
                    log.error("cannot check CURRENT (%s); trying again", exc)
                    continue
                self._swap(cur)
        finally:
            self._stop_generation(self.generation)
            self.sock.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
