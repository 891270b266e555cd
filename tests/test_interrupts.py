"""A signal never lands inside an MLflow store call: the call finishes, then the sweep stops."""

from __future__ import annotations

import os
import signal

import pytest
from sqlalchemy import event

from sweeplab import interrupts
from sweeplab.tracking import MlflowTracker


@pytest.fixture
def handlers():
    """sweeplab's handlers in this process for one test; pytest's own restored after."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    interrupts.install()
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    interrupts.received = None


def test_a_signal_during_a_store_write_is_raised_when_the_tracker_call_returns(tmp_path, handlers):
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "interrupts")
    signalled = []

    def signal_inside_the_insert(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT INTO params") and not signalled:
            signalled.append(statement)
            signal.raise_signal(signal.SIGTERM)

    event.listen(tracker.client._tracking_client.store.engine, "before_cursor_execute", signal_inside_the_insert)
    with pytest.raises(interrupts.Interrupted, match="SIGTERM"):
        tracker.start_run("trial", {"strength": "0.7"}, {}, None)
    (run_id,) = tracker.open_runs
    assert tracker.client.get_run(run_id).data.params == {"strength": "0.7"}  # the params, logged after
    interrupts.hold()
    tracker.kill_open_runs("interrupted: SIGTERM")
    assert tracker.client.get_run(run_id).info.status == "KILLED"
    assert not tracker.open_runs


def test_signals_wait_for_the_outermost_critical_block(handlers):
    with pytest.raises(interrupts.Interrupted, match="SIGTERM"):
        with interrupts.critical():
            with interrupts.critical():
                signal.raise_signal(signal.SIGTERM)
                signal.raise_signal(signal.SIGTERM)
            reached_after_the_inner_block = True
    assert reached_after_the_inner_block
    assert interrupts.received == "SIGTERM"


def test_a_second_ctrl_c_forces_the_interruption_at_once(handlers):
    steps = []
    with pytest.raises(interrupts.Interrupted, match="SIGINT"):
        with interrupts.critical():
            signal.raise_signal(signal.SIGINT)
            steps.append("postponed")
            signal.raise_signal(signal.SIGINT)
            steps.append("not reached")
    assert steps == ["postponed"]
    with interrupts.critical():  # nothing left over from the forced one
        pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped exception, as meant
def test_a_signal_dropped_inside_a_finalizer_still_interrupts_at_the_next_check(handlers):
    """Python drops an exception raised in __del__ (a progress bar's, say): the sweep's next check raises it."""
    class SignalledWhileCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # the handler raises here, and Python only prints it

    SignalledWhileCollected()
    assert interrupts.received == "SIGINT"
    with pytest.raises(interrupts.Interrupted, match="SIGINT"):
        interrupts.check()
    interrupts.hold()  # the sweep has it and closes its runs: no check raises it again
    interrupts.check()
