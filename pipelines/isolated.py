"""Run a function in a process of its own and get its result back: how the nightly isolates its steps.

A step's memory (TensorFlow's allocator, a training set, pandas' frames) goes back to the OS when its
process ends, so a nightly's peak is its largest step's, not the sum of all of them, and the parent,
which holds the lock and the run's state, never imports TensorFlow.

The child is started with `spawn`, a fresh interpreter: forking a process that already has
TensorFlow's or gRPC's threads (a test process, a notebook) can deadlock the child. It reports back
over a pipe: progress lines as they come, then the result and what the call cost (`StageUse`,
measured inside the child, so its peak is the step's own), or the exception with its traceback. A
child that dies without a word (killed, out of memory, a crash in native code) raises
`ChildDied` naming the exit code; nothing of the parent's state is touched, so the run resumes.
"""
from __future__ import annotations

import logging
import multiprocessing
import pickle
import traceback
from typing import Any, Callable

from recsys.errors import RecsysError
from recsys.progress import Meter, StageUse


class ChildDied(RecsysError):
    """The step's process ended without a result (killed, out of memory, a native crash)."""


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling as itself, else a RuntimeError with its type and message."""
    try:
        back = pickle.loads(pickle.dumps(exc))
        if type(back) is type(exc) and str(back) == str(exc):
            return exc
    except Exception:  # noqa: BLE001 - any failure: send a plain copy
        pass
    return RuntimeError(f"{type(exc).__name__}: {exc}")


def _child(conn, fn: Callable, args: tuple, verbose: bool = False) -> None:
    def progress(line: str) -> None:
        conn.send(("progress", str(line)))
    try:
        from recsys import logs
        logs.configure(verbose, logs.log_format())    # a fresh interpreter: the parent's format and level
        with Meter() as meter:
            result = fn(*args, progress)
        conn.send(("done", result, meter.use))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        conn.send(("error", _portable(exc), traceback.format_exc()))
    finally:
        conn.close()


def call(fn: Callable, args: tuple, progress: Callable[[str], None], name: str = "step") -> tuple[Any, StageUse, int]:
    """`fn(*args, progress)` in a spawned process; returns (its result, what it cost, the child's pid).

    `fn` must be a module-level function and `args` and the result picklable. Progress lines reach
    `progress` as the child prints them.

    Raises:
        The child's exception (its traceback added as a note), or ChildDied.
    """
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    verbose = logging.getLogger().getEffectiveLevel() <= logging.INFO
    proc = ctx.Process(target=_child, args=(send, fn, args, verbose), name=f"recsys-{name}", daemon=False)
    proc.start()
    send.close()   # the child holds the only writing end: EOF below means it is gone
    outcome = None
    try:
        while True:
            try:
                message = receive.recv()
            except EOFError:
                break
            if message[0] == "progress":
                progress(message[1])
            else:
                outcome = message
    finally:
        receive.close()
        proc.join()
    if outcome is None:
        code = proc.exitcode
        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        hint = " (9: the system's out-of-memory killer, most often)" if code == -9 else ""
        raise ChildDied(f"the {name} process ended without a result: {why}{hint}")
    if outcome[0] == "error":
        exc, tb = outcome[1], outcome[2]
        exc.add_note(f"in the {name} process (pid {proc.pid}):\n{tb}")
        raise exc
    return outcome[1], outcome[2], proc.pid
