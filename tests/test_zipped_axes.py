"""Zipped keys: `hydra.sweeper.list_params` pairs values by position, times the grid; bad lists fail in one line.

Real `sweeplab -m` and `python -m sweeplab.plan` processes on the toy model at 64x64 and a step or three, a real
SQLite store, and the pre-check in this process for the one-line messages.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import SWEEPLAB
from sweeplab.cli import preflight
from sweeplab.errors import ConfigError
from sweeplab.sweepaxes import read_axes

TINY = ["width=64", "height=64", "tracking.log_step_images=false"]
# Two (steps, strength) pairs: 3 x 0.5 denoises 1 step, 4 x 0.75 denoises 3.
PAIRS = "# @package _global_\nhydra:\n  sweeper:\n    list_params:\n      steps: 3,4\n      strength: [0.5, 0.75]\n"
ZIP_ON_COMMAND_LINE = ["+hydra.sweeper.list_params.steps=[3,4]", "+hydra.sweeper.list_params.strength=[0.5,0.75]"]


def experiment_file(folder: Path, name: str, text: str) -> None:
    """A user's experiment in the working folder's experiments/, as sweeplab finds it."""
    (folder / "experiments").mkdir(exist_ok=True)
    (folder / "experiments" / f"{name}.yaml").write_text(text)


def test_two_zipped_pairs_times_two_seeds_are_four_runs_with_their_params(tmp_path):
    experiment_file(tmp_path, "pairs", PAIRS)
    done = subprocess.run([str(SWEEPLAB), "-m", "experiment=pairs", "seed=1,2", *TINY], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "4 trials: 4 finished, 0 failed" in done.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("pairs").experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("sweeplab.sweep") == "true"]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trials = {(run.data.params["seed"], run.data.params["steps"], run.data.params["strength"]): run for run in children}
    assert sorted(trials) == [("1", "3", "0.5"), ("1", "4", "0.75"), ("2", "3", "0.5"), ("2", "4", "0.75")]
    assert {key: run.data.metrics["steps_taken"] for key, run in trials.items()} == {
        ("1", "3", "0.5"): 1, ("1", "4", "0.75"): 3, ("2", "3", "0.5"): 1, ("2", "4", "0.75"): 3}
    assert {run.info.run_name for run in children} == {"strength=0.5 steps=3 seed=1", "strength=0.75 steps=4 seed=1",
                                                       "strength=0.5 steps=3 seed=2", "strength=0.75 steps=4 seed=2"}
    assert parent.data.params == {"seed": "1,2", "steps": "3,4", "strength": "0.5,0.75"}
    assert parent.data.tags["sweeplab.zipped"] == "steps,strength"
    assert parent.data.metrics["trials"] == 4


@pytest.mark.parametrize("where", ["command line", "experiment"])
def test_zipped_lists_of_different_lengths_fail_in_one_line_before_anything_opens(tmp_path, where):
    experiment_file(tmp_path, "uneven", PAIRS.replace("steps: 3,4", "steps: 3,4,5"))
    zipped = (["+hydra.sweeper.list_params.steps=[3,4,5]", ZIP_ON_COMMAND_LINE[1]] if where == "command line"
              else ["experiment=uneven"])
    done = subprocess.run([str(SWEEPLAB), "-m", *zipped, *TINY], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2
    assert done.stderr == ("sweeplab: error: hydra.sweeper.list_params: zipped lists differ in length (steps: 3 "
                           "values, strength: 2 values); they pair their values by position, so give each as many\n")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "multirun").exists()


def test_a_sweep_the_pre_check_does_not_compose_stops_at_the_sweep_callback_without_a_run(tmp_path):
    """A primary config of one's own (--config-name) is composed first by Hydra: the sweep callback reads the same
    axes before it opens the store, so the command ends in the same line and the store gets no parent run."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "mine.yaml").write_text(
        "defaults:\n  - config\n  - _self_\nhydra:\n  sweeper:\n    list_params:\n      steps: 3,4,5\n"
        "      strength: 0.5,0.75\n")
    done = subprocess.run([str(SWEEPLAB), "-m", "--config-dir", "conf", "--config-name", "mine", *TINY],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.endswith("sweeplab: error: hydra.sweeper.list_params: zipped lists differ in length (steps: "
                                "3 values, strength: 2 values); they pair their values by position, so give each "
                                "as many\n")
    assert "Traceback" not in done.stderr and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(("sweeper", "expected"), [
    ("    params:\n      steps: 3,4\n    list_params:\n      steps: 5,6\n      strength: 0.5,0.75\n",
     "steps: both gridded (hydra.sweeper.params) and zipped (hydra.sweeper.list_params); give it in one of them"),
    ("    grid_params:\n      seed: 1,2\n    params:\n      seed: 3,4\n",
     "seed: in both hydra.sweeper.params and hydra.sweeper.grid_params; give it in one of them"),
    ("    list_params:\n      steps: 3,4\n      strenght: 0.5,0.75\n",
     "experiment bad: hydra.sweeper.list_params.strenght: unknown key; did you mean 'strength'?"),
    ("    grid_params:\n      sede: 1,2\n",
     "experiment bad: hydra.sweeper.grid_params.sede: unknown key; did you mean 'seed'?"),
])
def test_an_experiments_bad_sweeper_lists_fail_in_one_line(tmp_path, monkeypatch, sweeper, expected):
    experiment_file(tmp_path, "bad", "# @package _global_\nhydra:\n  sweeper:\n" + sweeper)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        preflight(["-m", "experiment=bad"])
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


@pytest.mark.parametrize(("argv", "expected"), [
    (["-m", "+hydra.sweeper.list_params.stps=[3,4]"],
     "hydra.sweeper.list_params.stps: unknown key; did you mean 'steps'?"),
    (["-m", "+hydra.sweeper.list_params.steps=3,4"],
     "+hydra.sweeper.list_params.steps: '3,4' would sweep Hydra's own settings, which Hydra refuses; give the values "
     "as a list: +hydra.sweeper.list_params.steps=[3,4]"),
    (["-m", "hydra.sweeper.list_params.steps=[3,4]"],
     "hydra.sweeper.list_params.steps: not set yet, and Hydra adds a key only with +: "
     "+hydra.sweeper.list_params.steps=[3,4]"),
    (["-m", "experiment=invokeai_img2img", "+hydra.sweeper.list_params.steps=[3,4,5,6,7]"],
     "hydra.sweeper.list_params.steps: already set (by the experiment); replace it without +: "
     "hydra.sweeper.list_params.steps=[3,4,5,6,7]"),
    (["-m", "experiment=invokeai_img2img", "hydra.sweeper.list_params.steps=[3,4]"],
     "hydra.sweeper.list_params: zipped lists differ in length (steps: 2 values, strength: 5 values)"),
    (["-m", "experiment=invokeai_img2img", "+hydra.sweeper.grid_params.steps=3,4"],
     "+hydra.sweeper.grid_params.steps: '3,4' would sweep Hydra's own settings"),
    (["-m", "experiment=invokeai_img2img", "+hydra.sweeper.grid_params.steps=[3,4]"],
     "steps: both gridded (hydra.sweeper.grid_params) and zipped (hydra.sweeper.list_params)"),
    (ZIP_ON_COMMAND_LINE, "hydra.sweeper.list_params.steps: the sweeper's settings apply only to a sweep; add -m"),
])
def test_bad_zipped_lists_on_the_command_line_fail_in_one_line(argv, expected):
    with pytest.raises(ConfigError) as info:
        preflight(argv)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def plan_view(*overrides: str, cwd: Path) -> list[list[str]]:
    """`python -m sweeplab.plan`: each trial's overrides, as the sweep would run them."""
    done = subprocess.run([sys.executable, "-m", "sweeplab.plan", *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return [trial["overrides"] for trial in json.loads(done.stdout)]


def test_the_plan_view_lists_the_grid_times_the_pairs(tmp_path):
    assert plan_view("seed=1,2", *ZIP_ON_COMMAND_LINE, cwd=tmp_path) == [
        ["seed=1", "steps=3", "strength=0.5"], ["seed=1", "steps=4", "strength=0.75"],
        ["seed=2", "steps=3", "strength=0.5"], ["seed=2", "steps=4", "strength=0.75"]]
    doc = [[o for o in trial if not o.startswith("experiment=")] for trial in
           plan_view("experiment=invokeai_img2img", cwd=tmp_path)]
    assert doc == [["steps=10", "strength=0.4"], ["steps=10", "strength=0.7"], ["steps=50", "strength=0.4"],
                   ["steps=30", "strength=0.7"], ["steps=29", "strength=0.7"]]


def test_a_command_line_value_of_a_zipped_key_takes_it_out_of_the_pairs():
    """The command line wins, as over a grid: `--run-missing` reruns one doc trial as `steps=50 strength=0.4`."""
    sweeper = {"list_params": {"steps": "10,10,50,30,29", "strength": [0.4, 0.7, 0.4, 0.7, 0.7]}}
    assert read_axes(sweeper, ["steps=50", "strength=0.4"]).trials() == [["steps=50", "strength=0.4"]]
    replaced = read_axes(sweeper, ["strength=0.7"])
    assert replaced.trials() == [["strength=0.7", f"steps={steps}"] for steps in (10, 50, 30, 29)]  # pairs run once
    assert replaced.swept_values() == {"steps": "10,50,30,29"} and replaced.zipped_keys() == ["steps"]
    texts = read_axes({"list_params": {"prompt": ["a red circle", "0.5"], "seed": "1,2"}}, [])
    assert texts.trials() == [['prompt="a red circle"', "seed=1"], ['prompt="0.5"', "seed=2"]]  # texts stay texts


def test_the_sweepers_settings_show_with_cfg_hydra(tmp_path):
    done = subprocess.run([str(SWEEPLAB), "--cfg", "hydra", "-p", "hydra.sweeper", "experiment=invokeai_img2img"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "list_params:\n  steps: 10,  10,  50,  30,  29\n  strength: 0.4, 0.7, 0.4, 0.7, 0.7\n" in done.stdout
