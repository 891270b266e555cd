"""`sweeplab-report`: tables and figures from sweeps stored in MLflow.

    sweeplab-report steps-vs-strength --experiment demo
    sweeplab-report grid --experiment tree_on_a_hill --x prompt --y seed
    sweeplab-report grid-page --sweep RUN_ID
    sweeplab-report strips --latest-sweep --experiment demo
    sweeplab-report chains --experiment sweeplab
    sweeplab-report doc-figures --experiment invokeai_img2img --run-missing
    sweeplab-report tutorial-figures --experiment img2img_tutorial --run-missing
    sweeplab-report doc-figures --experiment invokeai_img2img --run-missing -- model.path=/models/v1-5 device=cuda
    sweeplab-report grid --experiment demo --where model=toy --x strength --y sampler
    sweeplab-report determinism --experiment demo
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from sweeplab.report.grid import DEFAULT_MAX_SIDE, GridStyle
from sweeplab.report.page import ReportFolderError, write_report
from sweeplab.report.runs import (DEFAULT_MODEL, PARAM_KEYS, Artifacts, ReportError, client_for, load_runs,
                                  one_per_trial, parse_where)
from sweeplab.tracking import resolve_tracking_uri

PROG = "sweeplab-report"


# Commands that take only the run selection: (name, one-line help, description).
SELECTION_ONLY_COMMANDS = (
    ("steps-vs-strength", "rows strengths, columns steps: steps taken, denoiser evaluations, output",
     "Rows strengths, columns requested steps; each cell: steps actually taken, denoiser evaluations, output thumbnail."),
    ("strips", "start image, latent strip and output per trial, as in the doc",
     "Each trial's start image (the initial image SD sees), steps, latent strip and output, laid out as in the "
     "InvokeAI img2img doc's table."),
    ("chains", "iterations=N chains: each output fed back as the next init image",
     "One row per iterations chain: the first init image, then each link's output, following the runs' "
     "sweeplab.previous_run_id tags."),
    ("doc-figures", "the InvokeAI img2img doc's figure set for an experiment",
     "The InvokeAI img2img doc's figures: 10 steps at 0.7 vs 0.4, the compensated 50@0.4, 30@0.7 and 29@0.7, "
     "and why the step counts differ from the doc."),
    ("tutorial-figures", "the img2img tutorial's figure set for an experiment",
     "Chris McCormick's \"How img2img Diffusion Works\" figures: the noise ladder (the initial image SD sees at "
     "each strength, at the experiment's most steps), the noise schedule with where each strength starts (at its "
     "fewest steps, drawn from the runs' schedule.json) and art from a doodle (prompts x strengths)."),
    ("determinism", "trials whose runs gave different output bytes, and why",
     "Every trial (config hash) with FINISHED runs of different output bytes (tag sweeplab.output_sha256), with "
     "the environment tags that differ between them: device, dtype, torch threads, CPU kernels, library "
     "versions, code."),
)


def _selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", metavar="NAME", help="MLflow experiment (= experiment=NAME of the sweep)")
    parser.add_argument("--sweep", metavar="RUN_ID", help="only the trials of this sweep (parent) run")
    parser.add_argument("--latest-sweep", action="store_true", help="only the trials of the experiment's latest sweep")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="only runs that logged this param value, e.g. model=toy (repeatable)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow store; default MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")
    parser.add_argument("--out", metavar="DIR", type=Path,
                        help="output folder, used as given; default reports/<experiment> (a safe folder name), "
                        f"reports/<experiment>-<model> for runs of one model other than {DEFAULT_MODEL}")
    parser.add_argument("--run-missing", action="store_true",
                        help="first run the experiment's trials that have no finished run (needs --experiment); "
                        "sweep overrides after -- go to the sweep and select its runs: -- model.path=DIR device=cuda")
    parser.set_defaults(overrides=[])  # the words after --, set by parse_args
    parser.add_argument("--thumb", type=int, default=128, metavar="PX", help="thumbnail width (default 128)")


def _command(commands, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A report command: every one selects runs the same way."""
    command = commands.add_parser(name, help=help, description=description)
    _selection(command)
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Reports (Markdown, CSV, HTML, PNG) from sweeplab "
                                     "runs in MLflow, written to reports/<experiment>/.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary, description in SELECTION_ONLY_COMMANDS:
        _command(commands, name, help=summary, description=description)
    grid = _command(commands, "grid", help="labelled image grid over two swept keys (X/Y), one per Z value",
                    description="A labelled image grid (PNG) over two swept keys, one grid per value of "
                    f"an optional third. Keys: {', '.join(PARAM_KEYS)}.")
    grid.add_argument("--x", required=True, metavar="KEY", help="key along the columns, e.g. strength")
    grid.add_argument("--y", required=True, metavar="KEY", help="key along the rows, e.g. steps")
    grid.add_argument("--z", metavar="KEY", help="one grid per value of this key, e.g. sampler")
    grid.add_argument("--image", default="output", help="output | start | init | latent_strip (default output)")
    grid.add_argument("--cell", type=int, default=128, metavar="PX", help="cell width in pixels (default 128)")
    grid.add_argument("--margin", type=int, default=16, metavar="PX", help="outer margin (default 16)")
    grid.add_argument("--gap", type=int, default=4, metavar="PX", help="space between cells (default 4)")
    grid.add_argument("--font-size", type=int, default=14, metavar="PX", help="label font size (default 14)")
    grid.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, metavar="PX",
                      help=f"largest width or height of a grid file (default {DEFAULT_MAX_SIDE}); past it cells shrink "
                      "to half their width, then the grid is split into parts")
    page = _command(commands, "grid-page", help="one interactive HTML page: any swept key on X and Y, step "
                    "through the others", description="One self-contained HTML page (thumbnails beside "
                    "it, no server, no network): choose the swept keys along X and Y, step through the "
                    "other swept keys, switch each cell between output, start image and latent strip.")
    page.add_argument("--x", metavar="KEY", help="the key along the columns at first (default: the first swept key)")
    page.add_argument("--y", metavar="KEY", help="the key along the rows at first (default: the next swept key)")
    page.add_argument("--run-links", nargs="?", const="", metavar="URL",
                      help="link each cell to its run in the MLflow UI at URL (default: the tracking server); "
                      "run ids make the page differ between stores")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The report's options, and the sweep overrides after `--` (args.overrides)."""
    cut = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:cut])
    args.overrides = argv[cut + 1:]
    return args


def build_report(args, frame, artifacts, experiment: str, every_run):
    """Dispatch to the subcommand's report builder; `frame` has one run per trial, `every_run` all of them."""
    from sweeplab.report import docfigures, gridpage, reports, tutorial

    if args.command == "determinism":
        return reports.determinism(every_run)
    if args.command == "steps-vs-strength":
        return reports.steps_vs_strength(frame, artifacts, args.thumb)
    if args.command == "grid":
        style = GridStyle(args.cell, args.margin, args.gap, args.font_size, args.max_side)
        return reports.grid(frame, artifacts, args.x, args.y, args.z, args.image, style)
    if args.command == "grid-page":
        links = None if args.run_links is None else gridpage.mlflow_ui(args.run_links,
                                                                        resolve_tracking_uri(args.tracking_uri))
        return gridpage.grid_page(frame, artifacts, args.x, args.y, args.thumb, links)
    if args.command == "strips":
        return reports.strips(frame, artifacts)
    if args.command == "chains":
        return reports.chains(frame, artifacts, args.thumb)
    if args.command == "tutorial-figures":
        return tutorial.tutorial_figures(frame, artifacts, experiment, args.thumb)
    return docfigures.doc_figures(frame, artifacts, experiment, args.thumb)


def run(args) -> list[Path]:
    """Select runs, optionally run what is missing, build the report and write it."""
    from mlflow.exceptions import MlflowException

    try:
        where = parse_where(args.where)
        if (args.run_missing or args.overrides) and not args.experiment:
            raise ReportError("--run-missing and sweep overrides after -- need --experiment NAME (an "
                              "experiments/NAME.yaml)")
        client = client_for(args.tracking_uri, create=args.run_missing)
        planned = _planned_hashes(client, args) if args.run_missing or args.overrides else None
        every_run = load_runs(client, args.experiment, args.sweep, args.latest_sweep, where=where)
        experiment = every_run["experiment"].iloc[0]
        if planned is not None:
            hashes = every_run["config_hash"]
            every_run = every_run[hashes.isin(planned) | hashes.isna()].reset_index(drop=True)
            if every_run.empty:
                raise ReportError(f"no runs of experiment '{experiment}' with {' '.join(args.overrides)}; "
                                  "add --run-missing to run them")
        frame = one_per_trial(every_run)
        artifacts = Artifacts(client)
        try:
            report = build_report(args, frame, artifacts, experiment, every_run)
        finally:
            artifacts.close()
    except MlflowException as err:
        raise ReportError(f"MLflow: {str(err).strip().splitlines()[0]}") from None
    return write_report(report, args.out or default_folder(experiment, tuple(frame["model"].dropna().unique())))


def _planned_hashes(client, args) -> set[str]:
    """The config hashes of the experiment with the overrides after --, after running the missing ones if asked."""
    from sweeplab.report.missing import planned_trials, run_missing

    if args.run_missing:
        return run_missing(client, args.experiment, args.overrides)
    return {trial["config_hash"] for trial in planned_trials(args.experiment, args.overrides)}


def default_folder(experiment: str, models: tuple[str, ...] = ()) -> Path:
    """reports/<experiment>, or reports/<experiment>-<model> for the runs of one model other than the toy, so
    figure sets of different models lie side by side; made one safe folder name: `/tmp/v` stays under reports/."""
    named = experiment if len(models) != 1 or models[0] == DEFAULT_MODEL else f"{experiment}-{models[0]}"
    return Path("reports") / (re.sub(r"[^A-Za-z0-9_.-]+", "_", named).strip("._") or "experiment")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        written = run(args)
    except (ReportError, ReportFolderError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        sys.exit(2)
    for path in written:
        print(path)
