"""The fault battery: bad inputs and faults, each a real `sweeplab` process; how many were handled.

    python benchmarks/fault_battery.py [--only WORD] [--json FILE]

A case is handled when its process exits non-zero within its time limit, prints no traceback, and its
last `sweeplab: error:` line (or, for a sweep whose trials fail, its summary line) names what the case
expects: the key, the file or the cause. Prints one row per case and the count handled, the figure the
reliability issue asks for. Each case runs in a fresh folder with a fresh SQLite store; the toy model,
64x64, 2 steps. Cases that need the local SLURM cluster are skipped (and said so) when no controller answers.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sweep_runs import child_environment, sweeplab_executable

TINY = ("width=64", "height=64", "steps=2", "tracking.log_step_images=false")


@dataclass(frozen=True)
class Case:
    """One bad input or fault."""

    name: str
    args: tuple[str, ...]  # after `sweeplab`; TINY is added unless the case sets `tiny=False`
    expect: str  # a substring of the error (or summary) line
    setup: str = ""  # a file the case needs in its folder: see `prepare`
    tiny: bool = True
    needs_slurm: bool = False
    seconds: float = 120  # its time limit


CASES = (
    # values out of range or of the wrong type
    Case("steps 0", ("steps=0",), "steps", tiny=False),
    Case("steps negative", ("steps=-3",), "steps", tiny=False),
    Case("strength above 1", ("strength=1.5",), "strength"),
    Case("strength negative", ("strength=-0.1",), "strength"),
    Case("cfg_scale nan", ("cfg_scale=nan",), "cfg_scale"),
    Case("cfg_scale inf", ("cfg_scale=inf",), "cfg_scale"),
    Case("seed not a number", ("seed=abc",), "seed"),
    Case("width not a multiple of 8", ("width=63", "height=64", "steps=2"), "width", tiny=False),
    Case("height beyond memory", ("height=100000", "steps=2"), "height", tiny=False),  # the case: width 512
    Case("fit not a bool", ("fit=maybe",), "fit"),
    Case("iterations 0", ("iterations=0",), "iterations"),
    Case("dtype unknown", ("dtype=float8",), "dtype"),
    Case("device unknown", ("device=tpu",), "device"),
    Case("device cuda without one", ("device=cuda",), "device"),
    Case("variations malformed", ("with_variations=[12:abc]",), "with_variations"),
    # names that do not exist
    Case("unknown key", ("foo=1",), "foo"),
    Case("misspelt key", ("strenght=0.5",), "strength"),
    Case("unknown sampler", ("sampler=nope",), "sampler"),
    Case("sampler null", ("sampler=null",), "sampler"),
    Case("unknown model", ("model=nope",), "model"),
    Case("unknown experiment", ("experiment=nope",), "experiment"),
    Case("init image missing", ("init_image=/nonexistent.png",), "init_image"),
    Case("init image not an image", ("init_image=notes.png",), "init_image", setup="text-as-png"),
    Case("sampler option unknown", ("+sampler.options.nope=1",), "sampler.options.nope"),
    Case("unquoted emoji in a prompt", ("prompt=a 🔥 fire",), "quote"),
    # models that cannot load
    Case("model folder missing", ("model.path=/nonexistent/model",), "model.path"),
    Case("model folder without unet", ("model.path=partial",), "unet", setup="folder-without-unet"),
    Case("safetensors with an empty header", ("model.path=empty.safetensors",), "empty.safetensors",
         setup="empty-safetensors"),
    # sweeps whose trials fail: FAILED runs, the sweep goes on, exit 1
    Case("a sweep with one invalid trial", ("-m", "strength=0.5,1.5"), "1 failed"),
    Case("prompt S/R without a match", ("-m", "prompt=fire", "prompt_search=red", "prompt_replace=blue"),
         "1 failed"),
    # stores that cannot be used
    Case("tracking server not answering", ("tracking.uri=http://127.0.0.1:9",), "Connection refused"),
    Case("tracking server not answering, sweep", ("-m", "seed=1,2", "tracking.uri=http://127.0.0.1:9"),
         "Connection refused"),
    Case("file store", ("tracking.uri=file:///tmp/sweeplab-battery-mlruns",), "maintenance mode"),
    Case("store not a database", ("tracking.uri=sqlite:///notes.db",), "not a database", setup="text-db"),
    # command lines Hydra refuses
    Case("override without a value", ("steps",), "steps"),
    Case("a sweep without -m", ("seed=1,2",), "-m"),
    # a cluster that refuses the request
    Case("SLURM asked for a GPU it lacks", ("-m", "hydra/launcher=submitit_slurm", "seed=1,2"), "gpus_per_task",
         needs_slurm=True),
    Case("SLURM asked for too much memory", ("-m", "hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_task=null",
                                             "hydra.launcher.mem_gb=100000", "seed=1,2"), "mem_gb", needs_slurm=True),
)


def prepare(case: Case, folder: Path) -> None:
    """The broken file a case points at, made in its folder."""
    if case.setup == "text-as-png":
        (folder / "notes.png").write_text("not an image")
    elif case.setup == "text-db":
        (folder / "notes.db").write_text("not a database")
    elif case.setup == "empty-safetensors":
        (folder / "empty.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")
    elif case.setup == "folder-without-unet":
        (folder / "partial").mkdir()
        (folder / "partial" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')


@dataclass
class Outcome:
    case: str
    handled: bool
    seconds: float
    exit_code: int | None
    line: str = ""  # the error or summary line judged
    why: str = ""  # what fell short, when not handled
    extra: dict = field(default_factory=dict)


def judge(case: Case, code: int | None, output: str, seconds: float) -> Outcome:
    lines = output.splitlines()
    errors = [line for line in lines if line.startswith("sweeplab: error:")]
    summary = [line for line in lines if line.startswith("sweeplab: ") and " trials: " in line]
    line = (summary or errors or [""])[-1]  # a sweep whose trials fail is judged by its summary
    outcome = Outcome(case.name, False, round(seconds, 1), code, line[:240])
    if code is None:
        outcome.why = f"still running after {case.seconds:.0f} s"
    elif code == 0:
        outcome.why = "exit status 0"
    elif "Traceback (most recent call last)" in output:
        outcome.why = "a traceback"
    elif case.expect not in line:
        outcome.why = f"the line does not name '{case.expect}'"
    else:
        outcome.handled = True
    return outcome


def run_case(case: Case, root: Path) -> Outcome:
    folder = root / re.sub(r"[^A-Za-z0-9]+", "-", case.name)
    folder.mkdir()
    prepare(case, folder)
    command = [sweeplab_executable(), *case.args, *(TINY if case.tiny else ())]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=folder, env=child_environment(), capture_output=True, text=True,
                              timeout=case.seconds)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as timed_out:
        code, output = None, str(timed_out.stdout or "") + str(timed_out.stderr or "")
    return judge(case, code, output, time.monotonic() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", metavar="WORD", help="only the cases whose name contains WORD")
    parser.add_argument("--json", type=Path, help="also write every outcome to this file")
    args = parser.parse_args(argv)
    slurm = shutil.which("sinfo") is not None and subprocess.run(["sinfo"], capture_output=True).returncode == 0
    cases = [case for case in CASES if not args.only or args.only in case.name]
    outcomes, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="sweeplab-faults-") as root:
        for case in cases:
            if case.needs_slurm and not slurm:
                skipped.append(case.name)
                continue
            outcome = run_case(case, Path(root))
            outcomes.append(outcome)
            mark = "handled" if outcome.handled else f"NOT handled: {outcome.why}"
            print(f"fault_battery: {case.name}: {mark} ({outcome.seconds:.1f} s)", file=sys.stderr, flush=True)
    print("| case | handled | exit | s | line |\n|---|---|---|---|---|")
    for outcome in outcomes:
        state = "yes" if outcome.handled else f"**no**: {outcome.why}"
        print(f"| {outcome.case} | {state} | {outcome.exit_code} | {outcome.seconds:.1f} | "
              f"{outcome.line.replace('|', '/')} |")
    handled = sum(outcome.handled for outcome in outcomes)
    print(f"\nfault_battery: {handled} of {len(outcomes)} bad inputs and faults handled"
          + (f"; skipped (no SLURM controller): {', '.join(skipped)}" if skipped else ""))
    if args.json:
        args.json.write_text(json.dumps([outcome.__dict__ for outcome in outcomes], indent=2))


if __name__ == "__main__":
    main()
