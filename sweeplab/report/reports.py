"""The four reports, each from a DataFrame of trials (one row per trial) to a `Report`.

Data flows one way: runs.py reads MLflow, these functions only read the frame and the
fetched images, page.py writes files.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Callable

import pandas as pd
from PIL import Image

from sweeplab.report.grid import FAILED, MISSING, GridLayout, GridStyle, GridTooSmall, draw_grid, fit_grid
from sweeplab.report.page import Picture, Report, Table
from sweeplab.report.runs import (
    DERIVED_PARAMS,
    OPTION_DEFAULTS,
    PARAM_KEYS,
    Artifacts,
    ReportError,
    format_value,
    varying_keys,
)
from sweeplab.tracking import ENVIRONMENT_TAGS, OUTPUT_SHA256_TAG

IMAGES = {"output": "output.png", "start": "start.png", "init": "init.png", "latent_strip": "latent_strip.png"}


def label(row, keys) -> str:
    return ", ".join(f"{key} {format_value(row[key])}" for key in keys) or "trial"


def slug(row, keys) -> str:
    """A file stem from param values: stable, short and safe, never a run id."""
    text = "-".join(f"{key}{format_value(row[key])}" for key in keys) or "trial"
    safe = re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")
    if len(safe) > 60:
        safe = f"{safe[:50]}_{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return safe


def constants(frame: pd.DataFrame) -> str:
    """The params every trial shares, for a caption; unused options and an empty negative prompt are left out."""
    shared = [key for key in PARAM_KEYS if frame[key].nunique(dropna=True) == 1]
    values = {key: frame[key].dropna().iloc[0] for key in shared}
    unused = {"negative_prompt": "", **OPTION_DEFAULTS}
    return "; ".join(f"{key}: {format_value(value)}" for key, value in values.items()
                     if key not in unused or format_value(value) != format_value(unused[key]))


def index_by(frame: pd.DataFrame, keys: list[str]) -> dict[tuple, pd.Series]:
    """Trials by their values of `keys`; two trials in one place is an error naming what else varies."""
    found: dict[tuple, pd.Series] = {}
    for _, row in frame.iterrows():
        where = tuple(format_value(row[key]) for key in keys)
        if where in found:
            others = [key for key in varying_keys(frame) if key not in keys]
            raise ReportError(
                f"several trials at {', '.join(f'{k}={v}' for k, v in zip(keys, where))}; they also differ in "
                f"{', '.join(others) or 'their config hash'}: add such a key as an axis (--z) or select one sweep (--sweep)"
            )
        found[where] = row
    return found


def refuse_mixed(frame: pd.DataFrame, shown: list[str], remedy: str = "") -> None:
    """Refuse runs that differ in a key the report does not show (toy and real outputs side by side, unlabelled).

    A derived key (model_family, steps from steps_taken_target, ...) may stay unshown where the shown keys fix it.
    """
    for key in varying_keys(frame):
        if key in shown or (key in DERIVED_PARAMS and _fixed_by(frame, key, shown)):
            continue
        values = ", ".join(format_value(value) for value in ordered_values(frame, key))
        raise ReportError(f"{key}: {values}; the selected runs differ in {key}, which this report does not show: "
                          f"add --where {key}=VALUE{remedy}")


def _fixed_by(frame: pd.DataFrame, key: str, shown: list[str]) -> bool:
    """Whether each combination of the shown values has one value of `key`, so a cell never holds two."""
    if not shown:
        return False
    return bool((frame.groupby(shown, dropna=False)[key].nunique(dropna=True) <= 1).all())


def ordered_values(frame: pd.DataFrame, key: str) -> list:
    return sorted(frame[key].dropna().unique().tolist(), key=lambda v: (isinstance(v, str), v))


def fitted(image: Image.Image, width: int) -> Image.Image:
    """A thumbnail `width` pixels wide (never enlarged)."""
    if image.width <= width:
        return image
    return image.resize((width, max(1, round(image.height * width / image.width))), Image.Resampling.LANCZOS)


def trial_table(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The CSV of a report: what places each trial and what it measured; never run ids or seconds."""
    return frame[[*keys, "status", "steps_taken", "denoiser_evals", "error", "config_hash"]].copy()


def failure(row) -> str:
    return f"failed: {row['error'] or row['status']}"


def step_notes(frame: pd.DataFrame) -> list[str]:
    """Where steps taken differ from int(steps x strength), and denoiser evaluations from steps, measured."""
    notes = []
    done = frame[frame["status"] == "FINISHED"]
    for sampler, trials in done.groupby("sampler", sort=True):
        differing = trials[trials["denoiser_evals"] != trials["steps_taken"]]
        if differing.empty:
            count = f"{len(trials)} trial" + ("s" if len(trials) != 1 else "")
            notes.append(f"{sampler}: one denoiser evaluation per step taken, in {count}.")
        else:
            cases = "; ".join(f"{row.steps} steps at strength {row.strength:g}: {row.steps_taken} steps taken, "
                              f"{row.denoiser_evals} denoiser evaluations" for row in differing.itertuples())
            notes.append(f"{sampler}: denoiser evaluations differ from steps taken ({cases}){_pattern(differing)}.")
    for row in done.itertuples():
        expected = int(row.steps * row.strength)
        if row.steps_taken != expected:
            notes.append(f"{row.sampler}, {row.steps} steps at strength {row.strength:g}: {row.steps_taken} steps "
                         f"taken, not int(steps x strength) = {expected}.")
    return notes


def _pattern(trials: pd.DataFrame) -> str:
    """Name the shape of the measured counts when every trial follows one, and only one."""
    second_order = (trials["denoiser_evals"] == 2 * trials["steps_taken"] - 1).all()
    one_extra = (trials["denoiser_evals"] == trials["steps_taken"] + 1).all()
    if second_order and not one_extra:
        return ": two evaluations per step but the last, as a second-order sampler makes"
    if one_extra and not second_order:
        return ": one evaluation more than steps, as PLMS spends on its first step"
    return ""


class Builder:
    """Shared by the reports: images fetched once, placed once, failed trials shown as such."""

    def __init__(self, frame: pd.DataFrame, artifacts: Artifacts, report: Report, names: tuple[str, ...]):
        self.artifacts = artifacts
        self.report = report
        artifacts.fetch(frame, tuple(IMAGES[name] for name in names))

    def picture(self, row, image: str, keys, width: int | None = None, display: int | None = None) -> Picture:
        full = self.artifacts.image(row["run_id"], IMAGES[image])
        shown = fitted(full, width) if width else full
        stem = f"{slug(row, keys)}-{image}" + (f"-{width}px" if width else "")
        return self.report.add_image(stem, shown, f"{image}: {label(row, keys)}", display)

    def image_cell(self, row, image: str, keys, display: int | None = None) -> list:
        if row is None:
            return [MISSING]
        if row["status"] != "FINISHED":
            return [failure(row)]
        return [self.picture(row, image, keys, display=display)]


def steps_vs_strength(frame: pd.DataFrame, artifacts: Artifacts, thumb: int = 128) -> Report:
    """Rows strengths, columns requested steps; one table per combination of the other swept keys."""
    report = Report("steps-vs-strength", "Steps actually taken vs strength")
    report.text(constants(frame))
    keys = add_steps_vs_strength(report, frame, artifacts, thumb)
    report.heading("About the step counts")
    for note in step_notes(frame):
        report.text(note)
    report.data = trial_table(frame, keys)
    return report


def add_steps_vs_strength(report: Report, frame: pd.DataFrame, artifacts: Artifacts, thumb: int) -> list[str]:
    """The tables; returns the keys that place a trial."""
    report.text("Each cell: denoising steps actually taken, denoiser evaluations and the output.")
    build = Builder(frame, artifacts, report, ("output",))
    others = [key for key in varying_keys(frame) if key not in ("strength", "steps")]
    keys = [*others, "strength", "steps"]
    groups = frame.groupby(others, sort=True, dropna=False) if others else [((), frame)]
    for values, group in groups:
        if others:
            report.heading(", ".join(f"{k} {format_value(v)}" for k, v in zip(others, values)))
        cells = index_by(group, ["strength", "steps"])
        steps = ordered_values(group, "steps")
        rows = []
        for strength in ordered_values(group, "strength"):
            row_cells: list[list] = [[f"strength {strength:g}"]]
            for count in steps:
                row = cells.get((format_value(strength), format_value(count)))
                if row is not None and row["status"] == "FINISHED":
                    row_cells.append([f"{row['steps_taken']} steps taken", f"{row['denoiser_evals']} denoiser evaluations",
                                      build.picture(row, "output", keys, thumb)])
                else:
                    row_cells.append(build.image_cell(row, "output", keys))
            rows.append(row_cells)
        report.table(Table(["strength \\ steps", *(f"{count} steps" for count in steps)], rows))
    return keys


def grid(frame: pd.DataFrame, artifacts: Artifacts, x: str, y: str, z: str | None = None, image: str = "output",
         style: GridStyle = GridStyle()) -> Report:
    """Labelled image grids over X and Y, one per value of Z; failed trials are crossed-out cells."""
    axes = [key for key in (x, y, z) if key]
    report = Report("grid", f"Grid: {x} x {y}" + (f" per {z}" if z else ""))
    add_grids(report, frame, artifacts, axes, image, style)
    report.data = trial_table(frame, axes)
    return report


def add_grids(report: Report, frame: pd.DataFrame, artifacts: Artifacts, axes: list[str], image: str = "output",
              style: GridStyle = GridStyle()) -> list[GridLayout]:
    """One grid per Z value (axes: X, Y and optionally Z), scaled or split past style.max_side; their layouts."""
    for key in axes:
        if key not in PARAM_KEYS:
            raise ReportError(f"unknown axis key '{key}'; allowed: {', '.join(PARAM_KEYS)}")
    if len(set(axes)) != len(axes):
        raise ReportError(f"axes must differ; got {', '.join(axes)}")
    if image not in IMAGES:
        raise ReportError(f"unknown image '{image}'; allowed: {', '.join(IMAGES)}")
    x, y, z = (*axes, None)[:3]
    refuse_mixed(frame, axes, " or make it an axis (--x, --y or --z)")
    cells = index_by(frame, axes)
    xs, ys = ordered_values(frame, x), ordered_values(frame, y)
    column_labels, row_labels = [f"{x}: {format_value(v)}" for v in xs], [f"{y}: {format_value(v)}" for v in ys]
    finished = frame.loc[frame["status"] == "FINISHED", "run_id"]
    sample = artifacts.image(finished.iloc[0], IMAGES[image]) if len(finished) else None
    cell_height = round(style.cell * sample.height / sample.width) if sample else style.cell
    shared = constants(frame)
    z_values = ordered_values(frame, z) if z else [None]
    legends = [f"x: {x}, y: {y}" + (f", {z}: {format_value(v)}" if z else "") + (f". {shared}" if shared else "")
               for v in z_values]
    try:  # sizes first: a --max-side too small is refused before every image is downloaded
        fits = [fit_grid(legend, column_labels, row_labels, cell_height, style) for legend in legends]
    except GridTooSmall as err:
        raise ReportError(str(err)) from None
    artifacts.fetch(frame, (IMAGES[image],))
    layouts = []
    for number, (z_value, legend, fit) in enumerate(zip(z_values, legends, fits), start=1):
        grid_cells = []
        for y_value in ys:
            row_cells = []
            for x_value in xs:
                where = tuple(format_value(v) for v in (x_value, y_value, z_value)[:len(axes)])
                row = cells.get(where)
                if row is None:
                    row_cells.append(MISSING)
                elif row["status"] != "FINISHED":
                    row_cells.append(FAILED)
                else:
                    row_cells.append(artifacts.image(row["run_id"], IMAGES[image]))
            grid_cells.append(row_cells)
        if z:
            report.heading(f"{z}: {format_value(z_value)}")
        if fit.note:
            report.text(f"{fit.note[0].upper()}{fit.note[1:]}.")
        stem = f"grid-{x}-{y}" + (f"-{z}{number}" if z else "")
        for part_number, part in enumerate(fit.parts, start=1):
            caption = fit.legend(legend, part)
            picture, layout = draw_grid(caption, *part.labels(column_labels, row_labels), part.cells(grid_cells),
                                        fit.cell_width, fit.cell_height, style)
            part_stem = f"{stem}-part{part_number}" if len(fit.parts) > 1 else stem
            report.picture(report.add_image(part_stem, picture, caption))
            layouts.append(layout)
    return layouts


@dataclass(frozen=True)
class ExtraRow:
    """A row of the doc-style table beyond the doc's own five."""

    title: str
    value: Callable[[pd.Series], str]  # the cell's text for a trial's row


def strip_table(build: Builder, trials: list, keys: list[str], extra: tuple[ExtraRow, ...] = ()) -> Table:
    """The doc's table: a column per trial; initial image, steps argument and taken, latents, output."""
    def texts(func):
        return [[func(row)] if row["status"] == "FINISHED" else [failure(row)] for row in trials]

    rows = [
        ["initial image SD sees", *(build.image_cell(row, "start", keys, display=192) for row in trials)],
        ["steps argument", *([format_value(row["steps"])] for row in trials)],
        ["steps actually taken", *texts(lambda row: f"{row['steps_taken']}")],
        *([item.title, *texts(item.value)] for item in extra),
        ["denoiser evaluations", *texts(lambda row: f"{row['denoiser_evals']}")],
        ["latent at each step", *(build.image_cell(row, "latent_strip", keys) for row in trials)],
        ["output", *(build.image_cell(row, "output", keys) for row in trials)],
    ]
    return Table(["", *(label(row, keys) for row in trials)], [[[r[0]], *r[1:]] for r in rows])


def strips(frame: pd.DataFrame, artifacts: Artifacts) -> Report:
    """Every trial's start image, latent strip and output, laid out as in the InvokeAI doc's table."""
    report = Report("strips", "Latent strips")
    report.text(constants(frame))
    build = Builder(frame, artifacts, report, ("start", "latent_strip", "output"))
    keys = varying_keys(frame)
    report.table(strip_table(build, [row for _, row in frame.iterrows()], keys))
    report.data = trial_table(frame, keys)
    return report


PREVIOUS_TAG = "sweeplab.previous_run_id"


def chains(frame: pd.DataFrame, artifacts: Artifacts, thumb: int = 128) -> Report:
    """iterations=n chains, one row each: the first init image, then every link's output in order."""
    report = Report("chains", "Iteration chains")
    if PREVIOUS_TAG not in frame or frame[PREVIOUS_TAG].isna().all():
        raise ReportError("no iteration chains among the selected runs; run with iterations=N (N > 1) first")
    report.text(constants(frame))
    report.text("Each output is the next link's init image (InvokeAI's -n).")
    build = Builder(frame, artifacts, report, ("init", "output"))
    by_previous = {row[PREVIOUS_TAG]: row for _, row in frame.iterrows() if isinstance(row[PREVIOUS_TAG], str)}
    keys = [key for key in varying_keys(frame) if key != "iteration"]
    rows, longest = [], 0
    for _, first in frame[frame["iteration"] == 0].iterrows():
        links = [first]
        while links[-1]["run_id"] in by_previous:
            links.append(by_previous[links[-1]["run_id"]])
        if len(links) < 2:
            continue
        longest = max(longest, len(links))
        cells = [[label(first, keys)], build.image_cell(first, "init", [*keys, "iteration"], display=thumb)]
        cells += [build.image_cell(link, "output", [*keys, "iteration"], display=thumb) for link in links]
        rows.append(cells)
    header = ["chain", "init image", *(f"iteration {index}" for index in range(longest))]
    report.table(Table(header, [row + [[""]] * (len(header) - len(row)) for row in rows]))
    report.data = trial_table(frame, [*keys, "iteration"])
    return report


def determinism(frame: pd.DataFrame) -> Report:
    """Trials whose FINISHED runs logged different output bytes, with the environment tags that differ between them.

    `frame` holds every run, not one per trial: the point is to compare the runs of one config hash.
    """
    report = Report("determinism", "Same trial, same output bytes?")
    if OUTPUT_SHA256_TAG not in frame:  # runs logged before the digest existed
        frame = frame.assign(**{OUTPUT_SHA256_TAG: None})
    done = frame[(frame["status"] == "FINISHED") & frame[OUTPUT_SHA256_TAG].notna()]
    repeated = [group for _, group in done.groupby("config_hash", sort=True) if len(group) > 1]
    differing = [group for group in repeated if group[OUTPUT_SHA256_TAG].nunique() > 1]
    report.text(f"{len(done)} finished runs of {done['config_hash'].nunique()} trials carry an output digest "
                f"({OUTPUT_SHA256_TAG}); {len(repeated)} trials ran more than once, {len(differing)} of them gave "
                "different output bytes.")
    rows = []
    for group in differing:
        differs = [tag for tag in ENVIRONMENT_TAGS if tag in group and group[tag].nunique(dropna=False) > 1]
        for digest, runs in group.groupby(OUTPUT_SHA256_TAG, sort=True):
            environment = {tag: "/".join(sorted(set(runs[tag].fillna("?")))) for tag in ENVIRONMENT_TAGS if tag in runs}
            rows.append({"config_hash": runs["config_hash"].iloc[0], "output_sha256": digest, "runs": len(runs),
                         "differs": ", ".join(f"{tag.removeprefix('sweeplab.')} {environment[tag]}" for tag in differs)
                         or "nothing recorded", **environment})
    if rows:
        header = ["config hash", "output sha256", "runs", "environment that differs"]
        report.table(Table(header, [[[row["config_hash"]], [row["output_sha256"][:16]], [str(row["runs"])],
                                     [row["differs"]]] for row in rows]))
    report.data = pd.DataFrame(rows, columns=["config_hash", "output_sha256", "runs", "differs", *ENVIRONMENT_TAGS])
    return report
