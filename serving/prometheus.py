"""Prometheus metrics of the service.

Under `recsys serve` the workers are separate processes, replaced at every swap: the supervisor gives
them one PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode), each worker writes its
counters there, and /metrics, whichever worker answers it, sums every worker's, the retired ones'
included, so counts survive swaps. Gauges read the live workers only. Without that directory (a
single process: tests, `create_app` embedded), the default registry.
"""
import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

REQUESTS = Counter("recsys_requests_total", "Requests by endpoint and status", ["endpoint", "status"])
LATENCY = Histogram("recsys_request_seconds", "Request latency by endpoint", ["endpoint"],
                    buckets=(.0005, .001, .002, .003, .005, .0075, .01, .02, .05, .1, .25, 1.0))
FALLBACKS = Counter("recsys_fallbacks_total", "Answers a personalized model could not personalize", ["endpoint"])
ERRORS = Counter("recsys_errors_total", "Requests answered with an error", ["endpoint", "status"])
RELOADS = Counter("recsys_reloads_total", "Version reload attempts", ["result"])
# (an Info metric has no multiprocess form: a gauge of 1 per served version, the same exposition)
LOADED_VERSION = Gauge("recsys_loaded_version_info", "The model version being served (1)", ["version"],
                       multiprocess_mode="livemax")
REFUSED = Gauge("recsys_version_refused", "1 while the version CURRENT names (or last asked for) is refused",
                multiprocess_mode="livemax")
_served: list = []


def serving(version: str) -> None:
    """Mark `version` as the one served (and the previous one as no longer)."""
    for old in _served:
        LOADED_VERSION.labels(old).set(0)
    _served[:] = [version]
    LOADED_VERSION.labels(version).set(1)


def exposition() -> tuple[bytes, str]:
    """The text /metrics answers: this process's metrics, or every worker's in multiprocess mode."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
