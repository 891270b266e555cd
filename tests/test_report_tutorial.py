"""The img2img tutorial's figure set, regenerated from a small copy of its experiment: numbers, schedule, bytes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import REPO, assert_same_bytes, regenerate_figures
from sweeplab.report.runs import PARAM_KEYS, ReportError
from sweeplab.report.tutorial import tutorial_counts, tutorial_figures

EXPERIMENT = "tutorial_small"
TRIALS = 2 * 2 * 4  # steps x prompts x (3 strengths from the doodle, then text-to-image)


def write_small_experiment(cwd: Path) -> None:
    """experiments/img2img_tutorial.yaml at 64x64: 10 instead of 20 steps, three strengths and text-to-image, its
    first two prompts."""
    config = yaml.safe_load((REPO / "experiments" / "img2img_tutorial.yaml").read_text())
    config.update(width=64, height=64, tracking={"log_step_images": False})
    grid, zipped = config["hydra"]["sweeper"]["grid_params"], config["hydra"]["sweeper"]["list_params"]
    grid.update(steps="10,50", prompt='","'.join(grid["prompt"].split('","')[:2]) + '"')
    zipped.update(strength=[0.5, 0.8, 1.0, 1.0], init_image=["fireplace", "fireplace", "fireplace", None])
    (cwd / "experiments").mkdir()
    (cwd / "experiments" / f"{EXPERIMENT}.yaml").write_text("# @package _global_\n" + yaml.safe_dump(config))


def regenerate(cwd: Path, out: Path):
    return regenerate_figures("tutorial-figures", EXPERIMENT, cwd, out)


@pytest.fixture(scope="module")
def tutorial_store(tmp_path_factory) -> tuple[Path, Path]:
    """A fresh store in which `tutorial-figures --run-missing` ran the whole small experiment, and its output."""
    cwd = tmp_path_factory.mktemp("tutorial-store")
    write_small_experiment(cwd)
    done = regenerate(cwd, cwd / "first")
    assert f"{TRIALS} trials, 0 reused, {TRIALS} to run" in done.stderr
    return cwd, cwd / "first"


def test_the_tutorial_code_path_adds_the_offset_of_one_step():
    assert tutorial_counts(50, 0.8) == (41, 9, 40)  # 41 slices of noise, then 40 steps from the entry after
    assert tutorial_counts(50, 0.5) == (26, 24, 25)
    assert tutorial_counts(50, 1.0) == (50, 0, 49)  # capped at the whole schedule, one step fewer denoised


def test_noise_ladder_counts_are_measured_and_set_beside_the_tutorial(tutorial_store):
    _, out = tutorial_store
    table = pd.read_csv(out / "tutorial-figures.csv")
    ladder = table[table["figure"] == "noise ladder"].set_index("strength")
    assert list(ladder.index) == [0.5, 0.8, 1.0] and (ladder["steps"] == 50).all()
    assert ladder.loc[0.8, ["noise_steps", "schedule_entry", "steps_taken"]].tolist() == [40, 10, 40]
    assert ladder.loc[0.8, ["tutorial_noise_steps", "tutorial_steps_denoised"]].tolist() == [41, 40]
    assert ladder.loc[1.0, ["noise_steps", "schedule_entry", "tutorial_steps_denoised"]].tolist() == [50, 0, 49]
    finished = table[table["status"] == "FINISHED"]
    assert len(finished) == len(table) and (finished["noise_steps"] == finished["steps_taken"]).all()
    # A higher strength starts noisier: the measured start sigmas rise with it.
    assert ladder["start_sigma"].is_monotonic_increasing and ladder["start_sigma"].nunique() == 3
    text = (out / "tutorial-figures.md").read_text()
    assert ("Strength 0.8: the tutorial adds 40 steps of noise (41 with the offset, entry 9); diffusers noised to "
            "entry 10 (timestep") in text
    assert "StableDiffusionImg2ImgPipeline.get_timesteps keeps int(steps x strength) steps" in text
    ladder_png = Image.open(out / "tutorial-figures" / "noise-ladder.png")
    assert ladder_png.width > 4 * 128  # the init image and three strengths, 128 px cells


def test_noise_schedule_is_drawn_from_the_logged_schedules(tutorial_store):
    cwd, out = tutorial_store
    table = pd.read_csv(out / "tutorial-figures.csv")
    schedule = table[table["figure"] == "noise schedule"].set_index("strength")
    assert (schedule["steps"] == 10).all()
    assert schedule["schedule_entry"].tolist() == [10 - int(10 * s) for s in (0.5, 0.8, 1.0)]
    # The artifact behind it: the whole schedule of the trial's nominal steps, noisiest first.
    logged = sorted((cwd / "mlartifacts").rglob("schedule.json"))
    assert len(logged) == TRIALS
    first = json.loads(logged[0].read_text())
    assert first["scheduler"] == "KDiffusionLMSScheduler" and first["sigma_source"] == "scheduler.sigmas"
    assert len(first["timesteps"]) == len(first["sigmas"]) in (10, 50)
    assert all(a > b for a, b in zip(first["sigmas"], first["sigmas"][1:]))
    chart = Image.open(out / "tutorial-figures" / "noise-schedule.png")
    assert chart.size == (800, 450)
    assert len(np.unique(np.asarray(chart.convert("L")))) > 20  # a drawn chart, not a blank canvas
    text = (out / "tutorial-figures.md").read_text()
    assert "## The noise schedule: 10 steps" in text and "tutorial-figures/noise-schedule.png" in text


def test_art_from_a_doodle_grids_prompts_against_strengths(tutorial_store):
    _, out = tutorial_store
    text = (out / "tutorial-figures.md").read_text()
    doodle = text.split("## Art from a doodle: 50 steps")[1].split("## Strength 1.0")[0]
    assert "2 prompts, strength from 0.5 to 1" in doodle
    assert "tutorial-figures/grid-strength-prompt.png" in doodle
    assert "tutorial-figures/strength-one-vs-text-to-image.png" in text.split("## Strength 1.0 still sees")[1]
    manifest = (out / "tutorial-figures" / "MANIFEST").read_text().splitlines()[1:]
    assert "tutorial-figures/noise-ladder.png" in manifest and "tutorial-figures.csv" in manifest


def test_strength_one_is_set_beside_text_to_image_with_distances_to_the_doodle(tutorial_store):
    _, out = tutorial_store
    table = pd.read_csv(out / "tutorial-figures.csv")
    compared = table[table["figure"].str.endswith("vs init image")].set_index(["prompt", "figure"])
    assert len(compared) == 4 and compared["distance_to_init"].notna().all()  # 2 prompts x (img2img, text)
    assert (compared["steps_taken"] == 50).all()
    print(compared["distance_to_init"])


def test_regenerating_after_deleting_the_store_gives_identical_bytes(tutorial_store):
    cwd, first = tutorial_store
    again = regenerate(cwd, cwd / "second")  # the same runs, reused
    assert f"{TRIALS} trials, {TRIALS} reused, 0 to run" in again.stderr
    assert_same_bytes(first, cwd / "second")
    fresh = cwd / "fresh"
    fresh.mkdir()
    write_small_experiment(fresh)
    done = regenerate(fresh, fresh / "out")  # every trial run again, into a new store
    assert f"{TRIALS} trials, 0 reused, {TRIALS} to run" in done.stderr
    assert_same_bytes(first, fresh / "out")
    for name in ("tutorial-figures.md", "tutorial-figures.html", "tutorial-figures.csv"):
        assert str(cwd) not in (first / name).read_text()


def test_an_experiment_varying_other_keys_is_refused_in_one_line():
    frame = pd.DataFrame([{**dict.fromkeys(PARAM_KEYS, "x"), "sampler": sampler} for sampler in ("k_lms", "k_heun")])
    with pytest.raises(ReportError, match="also varies sampler: select one sweep"):
        tutorial_figures(frame, artifacts=None, experiment="mixed")
