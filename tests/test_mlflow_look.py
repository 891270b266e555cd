"""What MLflow shows of a sweep: run names, the parent run's grid and summary, the runs table's URL, in chromium.

Real `sweeplab -m` processes on the toy model write a real SQLite store, and one writes to the PostgreSQL-backed
MLflow server (scripts/mlflow-server.sh), whose UI is opened in headless chromium.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf
from PIL import Image

from conftest import SWEEPLAB, browser_page
from sweeplab.runnames import plan_run_names
from sweeplab.sweep import ComposedJob
from sweeplab.tracking import CONFIG_HASH_TAG, SWEEP_TAG, MlflowSweepCallback, MlflowTracker
from sweeplab.trial import prepare_trial

TINY = ["width=64", "height=64", "steps=2"]
LONG_PROMPTS = ["a red circle on a blue background", "a red circle on a blue backdrop"]
# 2 samplers x 2 prompts that differ only in their last word; per-step previews on, to count them
SWEEP = ["-m", *TINY, "sampler=k_lms,k_euler", f'prompt="{LONG_PROMPTS[0]}","{LONG_PROMPTS[1]}"']
NAMES = {"sampler=k_lms prompt=…background", "sampler=k_lms prompt=…backdrop",
         "sampler=k_euler prompt=…background", "sampler=k_euler prompt=…backdrop"}


def names_of(compose_config, *sweep: list[str]) -> list[str]:
    """The run names a sweep of these trials (each a list of overrides) gets, from their composed configs and,
    where names tie, their validated trials' config hashes."""
    jobs = [ComposedJob(num, overrides, compose_config(*TINY, *overrides)) for num, overrides in enumerate(sweep)]
    plan_run_names(jobs)
    return [job.run_name.for_trial(prepare_trial(job.cfg).spec.config_hash) for job in jobs]


def test_run_names_name_only_what_differs(compose_config):
    grid = [[f"strength={strength}", f"seed={seed}"] for strength in (0.5, 0.8) for seed in (1, 3)]
    assert names_of(compose_config, *grid) == ["strength=0.5 seed=1", "strength=0.5 seed=3",
                                               "strength=0.8 seed=1", "strength=0.8 seed=3"]
    assert names_of(compose_config, ["sampler=k_heun", "cfg_scale=3"], ["sampler=k_lms", "cfg_scale=3"],
                    ["sampler=k_heun", "cfg_scale=9"]) == ["sampler=k_heun cfg_scale=3", "sampler=k_lms cfg_scale=3",
                                                           "sampler=k_heun cfg_scale=9"]
    assert names_of(compose_config, *([f'prompt="{p}"'] for p in LONG_PROMPTS)) == ["prompt=…background",
                                                                                    "prompt=…backdrop"]
    assert names_of(compose_config, ["init_image=tree_hill_river", "steps=4"], ["init_image=fireplace"]) == [
        "init_image=tree_hill_river steps=4", "init_image=fireplace steps=2"]


def test_a_lone_trial_keeps_a_full_name(compose_config):
    assert names_of(compose_config, ["seed=7"]) == ["toy k_lms strength=0.75 steps=2 seed=7"]


def test_colliding_names_get_the_config_hash_then_the_trial_label(compose_config, tmp_path):
    """Two init images both called sketch.png name alike: the config hash tells them apart; the same trial
    asked twice has one hash, and its label (#N) tells the runs apart."""
    for folder, colour in (("a", "red"), ("b", "blue")):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (64, 64), colour).save(tmp_path / folder / "sketch.png")
    names = names_of(compose_config, [f"init_image={tmp_path / 'a' / 'sketch.png'}"],
                     [f"init_image={tmp_path / 'b' / 'sketch.png'}"])
    assert len(set(names)) == 2 and all(re.fullmatch(r"init_image=sketch\.png [0-9a-f]{6}", name) for name in names)
    seed_one = prepare_trial(compose_config(*TINY, "seed=1")).spec.config_hash[:6]
    assert names_of(compose_config, ["seed=1"], ["seed=1"], ["seed=2"]) == [
        f"seed=1 {seed_one} #0", f"seed=1 {seed_one} #1", "seed=2"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("look")
    done = subprocess.run([str(SWEEPLAB), *SWEEP], cwd=folder, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sweeplab").experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("sweeplab.sweep") == "true"]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return folder, done.stderr, client, parent, children


def test_sweep_run_names_are_distinct_and_name_what_differs(sweep):
    _, _, _, _, children = sweep
    assert {run.info.run_name for run in children} == NAMES


def test_parent_run_records_the_grid_the_command_and_the_trial_count(sweep):
    _, _, _, parent, _ = sweep
    assert parent.info.status == "FINISHED"
    assert parent.data.params == {"sampler": "k_lms,k_euler", "prompt": f'"{LONG_PROMPTS[0]}","{LONG_PROMPTS[1]}"'}
    assert parent.data.metrics == {"trials": 4, "trials_finished": 4, "trials_failed": 0, "trials_skipped": 0}
    assert parent.data.tags["sweeplab.command"] == "sweeplab " + " ".join(
        arg if " " not in arg else f"'{arg}'" for arg in SWEEP)


def test_parent_run_holds_a_labelled_grid_and_a_trials_table(sweep, tmp_path):
    _, _, client, parent, children = sweep
    assert sorted(item.path for item in client.list_artifacts(parent.info.run_id, "summary")) == [
        "summary/grid.png", "summary/trials.md"]
    with Image.open(client.download_artifacts(parent.info.run_id, "summary/grid.png", str(tmp_path))) as grid:
        width, height = grid.size
    assert 2 * 128 < width < 3 * 128 + 200 and 2 * 128 < height < 3 * 128 + 200  # 2 x 2 cells of 128 px, labels
    table = Path(client.download_artifacts(parent.info.run_id, "summary/trials.md", str(tmp_path))).read_text()
    rows = [line for line in table.splitlines() if line.startswith("| sampler=")]
    assert len(rows) == 4 and {row.split(" | ")[0].removeprefix("| ") for row in rows} == NAMES
    for run in children:  # each row holds the child's own measured counts
        row = next(row for row in rows if row.startswith(f"| {run.info.run_name} |"))
        assert f"| FINISHED | {run.data.metrics['steps_taken']:g} | {run.data.metrics['denoiser_evals']:g} |" in row


def test_each_step_preview_is_one_image_and_one_thumbnail(sweep):
    """MLflow's image slider takes a step's number and full image from `<key>+step+<n>+...png` and shows the
    `+compressed.webp` beside it (without one it shows a spinner), so the pair is the least it needs."""
    _, _, client, _, children = sweep
    for run in children:
        files = [item.path.removeprefix("images/") for item in client.list_artifacts(run.info.run_id, "images")]
        steps = int(run.data.metrics["steps_taken"]) + 1  # the start latent is step 0
        assert sorted(re.sub(r"\+timestamp.*?(\+compressed)?\.(png|webp)$", r"\1.\2", name) for name in files) == \
            sorted([f"latent+step+{step}.png" for step in range(steps)]
                   + [f"latent+step+{step}+compressed.webp" for step in range(steps)])


def test_closing_lines_print_the_runs_table_address(sweep):
    folder, stderr, client, parent, _ = sweep
    experiment_id = parent.info.experiment_id
    assert f"sweeplab: browse with: mlflow ui --backend-store-uri sqlite:///{folder / 'mlflow.db'}\n" in stderr
    assert (f"sweeplab: then open: http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"
            "?workflowType=machine_learning\n") in stderr


def test_invalid_trials_still_give_the_parent_its_table_and_close_it(tmp_path):
    """Nothing finished: no grid, the table lists the failures, and the parent ends FAILED (never RUNNING)."""
    done = subprocess.run([str(SWEEPLAB), "-m", *TINY, "strength=1.5,2.5"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 1 and "warning" not in done.stderr, done.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sweeplab").experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("sweeplab.sweep") == "true"]
    assert parent.info.status == "FAILED" and parent.data.metrics["trials_failed"] == 2
    assert [item.path for item in client.list_artifacts(parent.info.run_id, "summary")] == ["summary/trials.md"]
    table = Path(client.download_artifacts(parent.info.run_id, "summary/trials.md", str(tmp_path))).read_text()
    assert "No grid: no trial finished." in table and table.count("| FAILED |") == 2


def test_a_summary_that_cannot_be_built_warns_in_one_line_and_the_parent_still_closes(tmp_path, capsys):
    """Two FINISHED children whose output.png is gone (removed from the store by hand): no grid can be drawn."""
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "no-outputs")
    callback = MlflowSweepCallback()
    callback.tracker = tracker
    callback.parent_run_id = tracker.start_run("sweep", {}, {SWEEP_TAG: "true"}, None)
    for strength in ("0.5", "1.0"):
        child = tracker.start_run(f"strength={strength}", {"strength": strength}, {CONFIG_HASH_TAG: strength},
                                  callback.parent_run_id)
        tracker.end_run(child, "FINISHED")
    callback.on_multirun_end(OmegaConf.create({}))
    # The grid cannot be drawn: the table is still logged, and says which run lacks its output.
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sweeplab: warning")]
    assert warnings == []
    table = Path(tracker.client.download_artifacts(callback.parent_run_id, "summary/trials.md", str(tmp_path)))
    assert "No grid: run " in table.read_text() and "has no artifact output.png" in table.read_text()
    assert tracker.client.get_run(callback.parent_run_id).info.status == "FINISHED"


def test_runs_table_lists_the_children_and_the_parent_shows_its_grid_in_chromium(mlflow_server, chromium, tmp_path):
    experiment = f"look-{uuid.uuid4().hex[:8]}"
    done = subprocess.run([str(SWEEPLAB), "-m", *TINY, "tracking.log_step_images=false", "strength=0.5,1.0",
                           "tracking=server", f"tracking.uri={mlflow_server}", f"tracking.experiment={experiment}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    address = re.search(r"^sweeplab: the sweep's runs: (\S+)$", done.stderr, re.MULTILINE).group(1)
    client = MlflowClient(mlflow_server)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    assert address == f"{mlflow_server}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    (parent,) = client.search_runs([experiment_id], "tags.`sweeplab.sweep` = 'true'")
    with browser_page(chromium, tmp_path / "profile", address) as page:
        parent_row = page.locator(".ag-row").filter(has_text=parent.info.run_name)
        parent_row.wait_for(timeout=30_000)
        parent_row.locator("button").first.click()  # the runs table nests children under their parent
        names = page.locator('.ag-row [col-id="attributes.`Run Name`"]')
        page.get_by_text("strength=1", exact=True).wait_for(timeout=30_000)
        assert {text.splitlines()[-1] for text in names.all_inner_texts()} == {
            parent.info.run_name, "strength=0.5", "strength=1"}
        page.goto(f"{mlflow_server}/#/experiments/{experiment_id}/runs/{parent.info.run_id}/artifacts")
        page.get_by_text("summary", exact=True).click(timeout=30_000)
        page.get_by_text("grid.png", exact=True).click(timeout=30_000)
        shown = page.locator("img[src^='blob:']").first
        shown.wait_for(timeout=30_000)
        with Image.open(client.download_artifacts(parent.info.run_id, "summary/grid.png", str(tmp_path))) as grid:
            assert shown.evaluate("image => image.naturalWidth") == grid.width
