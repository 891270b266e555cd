"""How a command ends: a one-line summary per sweep and a non-zero exit when anything failed."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from sweeplab.tracking import CONFIG_HASH_TAG, ERROR_TAG, SKIPPED_TAG_PREFIX

LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
# MLflow 3 opens an experiment on its GenAI overview; this query opens the runs table of classic ML runs.
RUNS_TABLE_QUERY = "workflowType=machine_learning"

_failures: list[str] = []


def record_failure(message: str) -> None:
    _failures.append(message)


def exit_code() -> int:
    return 1 if _failures else 0


@dataclass
class SweepSummary:
    finished: int = 0
    failed: int = 0
    skipped: int = 0  # already FINISHED in an earlier sweep (resume)
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_runs(cls, runs, parent_tags: dict[str, str]) -> "SweepSummary":
        """One count per trial: a trial requeued by SLURM has a KILLED run and then a FINISHED one."""
        summary = cls(skipped=sum(tag.startswith(SKIPPED_TAG_PREFIX) for tag in parent_tags))
        trials: dict[str, list] = {}
        for run in runs:
            trials.setdefault(run.data.tags.get(CONFIG_HASH_TAG, run.info.run_id), []).append(run)
        for attempts in trials.values():
            if any(run.info.status == "FINISHED" for run in attempts):
                summary.finished += 1
            else:
                summary.failed += 1
                last = max(attempts, key=lambda run: run.info.start_time)
                summary.errors.append(f"{last.info.run_name}: {last.data.tags.get(ERROR_TAG, last.info.status)}")
        return summary


def report_sweep(summary: SweepSummary, tracker, parent_run_id: str) -> None:
    total = summary.finished + summary.failed + summary.skipped
    skipped = f", {summary.skipped} skipped as already FINISHED (resume=false reruns them)" if summary.skipped else ""
    print(f"sweeplab: {total} trials: {summary.finished} finished, {summary.failed} failed{skipped}", file=sys.stderr)
    for error in summary.errors:
        print(f"sweeplab:   failed {error}", file=sys.stderr)
    if summary.failed:
        record_failure(f"{summary.failed} of {total} trials failed")
    print(f"sweeplab: MLflow store {tracker.uri}, experiment id {tracker.experiment_id}, sweep run {parent_run_id}",
          file=sys.stderr)
    if urlsplit(tracker.uri).scheme in ("http", "https"):
        print(f"sweeplab: the sweep's runs: {runs_table_url(tracker.uri, tracker.experiment_id)}", file=sys.stderr)
    else:
        print(f"sweeplab: browse with: mlflow ui --backend-store-uri {tracker.uri}\n"
              f"sweeplab: then open: {runs_table_url(LOCAL_UI, tracker.experiment_id)}", file=sys.stderr)


def runs_table_url(ui: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI at `ui` (a server's address; its password left out)."""
    parts = urlsplit(ui)
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    base = urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
    return f"{base}/#/experiments/{experiment_id}/runs?{RUNS_TABLE_QUERY}"
