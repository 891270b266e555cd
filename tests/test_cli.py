"""`sweeplab` end to end in separate processes, against a real SQLite MLflow store."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from conftest import SWEEPLAB

DOC_SWEEP = ["steps=10", "seed=1592514025", "width=384", "height=384", "sampler=k_lms", "prompt=fire"]
TRIAL_ARTIFACTS = {"init.png", "output.png", "latents.safetensors", "latent_strip.png", "start.png", "config.yaml",
                   "schedule.json"}
TRIAL_PARAMS = {"model", "sampler", "strength", "steps", "seed", "cfg_scale", "width", "height",
                "prompt", "negative_prompt", "init_image"}


def store(folder: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")


def all_runs(client: MlflowClient, experiment: str = "sweeplab"):
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id])


def test_doc_sweep_logs_a_parent_and_one_child_per_trial(sweeplab_cli, tmp_path):
    done = sweeplab_cli("-m", *DOC_SWEEP, "strength=0.4,0.7")
    assert done.returncode == 0, done.stderr
    client = store(tmp_path)
    runs = all_runs(client)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    steps = {c.data.params["strength"]: c.data.metrics["steps_taken"] for c in children}
    assert steps == {"0.4": 4.0, "0.7": 7.0}
    for child in children:
        assert child.info.status == "FINISHED"
        assert TRIAL_PARAMS <= set(child.data.params)
        assert {"steps_taken", "denoiser_evals", "seconds"} <= set(child.data.metrics)
        tags = child.data.tags
        for tag in ("sweeplab.config_hash", "sweeplab.version", "sweeplab.torch_version",
                    "sweeplab.diffusers_version", "sweeplab.device"):
            assert tags[tag]
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert TRIAL_ARTIFACTS <= artifacts
        step_images = [a for a in client.list_artifacts(child.info.run_id, "images") if a.path.endswith(".png")]
        assert len(step_images) == child.data.metrics["steps_taken"] + 1  # the start image and every step
    assert parents[0].info.status == "FINISHED"
    assert "2 trials: 2 finished, 0 failed" in done.stderr
    assert (tmp_path / "mlartifacts").is_dir()


def test_same_trial_in_two_processes_gives_identical_output_bytes(sweeplab_cli, tmp_path):
    outputs, hashes = [], []
    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        done = sweeplab_cli(*DOC_SWEEP, "strength=0.7", "tracking.log_step_images=false", cwd=folder)
        assert done.returncode == 0, done.stderr
        client = store(folder)
        (run,) = all_runs(client)
        hashes.append(run.data.tags["sweeplab.config_hash"])
        local = client.download_artifacts(run.info.run_id, "output.png", str(folder))
        outputs.append(Path(local).read_bytes())
        tags = run.data.tags  # what can change low bits is recorded beside the identity, never in it
        assert tags["sweeplab.output_sha256"] == hashlib.sha256(outputs[-1]).hexdigest()
        assert (tags["sweeplab.device"], tags["sweeplab.dtype"]) == ("cpu", "float32")
        assert int(tags["sweeplab.torch_threads"]) >= 1 and tags["sweeplab.cpu_capability"]
    assert outputs[0] == outputs[1]
    assert hashes[0] == hashes[1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["strength=1.5"], "strength: 1.5 is out of range; allowed 0.0 to 1.0"),
        (["sampler=k_lmss"], "sampler: unknown option 'k_lmss'; did you mean 'k_lms'?"),
        (["init_image=missing.png"], "init_image: 'missing.png' is neither an existing file nor a shipped sketch"),
        (["model.path=notes.txt"], "model.path: 'notes.txt' is not a model"),
        (["cfg_scale=inf"], "cfg_scale: inf is not a finite number; allowed a finite number, e.g. the default 7.5"),
        (["width=8192", "height=1000000"], "width x height: 8192x1000000 needs at least"),
    ],
)
def test_invalid_config_exits_with_one_line_before_any_model_loads(sweeplab_cli, tmp_path, args, expected):
    (tmp_path / "notes.txt").write_text("not a model")
    done = sweeplab_cli(*args)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("sweeplab: error:")]
    assert errors == [f"sweeplab: error: {expected}"] or errors[0].startswith(f"sweeplab: error: {expected}")
    assert len(errors) == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert "Loading pipeline components" not in done.stderr  # diffusers' from_pretrained never ran


def test_failed_trial_is_recorded_and_the_sweep_goes_on(sweeplab_cli, tmp_path):
    done = sweeplab_cli("-m", *DOC_SWEEP, "strength=0.4,1.5", "tracking.log_step_images=false")
    assert done.returncode == 1
    children = [r for r in all_runs(store(tmp_path)) if "mlflow.parentRunId" in r.data.tags]
    status = {r.data.params["strength"]: r.info.status for r in children}
    assert status == {"0.4": "FINISHED", "1.5": "FAILED"}
    failed = next(r for r in children if r.info.status == "FAILED")
    assert failed.data.tags["sweeplab.error"].startswith("strength: 1.5 is out of range")
    assert "2 trials: 1 finished, 1 failed" in done.stderr
    assert "Traceback" not in done.stderr


TINY = ["width=64", "height=64", "steps=2", "strength=1.0", "tracking.log_step_images=false"]


def test_rerun_skips_finished_trials_and_resume_false_runs_them_again(sweeplab_cli, tmp_path):
    sweep = ["-m", *TINY, "seed=1,2"]
    assert sweeplab_cli(*sweep).returncode == 0
    again = sweeplab_cli(*sweep)
    assert again.returncode == 0, again.stderr
    assert "2 trials: 0 finished, 0 failed, 2 skipped as already FINISHED (resume=false reruns them)" in again.stderr
    runs = all_runs(store(tmp_path))
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    second_parent = max((r for r in runs if "mlflow.parentRunId" not in r.data.tags), key=lambda r: r.info.start_time)
    skipped = {k.removeprefix("sweeplab.skipped."): v for k, v in second_parent.data.tags.items()
               if k.startswith("sweeplab.skipped.")}
    assert skipped == {r.data.tags["sweeplab.config_hash"]: r.info.run_id for r in children}

    forced = sweeplab_cli(*sweep, "resume=false")
    assert "2 trials: 2 finished, 0 failed" in forced.stderr and "skipped" not in forced.stderr
    finished = [r for r in all_runs(store(tmp_path)) if r.info.status == "FINISHED" and "mlflow.parentRunId" in r.data.tags]
    assert len(finished) == 4


def test_a_sweep_without_multirun_is_one_line_that_names_the_key_and_minus_m(sweeplab_cli):
    done = sweeplab_cli("seed=1,2", "width=64")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("sweeplab: error: seed: '1,2' is a sweep; add -m (sweeplab -m "
                                                    "seed=1,2), or give a list in brackets (seed=[1,2]) or a string "
                                                    "in quotes")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_marks_the_trial_in_flight_and_its_sweep_killed(tmp_path, signum):
    sweep = subprocess.Popen(
        [str(SWEEPLAB), "-m", "width=256", "height=256", "steps=400", "strength=1.0", "seed=1,2",
         "tracking.log_step_images=false"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while not children_in_status(tmp_path):
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()[1][-2000:]
        time.sleep(0.3)
    sweep.send_signal(signum)
    _, err = sweep.communicate(timeout=60)
    assert sweep.returncode == 128 + signum, err[-2000:]
    assert f"interrupted by {signal.Signals(signum).name}" in err
    runs = all_runs(store(tmp_path))
    assert len(runs) == 2  # the sweep and its first trial; the second never started
    assert {r.info.status for r in runs} == {"KILLED"}
    child = next(r for r in runs if "mlflow.parentRunId" in r.data.tags)
    assert child.data.tags["sweeplab.error"] == f"interrupted: {signal.Signals(signum).name}"


def children_in_status(folder: Path, status: str = "RUNNING") -> int:
    """Read straight from SQLite, so that no second MlflowClient races the sweep creating the store."""
    if not (folder / "mlflow.db").exists():
        return 0
    query = ("SELECT count(*) FROM runs JOIN tags ON runs.run_uuid = tags.run_uuid "
             "WHERE tags.key = 'mlflow.parentRunId' AND runs.status = ?")
    try:
        with sqlite3.connect(f"file:{folder / 'mlflow.db'}?mode=ro", uri=True) as db:
            return db.execute(query, (status,)).fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def test_iterations_feed_each_output_into_the_next_trial(sweeplab_cli, tmp_path):
    done = sweeplab_cli("iterations=3", "steps=4", "strength=0.5", "width=128", "height=128",
                        "tracking.log_step_images=false")
    assert done.returncode == 0, done.stderr
    client = store(tmp_path)
    runs = sorted(all_runs(client), key=lambda r: int(r.data.params["iteration"]))
    assert [r.data.params["iteration"] for r in runs] == ["0", "1", "2"]
    assert "sweeplab.previous_run_id" not in runs[0].data.tags
    for earlier, later in zip(runs, runs[1:]):
        assert later.data.tags["sweeplab.previous_run_id"] == earlier.info.run_id
        output = client.download_artifacts(earlier.info.run_id, "output.png", str(tmp_path / earlier.info.run_id))
        init = client.download_artifacts(later.info.run_id, "init.png", str(tmp_path / later.info.run_id))
        assert Image.open(output).tobytes() == Image.open(init).tobytes()


def test_prompt_sr_sweep_with_an_inpainting_init_image(sweeplab_cli, tmp_path):
    rgba = np.zeros((256, 256, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = (40, 40, 200), 255
    rgba[96:160, 96:160, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "hole.png")
    done = sweeplab_cli("-m", "prompt='a red circle'", "prompt_search=red", "prompt_replace=red,green",
                        "init_image=hole.png", "steps=4", "strength=0.75", "tracking.log_step_images=false")
    assert done.returncode == 0, done.stderr
    client = store(tmp_path)
    children = [r for r in all_runs(client) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.params["prompt"] for r in children) == ["a green circle", "a red circle"]
    for child in children:
        assert child.data.tags["sweeplab.prompt_search"] == "red"
        assert "mask.png" in {a.path for a in client.list_artifacts(child.info.run_id)}
        assert "smaller than 512x512" in child.data.tags["sweeplab.warnings"]


def test_a_prompt_over_mlflows_param_limit_is_kept_whole_and_the_param_says_it_was_shortened(sweeplab_cli, tmp_path):
    prompt = "fire_" * 1400  # 7000 characters; MLflow keeps 6000 of a param
    done = sweeplab_cli(*TINY, f"prompt={prompt}")
    assert done.returncode == 0, done.stderr
    client = store(tmp_path)
    (run,) = all_runs(client)
    shown = run.data.params["prompt"]
    note = " [shortened from 7000 characters; the whole value is the artifact params/prompt.txt]"
    assert len(shown) == 6000 and shown.endswith(note) and prompt.startswith(shown.removesuffix(note))
    whole = client.download_artifacts(run.info.run_id, "params/prompt.txt", str(tmp_path))
    assert Path(whole).read_text() == prompt
