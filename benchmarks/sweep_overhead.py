"""What a sweep costs beyond the diffusion: `sweeplab -m` against a plain diffusers loop doing the same trials.

    python benchmarks/sweep_overhead.py [--repeats 3] [--launcher-args "hydra.launcher.batch_size=4"] [--json FILE]
    python benchmarks/sweep_overhead.py --quick          # a smoke run: 4 and 2 trials, one repeat

Issue 15's case on the toy model: seeds 1-12 x strength 0.5,0.8 (24 trials), 256x256, 20 steps, k_euler,
"a red circle", the fireplace sketch. Every figure is a whole process, wall clock from spawn to exit, in a
fresh folder with a fresh MLflow store; within each repeat the sides alternate (plain, sweeplab, sweeplab
with tracking.log_step_images=false), so a change in the machine's load hits all of them. Prints the
end-to-end ratio, the marginal cost per trial from two sweep sizes ((T_big - T_small) / (n_big - n_small)),
the start-up cost (spawn to the first UNet call, inprocess_probe.py), whether the outputs are the same
bytes, and where the time goes (one probed process per side, stack-sampled, by the CATEGORIES table).
Figures, never assertions: speed never gates the tests. OMP_NUM_THREADS passes through unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sweep_runs import (
    BenchmarkError,
    Grid,
    ProcessRun,
    Runner,
    Spread,
    identical_outputs,
    plain_outputs,
    sweeplab_outputs,
)

# Where time goes. Each stack sample goes to the FIRST row (top to bottom) with a pattern matching ANY frame
# on the stack; patterns are fnmatch patterns on "module:qualname". So a row above wins over a row below:
# PNG encoding inside an MLflow call is PNG encoding, an import inside the model load is an import.
# Unmatched time is "other", and the printout names its biggest functions: add rows here when the engine
# renames things (keep broad, outer patterns such as hydra's job runner out: they would swallow everything).
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("imports", ("importlib._bootstrap:*", "importlib._bootstrap_external:*")),
    ("PNG encoding", ("PIL.PngImagePlugin:*", "PIL.Image:Image.save")),
    ("preview rendering", ("sweeplab.render:*",)),
    ("latents file", ("safetensors.torch:save*",)),
    ("store set-up", ("sweeplab.tracking:MlflowTracker.__init__",
                      "sweeplab.tracking:MlflowSweepCallback.on_multirun_start",
                      "sweeplab.tracking:MlflowSweepCallback.parent_run")),  # waits here if the store is late
    ("waiting on the store's process", ("sweeplab.storeprocess:*",)),  # a sweep's MLflow calls run there
    ("model load", ("sweeplab.models:PipelineCache.get", "sweeplab.models:load_img2img_pipeline",
                    "diffusers.pipelines.pipeline_utils:DiffusionPipeline.from_pretrained")),
    ("init image", ("sweeplab.images:*", "sweeplab.sketches:*")),
    ("step recording", ("sweeplab.runner:_StepRecorder.*", "sweeplab.runner:_EvalCounter.*")),
    ("progress bars", ("tqdm.*:*",)),
    ("denoising", ("diffusers.pipelines.*:*.__call__",)),
    ("MLflow calls", ("mlflow:*", "mlflow.*:*")),
    ("config composition and checks", ("hydra._internal.config_loader_impl:*", "hydra._internal.config_repository:*",
                                       "sweeplab.trial:prepare_trial", "sweeplab.sweep:*",
                                       "sweeplab.schema:validate_config")),
    ("waiting on other threads", ("threading:*.wait", "queue:Queue.get", "queue:Queue.put", "concurrent.futures.*:*")),
)
PYTHON_ITSELF = "Python start-up and exit"  # spawn to the probe's first line, the program's return to the exit

ISSUE_GRID = Grid(seeds=tuple(range(1, 13)), strengths=(0.5, 0.8), size=256, steps=20)
NO_STEP_IMAGES = "tracking.log_step_images=false"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of alternating processes (default 3)")
    parser.add_argument("--seeds", type=int, default=len(ISSUE_GRID.seeds),
                        help="seeds of the big sweep (12: 24 trials)")
    parser.add_argument("--small-seeds", type=int, default=4, help="seeds of the small sweep (4: 8 trials)")
    parser.add_argument("--launcher-args", type=shlex.split, default=[],
                        help="overrides added to every sweeplab command, e.g. 'hydra.launcher.batch_size=4'")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 and 1 seeds, one repeat")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the where-time-goes table")
    parser.add_argument("--timeout", type=float, default=900, help="seconds any one process may take")
    parser.add_argument("--keep", action="store_true", help="keep the processes' folders (printed) for inspection")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.seeds, args.small_seeds = 1, 2, 1
    if not 1 <= args.small_seeds < args.seeds <= len(ISSUE_GRID.seeds):
        parser.error(f"--small-seeds and --seeds: need 1 <= small ({args.small_seeds}) < big ({args.seeds}) "
                     f"<= {len(ISSUE_GRID.seeds)}")
    if args.repeats < 1:
        parser.error(f"--repeats: {args.repeats} is out of range; allowed 1 or more")
    return args


@dataclass
class Round:
    """One repeat: every side at both sizes, and the start-up runs."""

    plain: dict[int, float] = field(default_factory=dict)  # trials -> seconds
    sweeplab: dict[int, float] = field(default_factory=dict)
    no_step_images: dict[int, float] = field(default_factory=dict)
    plain_startup: float = 0.0
    sweeplab_startup: float = 0.0
    plain_one_trial: float = 0.0
    sweeplab_one_trial: float = 0.0


def marginal(seconds: dict[int, float]) -> float:
    """Seconds per additional trial between the two sweep sizes."""
    small, big = sorted(seconds)
    return (seconds[big] - seconds[small]) / (big - small)


def ratio(numerators: list[float], denominators: list[float]) -> Spread:
    """Per-round ratios (each against its own round's plain run), summarised."""
    return Spread.of([n / d for n, d in zip(numerators, denominators)])


def summarise(rounds: list[Round], big: int) -> dict[str, dict[str, Spread]]:
    """Every headline figure: plain, sweeplab and their ratio (or difference), median and range over rounds."""
    def row(plain: list[float], sweeplab: list[float], difference: bool = False) -> dict[str, Spread]:
        compared = Spread.of([s - p for s, p in zip(sweeplab, plain)]) if difference else ratio(sweeplab, plain)
        return {"plain": Spread.of(plain), "sweeplab": Spread.of(sweeplab),
                "difference" if difference else "ratio": compared}

    plain_end = [r.plain[big] for r in rounds]
    return {
        "end_to_end": row(plain_end, [r.sweeplab[big] for r in rounds]),
        "end_to_end_no_step_images": row(plain_end, [r.no_step_images[big] for r in rounds]),
        "per_trial": row([marginal(r.plain) for r in rounds], [marginal(r.sweeplab) for r in rounds]),
        "per_trial_no_step_images": row([marginal(r.plain) for r in rounds],
                                        [marginal(r.no_step_images) for r in rounds]),
        "startup": row([r.plain_startup for r in rounds], [r.sweeplab_startup for r in rounds], difference=True),
        "one_trial_process": row([r.plain_one_trial for r in rounds], [r.sweeplab_one_trial for r in rounds]),
    }


def breakdown(run: ProcessRun) -> dict[str, float]:
    """A probed process's wall clock by category, Python's own start-up and exit included."""
    seconds = {PYTHON_ITSELF: run.interpreter_seconds}
    seconds.update(run.report["main_thread"])
    return seconds


class Benchmark:
    """Runs the rounds and the profile, printing progress to stderr."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.big = ISSUE_GRID.with_seeds(args.seeds)
        self.small = ISSUE_GRID.with_seeds(args.small_seeds)
        self.one = Grid(ISSUE_GRID.seeds[:1], ISSUE_GRID.strengths[:1], ISSUE_GRID.size, ISSUE_GRID.steps)
        self.runner = Runner.temporary(args.timeout, keep=args.keep)
        self.extra = tuple(args.launcher_args)

    def _note(self, what: str, run: ProcessRun) -> ProcessRun:
        print(f"sweep_overhead: {what}: {run.seconds:.2f} s", file=sys.stderr, flush=True)
        return run

    def run_round(self, index: int) -> tuple[Round, dict[str, bytes], dict[str, bytes]]:
        measured = Round()
        outputs = {}
        for grid in (self.big, self.small):
            tag = f"round {index + 1}, {grid.trials} trials"
            plain = self._note(f"{tag}, plain", self.runner.plain(grid))
            sweeplab = self._note(f"{tag}, sweeplab", self.runner.sweeplab(grid, self.extra))
            quiet = self._note(f"{tag}, sweeplab {NO_STEP_IMAGES}",
                               self.runner.sweeplab(grid, (*self.extra, NO_STEP_IMAGES)))
            measured.plain[grid.trials], measured.sweeplab[grid.trials] = plain.seconds, sweeplab.seconds
            measured.no_step_images[grid.trials] = quiet.seconds
            if grid is self.big:
                outputs = {"plain": plain_outputs(plain), "sweeplab": sweeplab_outputs(sweeplab)}
        plain = self._note(f"round {index + 1}, 1 trial, plain, probed", self.runner.plain(self.one, probe=True))
        sweeplab = self._note(f"round {index + 1}, 1 trial, sweeplab, probed",
                              self.runner.sweeplab(self.one, self.extra, probe=True))
        measured.plain_startup, measured.sweeplab_startup = plain.startup, sweeplab.startup
        measured.plain_one_trial, measured.sweeplab_one_trial = plain.seconds, sweeplab.seconds
        return measured, outputs["plain"], outputs["sweeplab"]

    def profile(self) -> tuple[ProcessRun, ProcessRun]:
        table = self.runner.root / "categories.json"
        table.write_text(json.dumps(CATEGORIES))
        plain = self._note(f"profile, {self.big.trials} trials, plain", self.runner.plain(self.big, categories=table))
        sweeplab = self._note(f"profile, {self.big.trials} trials, sweeplab",
                              self.runner.sweeplab(self.big, self.extra, categories=table))
        return plain, sweeplab


def format_report(args, benchmark: Benchmark, figures: dict, same: tuple[int, int], load: tuple[float, float],
                  profile: tuple[ProcessRun, ProcessRun] | None) -> str:
    big, small = benchmark.big.trials, benchmark.small.trials
    launcher = " ".join(args.launcher_args) or "none"
    lines = [
        f"sweep_overhead: toy model, {benchmark.big.describe()}",
        f"sweep_overhead: {args.repeats} round(s) alternating plain / sweeplab / sweeplab {NO_STEP_IMAGES}; "
        f"launcher args: {launcher}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
        f"{os.cpu_count()} CPUs; load average {load[0]:.1f} at start, {load[1]:.1f} at end",
        "",
        "| figure | plain diffusers | sweeplab | sweeplab / plain |",
        "|---|---|---|---|",
    ]
    names = {
        "end_to_end": f"{big} trials, end to end",
        "end_to_end_no_step_images": f"{big} trials, `{NO_STEP_IMAGES}`",
        "per_trial": f"per additional trial, (T{big} - T{small}) / {big - small}",
        "per_trial_no_step_images": f"per additional trial, `{NO_STEP_IMAGES}`",
        "one_trial_process": "1-trial sweep, end to end",
    }
    for key, name in names.items():
        row = figures[key]
        lines.append(f"| {name} | {row['plain'].format()} | {row['sweeplab'].format()} | "
                     f"{row['ratio'].format('x')} |")
    startup = figures["startup"]
    lines.append(f"| start to first denoising step (1-trial sweep) | {startup['plain'].format()} | "
                 f"{startup['sweeplab'].format()} | +{startup['difference'].format()} |")
    lines += ["", f"Medians over rounds, (min-max) when they differ; ratios are per round. output.png bytes "
                  f"identical to the plain loop's: {same[0]} of {same[1]} trials."]
    if profile:
        lines += ["", *format_breakdown(*profile, big)]
    return "\n".join(lines)


def format_breakdown(plain: ProcessRun, sweeplab: ProcessRun, trials: int) -> list[str]:
    plain_seconds, sweeplab_seconds = breakdown(plain), breakdown(sweeplab)
    order = [PYTHON_ITSELF, *(name for name, _ in CATEGORIES), "other"]
    lines = [
        f"Where the time goes: one {trials}-trial process per side under inprocess_probe.py (main thread, "
        "stack sampled every 5 ms, first matching row of CATEGORIES wins)",
        "",
        "| category | plain diffusers | sweeplab | sweeplab - plain | per trial |",
        "|---|---|---|---|---|",
    ]
    for name in order:
        p, s = plain_seconds.get(name, 0.0), sweeplab_seconds.get(name, 0.0)
        if p >= 0.005 or s >= 0.005:
            lines.append(f"| {name} | {p:.2f} s | {s:.2f} s | {s - p:+.2f} s | {(s - p) / trials:+.3f} s |")
    lines.append(f"| total (wall clock) | {plain.seconds:.2f} s | {sweeplab.seconds:.2f} s | "
                 f"{sweeplab.seconds - plain.seconds:+.2f} s | {(sweeplab.seconds - plain.seconds) / trials:+.3f} s |")
    unmatched = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in
                          sorted(sweeplab.report["unmatched"].items(), key=lambda item: -item[1])[:6])
    lines += ["", f"sweeplab's 'other', by innermost non-stdlib function: {unmatched or 'none'}"]
    threads = sweeplab.report["other_threads"]
    if threads:
        busy = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in sorted(threads.items(), key=lambda i: -i[1]))
        lines.append(f"sweeplab's other Python threads (thread-seconds): {busy}")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    benchmark = Benchmark(args)
    load_start = os.getloadavg()[0]
    rounds, same = [], (0, 0)
    try:
        for index in range(args.repeats):
            measured, plain, sweeplab = benchmark.run_round(index)
            rounds.append(measured)
            if index == 0:
                same = identical_outputs(plain, sweeplab)
        profile = benchmark.profile() if args.profile else None
    except BenchmarkError as err:
        sys.exit(f"sweep_overhead: error: {err}")
    figures = summarise(rounds, benchmark.big.trials)
    load = (load_start, os.getloadavg()[0])
    print(format_report(args, benchmark, figures, same, load, profile))
    if args.keep:
        print(f"sweep_overhead: the processes' folders are kept in {benchmark.runner.root}")
    if args.json:
        record = {
            "grid": asdict(benchmark.big), "small_trials": benchmark.small.trials, "repeats": args.repeats,
            "launcher_args": args.launcher_args, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average": load, "identical_outputs": same, "rounds": [asdict(r) for r in rounds],
            "figures": {key: {name: asdict(spread) for name, spread in row.items()} for key, row in figures.items()},
        }
        if profile:
            record["breakdown"] = {"plain": breakdown(profile[0]), "sweeplab": breakdown(profile[1]),
                                   "sweeplab_unmatched": profile[1].report["unmatched"],
                                   "sweeplab_other_threads": profile[1].report["other_threads"]}
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
