"""Signals that end work early become an exception, so open MLflow runs get closed as KILLED.

SIGINT (Ctrl-C), SIGTERM (kill, `scancel`, a SLURM time limit) and the pre-emption signal
submitit asks SLURM for (SIGUSR2 before the time limit) would otherwise end a process with
its runs left RUNNING forever. The SLURM signal keeps submitit's own handler, which
checkpoints and requeues the job first.
"""

from __future__ import annotations

import signal
import threading

received: str | None = None  # the name of the first signal that interrupted this process


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when a termination signal arrives."""


def _raise_interrupted(signum, frame) -> None:
    global received
    received = received or signal.Signals(signum).name
    raise Interrupted(signal.Signals(signum).name)


def _after(previous):
    """Run submitit's handler (checkpoint and requeue), then interrupt whatever it left running."""

    def handler(signum, frame) -> None:
        name = signal.Signals(signum).name
        hold()  # the requeue sends SIGTERM; this run ends because of the signal that started it
        try:
            previous(signum, frame)
        except SystemExit as err:
            raise Interrupted(f"{name}: SLURM time limit or pre-emption; submitit requeued the task") from err
        except Exception as err:  # noqa: BLE001 - submitit's reason for not requeuing
            raise Interrupted(f"{name}: {err}") from err
        _raise_interrupted(signum, frame)

    handler.sweeplab_chained = True
    return handler


def install() -> None:
    """Install the handlers in this process; a no-op outside the main thread, safe to repeat."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    previous = signal.getsignal(signal.SIGUSR2)
    if callable(previous) and not getattr(previous, "sweeplab_chained", False):
        signal.signal(signal.SIGUSR2, _after(previous))


def hold() -> None:
    """Ignore further termination signals while the runs of an interrupted process are closed."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
