"""How fast one trial runs: model load once, then the doc's 384x384 10-step trial per sampler.

    python benchmarks/trial_speed.py [--repeats 3] [--samplers k_lms k_heun ...]

Prints seconds per trial (median), denoiser evaluations, and the ratio to the 2 s target of
the toy model on a 2-core CPU. Figures, not assertions: speed never gates the tests.
"""

from __future__ import annotations

import argparse
import statistics
import time

from hydra import compose, initialize_config_dir

import sweeplab.schema  # noqa: F401  registers the config schemas
from sweeplab.cli import CONF_DIR
from sweeplab.models import PipelineCache
from sweeplab.runner import run_trial
from sweeplab.trial import prepare_trial

TARGET_SECONDS = 2.0
DOC_TRIAL = ["steps=10", "width=384", "height=384", "seed=1592514025", "prompt=fire", "strength=0.7"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samplers", nargs="+", default=["k_lms", "k_euler_a", "k_heun", "plms", "k_dpmpp_2m"])
    parser.add_argument("--model", default="toy")
    args = parser.parse_args()

    import torch

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        configs = {s: compose("config", [*DOC_TRIAL, f"sampler={s}", f"model={args.model}"]) for s in args.samplers}
    trials = {s: prepare_trial(cfg) for s, cfg in configs.items()}
    first = next(iter(trials.values())).spec
    started = time.perf_counter()
    loaded = PipelineCache().get(first.model_source, first.device, getattr(torch, first.dtype))
    print(f"model load ({args.model}, {first.device}, {first.dtype}, {torch.get_num_threads()} threads): "
          f"{time.perf_counter() - started:.2f} s")
    print(f"{'sampler':<12} {'median s':>9} {'min s':>7} {'steps':>6} {'evals':>6} {'x target':>9}")
    for name, trial in trials.items():
        run_trial(trial, loaded)  # warm-up
        times, result = [], None
        for _ in range(args.repeats):
            started = time.perf_counter()
            result = run_trial(trial, loaded)
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        print(f"{name:<12} {median:>9.3f} {min(times):>7.3f} {result.steps_taken:>6} {result.denoiser_evals:>6} "
              f"{median / TARGET_SECONDS:>9.2f}")


if __name__ == "__main__":
    main()
