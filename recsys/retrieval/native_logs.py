"""Keeping ScaNN's native start-up logging out of a nightly's output (shown with `recsys -v`)."""
from __future__ import annotations

import contextlib
import os
import sys
import threading


@contextlib.contextmanager
def quiet():
    """ScaNN's C++ side logs partitioner progress ("I0000 ... PartitionerFactory ran in ...") and an
    absl start-up warning straight to file descriptor 2 while it builds: noise in a nightly's output.
    Hidden during a build unless `recsys -v` (RECSYS_VERBOSE=1). Loading an index (the service, which
    has other threads logging) is not wrapped: fd 2 belongs to the whole process."""
    if os.environ.get("RECSYS_VERBOSE", "") not in ("", "0"):
        yield
        return
    global _quiet_depth, _saved_fd
    with _quiet_lock:   # fd 2 is the process's: the first to enter redirects, the last to leave restores
        if _quiet_depth == 0:
            sys.stderr.flush()
            _saved_fd = os.dup(2)
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 2)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                os.dup2(_saved_fd, 2)
                os.close(_saved_fd)


_quiet_lock = threading.Lock()
_quiet_depth, _saved_fd = 0, -1
