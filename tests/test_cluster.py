"""Sweeps on a real single-node SLURM cluster logging to a real PostgreSQL-backed MLflow server.

Both services are started by the project's own scripts (scripts/slurm-local.sh,
scripts/mlflow-server.sh). Where they cannot start these tests skip with the reason,
except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import IN_CI, REPO, SWEEPLAB, project_service

TINY = ["width=64", "height=64", "steps=2", "strength=1.0", "tracking.log_step_images=false"]


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0 and not IN_CI:
        pytest.skip("the local SLURM cluster needs root (apt, munge, slurmd)")
    yield from project_service("slurm-local.sh")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def slurm_launcher(job_name: str, parallelism: int = 4) -> list[str]:
    """The SLURM launcher as the tests' CPU-only cluster needs it: no GPU, one CPU, 1 GB a task."""
    return ["hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_task=null", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", f"hydra.launcher.array_parallelism={parallelism}",
            f"hydra.launcher.name={job_name}"]


def runs_of(client: MlflowClient, experiment: str) -> tuple[list, list]:
    """(parent runs, child runs) of an experiment."""
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return ([r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


def running_tasks(job_name: str) -> int:
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", f"--name={job_name}", "-o", "%i"],
                         capture_output=True, text=True).stdout
    return len(out.split())


def max_overlap(runs) -> int:
    """Most runs open at the same moment, from their start and end times."""
    events = sorted([(r.info.start_time, 1) for r in runs] + [(r.info.end_time, -1) for r in runs])
    open_now = most = 0
    for _, change in events:
        open_now += change
        most = max(most, open_now)
    return most


def sweeplab(*args: str, cwd: Path, omp_threads: str | None = "1") -> subprocess.Popen:
    """`sweeplab -m` with OMP_NUM_THREADS (None: unset, each SLURM task then picks its own)."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    if omp_threads is not None:
        env["OMP_NUM_THREADS"] = omp_threads
    return subprocess.Popen([str(SWEEPLAB), "-m", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_24_trials_on_slurm_run_4_at_once_and_log_one_finished_child_each(slurm_cluster, mlflow_server, tmp_path):
    experiment, job_name = unique("slurm24"), unique("sweeplab-test")
    launcher = sweeplab(*slurm_launcher(job_name), "tracking=server", f"tracking.uri={mlflow_server}",
                        f"tracking.experiment={experiment}", *TINY, "seed=range(0,24)", cwd=tmp_path)
    seen_running = []

    def watch_squeue():
        while launcher.poll() is None:
            seen_running.append(running_tasks(job_name))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch_squeue)
    started = time.monotonic()
    watcher.start()
    out, err = launcher.communicate(timeout=900)
    watcher.join()
    print(f"24 trials on SLURM in {time.monotonic() - started:.1f} s", file=sys.stderr)
    assert launcher.returncode == 0, err[-3000:]
    assert "24 trials: 24 finished, 0 failed" in err

    parents, children = runs_of(MlflowClient(mlflow_server), experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 24
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    assert sorted(int(c.data.params["seed"]) for c in children) == list(range(24))  # none missing, none twice
    assert len({c.data.tags["sweeplab.config_hash"] for c in children}) == 24
    # trials_per_task null: the sweep is spread over array_parallelism=4 tasks of 6 trials, one process each
    assert len({c.data.tags["sweeplab.slurm_job"] for c in children}) == 4
    assert len({c.data.tags["sweeplab.owner"] for c in children}) == 4
    assert max(seen_running) >= 4, seen_running
    assert max_overlap(children) >= 2  # several workers wrote to the server at once


def test_chunked_slurm_tasks_load_the_model_once_each_and_use_the_cpus_they_were_given(
    slurm_cluster, mlflow_server, tmp_path
):
    experiment, job_name = unique("chunked"), unique("sweeplab-test")
    launcher = sweeplab(*slurm_launcher(job_name), "hydra.launcher.trials_per_task=12", "tracking=server",
                        f"tracking.uri={mlflow_server}", f"tracking.experiment={experiment}", *TINY,
                        "sampler=k_lms,k_euler", "seed=range(0,12)", cwd=tmp_path, omp_threads=None)
    started = time.monotonic()
    _, err = launcher.communicate(timeout=900)
    print(f"24 trials in 2 SLURM tasks in {time.monotonic() - started:.1f} s", file=sys.stderr)
    assert launcher.returncode == 0, err[-3000:]
    assert "24 trials: 24 finished, 0 failed" in err
    _, children = runs_of(MlflowClient(mlflow_server), experiment)
    assert len(children) == 24 and {c.info.status for c in children} == {"FINISHED"}
    tasks = Counter(c.data.tags["sweeplab.slurm_job"] for c in children)
    assert sorted(tasks.values()) == [12, 12]
    # cpus_per_task=1: one torch thread each, not one per core of the node (this cluster does not bind CPUs)
    assert {c.data.tags["sweeplab.torch_threads"] for c in children} == {"1"}
    # the tasks are cut by sampler (cost order), yet each run is named as in the whole sweep
    assert sorted(c.info.run_name for c in children) == sorted(
        f"sampler={sampler} seed={seed}" for sampler in ("k_lms", "k_euler") for seed in range(12))
    task_logs = list(tmp_path.glob("multirun/*/*/.submitit/*/*_log.out"))  # Hydra logs to stdout
    loads = [line for log in task_logs for line in log.read_text().splitlines() if "loaded on cpu" in line]
    assert len(task_logs) == 2 and len(loads) == 2, loads


def test_killed_slurm_sweep_rerun_finishes_every_trial_exactly_once(slurm_cluster, mlflow_server, tmp_path):
    experiment, job_name = unique("killed"), unique("sweeplab-test")
    client = MlflowClient(mlflow_server)
    sweep = [*slurm_launcher(job_name), "tracking=server", f"tracking.uri={mlflow_server}",
             f"tracking.experiment={experiment}", "width=256", "height=256", "steps=60", "strength=1.0",
             "tracking.log_step_images=false", "seed=range(0,8)"]
    launcher = sweeplab(*sweep, cwd=tmp_path)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # halfway: the first wave FINISHED, the second one RUNNING
        statuses = Counter(c.info.status for c in runs_of(client, experiment)[1])
        if statuses["FINISHED"] >= 4 and statuses["RUNNING"]:
            break
        assert launcher.poll() is None, launcher.communicate()[1][-3000:]
        time.sleep(0.3)
    else:
        pytest.fail("the sweep never reached its second wave")
    launcher.send_signal(signal.SIGTERM)
    subprocess.run(["scancel", f"--name={job_name}"], check=True)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "interrupted by SIGTERM" in err

    deadline = time.monotonic() + 120
    while running_tasks(job_name) or any(c.info.status == "RUNNING" for c in runs_of(client, experiment)[1]):
        assert time.monotonic() < deadline, "runs or tasks still running after scancel"
        time.sleep(1)
    (parent,), children = runs_of(client, experiment)
    assert parent.info.status == "KILLED"
    killed = [c for c in children if c.info.status == "KILLED"]
    finished_before = {c.data.params["seed"] for c in children if c.info.status == "FINISHED"}
    assert killed and len(finished_before) < 8
    assert all(c.data.tags["sweeplab.error"].startswith("interrupted: SIGTERM") for c in killed)

    rerun = sweeplab(*sweep, cwd=tmp_path)
    _, err = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, err[-3000:]
    missing = 8 - len(finished_before)
    assert f"8 trials: {missing} finished, 0 failed, {len(finished_before)} skipped as already FINISHED" in err

    parents, children = runs_of(client, experiment)
    finished = Counter(c.data.params["seed"] for c in children if c.info.status == "FINISHED")
    assert finished == Counter(str(seed) for seed in range(8))  # every trial FINISHED exactly once
    assert {c.info.run_id for c in children if c.info.status == "KILLED"} == {c.info.run_id for c in killed}
    new_parent = next(p for p in parents if p.info.run_id != parent.info.run_id)
    assert new_parent.info.status == "FINISHED"
    rerun_children = [c for c in children if c.data.tags["mlflow.parentRunId"] == new_parent.info.run_id]
    assert {c.data.params["seed"] for c in rerun_children} == {str(s) for s in range(8)} - finished_before


def test_same_trial_gives_same_bytes_under_every_launcher(slurm_cluster, mlflow_server, tmp_path):
    experiment = unique("launchers")
    trial = [*TINY, "seed=7", "resume=false", "tracking=server", f"tracking.uri={mlflow_server}",
             f"tracking.experiment={experiment}"]
    launchers = {
        "basic": [],
        "submitit_local": ["hydra/launcher=submitit_local"],
        "joblib": ["hydra/launcher=joblib"],
        "submitit_slurm": slurm_launcher(unique("sweeplab-test"), parallelism=1),
    }
    for name, launcher in launchers.items():
        folder = tmp_path / name
        folder.mkdir()
        done = sweeplab(*launcher, *trial, cwd=folder)
        _, err = done.communicate(timeout=600)
        assert done.returncode == 0, f"{name}: {err[-3000:]}"

    client = MlflowClient(mlflow_server)
    parents, children = runs_of(client, experiment)
    assert len(parents) == len(children) == len(launchers)
    assert {c.info.status for c in children} == {"FINISHED"}
    assert len({c.data.tags["sweeplab.config_hash"] for c in children}) == 1
    outputs = {Path(client.download_artifacts(c.info.run_id, "output.png", str(tmp_path))).read_bytes()
               for c in children}
    assert len(outputs) == 1


def test_preempted_slurm_task_ends_its_run_killed_and_the_requeued_task_skips_what_it_finished(
    slurm_cluster, mlflow_server, tmp_path
):
    experiment, job_name = unique("preempted"), unique("sweeplab-test")
    client = MlflowClient(mlflow_server)
    launcher = sweeplab(*slurm_launcher(job_name, parallelism=1), "hydra.launcher.trials_per_task=3",
                        "tracking=server", f"tracking.uri={mlflow_server}", f"tracking.experiment={experiment}",
                        "width=256", "height=256", "steps=120", "strength=1.0", "seed=5,6,7",
                        "tracking.log_step_images=false", cwd=tmp_path)
    deadline = time.monotonic() + 300
    while True:  # one trial of the task FINISHED, the next RUNNING
        statuses = Counter(c.info.status for c in runs_of(client, experiment)[1])
        if statuses["FINISHED"] >= 1 and statuses["RUNNING"]:
            break
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[1][-3000:]
        time.sleep(0.3)
    (job_id,) = subprocess.run(["squeue", "-h", f"--name={job_name}", "-o", "%i"],
                               capture_output=True, text=True, check=True).stdout.split()
    # what SLURM sends before a time limit or on pre-emption (submitit's own Job._interrupt does the same)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    while "BeginTime" not in subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%r"],
                                            capture_output=True, text=True).stdout:
        assert time.monotonic() < deadline, "the task was not requeued"
        time.sleep(0.3)
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)  # skip the requeue hold
    _, err = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, err[-3000:]
    assert "3 trials: 3 finished, 0 failed" in err

    (parent,), children = runs_of(client, experiment)
    assert parent.info.status == "FINISHED"
    finished = Counter(c.data.params["seed"] for c in children if c.info.status == "FINISHED")
    assert finished == Counter(["5", "6", "7"])  # every trial FINISHED once: the requeued task skipped seed 5
    killed = [c for c in children if c.info.status == "KILLED"]
    assert len(killed) == 1 and len(children) == 4
    assert killed[0].data.tags["sweeplab.error"].startswith("interrupted: SIGUSR2")


@pytest.mark.parametrize("request_, reason, key", [
    (["hydra.launcher.gpus_per_task=1"], "Invalid generic resource", "hydra.launcher.gpus_per_task=null"),
    (["hydra.launcher.gpus_per_task=null", "hydra.launcher.mem_gb=100000"], "Memory specification",
     "hydra.launcher.mem_gb"),
])
def test_a_request_the_cluster_refuses_is_one_line_and_a_failed_sweep_run(slurm_cluster, tmp_path, request_, reason,
                                                                           key):
    from test_cli import all_runs, store

    launcher = sweeplab("hydra/launcher=submitit_slurm", *request_, *TINY, "seed=1,2", cwd=tmp_path)
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 2, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("sweeplab: error:")]
    assert len(ours) == 1 and reason in ours[0] and key in ours[0], err[-3000:]
    assert "Traceback" not in err
    (parent,) = all_runs(store(tmp_path), "sweeplab")
    assert parent.info.status == "FAILED" and reason in parent.data.tags["sweeplab.error"]
