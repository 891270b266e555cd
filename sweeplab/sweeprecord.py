"""What a sweep's parent run records, so that it alone shows the sweep: the grid asked for, the command, the result.

At the start: each swept key with its values (params; `seed: 1,2,3`) and the command line (a tag). At the end: the
trial counts (metrics) and, under `summary/`, a labelled grid of the outputs and a table of the trials, built by the
report layer from the store. The callback in tracking.py calls these; nothing here imports torch.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from sweeplab.redaction import redact_override


def swept_params(config: DictConfig) -> dict[str, str]:
    """Each swept key and its values, comma-separated, as Hydra's sweeper combines them: an experiment's
    `hydra.sweeper.params` first, the command line's overrides after (the later wins, as in the sweep)."""
    given = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    lines = [f"{key}={value}" for key, value in given.items()]
    lines += list(OmegaConf.select(config, "hydra.overrides.task", default=None) or [])
    swept = {}
    for override in OverridesParser.create().parse_overrides(lines):
        if not override.is_sweep_override():
            swept.pop(override.key_or_group, None)  # a plain value on the command line replaces a swept one
            continue
        try:
            swept[override.key_or_group] = ",".join(override.sweep_string_iterator())
        except Exception:  # noqa: BLE001 - interval() and glob() cannot be listed here: keep them as written
            swept[override.key_or_group] = override.input_line.partition("=")[2]
    return swept


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
