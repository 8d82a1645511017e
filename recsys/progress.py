"""What a long step tells the person waiting: a rate and an ETA at least every 30 s, and what the step
cost (wall seconds, CPU seconds, peak resident memory) for the nightly summary and benchmarks/scale.py.
"""
from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _peak_rss_mb() -> float:
    """The process's resident-memory high-water mark (VmHWM) in MB; ru_maxrss where /proc has none."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> bool:
    """Restart the high-water mark (Linux: "5" to clear_refs), so a step reports its own peak, not an
    earlier step's. Returns False where that is not possible (the peak is then the process's so far)."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class StageUse:
    """What one step cost. `peak_rss_mb` is the step's own peak when `peak_is_own`, else the process's
    peak so far."""
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    peak_is_own: bool

    def to_dict(self) -> dict:
        """Rounded for a JSON summary."""
        d = asdict(self)
        for k in ("seconds", "cpu_seconds", "peak_rss_mb"):
            d[k] = round(d[k], 2)
        return d


class Meter:
    """`with Meter() as m: ...` then `m.use` is the block's StageUse."""

    def __enter__(self) -> "Meter":
        self._own = _reset_peak_rss()
        self._t0, self._cpu0 = time.perf_counter(), _cpu_seconds()
        self.use: StageUse | None = None
        return self

    def __exit__(self, *exc) -> None:
        self.use = StageUse(time.perf_counter() - self._t0, _cpu_seconds() - self._cpu0, _peak_rss_mb(), self._own)


def to_stderr(line: str) -> None:
    """A progress sink that leaves stdout to results (`--json`) and works from Beam workers (picklable)."""
    print(line, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Rate and ETA lines for a loop over a known number of things, at most every `every` seconds.

    Example:
        p = Progress("evaluate", total=len(users), unit="users", emit=progress)
        for block in blocks: ...; p.advance(len(block))
        p.done()
    """

    def __init__(self, what: str, total: int | None, unit: str, emit: Callable[[str], None] = print,
                 every: float = 30.0):
        self.what, self.total, self.unit, self.emit, self.every = what, total, unit, emit, every
        self.count = 0
        self._t0 = self._last = time.perf_counter()

    def advance(self, n: int) -> None:
        """Count `n` more; print a line when `every` seconds have passed since the last one."""
        self.count += n
        now = time.perf_counter()
        if now - self._last >= self.every:
            self._last = now
            self.emit(self.line(now))

    def line(self, now: float | None = None) -> str:
        """`what: done/total units, rate/s, ETA` as of now."""
        elapsed = max((now or time.perf_counter()) - self._t0, 1e-9)
        rate = self.count / elapsed
        text = f"  {self.what}: {self.count:,}"
        if self.total:
            text += f"/{self.total:,} {self.unit} ({100 * self.count / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:,.0f} {self.unit}/s"
        if self.total and rate > 0 and self.count < self.total:
            text += f", ETA {_duration((self.total - self.count) / rate)}"
        return text

    @property
    def rate(self) -> float:
        """Things per second so far."""
        return self.count / max(time.perf_counter() - self._t0, 1e-9)

    def done(self) -> None:
        """The final line (always printed)."""
        self.emit(self.line() + f" in {_duration(time.perf_counter() - self._t0)}")
