"""A trial's identity is what the user asked for; the environment that can change its low bits is compared."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from sweeplab.trial import DTYPES, prepare_trial


def test_config_hash_is_the_requested_device_and_dtype_not_the_resolved_ones(compose_config):
    auto = prepare_trial(compose_config()).spec
    assert (auto.requested_device, auto.requested_dtype) == ("auto", "auto")
    assert auto.device in ("cpu", "cuda", "mps") and auto.dtype in DTYPES  # what the run uses here
    on_a_gpu_node = replace(auto, device="cuda", dtype="float16")  # the same request, resolved elsewhere
    assert on_a_gpu_node.config_hash == auto.config_hash
    explicit_cpu = prepare_trial(compose_config("device=cpu")).spec
    assert explicit_cpu.device == "cpu" and explicit_cpu.config_hash != auto.config_hash
    half = prepare_trial(compose_config("dtype=float16")).spec
    assert half.requested_dtype == "float16" and half.config_hash != auto.config_hash


def _finished_run(store: MlflowClient, experiment_id: str, tags: dict[str, str]) -> None:
    run = store.create_run(experiment_id, tags={"sweeplab.overrides": "", **tags})
    store.set_terminated(run.info.run_id, "FINISHED")


def test_determinism_report_names_the_environment_tags_of_disagreeing_runs(tmp_path):
    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = store.create_experiment("repeats")
    common = {"sweeplab.device": "cpu", "sweeplab.dtype": "float32", "sweeplab.torch_version": "2.13.0+cpu"}
    for threads, digest in (("2", "a" * 64), ("2", "a" * 64), ("1", "b" * 64)):  # one trial, two outputs
        _finished_run(store, experiment_id, {**common, "sweeplab.config_hash": "h1", "sweeplab.torch_threads": threads,
                                             "sweeplab.output_sha256": digest})
    for threads in ("1", "2"):  # another trial that agrees whatever the threads
        _finished_run(store, experiment_id, {**common, "sweeplab.config_hash": "h2", "sweeplab.torch_threads": threads,
                                             "sweeplab.output_sha256": "c" * 64})
    done = subprocess.run([sys.executable, "-m", "sweeplab.report", "determinism", "--experiment", "repeats",
                           "--out", str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "out" / "determinism.csv", dtype=str)
    assert table[["config_hash", "output_sha256", "runs", "differs"]].values.tolist() == [
        ["h1", "a" * 64, "2", "torch_threads 2"], ["h1", "b" * 64, "1", "torch_threads 1"]]
    text = (tmp_path / "out" / "determinism.md").read_text()
    assert "5 finished runs of 2 trials carry an output digest" in text
    assert "2 trials ran more than once, 1 of them gave different output bytes" in text
    assert "| h1 | bbbbbbbbbbbbbbbb | 1 | torch_threads 1 |" in text


def test_determinism_report_without_digests_says_so(tmp_path):
    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    _finished_run(store, store.create_experiment("old"), {"sweeplab.config_hash": "h1"})  # logged before the tag
    done = subprocess.run([sys.executable, "-m", "sweeplab.report", "determinism", "--experiment", "old",
                           "--out", str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "0 finished runs of 0 trials carry an output digest" in (tmp_path / "out" / "determinism.md").read_text()
    assert Path(tmp_path / "out" / "determinism.csv").read_text().startswith("config_hash,output_sha256,runs,differs,")
