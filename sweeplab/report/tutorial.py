"""Chris McCormick's "How img2img Diffusion Works" figures, regenerated from real runs.

The experiment sweeps strength and prompt at two step counts: the noise ladder and the doodle's
outputs come from the most steps (the tutorial illustrates with 50), the noise schedule from the
fewest (its plot used 20), and "strength 1.0 still sees the image" from the text-to-image trials
(init_image=null) beside strength 1.0. Each section is a function of the runs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from sweeplab.report.charts import Mark, line_chart
from sweeplab.report.grid import FAILED, GridStyle, draw_grid
from sweeplab.report.page import Report, Table
from sweeplab.report.reports import Builder, add_grids, constants, failure, ordered_values
from sweeplab.report.runs import Artifacts, ReportError, format_value, varying_keys
from sweeplab.schedule import NoiseSchedule
from sweeplab.tracking import SCHEDULE_ARTIFACT

AXES = ("steps", "strength", "prompt", "init_image")  # what the experiment may vary; the rest is one trial's setting
TEXT_TO_IMAGE = "null"  # the init_image param of a text-to-image trial
TUTORIAL_OFFSET = 1  # SD's scheduler config `steps_offset`, which the tutorial's code added to the noise steps
TUTORIAL_STEPS = 50  # the steps the tutorial illustrates with
TUTORIAL_EXAMPLES = ((0.8, 40), (0.5, 25))  # (strength, noise steps) the tutorial names at its 50 steps
DIFFUSERS_COUNT = ("Where diffusers' count comes from: StableDiffusionImg2ImgPipeline.get_timesteps keeps "
                   "int(steps x strength) steps of the schedule and starts at entry steps - int(steps x strength); "
                   "prepare_latents adds noise to the init image's latent at that entry's level (scheduler.add_noise), "
                   "and the loop denoises from the same entry to the end.")
TUTORIAL_COUNT = ("The tutorial's code (diffusers' img2img of 2022) added the scheduler's steps_offset (1 in SD's "
                  "config) to that count: it noised the latent to the level int(steps x strength) + 1 entries from "
                  "the end, then denoised from the entry after it, int(steps x strength) steps: the tutorial's "
                  "\"offset of 1 step\". Today noise and denoising start at the same entry.")


class TutorialRuns:
    """The experiment's trials with their images and logged schedules, and which step count plays which part."""

    def __init__(self, frame: pd.DataFrame, artifacts: Artifacts, report: Report, thumb: int):
        from_text = frame["init_image"] == TEXT_TO_IMAGE
        self.frame = frame[~from_text]  # img2img from the doodle
        self.text2img = frame[from_text]  # text-to-image with the same seed and prompts
        self.artifacts = artifacts
        self.report = report
        self.thumb = thumb
        steps = ordered_values(frame, "steps")
        self.ladder_steps, self.schedule_steps = steps[-1], steps[0]
        self.first_prompt = ordered_values(frame, "prompt")[0]
        self.build = Builder(self.frame, artifacts, report, ("init", "start", "output"))
        self._schedules: dict[str, NoiseSchedule] = {}  # run id -> its logged schedule, read once

    def at(self, steps: int, one_prompt: bool) -> pd.DataFrame:
        """Trials at `steps`; with one_prompt, only the first prompt's (start latents and schedules ignore it)."""
        chosen = self.frame[self.frame["steps"] == steps]
        return chosen[chosen["prompt"] == self.first_prompt] if one_prompt else chosen

    def schedule(self, row) -> NoiseSchedule | None:
        """The schedule a finished trial logged; None for a failed one."""
        if row["status"] != "FINISHED":
            return None
        if row["run_id"] not in self._schedules:
            logged = self.artifacts.text(row["run_id"], SCHEDULE_ARTIFACT)
            self._schedules[row["run_id"]] = NoiseSchedule.from_json(logged)
        return self._schedules[row["run_id"]]


def tutorial_counts(steps: int, strength: float) -> tuple[int, int, int]:
    """What the tutorial's code did: the noise steps it added, the schedule entry that is, the steps it denoised."""
    noise_steps = min(int(steps * strength) + TUTORIAL_OFFSET, steps)
    return noise_steps, steps - noise_steps, steps - max(steps - noise_steps + TUTORIAL_OFFSET, 0)


def tutorial_figures(frame: pd.DataFrame, artifacts: Artifacts, experiment: str, thumb: int = 128) -> Report:
    """The noise ladder, the noise schedule and art from a doodle, with the step counts explained."""
    others = [key for key in varying_keys(frame) if key not in AXES]
    if others:
        raise ReportError(f"tutorial-figures compares steps, strength and prompt only; experiment '{experiment}' "
                          f"also varies {', '.join(others)}: select one sweep (--sweep) or fix those keys")
    report = Report("tutorial-figures", f"How img2img diffusion works: the tutorial's figures ({experiment})")
    report.text(f"Regenerated from MLflow runs of the experiment '{experiment}': {constants(frame)}.")
    runs = TutorialRuns(frame, artifacts, report, thumb)
    rows = []
    for section in SECTIONS:
        rows += section(runs)
    report.data = pd.DataFrame(rows)
    return report


def noise_ladder(runs: TutorialRuns) -> list[dict]:
    """The init image under the noise each strength adds: the start images, labelled with their noise steps."""
    report, steps = runs.report, runs.ladder_steps
    trials = runs.at(steps, one_prompt=True)
    report.heading(f"The noise ladder: the initial image SD sees, {steps} steps")
    report.text(f"Each strength adds its share of the {steps} noise steps to the init image's latent; the start "
                "latent is the one the pipeline's prepare_latents returned, drawn with the preview map. It does not "
                f"depend on the prompt (shown: '{runs.first_prompt}').")
    schedules = [runs.schedule(row) for _, row in trials.iterrows()]
    labels = ["init image"] + [_ladder_label(row, schedule) for (_, row), schedule in zip(trials.iterrows(), schedules)]
    finished = trials.loc[trials["status"] == "FINISHED", "run_id"]
    cells = [runs.artifacts.image(finished.iloc[0], "init.png") if len(finished) else FAILED]
    cells += [runs.artifacts.image(row["run_id"], "start.png") if row["status"] == "FINISHED" else FAILED
              for _, row in trials.iterrows()]
    legend = f"The initial image SD sees at each strength, {steps} steps; in brackets the tutorial's count"
    picture, _ = draw_grid(legend, labels, ["start image"], [cells], runs.thumb, runs.thumb, GridStyle(cell=runs.thumb))
    report.picture(report.add_image("noise-ladder", picture, legend))
    report.text(DIFFUSERS_COUNT)
    report.text(TUTORIAL_COUNT)
    for sentence in _tutorial_examples(trials, schedules, steps):
        report.text(sentence)
    report.table(_entry_table(trials, schedules, with_tutorial=True))
    return [_csv_row("noise ladder", row, schedule) for (_, row), schedule in zip(trials.iterrows(), schedules)]


def _ladder_label(row, schedule: NoiseSchedule | None) -> str:
    tutorial, _, _ = tutorial_counts(row["steps"], row["strength"])
    counted = f"{schedule.noise_steps} noise steps" if schedule else "failed"
    return f"strength {format_value(row['strength'])}: {counted} ({tutorial})"


def _tutorial_examples(trials: pd.DataFrame, schedules: list, steps: int) -> list[str]:
    """The tutorial's own numbers beside what this run measured, where the experiment has those strengths."""
    if steps != TUTORIAL_STEPS:
        return []
    sentences = []
    for strength, said in TUTORIAL_EXAMPLES:
        found = [(row, schedule) for (_, row), schedule in zip(trials.iterrows(), schedules)
                 if row["strength"] == strength and schedule]
        for row, schedule in found:
            noise, entry, _ = tutorial_counts(steps, strength)
            sentences.append(f"Strength {strength:g}: the tutorial adds {said} steps of noise ({noise} with the "
                             f"offset, entry {entry}); diffusers noised to entry {schedule.start_index} (timestep "
                             f"{schedule.start_timestep:g}, sigma {schedule.start_sigma:.3f}) and took "
                             f"{row['steps_taken']} steps.")
    return sentences


def _entry_table(trials: pd.DataFrame, schedules: list, with_tutorial: bool) -> Table:
    """Per strength: where the trial entered its schedule (measured), the formula, and optionally the tutorial's."""
    header = ["strength", "noise steps", "int(steps x strength)", "schedule entry", "timestep", "sigma",
              "steps actually taken"]
    if with_tutorial:
        header += ["the tutorial's noise steps", "the tutorial's steps denoised"]
    rows = []
    for (_, row), schedule in zip(trials.iterrows(), schedules):
        cells = [f"{row['strength']:g}"]
        if schedule is None:
            cells += [failure(row)] + [""] * (len(header) - 2)
        else:
            cells += [f"{schedule.noise_steps}", f"{int(row['steps'] * row['strength'])}", f"{schedule.start_index}",
                      f"{schedule.start_timestep:g}", f"{schedule.start_sigma:.3f}", f"{row['steps_taken']}"]
            if with_tutorial:
                noise, _, denoised = tutorial_counts(row["steps"], row["strength"])
                cells += [f"{noise}", f"{denoised}"]
        rows.append([[cell] for cell in cells])
    return Table(header, rows)


def noise_schedule(runs: TutorialRuns) -> list[dict]:
    """The sampler's sigma against the step, with where each strength cuts in, drawn from the logged schedules."""
    report, steps = runs.report, runs.schedule_steps
    trials = runs.at(steps, one_prompt=True)
    report.heading(f"The noise schedule: {steps} steps")
    schedules = [runs.schedule(row) for _, row in trials.iterrows()]
    logged = [(row, schedule) for (_, row), schedule in zip(trials.iterrows(), schedules) if schedule]
    if not logged:
        report.text(f"No trial at {steps} steps finished: there is no schedule to draw.")
        return []
    curve = logged[0][1]
    marks = [Mark(schedule.start_index, schedule.start_sigma, format_value(row["strength"]))
             for row, schedule in logged]
    title = f"{curve.scheduler}, {steps} steps: noise level at each step, and where each strength starts"
    chart = line_chart(title, curve.sigmas, "step of the schedule (0: the noisiest)", "sigma", marks,
                       "a strength's start (its start latent's noise level)")
    report.picture(report.add_image("noise-schedule", chart, title))
    report.text(f"The sigmas are {curve.sigma_source}, logged by each trial in {SCHEDULE_ARTIFACT}; a strength starts "
                "at the entry its denoising loop began from, as the trial measured it. The steep start is where the "
                "model changes the image most.")
    report.table(_entry_table(trials, schedules, with_tutorial=False))
    return [_csv_row("noise schedule", row, schedule) for (_, row), schedule in zip(trials.iterrows(), schedules)]


def art_from_a_doodle(runs: TutorialRuns) -> list[dict]:
    """One doodle under every prompt and strength of the experiment."""
    report, steps = runs.report, runs.ladder_steps
    trials = runs.at(steps, one_prompt=False)
    report.heading(f"Art from a doodle: {steps} steps")
    report.text(f"One doodle ({trials['init_image'].iloc[0]}), {trials['prompt'].nunique()} prompts, strength from "
                f"{trials['strength'].min():g} to {trials['strength'].max():g}: the higher the strength, the more "
                "the output leaves the drawing, and the more the prompt decides.")
    finished = trials[trials["status"] == "FINISHED"]
    if len(finished):
        report.picture(runs.build.picture(finished.iloc[0], "init", ["init_image"], display=runs.thumb))
    add_grids(report, trials, runs.artifacts, ["strength", "prompt"], style=GridStyle(cell=runs.thumb))
    return [_csv_row("art from a doodle", row, runs.schedule(row)) for _, row in trials.iterrows()]


def strength_one_against_text_to_image(runs: TutorialRuns) -> list[dict]:
    """The tutorial's "strength 1.0 still sees the image": img2img at 1.0 beside text-to-image, same seed and prompt,
    with each output's distance to the doodle."""
    report, steps = runs.report, runs.ladder_steps
    report.heading(f"Strength 1.0 still sees the image: {steps} steps")
    image = runs.at(steps, one_prompt=False)
    image = image[image["strength"] == 1.0]
    text = runs.text2img[runs.text2img["steps"] == steps]
    finished = image[image["status"] == "FINISHED"]
    if text.empty or finished.empty:
        report.text(f"The experiment has no text-to-image trials (init_image=null) or no finished strength 1.0 trial "
                    f"at {steps} steps to compare.")
        return []
    report.text("At strength 1.0 img2img noises the init image's latent to the top of the schedule, where a little "
                "of the image is left under the noise; text-to-image (init_image=null) starts from pure noise, with "
                "the same seed and prompt. The distance is the mean absolute difference of each output to the init "
                "image, per pixel and channel (0 to 255): the lower, the more of the drawing survived.")
    init = runs.artifacts.image(finished.iloc[0]["run_id"], "init.png")
    cells, labels, rows = [], [], []
    for prompt in ordered_values(image, "prompt"):
        pair = [image[image["prompt"] == prompt], text[text["prompt"] == prompt]]
        row_cells, distances = [init], []
        for trials, figure in zip(pair, ("strength 1.0", "text-to-image")):
            row = trials.iloc[0] if len(trials) else None
            ran = row is not None and row["status"] == "FINISHED"
            output = runs.artifacts.image(row["run_id"], "output.png") if ran else None
            row_cells.append(output if output is not None else FAILED)
            distances.append(_distance(output, init))
            if row is not None:
                rows.append({**_csv_row(f"{figure} vs init image", row, runs.schedule(row)),
                             "distance_to_init": distances[-1]})
        cells.append(row_cells)
        labels.append(f"{prompt}: " + ", ".join("failed" if d is None else f"{d:.1f}" for d in distances))
    legend = (f"The init image, img2img at strength 1.0 and text-to-image, {steps} steps; each row: the prompt and "
              "the two outputs' distances to the init image")
    picture, _ = draw_grid(legend, ["init image", "img2img, strength 1.0", "text-to-image"], labels, cells,
                           runs.thumb, runs.thumb, GridStyle(cell=runs.thumb))
    report.picture(report.add_image("strength-one-vs-text-to-image", picture, legend))
    return rows


def _distance(output, init) -> float | None:
    """Mean absolute difference per pixel and channel, 0 to 255; None without an output."""
    if output is None:
        return None
    return round(float(np.abs(np.asarray(output, np.int16) - np.asarray(init.resize(output.size), np.int16)).mean()), 3)


def _csv_row(figure: str, row, schedule: NoiseSchedule | None) -> dict:
    tutorial_noise, _, tutorial_denoised = tutorial_counts(row["steps"], row["strength"])
    return {
        "figure": figure,
        "prompt": row["prompt"],
        "steps": row["steps"],
        "strength": row["strength"],
        "status": row["status"],
        "noise_steps": schedule.noise_steps if schedule else None,
        "int_steps_x_strength": int(row["steps"] * row["strength"]),
        "schedule_entry": schedule.start_index if schedule else None,
        "start_timestep": schedule.start_timestep if schedule else None,
        "start_sigma": round(schedule.start_sigma, 6) if schedule else None,
        "steps_taken": row["steps_taken"],
        "denoiser_evals": row["denoiser_evals"],
        "tutorial_noise_steps": tutorial_noise,
        "tutorial_steps_denoised": tutorial_denoised,
        "config_hash": row["config_hash"],
    }


# The report's sections in order; each adds its figure and returns its CSV rows.
SECTIONS: tuple[Callable[[TutorialRuns], list[dict]], ...] = (
    noise_ladder, noise_schedule, art_from_a_doodle, strength_one_against_text_to_image,
)
