"""Running the same trials as whole processes, twice over: `sweeplab -m` and the plain diffusers loop.

Shared by sweep_overhead.py (CPU, the toy model) and gpu_check.py (a random SD 1.5 on a GPU). Every
process starts in a fresh folder of its own with a fresh MLflow store, and inherits this environment
(OMP_NUM_THREADS included) except the variables that would point sweeplab at another store.
Standard library only at the top: timing processes must not wait for torch.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from plain_img2img import output_name  # benchmarks/ is the script's folder, first on sys.path

BENCHMARKS = Path(__file__).resolve().parent
PLAIN_LOOP = BENCHMARKS / "plain_img2img.py"
PROBE = BENCHMARKS / "inprocess_probe.py"
STORE_ENV = ("MLFLOW_TRACKING_URI", "SWEEPLAB_TRACKING_URI", "SWEEPLAB_PARENT_RUN_ID")


class BenchmarkError(RuntimeError):
    """A measured process failed: its figures would mean nothing."""


@dataclass(frozen=True)
class Grid:
    """The trials both sides run: seeds x strengths of one prompt over sweeplab's fireplace sketch."""

    seeds: tuple[int, ...]
    strengths: tuple[float, ...]
    size: int  # width = height, pixels
    steps: int  # nominal steps; img2img denoises int(steps * strength)
    prompt: str = "a red circle"
    model_dir: str | None = None  # a diffusers folder; None: the toy model
    device: str = "auto"  # as sweeplab's `device`: auto is cuda when there is one, else cpu
    dtype: str = "auto"  # as sweeplab's `dtype`: auto is float16 on cuda, else float32

    @property
    def trials(self) -> int:
        return len(self.seeds) * len(self.strengths)

    def with_seeds(self, count: int) -> "Grid":
        """The same grid over its first `count` seeds."""
        return Grid(self.seeds[:count], self.strengths, self.size, self.steps, self.prompt, self.model_dir,
                    self.device, self.dtype)

    def describe(self) -> str:
        seeds = f"{self.seeds[0]}-{self.seeds[-1]}" if len(self.seeds) > 1 else str(self.seeds[0])
        strengths = ",".join(f"{s:g}" for s in self.strengths)
        return (f"{self.trials} trials (seeds {seeds} x strength {strengths}), {self.size}x{self.size}, "
                f"{self.steps} steps, k_euler, \"{self.prompt}\", fireplace sketch")

    def sweeplab_overrides(self) -> list[str]:
        overrides = [
            "seed=" + ",".join(map(str, self.seeds)),
            "strength=" + ",".join(f"{s:g}" for s in self.strengths),
            f"width={self.size}", f"height={self.size}", f"steps={self.steps}", "sampler=k_euler",
            f"prompt='{self.prompt}'", "init_image=fireplace",
        ]
        if self.model_dir:
            overrides.append(f"model.path={self.model_dir}")
        overrides += [f"{key}={value}" for key, value in (("device", self.device), ("dtype", self.dtype))
                      if value != "auto"]
        return overrides

    def plain_args(self, out: Path, batch_size: int = 1) -> list[str]:
        args = ["--out", str(out), "--seeds", ",".join(map(str, self.seeds)),
                "--strengths", ",".join(f"{s:g}" for s in self.strengths), "--size", str(self.size),
                "--steps", str(self.steps), "--prompt", self.prompt, "--device", self.device, "--dtype", self.dtype,
                "--batch-size", str(batch_size)]
        return args + (["--model", self.model_dir] if self.model_dir else [])


@dataclass(frozen=True)
class ProcessRun:
    """One measured process."""

    seconds: float  # wall clock from spawn to exit
    spawned: float  # time.time() just before the spawn
    workdir: Path  # its current directory: outputs, MLflow store, Hydra's multirun/
    report: dict | None = None  # inprocess_probe's report, when it ran under the probe

    @property
    def startup(self) -> float | None:
        """Process spawn to the first denoiser call (needs the probe)."""
        calls = (self.report or {}).get("denoiser_calls")
        return calls[0] - self.spawned if calls else None

    @property
    def interpreter_seconds(self) -> float | None:
        """Spawn to the probe's first line plus the program's return to the exit: Python itself."""
        if not self.report:
            return None
        return self.seconds - (self.report["finished"] - self.report["started"])


def sweeplab_executable() -> str:
    """The `sweeplab` console script of this interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "sweeplab"
    found = str(beside) if beside.is_file() else shutil.which("sweeplab")
    if not found:
        raise BenchmarkError("no `sweeplab` command beside this Python or on PATH; install sweeplab first")
    return found


def child_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in STORE_ENV}


def run_process(command: list[str], workdir: Path, timeout: float, report: Path | None = None) -> ProcessRun:
    """Spawn, wait, time; a non-zero exit or a timeout raises with the end of its output."""
    workdir.mkdir(parents=True, exist_ok=True)
    spawned = time.time()
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=workdir, env=child_environment(), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"timed out after {timeout:.0f} s: {' '.join(command)}") from None
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise BenchmarkError(f"exit code {done.returncode}: {' '.join(command)}\n{tail}")
    return ProcessRun(seconds, spawned, workdir, json.loads(report.read_text()) if report else None)


class Runner:
    """Runs both sides in fresh folders under one temporary root, each under the probe when asked."""

    def __init__(self, root: Path, timeout: float):
        self.root = root
        self.timeout = timeout  # seconds per process unless a call says otherwise
        self._count = 0

    @classmethod
    def temporary(cls, timeout: float, keep: bool = False) -> "Runner":
        root = Path(tempfile.mkdtemp(prefix="sweeplab-bench-"))
        if not keep:
            import atexit

            atexit.register(shutil.rmtree, root, ignore_errors=True)
        return cls(root, timeout)

    def plain(self, grid: Grid, batch_size: int = 1, probe: bool = False, categories: Path | None = None,
              timeout: float | None = None) -> ProcessRun:
        workdir = self._fresh("plain")
        program = [str(PLAIN_LOOP), *grid.plain_args(workdir / "outputs", batch_size)]
        if probe or categories:
            return self._probed(program, workdir, categories, timeout)
        return run_process([sys.executable, *program], workdir, timeout or self.timeout)

    def sweeplab(self, grid: Grid, extra: tuple[str, ...] = (), probe: bool = False, categories: Path | None = None,
                 timeout: float | None = None) -> ProcessRun:
        workdir = self._fresh("sweeplab")
        overrides = ["-m", *grid.sweeplab_overrides(), *extra]
        if probe or categories:
            return self._probed(["sweeplab", *overrides], workdir, categories, timeout)
        return run_process([sweeplab_executable(), *overrides], workdir, timeout or self.timeout)

    def _fresh(self, label: str) -> Path:
        self._count += 1
        return self.root / f"{self._count:03d}-{label}"

    def _probed(self, program: list[str], workdir: Path, categories: Path | None, timeout: float | None) -> ProcessRun:
        """program: a script and its arguments, or 'sweeplab' and its overrides, run by inprocess_probe."""
        report = workdir / "probe.json"
        options = ["--report", str(report)] + (["--categories", str(categories)] if categories else [])
        return run_process([sys.executable, str(PROBE), *options, *program], workdir, timeout or self.timeout, report)


def plain_outputs(run: ProcessRun) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((run.workdir / "outputs").glob("*.png"))}


def sweeplab_outputs(run: ProcessRun) -> dict[str, bytes]:
    """Each trial's output.png, named as the plain loop names it (seed and strength from its config.yaml)."""
    import yaml

    outputs = {}
    for output in sorted(run.workdir.glob("mlartifacts/*/*/artifacts/output.png")):
        config = yaml.safe_load((output.parent / "config.yaml").read_text())
        outputs[output_name(config["seed"], config["strength"])] = output.read_bytes()
    return outputs


def identical_outputs(first: dict[str, bytes], second: dict[str, bytes]) -> tuple[int, int]:
    """(how many trials have identical bytes on both sides, how many trials either side has)."""
    names = set(first) | set(second)
    same = [name for name in names if name in first and name in second and first[name] == second[name]]
    return len(same), len(names)


@dataclass(frozen=True)
class Spread:
    """A median with the range it came from."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        return cls(statistics.median(values), min(values), max(values))

    def format(self, unit: str = " s", digits: int = 2) -> str:
        if self.low == self.high:
            return f"{self.median:.{digits}f}{unit}"
        return f"{self.median:.{digits}f}{unit} ({self.low:.{digits}f}-{self.high:.{digits}f})"
