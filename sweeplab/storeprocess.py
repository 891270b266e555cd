"""The MLflow store in a process of its own, so that a sweep's store work runs beside its diffusion.

Opening a new SQLite store costs about 4.5 s on this project's 2-core machine (MLflow's imports, then its
schema migrations), and every trial's logging is Python work (SQLAlchemy, PNG encoding). In the sweep's own
process that time adds to the diffusion's: on a thread it contends for the GIL with torch's imports (measured
2 s slower per sweep). `StoreProcess` forks one server process when a sweep starts, before torch is imported,
and every `MlflowTracker` of the sweep lives there; the sweep holds `RemoteTracker`s, whose calls carry plain
data only (ids, dicts, PIL images, numpy latents), so the sweep process never imports MLflow.

The server ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole process group): the sweep decides what an
interruption does, and closes its runs through the server before it exits. The server exits when the sweep's
process is gone, however it went.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.managers import BaseManager
from typing import Any

from sweeplab import interrupts

PARENT_POLL_SECONDS = 1.0  # how often the server checks that the sweep's process is still there
# The server's CPU priority, lowest: its work fills the cores' idle moments instead of taking time from torch's
# threads. A 12-trial sweep of the toy at 256 px on 2 cores took 36.5 s with it, 39.2 s at the sweep's priority.
STORE_NICENESS = 19


class StoreCallFailed(Exception):
    """A tracker call failed in the store's process; the message is the original error's."""


class _TrackerHost:
    """The server's side: one MlflowTracker per (store URI, experiment), opened on first use."""

    def __init__(self):
        self._trackers: dict[tuple[str, str], Any] = {}
        self._opening = threading.Lock()  # the sweep's threads may ask for one store at once

    def open(self, uri: str, experiment: str) -> tuple[str, str]:
        """Open (or reuse) the tracker; its URI and experiment id. A store that cannot be used raises StoreError."""
        from sweeplab.tracking import MlflowTracker

        with self._opening:
            if (uri, experiment) not in self._trackers:
                self._trackers[uri, experiment] = MlflowTracker(uri, experiment)
                threading.Thread(target=_import_ahead, name="sweeplab-store-imports", daemon=True).start()
        tracker = self._trackers[uri, experiment]
        return tracker.uri, tracker.experiment_id

    def call(self, uri: str, experiment: str, method: str, args: tuple, kwargs: dict) -> Any:
        """The tracker's method; its failure as StoreCallFailed, since MLflow's and SQLAlchemy's errors would
        need their modules in the sweep's process to unpickle."""
        try:
            return getattr(self._trackers[uri, experiment], method)(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised with the same message
            raise StoreCallFailed(str(err) or type(err).__name__) from None


def _import_ahead() -> None:
    """Import what logging a trial and a sweep's end need (image encoders, safetensors, the summary's pandas
    and report code: about 2 s) while the sweep loads its model, at the server's low priority, rather than when
    the sweep waits for them: its first trial's results, its end."""
    import PIL.PngImagePlugin  # noqa: F401
    import PIL.WebPImagePlugin  # noqa: F401
    import safetensors.numpy  # noqa: F401
    from mlflow.tracking import multimedia  # noqa: F401

    import sweeplab.report.sweepsummary  # noqa: F401


class _HostManager(BaseManager):
    pass


_HostManager.register("TrackerHost", _TrackerHost)


def _serve_for(parent_pid: int) -> None:
    """The server's start: signals are the sweep's to handle; it leaves when the sweep's process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.nice(STORE_NICENESS)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="sweeplab-store-watch", daemon=True).start()


class StoreProcess:
    """One forked server holding the sweep's MLflow trackers; `tracker()` hands out their proxies.

    Forked, not spawned: the server starts in milliseconds with the modules already loaded, and the sweep
    forks it before torch is imported or any thread starts.
    """

    def __init__(self):
        self._manager = _HostManager(ctx=multiprocessing.get_context("fork"))
        self._manager.start(_serve_for, (os.getpid(),))
        self._host = self._manager.TrackerHost()

    def tracker(self, uri: str, experiment: str) -> "RemoteTracker":
        """The store's tracker, opened in the server (StoreError when it cannot be used)."""
        return RemoteTracker(self._host, *interrupts.critical()(self._host.open)(uri, experiment), experiment)

    def close(self) -> None:
        """Stop the server once the sweep has ended (at exit it stops by itself)."""
        self._manager.shutdown()


class RemoteTracker:
    """An MlflowTracker in the store process, called like one: every call waits for its answer.

    Calls are `interrupts.critical`: a signal during one takes effect when its answer is in, so the
    connection to the server is never left with an answer unread.
    """

    def __init__(self, host, uri: str, experiment_id: str, experiment: str):
        self._host = host
        self._key = (uri, experiment)
        self.uri = uri
        self.experiment_id = experiment_id

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: interrupts.critical()(self._host.call)(*self._key, method, args, kwargs)


class LocalStore:
    """Trackers in this process: a single run, or a SLURM task, whose sweep's store work overlaps nothing."""

    def tracker(self, uri: str, experiment: str):
        from sweeplab.tracking import MlflowTracker

        return MlflowTracker(uri, experiment)
