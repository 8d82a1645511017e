"""Holds the serving engine and swaps it atomically on hot reload.

A new version is loaded beside the old one; only a fully loaded and validated engine replaces the
reference, so requests in flight finish on the engine they started with, and a version that fails to
load is refused while the old one keeps serving. A refused version is not retried by the poller until
CURRENT names another one (or an admin reload asks for it). A service that starts while CURRENT names a
broken version serves the newest previously published version that loads, and says so in /readyz.
"""
from __future__ import annotations

import gc
import logging
import os
import threading

from recsys import registry, version as version_mod
from recsys.errors import DataError
from recsys.engine import Engine

from serving import prometheus

log = logging.getLogger("recsys.serving")


class EngineHolder:
    def __init__(self, root: str, poll_seconds: float = 10.0, filter_cache_size: int = 256,
                 full_gc_every_swaps: int = 50, swap_in_process: bool = True):
        self.swap_in_process = swap_in_process
        self._validated: str | None = None
        self.root, self.poll_seconds, self.filter_cache_size = root, poll_seconds, filter_cache_size
        self.full_gc_every_swaps, self._swaps = full_gc_every_swaps, 0
        self.engine: Engine | None = None
        self.last_error: str | None = None   # the latest refusal, without the artifact root's path
        self.refused: str | None = None      # the version that was refused (not retried by the poller)
        self._lock = threading.Lock()        # one reload at a time; readers never take it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _public(self, message: str) -> str:
        """A message fit for HTTP answers: the artifact root's location is not disclosed."""
        root = os.path.abspath(self.root)
        for form in {self.root.rstrip("/"), root}:
            if len(form) > 1 and os.sep in form:   # a path, not "." or a bare name
                message = message.replace(form, "<root>")
        return message

    def _refuse(self, message: str) -> tuple[bool, str]:
        self.last_error = self._public(message.splitlines()[0] if message else "refused")
        log.error(self.last_error)
        prometheus.RELOADS.labels(result="failed").inc()
        prometheus.REFUSED.set(1)
        return False, self.last_error

    def _clear_refusal(self) -> None:
        self.last_error = self.refused = None
        prometheus.REFUSED.set(0)

    def reload(self, version: str | None = None) -> tuple[bool, str]:
        """Load `version` (default: what CURRENT names) and swap it in. Returns (changed, message)."""
        with self._lock:
            try:
                target = registry.resolve_version(self.root, version)
            except Exception as exc:  # noqa: BLE001 - reported, old engine keeps serving
                return self._refuse(str(exc))
            if self.engine is not None and self.engine.version == target:
                return False, f"already serving {target}"
            try:
                engine = Engine.load(self.root, target, self.filter_cache_size)
            except Exception as exc:  # noqa: BLE001
                self.refused = target
                detail = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
                return self._refuse(f"version {target} refused: {detail}")
            old = self.engine.version if self.engine else None
            # Garbage the load made, collected before the swap: only objects not frozen are walked
            # (the new version's and the load's), so this takes about a millisecond.
            gc.collect()
            self.engine = engine          # atomic reference swap
            self._clear_refusal()
            # What is alive now lives as long as this version: out of the collector's view (freeze).
            # The previous version is freed by reference counting when its last request ends; a full
            # collection (unfreeze + collect) walks every object (~0.1 s at 50k items, more with a
            # larger catalog) and stalled every request in flight at each swap (p99 107 ms with a
            # swap every 5 s, benchmarks/serving_latency.py --swap-every). It only reclaims reference
            # cycles of old versions (TensorFlow's SavedModel leaves a few MB per two_tower swap), so
            # it runs once every `full_gc_every_swaps` swaps.
            self._swaps += 1
            if self.full_gc_every_swaps and self._swaps % self.full_gc_every_swaps == 0:
                gc.unfreeze()
                gc.collect()
            gc.freeze()
            prometheus.RELOADS.labels(result="ok").inc()
            prometheus.serving(target)
            # one line per swap: under `recsys serve` the supervisor says it once for all its workers
            log.log(logging.WARNING if self.swap_in_process else logging.INFO, "serving version %s (was %s)",
                    target, old)
            return True, f"serving {target}"

    def _fall_back(self) -> None:
        """At start, CURRENT was refused: serve the newest previously published version that loads."""
        refusal, bad = self.last_error, self.refused
        tried = {bad}
        for entry in reversed(registry.publish_history(self.root)):
            v = entry.get("version")
            if v in tried:
                continue
            tried.add(v)
            changed, _ = self.reload(v)
            if changed:
                self.refused = bad   # the poller does not retry it until CURRENT changes
                self.last_error = f"CURRENT was refused ({refusal}); serving the previously published {v}"
                prometheus.REFUSED.set(1)
                log.error(self.last_error)
                return
        self.last_error = refusal

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                cur = registry.current_version(self.root)
            except Exception:  # noqa: BLE001 - a transient read error must not kill the poller
                continue
            if cur and self.engine is not None and cur == self.engine.version and self.last_error:
                self._clear_refusal()   # CURRENT is back on what is served
                continue
            if cur and cur != self.refused and cur != self._validated and \
                    (self.engine is None or cur != self.engine.version):
                if self.swap_in_process:
                    self.reload(cur)
                    continue
                # the supervisor swaps processes; this worker only reports a version it would refuse
                try:
                    version_mod.validate(self.root, cur)
                    self._validated = cur            # checked once, not at every poll
                except Exception as exc:  # noqa: BLE001
                    self.refused = cur
                    self._refuse(f"version {cur} refused: {exc}")

    def start(self, version: str | None = None) -> None:
        """Load `version` (default: what CURRENT names; a refused CURRENT falls back) and start polling."""
        changed, _ = self.reload(version)
        if version is None and not changed and self.engine is None and self.refused:
            self._fall_back()
        if self.poll_seconds > 0:
            self._thread = threading.Thread(target=self._poll, name="current-poller", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
