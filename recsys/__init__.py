"""recsys: Beam datasets, TFRS two-tower and MF models, ScaNN serving, offline A/B evaluation."""
import logging
import os

# TFRS 0.7.7 needs Keras 2: this must be set before anything imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up lines (the CUDA probe's "failed call to cuInit" on a machine without a GPU
# reads like a crash) are noise for a CLI user; real errors still surface as Python exceptions.
# `recsys -v` (RECSYS_VERBOSE=1) shows them.
_VERBOSE = os.environ.get("RECSYS_VERBOSE", "") not in ("", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if _VERBOSE else "3")


def _quiet_import_warnings(record: logging.LogRecord) -> bool:
    """Beam logs 'apitools not found ...' on the root logger when its GCP clients are imported."""
    return "apitools not found" not in record.getMessage()


if not _VERBOSE:
    logging.getLogger().addFilter(_quiet_import_warnings)

__version__ = "0.1.0"
