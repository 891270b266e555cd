"""sweeplab as a user gets it: the wheel, installed into a fresh virtualenv, run from an empty folder.

The wheel is built from this checkout (`pip wheel`, hatchling fetched by pip's build isolation)
and installed without its dependencies; the fresh environment borrows torch, diffusers and the
rest from the test's own environment through a .pth line. Python does not process .pth files in
a folder added that way, so the editable install's path entry to the source tree is not seen:
everything sweeplab runs here (code, conf/, experiments, Hydra plugins) comes from the wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
CHEAP = ["width=64", "height=64", "tracking.log_step_images=false"]
MINE = """# @package _global_
# a user's own sweep, in ./experiments/ of the working folder
steps: 2
strength: 1.0
hydra:
  sweeper:
    params:
      seed: 1,2
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtualenv with the wheel installed; returns its bin/ folder and the environment to run it in."""
    root = tmp_path_factory.mktemp("installed")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # no source tree on the path
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(REPO)]
    built = subprocess.run(build, capture_output=True, text=True, env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (root / "dist").glob("sweeplab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"sweeplab/conf/config.yaml", "sweeplab/conf/experiment/demo.yaml", "sweeplab/conf/hydra/help/sweeplab.yaml",
            "hydra_plugins/sweeplab_configs/working_folder.py", "sweeplab/toy/weights/model_index.json"} <= names

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)]
    done = subprocess.run(pip, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    libraries = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "sweeplab-test-libraries.pth").write_text("\n".join(sorted(libraries)) + "\n")
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    where = subprocess.run([str(python), "-c", "import sweeplab, hydra_plugins.sweeplab_configs as p; "
                            "print(sweeplab.__file__); print(p.__file__)"],
                           capture_output=True, text=True, env=env, cwd=root, check=True).stdout.split()
    assert all(Path(path).is_relative_to(site) for path in where), where
    return venv / "bin", env


@pytest.fixture(scope="module")
def empty_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("empty")


def run(installed, folder: Path, *args: str) -> subprocess.CompletedProcess:
    bin_dir, env = installed
    done = subprocess.run([str(bin_dir / "sweeplab"), *args], cwd=folder, capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return done


def runs(folder: Path, experiment: str) -> list:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_installed_face_version_help_and_completion(installed, empty_folder):
    assert run(installed, empty_folder, "--version").stdout.startswith(f"sweeplab {VERSION} (torch ")
    text = run(installed, empty_folder, "--help").stdout
    assert "experiment: demo, img2img_tutorial, invokeai_img2img, tree_on_a_hill\n" in text and "schema" not in text
    completion = run(installed, empty_folder, "--shell-completion", "install=bash").stdout
    assert "hydra_bash_completion sweeplab" in completion
    assert sorted(path.name for path in empty_folder.iterdir()) == []  # none of these wrote anything


def test_installed_runs_one_trial(installed, empty_folder):
    run(installed, empty_folder, *CHEAP, "steps=2", "strength=1.0")
    (trial,) = runs(empty_folder, "sweeplab")
    assert trial.info.status == "FINISHED" and trial.data.metrics["steps_taken"] == 2
    assert trial.data.tags["sweeplab.version"] == VERSION


def test_installed_runs_the_demo_sweep(installed, empty_folder):
    done = run(installed, empty_folder, "-m", "experiment=demo", "steps=5", *CHEAP)  # 2 and 3 steps taken
    assert "4 trials: 4 finished, 0 failed" in done.stderr
    children = [r for r in runs(empty_folder, "demo") if "mlflow.parentRunId" in r.data.tags]
    assert sorted((r.data.params["sampler"], r.data.metrics["steps_taken"]) for r in children) == [
        ("k_heun", 2.0), ("k_heun", 3.0), ("k_lms", 2.0), ("k_lms", 3.0)]


def test_installed_runs_a_users_own_experiment(installed, tmp_path):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "mine.yaml").write_text(MINE)
    done = run(installed, tmp_path, "-m", "experiment=mine", *CHEAP)
    assert "2 trials: 2 finished, 0 failed" in done.stderr
    children = [r for r in runs(tmp_path, "mine") if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.params["seed"] for r in children) == ["1", "2"]
