"""`--run-missing`: run only the trials of an experiment that have no finished run yet.

Which trials an experiment holds (with the overrides after `--`), and their config hashes,
come from `python -m sweeplab.plan` in a subprocess; the trials run through `sweeplab -m`
in another. The report process itself never imports torch.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

from sweeplab.report.runs import ReportError, iter_runs
from sweeplab.tracking import CONFIG_HASH_TAG


def plan(experiment: str, overrides: list[str]) -> list[dict]:
    """The experiment's trials with `overrides`, as sweeplab's sweeper expands them: overrides and config hash each."""
    import json

    done = subprocess.run([sys.executable, "-m", "sweeplab.plan", f"experiment={experiment}", *overrides],
                          capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise ReportError(f"cannot plan experiment '{experiment}': {lines[-1].removeprefix('sweeplab: error: ')}")
    return json.loads(done.stdout)


def finished_hashes(client, experiment: str) -> set[str]:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return set()
    runs = iter_runs(client, found.experiment_id, "attributes.status = 'FINISHED'")
    return {run.data.tags[CONFIG_HASH_TAG] for run in runs if CONFIG_HASH_TAG in run.data.tags}


def launch_commands(missing: list[list[str]], planned: int, overrides: list[str]) -> list[list[str]]:
    """One `sweeplab -m` for the whole grid, or for a product of the missing values, else one per trial.

    The whole grid takes `overrides` as given; the others hold the trials' own, plus the Hydra settings among
    `overrides` (hydra.launcher.batch_size=4), which a trial's overrides leave out.
    """
    sweeplab = Path(sys.executable).with_name("sweeplab")
    program = str(sweeplab) if sweeplab.exists() else shutil.which("sweeplab") or "sweeplab"
    if len(missing) == planned:
        return [[program, "-m", next(o for o in missing[0] if o.startswith("experiment=")), *overrides]]
    settings = [override for override in overrides if override.lstrip("+~").startswith("hydra")]
    keys = [override.split("=", 1)[0] for override in missing[0]]
    values = [list(dict.fromkeys(trial[i].split("=", 1)[1] for trial in missing)) for i in range(len(keys))]
    combos = {tuple(f"{k}={v}" for k, v in zip(keys, combo)) for combo in itertools.product(*values)}
    if combos == {tuple(trial) for trial in missing}:
        return [[program, "-m", *(f"{k}={','.join(v)}" for k, v in zip(keys, values)), *settings]]
    return [[program, "-m", *trial, *settings] for trial in missing]


def planned_trials(experiment: str, overrides: list[str]) -> list[dict]:
    """The valid trials of the experiment with `overrides`; an invalid one is named on stderr and left out."""
    planned = plan(experiment, overrides)
    for trial in planned:
        if trial["config_hash"] is None:
            print(f"sweeplab-report: skipping invalid trial {' '.join(trial['overrides'])}: {trial['error']}",
                  file=sys.stderr)
    return [trial for trial in planned if trial["config_hash"]]


def run_missing(client, experiment: str, overrides: list[str]) -> set[str]:
    """Run what the store lacks of the experiment with `overrides`; returns the config hashes it consists of now."""
    valid = planned_trials(experiment, overrides)
    have = finished_hashes(client, experiment)
    missing = [trial["overrides"] for trial in valid if trial["config_hash"] not in have]
    print(f"sweeplab-report: experiment '{experiment}': {len(valid)} trials, {len(valid) - len(missing)} reused, "
          f"{len(missing)} to run", file=sys.stderr)
    env = {**os.environ, "MLFLOW_TRACKING_URI": client.tracking_uri}
    for command in launch_commands(missing, len(valid), overrides) if missing else []:
        done = subprocess.run(command, env=env)
        if done.returncode != 0:
            print(f"sweeplab-report: warning: '{' '.join(command[1:])}' ended with status {done.returncode}; "
                  "its failed trials are shown as failed", file=sys.stderr)
    return {trial["config_hash"] for trial in valid}
