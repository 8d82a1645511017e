"""Prometheus metrics of the service."""
from prometheus_client import Counter, Gauge, Histogram, Info

REQUESTS = Counter("recsys_requests_total", "Requests by endpoint and status", ["endpoint", "status"])
LATENCY = Histogram("recsys_request_seconds", "Request latency by endpoint", ["endpoint"],
                    buckets=(.0005, .001, .002, .003, .005, .0075, .01, .02, .05, .1, .25, 1.0))
FALLBACKS = Counter("recsys_fallbacks_total", "Answers served from popularity", ["endpoint"])
ERRORS = Counter("recsys_errors_total", "Requests answered with an error", ["endpoint", "status"])
RELOADS = Counter("recsys_reloads_total", "Version reload attempts", ["result"])
LOADED_VERSION = Info("recsys_loaded_version", "The model version being served")
REFUSED = Gauge("recsys_version_refused", "1 while the version CURRENT names (or last asked for) is refused")
