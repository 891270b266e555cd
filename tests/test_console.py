"""A trial's console and record: no library notices a user cannot act on, real warnings kept;
logs named after sweeplab; the run tagged with sweeplab's version and the user's git commit."""

from __future__ import annotations

import logging
import subprocess

from mlflow import MlflowClient

from sweeplab import __version__, console

def only_runs(folder):
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("sweeplab").experiment_id])


TINY = ["width=64", "height=64", "steps=2", "strength=1.0", "tracking.log_step_images=false"]


def test_a_trial_prints_no_library_notices_and_records_version_commit_and_log(sweeplab_cli, tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "notes.txt").write_text("my sweep\n")
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "notes.txt"], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first"], cwd=tmp_path,
                   check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()

    done = sweeplab_cli(*TINY, env={"TRANSFORMERS_VERBOSITY": "warning"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "should be kept in float32" not in done.stderr
    assert "requires torchvision" not in done.stderr
    (run,) = only_runs(tmp_path)
    assert run.data.tags["sweeplab.version"] == __version__
    assert run.data.tags["sweeplab.git_commit"] == head
    logs = [path.name for path in (tmp_path / "outputs").rglob("*.log")]
    assert logs == ["sweeplab.log"]


def test_outside_a_repository_no_commit_is_claimed(sweeplab_cli, tmp_path):
    done = sweeplab_cli(*TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = only_runs(tmp_path)
    assert "sweeplab.git_commit" not in run.data.tags and run.data.tags["sweeplab.version"] == __version__


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_filters_drop_only_the_notices():
    console.quiet_library_notices()
    console.quiet_library_notices()  # idempotent: one filter per logger
    diffusers_log = logging.getLogger("diffusers.models.modeling_utils")
    transformers_log = logging.getLogger("transformers.utils.import_utils")
    loggers = (diffusers_log, transformers_log)
    ours = [[f for f in log.filters if isinstance(f, console.NoticeFilter)] for log in loggers]
    assert list(map(len, ours)) == [1, 1]  # diffusers adds its own filter to its loggers once it is imported
    records = Records()
    for logger in (diffusers_log, transformers_log):
        logger.addHandler(records)
    try:
        diffusers_log.warning("There are modules in UNet2DConditionModel that should be kept in float32: []. Casting")
        diffusers_log.warning("There are modules in UNet2DConditionModel that should be kept in float32: ['norm']. Ca")
        diffusers_log.warning("Some weights of the model checkpoint were not used")
        transformers_log.warning("`CLIPImageProcessor` requires torchvision (not installed); falling back to "
                                 "`CLIPImageProcessorPil` for backward compatibility.")
        transformers_log.warning("`CLIPImageProcessor` requires torch (not installed)")
    finally:
        for logger in (diffusers_log, transformers_log):
            logger.removeHandler(records)
    assert records.messages == [
        "There are modules in UNet2DConditionModel that should be kept in float32: ['norm']. Ca",
        "Some weights of the model checkpoint were not used",
        "`CLIPImageProcessor` requires torch (not installed)",
    ]
