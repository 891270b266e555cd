"""A tracking store that cannot be used, and two sweeps creating one store at once (issue 18 items 1 and 2).

Real `sweeplab` processes against a port where nothing listens, a file that is not a database, and a
new SQLite store that two sweeps open at the same moment.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from conftest import SWEEPLAB
from sweeplab.engine import WRITER_QUEUE
from test_cli import all_runs, store

TINY = ["width=64", "height=64", "steps=2", "strength=1.0", "tracking.log_step_images=false"]


def one_error_line(stderr: str) -> str:
    ours = [line for line in stderr.splitlines() if line.startswith("sweeplab: error:")]
    assert len(ours) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return ours[0]


@pytest.mark.parametrize("sweep", [[], ["-m", "seed=1,2"]], ids=["run", "sweep"])
def test_a_store_nobody_answers_fails_in_one_line_before_the_model_loads(sweeplab_cli, sweep):
    done = sweeplab_cli(*sweep, "tracking.uri=http://127.0.0.1:9", *TINY)
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert "tracking.uri=http://127.0.0.1:9" in line and "Connection refused" in line
    assert "loaded on" not in done.stdout  # no model was loaded for a sweep that cannot be recorded


def test_a_file_that_is_not_a_database_fails_in_one_line(sweeplab_cli, tmp_path):
    (tmp_path / "notes.db").write_text("not a database")
    done = sweeplab_cli("-m", f"tracking.uri=sqlite:///{tmp_path / 'notes.db'}", "seed=1,2", *TINY)
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert "file is not a database" in line and "MLflow SQLite file" in line
    assert (tmp_path / "notes.db").read_text() == "not a database"


def test_two_sweeps_creating_one_new_store_together_both_finish(tmp_path):
    sweeps = [subprocess.Popen([str(SWEEPLAB), "-m", *TINY, f"seed={seeds}"], cwd=tmp_path, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for seeds in ("1,2", "3,4")]
    errors = [sweep.communicate(timeout=600)[1] for sweep in sweeps]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], errors
    runs = all_runs(store(tmp_path), "sweeplab")
    parents = {r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags}
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 2 and len(children) == 4
    assert all(c.info.status == "FINISHED" and c.data.tags["mlflow.parentRunId"] in parents for c in children)


def test_a_store_that_dies_mid_sweep_stops_the_sweep_in_one_line(tmp_path):
    from test_cli import children_in_status

    sweep = subprocess.Popen([str(SWEEPLAB), "-m", "width=128", "height=128", "steps=10", "strength=1.0",
                              "tracking.log_step_images=false", "seed=range(1,13)"], cwd=tmp_path, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while children_in_status(tmp_path, "FINISHED") < 1 and sweep.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    with open(tmp_path / "mlflow.db", "r+b") as database:  # the store's file is overwritten under the sweep
        database.write(b"\0" * 4096)
    _, err = sweep.communicate(timeout=600)
    assert sweep.returncode == 2, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("sweeplab: error:")]
    assert "the MLflow store failed mid-sweep" in ours[-1] and "run the same command again" in ours[-1]
    # The trials in flight fail (one line each: the one the writer logs, those queued for it, the one the main
    # thread starts); the rest are not tried one by one against a dead store.
    in_flight = 1 + WRITER_QUEUE + 1
    assert len(ours) <= in_flight + 1 and "Traceback" not in err, err[-3000:]
