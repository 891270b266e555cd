"""The InvokeAI img2img doc's figure set ("How does it actually work, though?"), regenerated.

The doc's trials are (steps, strength) cells; what the doc says each one did is kept here
so the report can set it beside what diffusers measurably did.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from sweeplab.report.grid import GridStyle
from sweeplab.report.page import Report
from sweeplab.report.reports import (Builder, ExtraRow, add_grids, add_steps_vs_strength, constants, index_by,
                                     label, refuse_mixed, step_notes, strip_table)
from sweeplab.report.runs import Artifacts, ReportError, format_value

KEYS = ["strength", "steps"]


@dataclass(frozen=True)
class DocTrial:
    steps: int
    strength: float
    doc_steps: int  # the steps the doc says were taken (or aimed at)
    doc_words: str  # how the doc puts it


CONCRETE = (DocTrial(10, 0.7, 7, "7"), DocTrial(10, 0.4, 4, "4"))
COMPENSATED = (
    DocTrial(50, 0.4, 20, "20"),
    DocTrial(30, 0.7, 20, "roughly 20"),
    DocTrial(29, 0.7, 19, "19"),
)
DOC_TRIALS = CONCRETE + COMPENSATED
OLDER_CODE = ("The doc was written on an older InvokeAI code path (k-diffusion samplers). diffusers' img2img "
              "denoises int(steps x strength) steps: StableDiffusionImg2ImgPipeline.get_timesteps starts at "
              "step steps - int(steps x strength) of the schedule.")


def _trial(cells: dict, doc: DocTrial):
    return cells.get((format_value(doc.strength), format_value(doc.steps)))


def doc_figures(frame: pd.DataFrame, artifacts: Artifacts, experiment: str, thumb: int = 128) -> Report:
    """The doc's 0.7-vs-0.4 table, its compensated runs, the step-count explanation, and the whole sweep, from one
    model, named in the title."""
    present = set(zip(frame["steps"], frame["strength"]))
    missing = [doc for doc in DOC_TRIALS if (doc.steps, doc.strength) not in present]
    if missing:
        wanted = ", ".join(f"steps={doc.steps} strength={doc.strength:g}" for doc in missing)
        raise ReportError(f"experiment '{experiment}' lacks the doc's trials {wanted}; add them to its grid or "
                          "pass --run-missing")
    refuse_mixed(frame, KEYS)
    cells = index_by(frame, KEYS)
    report = Report("doc-figures", f"img2img, step by step: the InvokeAI doc's figures ({experiment}; {_model(frame)})")
    report.text(f"Regenerated from MLflow runs of the experiment '{experiment}': {constants(frame)}.")
    build = Builder(frame, artifacts, report, ("start", "latent_strip", "output"))
    doc_row = ExtraRow("steps the doc reports", _doc_words)
    formula_row = ExtraRow("int(steps x strength)", lambda row: f"{int(row['steps'] * row['strength'])}")

    report.heading("A concrete example: 10 steps at strength 0.7 and 0.4")
    report.table(strip_table(build, [_trial(cells, doc) for doc in CONCRETE], KEYS, (doc_row, formula_row)))
    report.heading("Compensating for the reduced step count")
    report.text("The doc raises the steps so that each strength gets about 20 denoising steps: 50 = 20 / 0.4 "
                "at strength 0.4, 30 (roughly 20 / 0.7) and 29 at 0.7.")
    report.table(strip_table(build, [_trial(cells, doc) for doc in COMPENSATED], KEYS, (doc_row, formula_row)))

    report.heading("Steps actually taken: the doc and diffusers")
    for sentence in _explain(cells):
        report.text(sentence)
    report.text(OLDER_CODE)
    report.heading("Denoiser evaluations")
    for note in step_notes(frame):
        report.text(note)
    report.data = pd.DataFrame([_csv_row(doc, _trial(cells, doc)) for doc in DOC_TRIALS])

    report.heading("Every trial of the experiment: steps vs strength")
    add_steps_vs_strength(report, frame, artifacts, thumb)
    report.heading("Outputs over steps and strength")
    add_grids(report, frame, artifacts, ["steps", "strength"], style=GridStyle(cell=thumb))
    return report


def _model(frame: pd.DataFrame) -> str:
    """The one model of the runs, for the title: `model toy, family sd` (runs older than model families log none)."""
    families = frame["model_family"].dropna()
    family = f", family {families.iloc[0]}" if len(families) else ""
    return f"model {format_value(frame['model'].dropna().iloc[0])}{family}"


def _doc_words(row) -> str:
    doc = next((d for d in DOC_TRIALS if (d.steps, d.strength) == (row["steps"], row["strength"])), None)
    return doc.doc_words if doc else "-"


def _explain(cells: dict) -> list[str]:
    """One sentence per doc trial: agreeing, or how and why the count differs."""
    sentences = []
    for doc in DOC_TRIALS:
        row = _trial(cells, doc)
        where = f"{doc.steps} steps at strength {doc.strength:g}"
        if row["status"] != "FINISHED":
            sentences.append(f"{where}: the trial failed ({row['error']}).")
            continue
        taken = int(row["steps_taken"])
        formula = int(doc.steps * doc.strength)
        said = f"{where}: the doc says SD took {doc.doc_words} steps; diffusers took {taken}"
        if taken == doc.doc_steps:
            sentences.append(f"{said} as well.")
        elif taken == formula:
            sentences.append(f"{said}, which is int({doc.steps} x {doc.strength:g}) = {formula}.")
        else:  # e.g. SD 3's img2img pipeline: steps - int(steps - steps x strength)
            sentences.append(f"{said}, not int({doc.steps} x {doc.strength:g}) = {formula}: this model's img2img "
                             "pipeline rounds steps x strength its own way.")
    return sentences


def _csv_row(doc: DocTrial, row) -> dict:
    return {
        "steps": doc.steps,
        "strength": doc.strength,
        "doc_steps": doc.doc_steps,
        "int_steps_x_strength": int(doc.steps * doc.strength),
        "steps_taken": row["steps_taken"],
        "denoiser_evals": row["denoiser_evals"],
        "status": row["status"],
        "trial": label(row, KEYS),
        "config_hash": row["config_hash"],
    }
