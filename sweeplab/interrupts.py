"""Signals that end work early become an exception, so open MLflow runs get closed as KILLED.

SIGINT (Ctrl-C), SIGTERM (kill, `scancel`, a SLURM time limit) and the pre-emption signal
submitit asks SLURM for (SIGUSR2 before the time limit) would otherwise end a process with
its runs left RUNNING forever. The SLURM signal keeps submitit's own handler, which
checkpoints and requeues the job, but only after the run is closed: the requeue kills the task.

An exception raised in the middle of an MLflow write can leave the SQLite store locked, so
the runs could no longer be closed; tracker calls therefore run inside `critical()`, which
raises the interruption when the call returns. A second Ctrl-C forces it through at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading

received: str | None = None  # the name of the first signal that interrupted this process
_held = False  # the interruption reached the sweep, which is closing its runs (`hold`)
_deferred: tuple | None = None  # (handler, signum, frame) still to run after the runs are closed
_critical_depth = 0  # how many `critical()` blocks the main thread is inside (signals reach no other thread)
_postponed: int | None = None  # a signal that arrived inside `critical()`


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when a termination signal arrives."""


def _raise_interrupted(signum, frame) -> None:
    global received, _postponed
    received = received or signal.Signals(signum).name
    forced = _postponed == signal.SIGINT and signum == signal.SIGINT  # Ctrl-C pressed twice
    if _critical_depth and not forced:
        _postponed = _postponed or signum
        return
    _postponed = None
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def critical():
    """Postpone an interruption until the outermost block ends, e.g. a store write; also a decorator.

    Signals reach the main thread only, so only its blocks count: a background writer's store calls
    neither postpone the main thread's interruption nor raise it in the writer.
    """
    global _critical_depth, _postponed
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _critical_depth += 1
    try:
        yield
    finally:
        _critical_depth -= 1
        if not _critical_depth and _postponed is not None:
            signum, _postponed = _postponed, None
            raise Interrupted(signal.Signals(signum).name)


def _deferring(previous):
    """Interrupt first, so the open run is closed; submitit's handler (requeue) runs after, in `finish`."""

    def handler(signum, frame) -> None:
        global _deferred
        _deferred = (previous, signum, frame)
        _raise_interrupted(signum, frame)

    handler.sweeplab_chained = True
    return handler


def finish() -> None:
    """Run the signal handler deferred by the interruption: submitit checkpoints, requeues and exits."""
    global _deferred
    if _deferred is not None:
        previous, signum, frame = _deferred
        _deferred = None
        previous(signum, frame)


def install() -> None:
    """Install the handlers in this process; a no-op outside the main thread, safe to repeat."""
    global received, _held
    if threading.current_thread() is not threading.main_thread():
        return
    received, _held = None, False  # a new command, or a new SLURM task: nothing interrupted it yet
    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    previous = signal.getsignal(signal.SIGUSR2)
    if callable(previous) and not getattr(previous, "sweeplab_chained", False):
        signal.signal(signal.SIGUSR2, _deferring(previous))


def check() -> None:
    """Raise the interruption a signal asked for if it has not reached the sweep yet.

    Python drops an exception raised inside a finalizer (`__del__`, such as a progress bar's, run whenever
    an object is collected): a signal whose handler ran there would be lost, and the sweep would go on.
    The engine checks between trials and the runner at every denoising step.
    """
    if received is not None and not _held and not _critical_depth and \
            threading.current_thread() is threading.main_thread():
        raise Interrupted(received)


def hold() -> None:
    """Ignore further termination signals while the runs of an interrupted process are closed."""
    global _held
    _held = received is not None
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
