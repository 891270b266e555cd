"""Shared fixtures: the real configs in conf/, the toy model built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import sweeplab.schema  # noqa: F401  registers the ConfigStore schemas the configs build on

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SWEEPLAB = Path(sys.executable).parent / "sweeplab"


@pytest.fixture(scope="session", autouse=True)
def no_tracking_uri_from_outside():
    """Tests choose their MLflow store themselves, also in the subprocesses they start."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture
def compose_config():
    """Compose conf/config.yaml with overrides, as `sweeplab` would for one job."""

    def _compose(*overrides: str, with_hydra: bool = False):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides), return_hydra_config=with_hydra)

    return _compose


@pytest.fixture(scope="session")
def toy_model():
    """The toy pipeline, loaded once through the same cache the runner uses."""
    from sweeplab.models import ModelSource, PipelineCache
    from sweeplab.toy import TOY_VERSION
    import torch

    return PipelineCache().get(ModelSource("toy", TOY_VERSION), "cpu", torch.float32)


@pytest.fixture
def sweeplab_cli(tmp_path):
    """Run the installed `sweeplab` console script in a separate process, in tmp_path by default."""

    def _run(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(SWEEPLAB), *args], cwd=cwd or tmp_path, capture_output=True, text=True, timeout=600,
            env={**os.environ, **(env or {})},
        )

    return _run
