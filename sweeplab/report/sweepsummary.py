"""A sweep's result for its parent run: a labelled grid of the outputs and a table of the trials.

Written when the sweep ends (sweeplab.sweeprecord), from the store as any report reads it, so the parent run
alone shows what the sweep gave. Kept cheap: 128 px cells, one grid over the swept keys with the most values.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sweeplab.report.grid import GridStyle
from sweeplab.report.page import Report, Table, to_markdown
from sweeplab.report.reports import add_grids
from sweeplab.report.runs import (PARAM_KEYS, PARENT_TAG, Artifacts, ReportError, format_value, iter_runs,
                                  one_per_trial, runs_frame, varying_keys)
from sweeplab.tracking import SKIPPED_TAG_PREFIX, SUMMARY_GRID, SUMMARY_TABLE

CELL = 128  # px: a grid cell's width; enough to tell outputs apart, small enough to log in a moment
SUMMARY_PNG_LEVEL = 1  # zlib's fastest: the grid is written while the sweep's user waits, and not kept in git
MAX_GRID_AXES = 3  # columns, rows and one grid per value of a third key; past that the trials no longer fit a grid


def write_sweep_summary(client, parent_run_id: str, out: Path) -> list[Path]:
    """Write the trials table (Markdown) and, where the swept keys allow, the grid PNG(s) into `out`; their paths."""
    frame = sweep_trials(client, parent_run_id)
    keys = sorted(varying_keys(frame), key=lambda key: -frame[key].nunique(dropna=True))  # stable: PARAM_KEYS order
    written = []
    grids, note = _grids(frame, client, keys)
    for number, image in enumerate(grids, start=1):
        written.append(out / (SUMMARY_GRID if len(grids) == 1 else SUMMARY_GRID.replace(".", f"-{number}.")))
        written[-1].write_bytes(image)
    written.append(out / SUMMARY_TABLE)
    written[-1].write_text(trials_markdown(frame, keys, note), encoding="utf-8")
    return written


def sweep_trials(client, parent_run_id: str) -> pd.DataFrame:
    """One row per trial of the sweep: its children, and the earlier runs it reused (resume)."""
    parent = client.get_run(parent_run_id)
    children = list(iter_runs(client, parent.info.experiment_id, f"tags.`{PARENT_TAG}` = '{parent_run_id}'"))
    reused = [client.get_run(run_id) for tag, run_id in sorted(parent.data.tags.items())
              if tag.startswith(SKIPPED_TAG_PREFIX)]
    if not children + reused:
        raise ReportError("the sweep has no trial runs (no trial could be composed)")
    return one_per_trial(runs_frame(children + reused))


def _grids(frame: pd.DataFrame, client, keys: list[str]) -> tuple[list[bytes], str]:
    """The grid PNGs (columns: the key with the most values, rows: the next; one grid per value of a third),
    or none and why."""
    if not (frame["status"] == "FINISHED").any():
        return [], "No grid: no trial finished."
    if not keys:
        return [], "No grid: every trial has the same params."
    if len(keys) > MAX_GRID_AXES:
        return [], (f"No grid: {len(keys)} keys vary ({', '.join(keys)}); pick three with "
                    "sweeplab-report grid --sweep RUN_ID --x KEY --y KEY --z KEY.")
    axes = keys if len(keys) > 1 else [keys[0], next(key for key in PARAM_KEYS if key not in keys)]
    report = Report("grid", "grid", png_level=SUMMARY_PNG_LEVEL)
    artifacts = Artifacts(client, progress=False)
    try:
        add_grids(report, frame, artifacts, axes, style=GridStyle(cell=CELL))
    except ReportError as err:  # e.g. trials that differ only in what params do not show (device, dtype)
        return [], f"No grid: {err}"
    finally:
        artifacts.close()
    return [report.images[src] for src in sorted(report.images)], ""


def trials_markdown(frame: pd.DataFrame, keys: list[str], note: str) -> str:
    """The table of trials: name, swept values, status and what each measured."""
    header = ["run", *keys, "status", "steps_taken", "denoiser_evals", "seconds"]
    rows = [[[str(row["run_name"])], *([format_value(row[key])] for key in keys), [str(row["status"])],
             [format_value(row["steps_taken"])], [format_value(row["denoiser_evals"])], [_seconds(row["seconds"])]]
            for _, row in frame.iterrows()]
    report = Report("trials", f"Sweep: {len(frame)} trials")
    if note:
        report.text(note)
    report.table(Table(header, rows))
    return to_markdown(report)


def _seconds(value) -> str:
    return "?" if value is None or pd.isna(value) else f"{value:.2f}"
