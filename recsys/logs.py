"""Log lines for people and for log collectors: UTC ISO 8601 text, or one JSON object per line.

`recsys --log-format json` (or RECSYS_LOG_FORMAT=json, which `recsys serve` hands to its workers) turns
every line, the service's and uvicorn's included, into {"time", "level", "logger", "message"} plus
"exception" when there is one, the shape Cloud Logging, Loki and Elasticsearch ingest without a parser.
"""
from __future__ import annotations

import json
import logging
import os
import time

FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UtcFormatter(logging.Formatter):
    """Text lines stamped in UTC, ISO 8601 with milliseconds: 2026-12-07T11:12:13.456Z WARNING name: ..."""

    converter = time.gmtime
    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"

    def __init__(self, fmt: str = TEXT, *args, **kwargs):
        super().__init__(fmt, *args, **kwargs)


class JsonFormatter(UtcFormatter):
    """One JSON object per record: time, level, logger, message (and exception, stack)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


def log_format(value: str | None = None) -> str:
    """The format asked for (a flag's value), else RECSYS_LOG_FORMAT, else text; one line if unknown."""
    from recsys.errors import RecsysError
    fmt = (value or os.environ.get("RECSYS_LOG_FORMAT") or "text").lower()
    if fmt not in FORMATS:
        raise RecsysError(f"log format {fmt!r} is not one of {', '.join(FORMATS)} (--log-format, RECSYS_LOG_FORMAT)")
    return fmt


_FORMATTERS = {"text": UtcFormatter, "json": JsonFormatter}


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of `fmt` ("text" or "json")."""
    return _FORMATTERS[fmt]()


def configure(verbose: bool = False, fmt: str = "text") -> None:
    """Send the root logger's records to stderr in `fmt`, at INFO with `verbose`, else WARNING with
    TensorFlow's and Beam's own logging quieted. A host that configured logging already (an embedding
    program, pytest) keeps its handlers."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    if not verbose:
        for name in ("tensorflow", "absl"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # Beam logs the exception of a failing step with its traceback (apache_beam.runners.common, at
        # ERROR) before raising it to the caller, where it is reported: one line for a RecsysError (a
        # UTF-16 file, a header without the configured columns), Python's traceback for anything else.
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL)


def uvicorn_config(fmt: str, access_log: bool) -> dict:
    """uvicorn's `log_config`: its error and access loggers in the same format as everything else."""
    cls = f"{__name__}.{_FORMATTERS[fmt].__name__}"
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"recsys": {"()": cls}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "recsys",
                                "stream": "ext://sys.stderr"}},
        "loggers": {"uvicorn": {"handlers": ["stderr"], "level": "INFO" if access_log else "WARNING",
                                "propagate": False},
                    "uvicorn.access": {"level": "INFO" if access_log else "WARNING"}},
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }
