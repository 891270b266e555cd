"""Shared fixtures: the real configs in conf/, the toy model built once per test session."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import sweeplab.schema  # noqa: F401  registers the ConfigStore schemas the configs build on

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SWEEPLAB = Path(sys.executable).parent / "sweeplab"
CHROMIUM = Path("/usr/bin/chromium")
IN_CI = os.environ.get("CI") == "true"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


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


def report_cli(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m sweeplab.report ARGS` (the same code as the sweeplab-report script) in cwd."""
    return subprocess.run([sys.executable, "-m", "sweeplab.report", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def toy_model():
    """The toy pipeline, loaded once through the same cache the runner uses."""
    from sweeplab.models import ModelSource, PipelineCache
    from sweeplab.toy import TOY_VERSION
    import torch

    return PipelineCache().get(ModelSource("toy", TOY_VERSION), "cpu", torch.float32)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A function FAMILY -> the folder of that family's tiny random-weight pipeline (sweeplab.toy.tiny, seed 0),
    built once per test session: sd, sdxl, sd3, flux."""
    from sweeplab.toy.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, Path] = {}

    def _folder(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_pipeline(family, root / family)
        return built[family]

    return _folder


@pytest.fixture
def sweeplab_cli(tmp_path):
    """Run the installed `sweeplab` console script in a separate process, in tmp_path by default."""

    def _run(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(SWEEPLAB), *args], cwd=cwd or tmp_path, capture_output=True, text=True, timeout=600,
            env={**os.environ, **(env or {})},
        )

    return _run


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed by scripts/install-browser.sh when missing; in CI its absence fails."""
    if not CHROMIUM.exists() and shutil.which("apt-get"):
        subprocess.run(["bash", str(REPO / "scripts" / "install-browser.sh")], capture_output=True, timeout=1200)
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail("chromium is missing and scripts/install-browser.sh could not install it")
        pytest.skip("no /usr/bin/chromium (run scripts/install-browser.sh as root)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("the playwright package is missing (pip install -e '.[test]')")
        pytest.skip("the playwright package is missing (pip install -e '.[test]')")
    return CHROMIUM


def project_service(script: str, env: dict[str, str] | None = None):
    """Start a service with its project script unless it is already up; stop it after if we started it."""
    path = REPO / "scripts" / script
    env = {**os.environ, **(env or {})}
    if subprocess.run([path, "status"], capture_output=True, env=env).returncode == 0:
        yield False
        return
    started = time.monotonic()
    done = subprocess.run([path, "up"], capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        reason = f"{script} up failed: " + " | ".join(done.stderr.strip().splitlines()[-3:])
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    print(f"{script} up in {time.monotonic() - started:.1f} s", file=sys.stderr)
    yield True
    subprocess.run([path, "down"], capture_output=True, env=env)


@pytest.fixture(scope="session")
def mlflow_server() -> str:
    if os.geteuid() != 0 and not IN_CI:
        pytest.skip("the local MLflow server script needs root (apt, PostgreSQL)")
    env = {"PYTHON": sys.executable}
    for _ in project_service("mlflow-server.sh", env):
        yield subprocess.run([REPO / "scripts" / "mlflow-server.sh", "uri"], capture_output=True, text=True,
                             env={**os.environ, **env}, check=True).stdout.strip()


@contextmanager
def browser_page(chromium: Path, profile: Path, page: Path | str):
    """A local page file or a URL loaded in headless chromium (a 1600x1200 window); script errors fail the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch_persistent_context(
            str(profile), executable_path=str(chromium), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1200})
        try:
            tab = browser.new_page()
            errors: list[str] = []
            tab.on("pageerror", lambda error: errors.append(str(error)))
            tab.goto(page if isinstance(page, str) else page.as_uri(), wait_until="load")
            yield tab
            assert errors == [], f"script errors on {page}: {errors}"
        finally:
            browser.close()


def tree(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def assert_same_bytes(first: Path, second: Path) -> None:
    """Two report folders hold the same files with the same bytes."""
    assert tree(first) == tree(second)
    _, mismatch, errors = filecmp.cmpfiles(first, second, tree(first), shallow=False)
    assert mismatch == [] and errors == []
