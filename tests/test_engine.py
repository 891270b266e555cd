"""The sweep engine (`hydra/launcher=sweeplab`): whole sweeps composed, ordered, batched, logged in the background.

Every sweep here is a real `sweeplab -m` process writing a real SQLite MLflow store.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict
from PIL import Image
from safetensors import safe_open

from conftest import CONF_DIR, SWEEPLAB
from test_cli import all_runs, children_in_status, store

TINY = ["width=64", "height=64", "tracking.log_step_images=false"]
# A second-order sampler, so steps taken (4 and 2) and denoiser evaluations (7 and 3) differ.
GRID = [*TINY, "steps=4", "sampler=k_heun", "seed=1,2,3", "strength=0.5,1.0"]


def children(folder, experiment="sweeplab"):
    return [r for r in all_runs(store(folder), experiment) if "mlflow.parentRunId" in r.data.tags]


def trial_records(folder) -> dict[str, dict]:
    """Per config hash: status, counts, batch tag, output bytes and latents, as the store holds them."""
    client = store(folder)
    records = {}
    for run in children(folder):
        with safe_open(client.download_artifacts(run.info.run_id, "latents.safetensors"), "pt") as latents:
            start, steps = latents.get_tensor("start"), latents.get_tensor("steps")
        output = client.download_artifacts(run.info.run_id, "output.png")
        records[run.data.tags["sweeplab.config_hash"]] = {
            "status": run.info.status,
            "steps_taken": run.data.metrics["steps_taken"],
            "denoiser_evals": run.data.metrics["denoiser_evals"],
            "batch_size": run.data.tags["sweeplab.batch_size"],
            "output_sha256": hashlib.sha256(open(output, "rb").read()).hexdigest(),
            "output": np.asarray(Image.open(output)).astype(int),
            "start": start.float(), "steps_shape": tuple(steps.shape),
        }
    return records


@pytest.fixture(scope="module")
def grid_runs(tmp_path_factory):
    """The same 6-trial grid under Hydra's basic launcher, sweeplab's at batch 1, and sweeplab's at batch 3."""
    folders = {}
    for name, extra in {"basic": ["hydra/launcher=basic"], "engine": [],
                        "batched": ["hydra.launcher.batch_size=3"]}.items():
        folder = tmp_path_factory.mktemp(name)
        done = subprocess.run([str(SWEEPLAB), "-m", *GRID, *extra], cwd=folder, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "6 trials: 6 finished, 0 failed" in done.stderr
        folders[name] = folder
    return {name: trial_records(folder) for name, folder in folders.items()} | {"folders": folders}


def test_engine_at_batch_one_gives_the_basic_launchers_bytes(grid_runs):
    basic, engine = grid_runs["basic"], grid_runs["engine"]
    assert len(basic) == 6 and basic.keys() == engine.keys()
    for config_hash in basic:
        assert engine[config_hash]["output_sha256"] == basic[config_hash]["output_sha256"]
        assert engine[config_hash]["batch_size"] == "1"


def test_batched_trials_keep_their_own_records(grid_runs):
    alone, batched = grid_runs["engine"], grid_runs["batched"]
    assert batched.keys() == alone.keys()
    for config_hash, record in batched.items():
        single = alone[config_hash]
        assert record["status"] == "FINISHED" and record["batch_size"] == "3"
        for key in ("steps_taken", "denoiser_evals", "steps_shape"):
            assert record[key] == single[key], key
        # Each trial draws its own VAE sample and noise from its own generator: its start latent is its own.
        assert np.allclose(record["start"], single["start"], atol=2e-3)
        # The denoiser sees a batch of 3, whose kernels may round differently: outputs stay within a level.
        assert np.abs(record["output"] - single["output"]).max() <= 2
    assert {r["steps_taken"]: r["denoiser_evals"] for r in batched.values()} == {4.0: 7.0, 2.0: 3.0}
    # Different seeds in one batch still give different pictures.
    assert len({r["output_sha256"] for r in batched.values()}) == 6


def test_resume_skips_finished_trials_in_one_pass(grid_runs, tmp_path):
    folder = tmp_path / "resumed"
    shutil.copytree(grid_runs["folders"]["engine"], folder, ignore=shutil.ignore_patterns("multirun"))
    lost = next(r for r in children(folder) if r.data.params["seed"] == "3" and r.data.params["strength"] == "0.5")
    # The copied store still points at the fixture's artifacts (absolute URIs): this is their last user.
    artifacts = Path(lost.info.artifact_uri.removeprefix("file://"))
    (artifacts / "output.png").unlink()
    done = subprocess.run([str(SWEEPLAB), "-m", *TINY, "steps=4", "sampler=k_heun", "seed=1,2,3,4",
                           "strength=0.5,1.0"], cwd=folder, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # A FINISHED run whose output.png is gone is not trusted: its trial runs again, and the sweep says why.
    assert f"its FINISHED run {lost.info.run_id} has no output.png" in done.stderr
    assert "8 trials: 3 finished, 0 failed, 5 skipped as already FINISHED" in done.stderr
    # The store opens on a thread while the main one imports diffusers; the parent still gets its environment.
    sweeps = [r for r in all_runs(store(folder), "sweeplab") if r.data.tags.get("sweeplab.sweep") == "true"]
    assert len(sweeps) == 2
    assert all(r.data.tags["sweeplab.diffusers_version"] for r in sweeps)
    # A report that meets a FINISHED run without its output names the run and the way out.
    (artifacts / "latent_strip.png").unlink()
    report = subprocess.run([str(SWEEPLAB.parent / "sweeplab-report"), "strips", "--sweep", lost.data.tags[
        "mlflow.parentRunId"]], cwd=folder, capture_output=True, text=True, timeout=300)
    assert report.returncode != 0
    assert f"run {lost.info.run_id} has no artifact latent_strip.png" in report.stderr
    assert "--run-missing" in report.stderr and "Traceback" not in report.stderr


def test_failing_trials_inside_a_batch_fail_alone(sweeplab_cli, tmp_path):
    # Prompt S/R over two prompts: "fire" has no "red" to replace, so those trials fail validation,
    # while their batch neighbours (same settings, other prompt) run together.
    done = sweeplab_cli("-m", *TINY, "steps=2", "strength=1.0", 'prompt="a red circle",fire', "seed=1,2",
                        "prompt_search=red", "prompt_replace=blue", "hydra.launcher.batch_size=4")
    assert done.returncode == 1
    assert "4 trials: 2 finished, 2 failed" in done.stderr
    runs = children(tmp_path)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert {r.data.params["prompt"] for r in finished} == {"a blue circle"}
    assert {r.data.tags["sweeplab.batch_size"] for r in finished} == {"2"}
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(failed) == 2 and all("does not occur in prompt 'fire'" in r.data.tags["sweeplab.error"]
                                    for r in failed)


def test_each_model_loads_once_whatever_the_sweep_order(sweeplab_cli, tmp_path):
    from sweeplab.toy import toy_model_dir

    copy = tmp_path / "toy-copy"
    shutil.copytree(toy_model_dir(), copy)
    # Hydra's product interleaves the models: (seed 1, toy), (seed 1, copy), (seed 2, toy), (seed 2, copy).
    done = sweeplab_cli("-m", *TINY, "steps=2", "strength=1.0", "seed=1,2", f"model.path=null,{copy}")
    assert done.returncode == 0, done.stderr[-3000:]
    loads = [line for line in (done.stdout + done.stderr).splitlines() if "loaded on cpu" in line]  # Hydra logs to stdout
    assert len(loads) == 2, loads
    assert "4 trials: 4 finished, 0 failed" in done.stderr


def test_sigterm_with_results_queued_leaves_no_run_running(tmp_path):
    """Per-step images make each trial's logging long enough that the writer holds work when the signal comes.

    The main thread runs ahead of the writer by its queue (two trials) and the batch it denoises, so about six
    trials have started when the first run shows FINISHED: ten make sure the signal stops the sweep.
    """
    sweep = subprocess.Popen(
        [str(SWEEPLAB), "-m", "width=128", "height=128", "steps=30", "strength=1.0",
         "seed=1,2,3,4,5,6,7,8,9,10", "hydra.launcher.batch_size=2"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 300
    while children_in_status(tmp_path, "FINISHED") < 1:
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()[1][-2000:]
        time.sleep(0.2)
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 128 + signal.SIGTERM, err[-2000:]
    runs = all_runs(store(tmp_path))
    assert "RUNNING" not in {r.info.status for r in runs}
    client = store(tmp_path)
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {r.info.status for r in kids} <= {"FINISHED", "KILLED"} and len(kids) < 10
    for run in kids:
        if run.info.status == "FINISHED":  # everything a finished trial logs is there
            names = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {"output.png", "latents.safetensors", "images"} <= names
        else:
            assert run.data.tags["sweeplab.error"] == "interrupted: SIGTERM"
    assert children_in_status(tmp_path) == 0


@pytest.mark.parametrize("overrides", [
    ["seed=3", "strength=0.4"],
    ["sampler=k_heun", "prompt='a red circle'", "preview.tile_size=32"],
    ["experiment=demo", "strength=0.9", "with_variations=[12:0.1,13:0.2]"],
    ["model.path=/tmp/x", "+sampler.options.use_karras_sigmas=true", "width=64", "fit=true"],
    ["+extra=1"],
])
def test_job_composer_gives_hydras_composition(overrides):
    """One composition per config-group choice, plus Hydra's own value overrides, equals a full composition."""
    from sweeplab.sweep import JobComposer

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        master = compose("config", [], return_hydra_config=True)
        OmegaConf.set_struct(master, True)
        loader = GlobalHydra.instance().config_loader()
        expected = loader.load_sweep_config(master, overrides)
        composed = JobComposer(loader, master).compose(7, overrides)
        with open_dict(expected):
            del expected["hydra"]
        assert composed.cfg is not None, composed.error
        assert OmegaConf.to_container(composed.cfg) == OmegaConf.to_container(expected)
        assert list(OmegaConf.to_container(composed.cfg)) == list(OmegaConf.to_container(expected))


def test_a_later_sweep_closes_the_runs_a_killed_sweep_left_running(tmp_path):
    sweep = [str(SWEEPLAB), "-m", "width=128", "height=128", "steps=200", "strength=1.0", "seed=1,2",
             "tracking.log_step_images=false"]
    killed = subprocess.Popen(sweep, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not children_in_status(tmp_path):
        assert killed.poll() is None and time.monotonic() < deadline
        time.sleep(0.3)
    killed.kill()  # SIGKILL: nothing closes its runs
    killed.wait()
    assert {r.info.status for r in all_runs(store(tmp_path))} == {"RUNNING"}

    later = subprocess.run([*sweep[:2], *TINY, "steps=2", "strength=1.0", "seed=9"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert later.returncode == 0, later.stderr[-3000:]
    assert "closed 2 runs left RUNNING by processes that are gone" in later.stderr
    orphans = [r for r in all_runs(store(tmp_path)) if r.data.tags.get("sweeplab.owner", "").endswith(f":{killed.pid}")]
    assert len(orphans) == 2 and {r.info.status for r in orphans} == {"KILLED"}
    assert all(r.data.tags["sweeplab.error"].startswith("orphaned: its process") for r in orphans)
    assert "RUNNING" not in {r.info.status for r in all_runs(store(tmp_path))}


def test_a_trial_that_fails_validation_names_its_model_as_a_valid_trial_would():
    """Its FAILED run's `model` param is the folder's name (ModelSource.name), not the user's private path."""
    from sweeplab.engine import _raw_params

    cfg = OmegaConf.create({"model": {"path": "/home/ann/private/models/v1-5", "hub_id": None, "name": "sd15"},
                            "sampler": {"name": "k_euler"}, "seed": 3, "strength": 1.5})
    assert _raw_params(cfg) == {"model": "v1-5", "sampler": "k_euler", "seed": "3", "strength": "1.5"}
    cfg.model.path = None
    assert _raw_params(cfg)["model"] == "sd15"
