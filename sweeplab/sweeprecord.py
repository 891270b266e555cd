"""What a sweep's parent run records, so that it alone shows the sweep: the grid asked for, the command, the result.

At the start: each swept key with its values (params; `seed: 1,2,3`), the keys zipped together and the command line
(tags). At the end: the trial counts (metrics) and, under `summary/`, a labelled grid of the outputs and a table of
the trials, built by the report layer from the store. The callback in tracking.py calls these; nothing here imports
torch.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from pathlib import Path

from sweeplab.redaction import redact_override


def sweep_command() -> str:
    """The command line that started the sweep, as a user would retype it, secrets masked."""
    return shlex.join([Path(sys.argv[0]).name, *(redact_override(arg) for arg in sys.argv[1:])])


def record_result(tracker, parent_run_id: str, summary) -> None:
    """The trial counts as metrics and the summary folder as artifacts of the parent run (an outcome.SweepSummary)."""
    from mlflow.entities import Metric

    from sweeplab.report.sweepsummary import write_sweep_summary
    from sweeplab.tracking import SUMMARY_FOLDER

    counts = {"trials": summary.finished + summary.failed + summary.skipped, "trials_finished": summary.finished,
              "trials_failed": summary.failed, "trials_skipped": summary.skipped}
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, 0) for key, value in counts.items()]
    tracker.client.log_batch(parent_run_id, metrics=metrics)
    with tempfile.TemporaryDirectory(prefix="sweeplab-summary-") as folder:
        write_sweep_summary(tracker.client, parent_run_id, Path(folder))
        tracker.client.log_artifacts(parent_run_id, folder, SUMMARY_FOLDER)


def close_sweep(tracker, parent_run_id: str, tags: dict[str, str]):
    """The end of a sweep's parent run: `tags` (where it ran), its counts and summary, then FINISHED or FAILED.
    Returns the outcome.SweepSummary. Runs where the tracker is (the store's process, storeprocess.py)."""
    from sweeplab.outcome import SweepSummary

    tracker.set_tags(parent_run_id, tags)
    summary = SweepSummary.from_runs(tracker.child_runs(parent_run_id), tracker.run_tags(parent_run_id))
    try:
        record_result(tracker, parent_run_id, summary)
    except Exception as err:  # noqa: BLE001 - the sweep's own result stands without its summary
        lines = str(err).strip().splitlines()
        print(f"sweeplab: warning: the sweep's grid and trials table were not logged: {type(err).__name__}: "
              f"{lines[0] if lines else ''}", file=sys.stderr)
    tracker.end_run(parent_run_id, "FAILED" if summary.failed else "FINISHED")
    return summary
