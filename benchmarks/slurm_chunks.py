"""What chunked SLURM tasks cost: issue 15's 24 trials under sweeplab's default launcher and on SLURM.

    scripts/slurm-local.sh up; PYTHON=.venv/bin/python scripts/mlflow-server.sh up
    python benchmarks/slurm_chunks.py [--repeats 2] [--json FILE]

Three ways, alternating within each round, every one a whole `sweeplab -m` process (spawn to exit) logging
to the project's PostgreSQL-backed MLflow server (a fresh experiment each), the same trials as
sweep_overhead.py (seeds 1-12 x strength 0.5, 0.8, 256x256, 20 steps, k_euler):
- `local`: the default launcher (`hydra/launcher=sweeplab`) in one process;
- `slurm, 12 per task`: `hydra/launcher=submitit_slurm hydra.launcher.trials_per_task=12`: 2 tasks;
- `slurm, 1 per task`: `trials_per_task=1`, one SLURM task per trial as before the engine.
SLURM tasks get one CPU each and `array_parallelism=2` (the 2 cores of this machine). Prints each way's
seconds, its ratio to `local`, and the SLURM tasks and model loads it took (from the tasks' logs).
Figures, never assertions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid
from pathlib import Path

from sweep_overhead import ISSUE_GRID
from sweep_runs import BenchmarkError, Runner, Spread, run_process, sweeplab_executable

REPO = Path(__file__).resolve().parents[1]
SLURM = ["hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_task=null", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=2", "hydra.launcher.array_parallelism=2"]
WAYS = {  # name -> launcher overrides
    "local": [],
    "slurm, 12 per task": [*SLURM, "hydra.launcher.trials_per_task=12"],
    "slurm, 1 per task": [*SLURM, "hydra.launcher.trials_per_task=1"],
}
MODEL_LOADED = "loaded on"  # the engine's log line for each model load


def server_uri() -> str:
    """The project's MLflow server, which must be up (SQLite would make the tasks queue for its lock)."""
    script = REPO / "scripts" / "mlflow-server.sh"
    if subprocess.run([script, "status"], capture_output=True).returncode != 0:
        raise BenchmarkError("the MLflow server is not up: PYTHON=.venv/bin/python scripts/mlflow-server.sh up")
    if subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        raise BenchmarkError("no SLURM controller answers: scripts/slurm-local.sh up")
    return subprocess.run([script, "uri"], capture_output=True, text=True, check=True).stdout.strip()


def tasks_and_loads(workdir: Path) -> tuple[int, int]:
    """SLURM tasks run and model loads logged, from submitit's per-task logs (Hydra logs to stdout)."""
    logs = list(workdir.glob("multirun/*/*/.submitit/*/*_log.out"))
    loads = sum(log.read_text().count(MODEL_LOADED) for log in logs)
    return len(logs), loads


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the three ways (default 2)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds any one process may take")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    try:
        uri = server_uri()
        runner = Runner.temporary(args.timeout)
        seconds: dict[str, list[float]] = {name: [] for name in WAYS}
        counts: dict[str, tuple[int, int]] = {}
        for index in range(args.repeats):
            for name, launcher in WAYS.items():
                workdir = runner.root / f"{index}-{name.replace(' ', '').replace(',', '-')}"
                store = ["tracking=server", f"tracking.uri={uri}", f"tracking.experiment=bench-{uuid.uuid4().hex[:8]}"]
                run = run_process([sweeplab_executable(), "-m", *ISSUE_GRID.sweeplab_overrides(), *launcher, *store],
                                  workdir, args.timeout)
                seconds[name].append(run.seconds)
                counts[name] = tasks_and_loads(workdir) if launcher else (0, 1)
                print(f"slurm_chunks: round {index + 1}, {name}: {run.seconds:.2f} s", file=sys.stderr, flush=True)
    except BenchmarkError as err:
        sys.exit(f"slurm_chunks: error: {err}")
    local = seconds["local"]
    lines = [f"slurm_chunks: toy model, {ISSUE_GRID.describe()}; {args.repeats} round(s)", "",
             "| way | seconds | / local | SLURM tasks | model loads |", "|---|---|---|---|---|"]
    figures = {}
    for name, values in seconds.items():
        ratio = Spread.of([value / base for value, base in zip(values, local)])
        tasks, loads = counts[name]
        figures[name] = {"seconds": values, "ratio": ratio.median, "tasks": tasks, "model_loads": loads}
        lines.append(f"| {name} | {Spread.of(values).format()} | {ratio.format('x')} | {tasks or '-'} | {loads} |")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
