"""The benchmarks' instruments, not their figures: speed never gates a test.

What is checked is what the figures rest on: both sides of sweep_overhead.py run the same trial, the
where-time-goes table attributes a stack to the row it says it does, and inprocess_probe.py finds the
denoiser's calls and samples a real process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import REPO

BENCHMARKS = REPO / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """The benchmark scripts as modules (benchmarks/ is their folder, not a package)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import inprocess_probe
    import plain_img2img
    import sweep_overhead
    import sweep_runs

    return type("Bench", (), {"probe": inprocess_probe, "plain": plain_img2img, "overhead": sweep_overhead,
                              "runs": sweep_runs})


def category_of(bench, *frames: str) -> str:
    """The category of a real stack of functions named "module:qualname", outermost first."""
    categories = bench.probe.StackCategories([[name, list(patterns)] for name, patterns in bench.overhead.CATEGORIES])
    found = {}

    def innermost():
        found["category"] = categories.of_stack(sys._getframe(1))

    call = innermost
    for frame in reversed(frames):
        module, qualname = frame.split(":")
        namespace = {"__name__": module, "inner": call}
        exec("def function():\n    inner()", namespace)  # noqa: S102 - a function that lives in `module`
        function = namespace["function"]
        function.__code__ = function.__code__.replace(co_qualname=qualname)
        call = function
    call()
    return found["category"]


def test_the_first_matching_row_takes_the_stack(bench):
    log_image = ("sweeplab.tracking:MlflowTracker.log_trial_result", "mlflow.tracking.client:MlflowClient.log_image")
    assert category_of(bench, *log_image) == "MLflow calls"
    assert category_of(bench, *log_image, "PIL.Image:Image.save", "PIL.PngImagePlugin:_save") == "PNG encoding"
    store = ("sweeplab.tracking:MlflowTracker.__init__", "mlflow.tracking.client:MlflowClient.__init__")
    assert category_of(bench, *store) == "store set-up"
    assert category_of(bench, *store, "importlib._bootstrap:_find_and_load") == "imports"
    pipeline = ("sweeplab.runner:run_trial", "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img:"
                "StableDiffusionImg2ImgPipeline.__call__")
    assert category_of(bench, *pipeline, "diffusers.models.unets.unet_2d_condition:UNet2DConditionModel.forward") == \
        "denoising"
    assert category_of(bench, *pipeline, "sweeplab.runner:_StepRecorder.__call__") == "step recording"
    assert category_of(bench, "sweeplab.cli:run_configured_trial", "hydra.core.utils:_save_config") == "other"


def test_quick_and_launcher_args(bench, capsys):
    args = bench.overhead.parse_args(["--quick", "--launcher-args", "hydra.launcher.batch_size=4 compile=true"])
    assert (args.repeats, args.seeds, args.small_seeds) == (1, 2, 1)
    assert args.launcher_args == ["hydra.launcher.batch_size=4", "compile=true"]
    defaults = bench.overhead.parse_args([])
    assert (defaults.repeats, defaults.seeds, defaults.small_seeds) == (3, 12, 4)
    with pytest.raises(SystemExit) as exit_:
        bench.overhead.parse_args(["--seeds", "4", "--small-seeds", "4"])
    assert exit_.value.code == 2
    assert "--small-seeds and --seeds: need 1 <= small (4) < big (4) <= 12" in capsys.readouterr().err


def test_marginal_cost_and_ratios_per_round(bench):
    rounds = [bench.overhead.Round(plain={24: 20.0, 8: 12.0}, sweeplab={24: 34.0, 8: 18.0},
                                   no_step_images={24: 30.0, 8: 17.0}, plain_startup=5.0, sweeplab_startup=8.0,
                                   plain_one_trial=6.0, sweeplab_one_trial=10.0),
              bench.overhead.Round(plain={24: 22.0, 8: 14.0}, sweeplab={24: 33.0, 8: 17.0},
                                   no_step_images={24: 29.0, 8: 16.0}, plain_startup=5.5, sweeplab_startup=7.5,
                                   plain_one_trial=6.5, sweeplab_one_trial=9.5)]
    figures = bench.overhead.summarise(rounds, 24)
    assert figures["per_trial"]["plain"].median == pytest.approx(0.5)  # (20 - 12) / 16 and (22 - 14) / 16
    assert figures["per_trial"]["sweeplab"].median == pytest.approx(1.0)
    assert figures["per_trial"]["ratio"].median == pytest.approx(2.0)
    assert (figures["end_to_end"]["ratio"].low, figures["end_to_end"]["ratio"].high) == pytest.approx((1.5, 1.7))
    assert figures["startup"]["difference"].median == pytest.approx(2.5)


def test_both_sides_run_the_same_trial(bench, compose_config, tmp_path):
    """The plain loop's arguments and sweeplab's overrides describe one trial, down to the init image's pixels."""
    from sweeplab.cli import preflight
    from sweeplab.trial import prepare_trial

    grid = bench.runs.Grid(seeds=(3,), strengths=(0.8,), size=256, steps=20)
    preflight(["-m", *grid.sweeplab_overrides()])
    spec_trial = prepare_trial(compose_config(*grid.sweeplab_overrides()))
    plain = bench.plain.parse_args(grid.plain_args(tmp_path))
    spec = spec_trial.spec
    assert (spec.seed, spec.strength, spec.width, spec.height, spec.steps, spec.prompt, spec.negative_prompt) == \
        (plain.seeds[0], plain.strengths[0], plain.size, plain.size, plain.steps, plain.prompt, "")
    assert (spec.scheduler, spec.scheduler_options, spec.cfg_scale, spec.model) == \
        ("EulerDiscreteScheduler", {}, plain.cfg_scale, "toy")
    assert np.array_equal(np.asarray(spec_trial.init.rgb), np.asarray(bench.plain.init_image(plain.size)))


def test_probe_finds_the_denoiser_and_samples_the_main_thread(tmp_path):
    """A real process under the probe: every call of the module named like the UNet, and sampled time by row."""
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent("""
        import time
        import torch

        class UNet2DConditionModel(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = torch.nn.Linear(2, 2)

            def forward(self, x):
                return self.inner(x)

        def busy_loop():
            end = time.perf_counter() + 0.3
            while time.perf_counter() < end:
                pass

        unet = UNet2DConditionModel()
        for _ in range(3):
            unet(torch.zeros(1, 2))
        busy_loop()
    """))
    categories = tmp_path / "categories.json"
    categories.write_text(json.dumps([["busy", ["__main__:busy_loop"]]]))
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "inprocess_probe.py"), "--report", str(report),
                    "--categories", str(categories), str(script)], check=True, timeout=300)
    found = json.loads(report.read_text())
    assert len(found["denoiser_calls"]) == 3
    assert found["started"] < found["denoiser_calls"][0] < found["finished"]
    assert found["exit_code"] == 0
    assert found["main_thread"]["busy"] > 0.1
