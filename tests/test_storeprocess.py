"""The sweep's MLflow store in a process of its own: the sweep never imports MLflow, and the store's process
never outlives the sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO
from test_cli import all_runs, store

# Runs `sweeplab ARGS` in this interpreter and says, at exit, whether the sweep's own process imported MLflow.
SWEEP_WITH_IMPORT_CHECK = textwrap.dedent("""
    import atexit, sys
    atexit.register(lambda: print("mlflow imported:", "mlflow" in sys.modules, file=sys.stderr))
    from sweeplab.cli import main
    sys.argv = ["sweeplab", *sys.argv[1:]]
    main()
""")


def test_a_sweep_logs_everything_without_importing_mlflow_itself(tmp_path):
    done = subprocess.run([sys.executable, "-c", SWEEP_WITH_IMPORT_CHECK, "-m", "seed=1,2", "width=64", "height=64",
                           "steps=4", "strength=0.5"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mlflow imported: False" in done.stderr
    runs = all_runs(store(tmp_path))
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert sorted(run.info.status for run in runs) == ["FINISHED"] * 3
    for run in children:  # metrics, artifacts and the environment, as before the store had a process
        assert run.data.metrics["steps_taken"] == 2 and "sweeplab.torch_version" in run.data.tags
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert parent.data.metrics["trials_finished"] == 2 and "sweeplab.torch_version" in parent.data.tags


# Opens a store in its own process before torch is imported, as a sweep does, creates a run with the tags every
# trial's run carries (environment_tags imports torch in this process), then says whether the store's process
# has torch mapped: a torch object among a call's arguments makes it import torch (seconds) to unpickle them.
RUN_WITH_TRIAL_TAGS = textwrap.dedent("""
    import sys
    from sweeplab.storeprocess import StoreProcess
    from sweeplab.tracking import environment_tags
    store = StoreProcess()
    tracker = store.tracker(sys.argv[1], "imports")
    tracker.start_run("trial", {"seed": "1"}, environment_tags("cpu", "float32"), None)
    print("torch in the sweep:", "torch" in sys.modules)
    with open(f"/proc/{store._manager._process.pid}/maps") as maps:
        print("torch in the store:", "libtorch" in maps.read())
""")


def test_the_store_process_never_imports_torch(tmp_path):
    done = subprocess.run([sys.executable, "-c", RUN_WITH_TRIAL_TAGS, f"sqlite:///{tmp_path / 'mlflow.db'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch in the sweep: True" in done.stdout
    assert "torch in the store: False" in done.stdout


# Starts a StoreProcess, prints its server's pid, and waits to be killed.
HOLD_A_STORE = textwrap.dedent("""
    import time
    from sweeplab.storeprocess import StoreProcess
    store = StoreProcess()
    print(store._manager._process.pid, flush=True)
    time.sleep(600)
""")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_the_store_process_ends_with_the_sweep_however_it_ends(how):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_A_STORE], stdout=subprocess.PIPE, text=True, cwd=REPO)
    server = int(holder.stdout.readline())
    os.kill(server, signal.SIGINT)  # a Ctrl-C reaches the whole process group: the server leaves it to the sweep
    time.sleep(0.5)
    assert _alive(server)
    holder.send_signal(how)
    holder.wait(timeout=30)
    deadline = time.monotonic() + 15
    while _alive(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(server)


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
