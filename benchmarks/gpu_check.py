"""GPU readiness check (issue 15 item 6): a random-weight SD 1.5 at 512x512 through plain diffusers and sweeplab.

    benchmarks/gpu_check.sh [--tiny] [--budget SECONDS] [--keep]     # the wrapper: offline, bounded

Prints every figure as one line `gpu_check: <name>: <value>`: the share of non-finite output values and
whether outputs are blank, images per second of plain diffusers at batch 1, 4 and 8 (a list of generators),
the end-to-end ratio of `sweeplab -m model.path=<folder> dtype=<dtype>` to the plain loop (whole processes,
alternating), whether two processes give identical output bytes, and, when this sweeplab has them
(probed, else "not available"), images per second through `hydra.launcher.batch_size` and the `compile=true`
speed-up. Each step is a child process with a timeout cut to what is left of --budget; a step that cannot
fit is printed as skipped. --tiny (or GPU_CHECK_TINY=1) runs the same steps at toy size (64x64, a small
UNet, 2 steps) so the script can be tested on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from sweep_runs import BenchmarkError, Grid, ProcessRun, Runner, identical_outputs, plain_outputs, sweeplab_outputs


@dataclass(frozen=True)
class Mode:
    """The check's sizes: the real one (SD 1.5 at 512 px, 30 steps) or the CPU test's."""

    tiny: bool
    size: int  # pixels per side
    steps: int  # nominal steps, all denoised: strength 1.0
    trials: int  # trials per process in the overhead comparison
    batch_sizes: tuple[int, ...]  # for images per second
    budget: float  # seconds for the whole check
    dtype: str = "auto"  # sweeplab's dtype for the built model: float16 once it is known to run on cuda

    @classmethod
    def of(cls, tiny: bool, budget: float | None) -> "Mode":
        if tiny:
            return cls(True, 64, 2, 3, (1, 4, 8), budget or 900)
        return cls(False, 512, 30, 6, (1, 4, 8), budget or 225)

    def grid(self, model_dir: Path, trials: int | None = None) -> Grid:
        return Grid(seeds=tuple(range(1, (trials or self.trials) + 1)), strengths=(1.0,), size=self.size,
                    steps=self.steps, model_dir=str(model_dir), dtype=self.dtype)


def say(name: str, value) -> None:
    print(f"gpu_check: {name}: {value}", flush=True)


class Clock:
    """The time left of the budget; each step gets at most that, minus what later steps need."""

    def __init__(self, budget: float):
        self.deadline = time.monotonic() + budget

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allow(self, wanted: float, reserve: float = 0.0) -> float | None:
        """Seconds for a step that wants `wanted`, keeping `reserve` for later steps; None: skip it."""
        available = self.left() - reserve
        return min(wanted, available) if available >= min(wanted, 20) else None

    def require(self, step: str, wanted: float, reserve: float) -> float:
        """Like allow, for a step the rest needs: no time for it is an error."""
        allowed = self.allow(wanted, reserve)
        if allowed is None:
            raise BenchmarkError(f"no time left for step {step} ({self.left():.0f} s of the budget left)")
        return allowed


def run_step(step: str, args: list[str], result: Path, timeout: float) -> dict:
    """Run this file's `step` in a child process; it prints its figures and writes its JSON result."""
    try:
        done = subprocess.run([sys.executable, __file__, step, *args, "--result", str(result)], timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"step {step} timed out after {timeout:.0f} s") from None
    if done.returncode != 0:
        raise BenchmarkError(f"step {step} failed with exit code {done.returncode}")
    return json.loads(result.read_text())


# ---- steps that run in a child process (they import torch) ----

def step_build(options: argparse.Namespace) -> dict:
    """Build the random pipeline on the device, save it in float16, and check one output."""
    import torch

    from random_sd15 import build_pipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    pipe = build_pipeline(seed=0, tiny=options.tiny, init_scale=options.init_scale, device=device)
    pipe.to(torch.float16).save_pretrained(options.model, safe_serialization=True)
    params = sum(p.numel() for p in pipe.unet.parameters())
    say("build", f"{params / 1e6:.0f}M UNet parameters, saved in float16 to {options.model} in "
                 f"{time.perf_counter() - started:.1f} s on {device_name(device)}")
    return {"device": device, "unet_parameters": params}


def step_throughput(options: argparse.Namespace) -> dict:
    """Load the saved folder as the plain loop does; check outputs; images per second per batch size."""
    import numpy as np
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

    from plain_img2img import init_image

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(options.model, dtype=dtype).to(device)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    init = init_image(options.size)

    def generate(batch: int, output_type: str = "pil"):
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in range(1, batch + 1)]
        return pipe(prompt=["a red circle"] * batch, image=[init] * batch, strength=1.0,
                    num_inference_steps=options.steps, generator=generators, output_type=output_type).images

    pixels = np.asarray(generate(2, output_type="np"), dtype=np.float32)
    non_finite = float(1 - np.isfinite(pixels).mean())
    spread = float(np.nanstd(pixels, axis=(1, 2, 3)).min())
    say("non-finite output values", f"{non_finite:.2%} of {pixels.size} ({dtype_name(dtype)}, init scale "
                                    f"{options.init_scale})")
    say("outputs blank", f"{'yes' if spread < 1 / 255 else 'no'} (smallest per-image std {spread:.4f} of 0..1)")
    figures = {"non_finite_share": non_finite, "min_image_std": spread, "images_per_second": {}}
    for batch in options.batch_sizes:
        generate(batch)  # warm-up: kernels, allocator
        calls = max(1, options.calls // batch)
        synchronize(device)
        started = time.perf_counter()
        for _ in range(calls):
            generate(batch)
        synchronize(device)
        rate = calls * batch / (time.perf_counter() - started)
        figures["images_per_second"][batch] = rate
        timed = f"{calls} call{'s' if calls > 1 else ''}"
        say(f"plain diffusers images/s at batch {batch}", f"{rate:.2f} ({timed} after a warm-up)")
    return figures


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---- the orchestrating process (no torch) ----

def sweeplab_options() -> dict[str, str | None]:
    """Which execution options this sweeplab has: the overrides that enable each, or None."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import sweeplab.schema  # noqa: F401  registers the config schemas
    from sweeplab.cli import CONF_DIR

    def composed(overrides: list[str]):
        try:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                return compose("config", overrides, return_hydra_config=True)
        except Exception:  # noqa: BLE001 - an unknown option or launcher is exactly what is being probed
            return None

    found: dict[str, str | None] = {"batch_size": None, "compile": None}
    for launcher in ([], ["hydra/launcher=sweeplab"]):
        cfg = composed(launcher)
        if cfg is not None and OmegaConf.select(cfg, "hydra.launcher.batch_size", default=None) is not None:
            found["batch_size"] = " ".join([*launcher, "hydra.launcher.batch_size={n}"])
            break
    cfg = composed([])
    if cfg is not None and "compile" in cfg:
        found["compile"] = "compile=true"
    return found


def unet_step_seconds(run: ProcessRun) -> float | None:
    """The median time between consecutive denoiser calls inside trials (gaps between trials left out)."""
    calls = run.report["denoiser_calls"]
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    if not gaps:
        return None
    typical = statistics.median(gaps)
    return statistics.median([gap for gap in gaps if gap <= 3 * typical])


def compare_overhead(runner: Runner, mode: Mode, model: Path, clock: Clock) -> None:
    """Plain loop and sweeplab, twice each, alternating; the ratio and whether bytes repeat across processes."""
    grid = mode.grid(model)
    plain, sweeplab = [], []
    for _ in range(2):
        for side, runs in (("plain", plain), ("sweeplab", sweeplab)):
            timeout = clock.allow(90 if not mode.tiny else 300, reserve=20)
            if timeout is None:
                say(f"{side} process", "skipped (time budget)")
                break
            run = runner.plain if side == "plain" else runner.sweeplab
            runs.append(run(grid, timeout=timeout))
    if not plain or not sweeplab:
        return
    ratios = [s.seconds / p.seconds for p, s in zip(plain, sweeplab)]
    say(f"end to end, {grid.trials} trials, {mode.size}px, {mode.steps} steps",
        f"plain {seconds_list(plain)}; sweeplab {seconds_list(sweeplab)}")
    each = ", ".join(f"{r:.2f}" for r in ratios)
    say("overhead ratio sweeplab / plain", f"{statistics.median(ratios):.2f}x ({each})")
    pairs = {"plain": [plain_outputs(r) for r in plain], "sweeplab": [sweeplab_outputs(r) for r in sweeplab]}
    for side, outputs in pairs.items():
        if len(outputs) == 2:
            same, total = identical_outputs(*outputs)
            say(f"identical bytes across two processes ({side})", same_bytes(same, total))
    same, total = identical_outputs(pairs["plain"][0], pairs["sweeplab"][0])
    say("identical bytes, plain vs sweeplab", same_bytes(same, total))


def seconds_list(runs: list[ProcessRun]) -> str:
    return ", ".join(f"{run.seconds:.1f} s" for run in runs)


def same_bytes(same: int, total: int) -> str:
    return f"{'yes' if same == total else 'no'} ({same}/{total})"


def sweeplab_batches(runner: Runner, mode: Mode, model: Path, clock: Clock, batch_override: str | None) -> None:
    """Images per second through sweeplab's batching, from the first UNet call to the end of the process."""
    if batch_override is None:
        for batch in mode.batch_sizes:
            say(f"sweeplab images/s at batch {batch}", "not available (this sweeplab has no hydra.launcher.batch_size)")
        return
    grid = mode.grid(model, trials=max(mode.batch_sizes))
    for batch in mode.batch_sizes:
        timeout = clock.allow(60 if not mode.tiny else 300, reserve=10)
        if timeout is None:
            say(f"sweeplab images/s at batch {batch}", "skipped (time budget)")
            continue
        run = runner.sweeplab(grid, tuple(batch_override.format(n=batch).split()), probe=True, timeout=timeout)
        rate = grid.trials / (run.report["finished"] - run.report["denoiser_calls"][0])
        say(f"sweeplab images/s at batch {batch}", f"{rate:.2f} ({grid.trials} trials, first UNet call to the end)")


def compile_speedup(runner: Runner, mode: Mode, model: Path, clock: Clock, compile_override: str | None) -> None:
    """UNet step time with compile=true against without, in two sweeplab processes."""
    if compile_override is None:
        say("compile speed-up", "not available (this sweeplab has no `compile` key)")
        return
    grid = mode.grid(model, trials=2)
    steps = {}
    for label, extra in (("eager", ()), ("compiled", (compile_override,))):
        timeout = clock.allow(120 if not mode.tiny else 300, reserve=5)
        if timeout is None:
            say("compile speed-up", "skipped (time budget)")
            return
        run = runner.sweeplab(grid, extra, probe=True, timeout=timeout)
        steps[label] = unet_step_seconds(run)
        say(f"UNet call interval, {label}", f"{steps[label] * 1000:.1f} ms (process {run.seconds:.1f} s)")
    say("compile speed-up", f"{steps['eager'] / steps['compiled']:.2f}x per UNet call")


def orchestrate(options: argparse.Namespace) -> None:
    mode = Mode.of(options.tiny, options.budget)
    clock = Clock(mode.budget)
    runner = Runner.temporary(timeout=mode.budget, keep=options.keep)
    model = runner.root / ("random-sd15-tiny" if mode.tiny else "random-sd15")
    say("mode", f"{'tiny (CPU test)' if mode.tiny else 'SD 1.5 architecture'}, {mode.size}x{mode.size}, "
                f"{mode.steps} steps at strength 1.0, k_euler, budget {mode.budget:.0f} s, folder {runner.root}")
    common = ["--model", str(model), "--size", str(mode.size), "--steps", str(mode.steps),
              "--init-scale", str(options.init_scale)] + (["--tiny"] if mode.tiny else [])
    try:
        built = run_step("build", common, runner.root / "build.json",
                         clock.require("build", 90 if not mode.tiny else 300, reserve=100))
        run_step("throughput", [*common, "--batch-sizes", ",".join(map(str, mode.batch_sizes))],
                 runner.root / "throughput.json", clock.require("throughput", 60 if not mode.tiny else 300, reserve=80))
        if built["device"] == "cuda":
            mode = replace(mode, dtype="float16")
        elif not mode.tiny:
            say("warning", "no GPU: these are CPU figures (use --tiny for a quick CPU test)")
        compare_overhead(runner, mode, model, clock)
        available = sweeplab_options()
        sweeplab_batches(runner, mode, model, clock, available["batch_size"])
        compile_speedup(runner, mode, model, clock, available["compile"])
    except BenchmarkError as err:
        say("error", str(err).splitlines()[0])
        sys.exit(1)
    finally:
        say("time used", f"{mode.budget - clock.left():.0f} s of {mode.budget:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", nargs="?", default="all", choices=["all", "build", "throughput"],
                        help="all (default) runs every step; the others are the child processes' steps")
    parser.add_argument("--tiny", action="store_true", default=os.environ.get("GPU_CHECK_TINY") == "1",
                        help="toy size on any device, to test this script (also GPU_CHECK_TINY=1)")
    parser.add_argument("--budget", type=float, help="seconds for the whole check (default 225; tiny 900)")
    parser.add_argument("--init-scale", type=float, default=0.5, help="factor on random conv/linear weights")
    parser.add_argument("--keep", action="store_true", help="keep the built model and the processes' folders")
    parser.add_argument("--model", type=Path, help="(steps) the pipeline folder")
    parser.add_argument("--size", type=int, default=512, help="(steps) pixels per side")
    parser.add_argument("--steps", type=int, default=30, help="(steps) denoising steps")
    parser.add_argument("--batch-sizes", type=lambda text: [int(n) for n in text.split(",")], default=[1, 4, 8])
    parser.add_argument("--calls", type=int, default=8,
                        help="(throughput) images timed per batch size, at least one call")
    parser.add_argument("--result", type=Path, help="(steps) where a step writes its JSON result")
    options = parser.parse_args()
    if options.step == "all":
        orchestrate(options)
        return
    result = {"build": step_build, "throughput": step_throughput}[options.step](options)
    options.result.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
