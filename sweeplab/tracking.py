"""MLflow logging: one parent run per sweep, one child run per trial.

The parent run and the experiment are created once, on the launching side, by a Hydra
callback; workers only create their own child runs. The parent id reaches workers
through the environment, which every Hydra launcher passes on (submitit and SLURM too).
Everything logged passes through `redaction` first.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sweeplab import interrupts
from sweeplab.errors import ConfigError, StoreError, exit_for
from sweeplab.redaction import redact, redact_override

log = logging.getLogger("sweeplab")

PARENT_RUN_ENV = "SWEEPLAB_PARENT_RUN_ID"
TRACKING_URI_ENV = "SWEEPLAB_TRACKING_URI"
DEFAULT_EXPERIMENT = "sweeplab"
STEP_IMAGE_KEY = "latent"
CONFIG_HASH_TAG = "sweeplab.config_hash"
ERROR_TAG = "sweeplab.error"
LOGGED_IMAGES_TAG = "mlflow.loggedImages"  # MLflow's mark of a run with per-step images (log_image sets it)
SKIPPED_TAG_PREFIX = "sweeplab.skipped."  # on a parent run: config hash -> the FINISHED run reused
WARNINGS_TAG = "sweeplab.warnings"
OWNER_TAG = "sweeplab.owner"  # host:pid of the process that ran the trial
COMPILE_TAG = "sweeplab.compile"  # whether the denoiser ran through torch.compile (an execution setting)
LORA_SHA256_TAG = "sweeplab.lora_sha256"  # `name.safetensors:sha256,...` of the LoRA files a trial used
BATCH_SIZE_TAG = "sweeplab.batch_size"  # trials that shared the pipeline call (an execution setting, not identity)
STORE_OPEN_WAIT_SECONDS = 60  # how long a sweep ending at exit waits for its store to open, to close its run
SEARCH_PAGE = 1000  # MLflow's largest page of search_runs and of log_batch tags
VERSION_TAG = "sweeplab.version"  # the installed package's version
OUTPUT_ARTIFACT = "output.png"  # a trial's output image: what resume checks is still there
# zlib level of a trial's other PNGs (init, start, latent strip, step previews; lossless at any level): zlib's
# fastest, since the store encodes them while the next trial denoises on the same cores (the strip: 8 ms at 6, 3 at 1)
FAST_PNG_LEVEL = 1
SCHEDULE_ARTIFACT = "schedule.json"  # the sampler's timesteps and noise levels, and where the trial entered them
OUTPUT_SHA256_TAG = "sweeplab.output_sha256"  # sha256 of the logged output.png: compares runs of one config hash
# Where a trial ran, as tags and not in its config hash: none of them names the trial, each can change the low
# bits of its output (the same trial at OMP_NUM_THREADS=1 and 2 differs in a few pixels by one level).
DEVICE_TAG = "sweeplab.device"  # the resolved device, by name (the GPU model on cuda)
DTYPE_TAG = "sweeplab.dtype"  # the resolved dtype
TORCH_THREADS_TAG = "sweeplab.torch_threads"  # torch.get_num_threads(): OMP_NUM_THREADS, a SLURM task's CPUs, cores
CPU_CAPABILITY_TAG = "sweeplab.cpu_capability"  # the CPU kernels torch picked: DEFAULT, AVX2, AVX512, ...
TORCH_VERSION_TAG = "sweeplab.torch_version"
DIFFUSERS_VERSION_TAG = "sweeplab.diffusers_version"
GIT_COMMIT_TAG = "sweeplab.git_commit"  # HEAD of the working directory, when it is a git repository
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH)
LONG_PARAM_FOLDER = "params"  # a param over that limit is kept whole as the artifact params/<key>.txt
SWEEP_TAG = "sweeplab.sweep"  # "true" on a sweep's parent run
COMMAND_TAG = "sweeplab.command"  # on a parent run: the command line that started the sweep
ZIPPED_TAG = "sweeplab.zipped"  # on a parent run: its swept keys whose values pair by position, e.g. "steps,strength"
SUMMARY_FOLDER = "summary"  # a parent run's artifacts written when the sweep ends: the grid and the trials table
SUMMARY_GRID = "grid.png"  # summary/grid.png (grid-1.png, ... when a third key makes one grid per value)
SUMMARY_TABLE = "trials.md"  # summary/trials.md: one row per trial
ENVIRONMENT_TAGS = (DEVICE_TAG, DTYPE_TAG, TORCH_THREADS_TAG, CPU_CAPABILITY_TAG, TORCH_VERSION_TAG,
                    DIFFUSERS_VERSION_TAG, GIT_COMMIT_TAG, VERSION_TAG)


# MLflow's HTTP client retries for minutes by default (7 tries, backoff 2): a server that is down would hold a sweep,
# signals included, for that long. sweeplab bounds it (about 3 s for a refused connection); users can set their own.
BOUNDED_HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def bound_http_retries() -> None:
    """Apply BOUNDED_HTTP_RETRIES where the environment does not set them (launched workers inherit it)."""
    for name, value in BOUNDED_HTTP_RETRIES.items():
        os.environ.setdefault(name, value)


def resolve_tracking_uri(configured: str | None) -> str:
    """tracking.uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current directory."""
    uri = configured or os.environ.get(TRACKING_URI_ENV) or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def experiment_name(cfg: DictConfig, choices: dict | None = None) -> str:
    """tracking.experiment, else the experiment=NAME in use (the job's config-group choices), else 'sweeplab'."""
    if cfg.tracking.get("experiment"):
        return cfg.tracking.experiment
    if choices is None:
        choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
    if choices is None and HydraConfig.initialized():  # a job's cfg has no hydra node: ask Hydra
        choices = HydraConfig.get().runtime.choices
    return (choices or {}).get("experiment") or DEFAULT_EXPERIMENT


def _sqlite_artifact_root(uri: str, name: str) -> str | None:
    """Artifacts of a SQLite store live beside the database, in mlartifacts/."""
    if not uri.startswith("sqlite:///"):
        return None
    db_path = Path(uri.removeprefix("sqlite:///"))
    return (db_path.parent / "mlartifacts" / re.sub(r"[^A-Za-z0-9_.-]", "_", name)).as_uri()


@contextlib.contextmanager
def _store_creation_lock(uri: str):
    """Two processes opening one new SQLite store would both create its tables (and one would fail): the
    first to lock the database's folder creates them while the other waits. Other stores need no lock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    folder = Path(uri.removeprefix("sqlite:///")).parent
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _store_problem(uri: str, err: BaseException) -> str:
    """What went wrong opening a store, in one line, with what to do about it."""
    text = " ".join(str(err).split()).split(" [SQL:")[0]  # SQLAlchemy appends the statement and a help link
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)  # the OS's reason, deep inside an HTTP client's message
    cause = errno.group(1).strip() if errno else (text[:200] or type(err).__name__)
    if uri.startswith(("http://", "https://")):
        fix = ("is the MLflow server running and reachable from here? (scripts/mlflow-server.sh status for "
               "the project's own; a different server: tracking.uri=http://HOST:PORT)")
    elif uri.startswith("file:"):
        fix = "MLflow 3's file store is in maintenance mode: use tracking.uri=sqlite:///PATH/mlflow.db"
    elif uri.startswith("sqlite:"):
        fix = "the database must be an MLflow SQLite file, or a new file in a folder this user can write"
    else:
        fix = "tracking.uri takes sqlite:///PATH, http(s)://HOST:PORT or postgresql://... (MLflow store URIs)"
    return f"tracking.uri={uri}: the MLflow store cannot be used ({cause}); {fix}"


@dataclass(frozen=True)
class FinishedRun:
    """A FINISHED run that resume may reuse, as plain data (it crosses from the store's process)."""

    run_id: str
    parent_run_id: str | None  # the sweep it ran in
    artifact_uri: str


class MlflowTracker:
    """Writes trials to one MLflow experiment through an explicit MlflowClient.

    Every method that touches the store is `interrupts.critical`: a signal is raised when the
    call returns, never inside it, where it could leave a SQLite store locked for the closing.
    """

    def __init__(self, uri: str, experiment: str):
        from mlflow import MlflowClient

        self.uri = uri
        # run id -> its artifact URI, for the runs started here and not ended yet: what an interruption closes
        self.open_runs: dict[str, str] = {}
        try:
            with _store_creation_lock(uri):
                self.client = MlflowClient(tracking_uri=uri)
                self.experiment_id = self._ensure_experiment(experiment)
        except Exception as err:  # noqa: BLE001 - any failure to open the store is the user's one line
            raise StoreError(_store_problem(uri, err)) from err

    @interrupts.critical()
    def _ensure_experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=_sqlite_artifact_root(self.uri, name))
        except MlflowException:  # created meanwhile by another process
            return self.client.get_experiment_by_name(name).experiment_id

    @interrupts.critical()
    def start_run(self, run_name: str, params: dict[str, str], tags: dict[str, str], parent_run_id: str | None) -> str:
        """Create a RUNNING run with its params up front, so a failure still shows what was tried."""
        from mlflow.entities import Param

        params, tags = {k: str(v) for k, v in redact(params).items()}, redact(tags)
        if parent_run_id:
            tags = {**tags, "mlflow.parentRunId": parent_run_id}
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        # in the same critical call: no RUNNING run goes unknown
        self.open_runs[run.info.run_id] = run.info.artifact_uri
        self.client.log_batch(run.info.run_id, params=[Param(k, shorten_param(k, v)) for k, v in params.items()])
        for key, value in params.items():
            if len(value) > MAX_PARAM_CHARS:
                self.client.log_text(run.info.run_id, value, f"{LONG_PARAM_FOLDER}/{key}.txt")
        return run.info.run_id

    @interrupts.critical()
    def finished_runs(self) -> dict[str, FinishedRun]:
        """config hash -> a FINISHED run of that trial in this experiment, from one paged pass over the store.

        MLflow's filters have no IN, so a sweep reads its experiment's finished runs once and matches locally.
        """
        found, token = {}, None
        while True:
            page = self.client.search_runs([self.experiment_id], "attributes.status = 'FINISHED'",
                                           max_results=SEARCH_PAGE, page_token=token)
            for run in page:
                if CONFIG_HASH_TAG in run.data.tags:
                    found.setdefault(run.data.tags[CONFIG_HASH_TAG], FinishedRun(
                        run.info.run_id, run.data.tags.get("mlflow.parentRunId"), run.info.artifact_uri))
            token = page.token
            if not token:
                return found

    def has_output(self, run: FinishedRun) -> bool:
        """Whether a run's output.png is still there: a file check for a local artifact store, else one listing."""
        folder = local_artifact_folder(run.artifact_uri)
        if folder is not None:
            return (folder / OUTPUT_ARTIFACT).is_file()
        return any(item.path == OUTPUT_ARTIFACT for item in self._list_artifacts(run.run_id))

    @interrupts.critical()
    def _list_artifacts(self, run_id: str) -> list:
        return self.client.list_artifacts(run_id)

    @interrupts.critical()
    def close_orphaned_runs(self) -> int:
        """Close as KILLED the RUNNING runs whose owner process, on this host, is gone (a kill -9, a crash)."""
        host, closed, token = socket.gethostname(), 0, None
        while True:
            page = self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'",
                                           max_results=SEARCH_PAGE, page_token=token)
            for run in page:
                owner = run.data.tags.get(OWNER_TAG, "")
                owner_host, _, pid = owner.rpartition(":")
                if owner_host == host and pid.isdigit() and not _process_alive(int(pid)):
                    self.client.set_tag(run.info.run_id, ERROR_TAG, f"orphaned: its process {owner} is gone")
                    self.client.set_terminated(run.info.run_id, "KILLED")
                    closed += 1
            token = page.token
            if not token:
                return closed

    @interrupts.critical()
    def record_skips(self, parent_run_id: str, skipped: dict[str, str]) -> None:
        """Note on the sweep's parent run which trials were skipped (config hash -> the FINISHED run reused)."""
        from mlflow.entities import RunTag

        tags = [RunTag(SKIPPED_TAG_PREFIX + config_hash, run_id) for config_hash, run_id in skipped.items()]
        for start in range(0, len(tags), SEARCH_PAGE):  # log_batch takes at most 1000 tags
            self.client.log_batch(parent_run_id, tags=tags[start : start + SEARCH_PAGE])

    @interrupts.critical()
    def log_trial_result(self, run_id: str, result, config: dict, log_step_images: bool) -> None:
        """Metrics, tags, artifacts (with the trial's config, secrets redacted) and per-step previews, in one upload;
        `result` is a TrialResult.for_store()."""
        from mlflow.entities import Metric, RunTag
        from safetensors.numpy import save_file

        now = int(time.time() * 1000)
        metrics = {"steps_taken": result.steps_taken, "denoiser_evals": result.denoiser_evals, "seconds": result.seconds}
        with self._artifact_folder(run_id) as folder:
            if result.init_image is not None:  # text-to-image has none
                result.init_image.save(folder / "init.png", compress_level=FAST_PNG_LEVEL)
            if result.mask is not None:
                result.mask.save(folder / "mask.png", compress_level=FAST_PNG_LEVEL)
            result.output.save(folder / OUTPUT_ARTIFACT)  # PIL's defaults: the bytes a plain diffusers loop saves
            tags = {BATCH_SIZE_TAG: str(result.batch_size),
                    OUTPUT_SHA256_TAG: hashlib.sha256((folder / OUTPUT_ARTIFACT).read_bytes()).hexdigest()}
            if result.warnings:
                tags[WARNINGS_TAG] = "\n".join(result.warnings)
            if log_step_images:
                tags[LOGGED_IMAGES_TAG] = "True"  # the value log_image writes
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                                  tags=[RunTag(k, v) for k, v in tags.items()])
            result.start_image.save(folder / "start.png", compress_level=FAST_PNG_LEVEL)
            result.latent_strip.save(folder / "latent_strip.png", compress_level=FAST_PNG_LEVEL)
            (folder / "config.yaml").write_text(config_yaml(redact(config)), encoding="utf-8")
            (folder / SCHEDULE_ARTIFACT).write_text(result.schedule.to_json())
            save_file(
                {"start": result.start_latent, "steps": result.step_latents},
                str(folder / "latents.safetensors"),
                metadata={"timesteps": ",".join(f"{t:g}" for t in result.step_timesteps)},
            )
            if log_step_images:
                write_step_images(folder / "images", [result.start_image, *result.step_images], now)

    @contextlib.contextmanager
    def _artifact_folder(self, run_id: str):
        """Where a trial's artifacts are written: the run's own folder when the store keeps local files (written
        once, instead of into a temporary folder and copied, 47 files a trial with step previews); otherwise a
        temporary folder uploaded in one call through the repository of the artifact URI the run got at its start
        (MlflowClient.log_artifacts looks the run up again first: 10 ms a trial, a quarter of its logging)."""
        local = local_artifact_folder(self.open_runs[run_id])
        if local is not None:
            local.mkdir(parents=True, exist_ok=True)
            yield local
            return
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp)
            repository = get_artifact_repository(self.open_runs[run_id], tracking_uri=self.client.tracking_uri)
            repository.log_artifacts(tmp)

    @interrupts.critical()
    def end_run(self, run_id: str, status: str = "FINISHED", error: str | None = None) -> None:
        if error:
            self.client.set_tag(run_id, ERROR_TAG, error)
        self.client.set_terminated(run_id, status)
        self.open_runs.pop(run_id, None)

    @interrupts.critical()
    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(key, value) for key, value in redact(tags).items()])

    def close_sweep(self, parent_run_id: str, tags: dict[str, str]):
        """The sweep's end on its parent run (sweeprecord.close_sweep); the outcome.SweepSummary."""
        from sweeplab.sweeprecord import close_sweep  # its outcome.SweepSummary imports this module

        return close_sweep(self, parent_run_id, tags)

    @interrupts.critical()
    def run_tags(self, run_id: str) -> dict[str, str]:
        return self.client.get_run(run_id).data.tags

    def kill_open_runs(self, reason: str) -> None:
        """Close every run this tracker started and did not end, as KILLED."""
        for run_id in sorted(self.open_runs):
            self.end_run(run_id, "KILLED", reason)

    @interrupts.critical()
    def child_runs(self, parent_run_id: str) -> list:
        """Every child run of a sweep, paging past search_runs' 1000-row limit."""
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'", page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs


def write_step_images(folder: Path, images: list, timestamp_ms: int) -> None:
    """Per-step previews as `MlflowClient.log_image(image, key=..., step=...)` lays them out, for one upload.

    log_image costs two artifact uploads and a tag write per step; the UI's image slider reads only the
    files' names (`images/<key>+step+<n>+timestamp+<ms>+<uuid>.png` and a `+compressed.webp` thumbnail), and
    needs both: the step and the full image come from the PNG, the slider shows the WebP (a spinner without it).
    log_image also scales every thumbnail to 256 px, up as well as down: a 32 px latent preview becomes a
    thumbnail 64 times its size that takes longer to encode than the trial's other images together. Here
    a thumbnail is never larger than its preview.
    """
    from mlflow.tracking.multimedia import COMPRESSED_IMAGE_SIZE, compress_image_size

    folder.mkdir()
    for step, image in enumerate(images):
        stem = f"{STEP_IMAGE_KEY}+step+{step}+timestamp+{timestamp_ms}+{uuid.uuid4()}"
        image.save(folder / f"{stem}.png", compress_level=FAST_PNG_LEVEL)
        thumbnail = compress_image_size(image) if max(image.size) > COMPRESSED_IMAGE_SIZE else image
        thumbnail.save(folder / f"{stem}+compressed.webp", method=0)  # libwebp's fastest method


def local_artifact_folder(artifact_uri: str) -> Path | None:
    """The folder of a run's artifacts when they are local files (a SQLite store's mlartifacts/), to read in place;
    None for an artifact server's URI."""
    if not artifact_uri.startswith(("file:", "/")):
        return None
    from mlflow.utils.file_utils import local_file_uri_to_path

    return Path(local_file_uri_to_path(artifact_uri))


def config_yaml(config: dict) -> str:
    """A trial's resolved config as OmegaConf.to_yaml writes it, from the plain dict: OmegaConf rebuilds a
    DictConfig first (4 ms a trial against 1). Not libyaml's dumper: it escapes characters such as emoji."""
    import yaml

    return yaml.dump(config, Dumper=yaml.SafeDumper, default_flow_style=False, allow_unicode=True, sort_keys=False)


def owner_tag() -> dict[str, str]:
    """The process that owns a run while it is RUNNING, so a later sweep can tell an orphan."""
    return {OWNER_TAG: f"{socket.gethostname()}:{os.getpid()}"}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process
        return True
    return True


def shorten_param(key: str, value: str) -> str:
    """A param value within MLflow's limit, which would cut it silently: a longer one says so and where it is whole."""
    if len(value) <= MAX_PARAM_CHARS:
        return value
    note = f" [shortened from {len(value)} characters; the whole value is the artifact {LONG_PARAM_FOLDER}/{key}.txt]"
    return value[: MAX_PARAM_CHARS - len(note)] + note


def overrides_tag(overrides) -> str:
    """The command-line overrides as one tag value, secrets redacted."""
    return " ".join(redact_override(str(override)) for override in overrides or [])


@functools.cache
def environment_tags(device: str | None = None, dtype: str | None = None) -> dict[str, str]:
    """Where a trial ran: code and library versions, CPU threads and kernels, SLURM task; with a trial's
    resolved device and dtype, those too. Once per process (and device/dtype pair)."""
    import diffusers
    import torch

    from sweeplab import __version__

    tags = {
        VERSION_TAG: __version__,
        TORCH_VERSION_TAG: str(torch.__version__),  # a str subclass whose unpickling imports torch: plain str
        DIFFUSERS_VERSION_TAG: diffusers.__version__,
        TORCH_THREADS_TAG: str(torch.get_num_threads()),
        CPU_CAPABILITY_TAG: torch.backends.cpu.get_cpu_capability(),
    }
    commit = _git_commit(Path.cwd())
    if commit:
        tags[GIT_COMMIT_TAG] = commit
    if device is not None:
        tags[DEVICE_TAG] = device_name(device)
    if dtype is not None:
        tags[DTYPE_TAG] = dtype
    if "SLURM_JOB_ID" in os.environ:  # which SLURM task ran it: its log is under .submitit/<this>/
        array_task = os.environ.get("SLURM_ARRAY_TASK_ID")
        job = os.environ.get("SLURM_ARRAY_JOB_ID") if array_task else os.environ["SLURM_JOB_ID"]
        tags["sweeplab.slurm_job"] = f"{job}_{array_task}" if array_task else job
    return tags


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return device


def _git_commit(folder: Path) -> str | None:
    """The commit the user's configs and inputs are at; None outside a repository (or without git)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class MlflowSweepCallback(Callback):
    """Creates the experiment and the sweep's parent run before any job, and closes it after.

    The store opens in a process of its own (storeprocess.StoreProcess), forked before torch is imported,
    while this process composes the sweep, imports torch and loads the model: a new SQLite store costs about
    4.5 s, which now runs beside that work instead of before it. sweeplab's launchers ask `parent_run` (and
    use `store`) when they need them; any other launcher's jobs read the parent run from the environment, so
    for those the callback waits for it here. A sweep that ends early (a signal, a launcher error) closes its
    parent run at exit: KILLED when interrupted, FAILED otherwise, never left RUNNING.
    """

    def __init__(self):
        self.store = None  # a storeprocess.StoreProcess, from the sweep's start
        self.tracker = None  # its tracker of the sweep's store, once open
        self.parent_run_id: str | None = None
        self._opening: threading.Thread | None = None  # opens the store and creates the parent run
        self._open_error: BaseException | None = None

    def __getstate__(self) -> dict:
        """Pickled with Hydra's context into every SLURM task, which reads the parent run from its
        environment: the store's process and the thread stay here."""
        return {**self.__dict__, "store": None, "tracker": None, "_opening": None}

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from sweeplab.storeprocess import StoreProcess
        from sweeplab.sweepaxes import sweep_axes
        from sweeplab.sweeprecord import sweep_command

        try:
            axes = sweep_axes(config)  # zipped lists of different lengths stop the sweep before it has a run
            uri = resolve_tracking_uri(config.tracking.get("uri"))
            experiment = experiment_name(config)
        except ConfigError as err:
            exit_for(err)
        self.store = StoreProcess()
        atexit.register(self._close_unfinished)  # after the store process's start: runs before its shutdown
        overrides = overrides_tag(OmegaConf.select(config, "hydra.overrides.task", default=[]))
        zipped = {ZIPPED_TAG: ",".join(axes.zipped_keys())} if axes.zipped_keys() else {}
        run_name = f"sweep {Path(str(config.hydra.sweep.dir)).as_posix()}"
        tags = {SWEEP_TAG: "true", "sweeplab.overrides": overrides, COMMAND_TAG: sweep_command(), **owner_tag(),
                **zipped}
        self._opening = threading.Thread(target=self._open, args=(uri, experiment, run_name, axes.swept_values(), tags),
                                         name="sweeplab-store-open", daemon=True)
        self._opening.start()
        os.environ[TRACKING_URI_ENV] = uri
        launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
        if not launcher.startswith("hydra_plugins.sweeplab_launcher."):
            try:
                self.parent_run()
            except ConfigError as err:
                exit_for(err)

    def _open(self, uri: str, experiment: str, run_name: str, params: dict, tags: dict) -> None:
        try:
            self.tracker = self.store.tracker(uri, experiment)
            self.parent_run_id = self.tracker.start_run(run_name, params, tags, None)
        except BaseException as err:  # noqa: BLE001 - raised where the sweep asks for its parent run
            self._open_error = err

    def parent_run(self) -> str:
        """The parent run's id, once the store is open; StoreError when it cannot be used."""
        if self._opening is not None:
            self._opening.join()
        if self._open_error is not None:
            raise self._open_error
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        return self.parent_run_id

    def fail(self, reason: str) -> None:
        """The sweep could not start (e.g. the cluster refused it): its parent run ends FAILED with the reason."""
        self.tracker.end_run(self.parent_run_id, "FAILED", reason)
        atexit.unregister(self._close_unfinished)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from sweeplab import outcome

        self.parent_run()
        summary = self.tracker.close_sweep(self.parent_run_id, environment_tags())
        atexit.unregister(self._close_unfinished)
        os.environ.pop(PARENT_RUN_ENV, None)
        os.environ.pop(TRACKING_URI_ENV, None)
        outcome.report_sweep(summary, self.tracker, self.parent_run_id)
        if self.store is not None:  # None when a tracker was handed in rather than opened at the sweep's start
            self.store.close()

    def _close_unfinished(self) -> None:
        """At exit of a sweep that never reached on_multirun_end."""
        interrupts.hold()
        if self._opening is not None:
            self._opening.join(STORE_OPEN_WAIT_SECONDS)
        if self.parent_run_id is None:
            return  # the store never opened: there is no run to close
        try:
            if interrupts.received:
                self.tracker.kill_open_runs(f"sweep interrupted by {interrupts.received}")
            else:
                self.tracker.end_run(self.parent_run_id, "FAILED", "sweep ended early; see the launcher's output")
        except Exception as err:  # noqa: BLE001 - at exit, with the store gone: one line, no traceback
            print(f"sweeplab: the sweep run {self.parent_run_id} could not be closed ({type(err).__name__}); "
                  "the next sweep in this experiment closes it", file=sys.stderr)


def sweep_callback(hydra_context) -> MlflowSweepCallback | None:
    """The sweep's MlflowSweepCallback among Hydra's instantiated callbacks (None if it is not configured)."""
    callbacks = getattr(hydra_context.callbacks, "callbacks", [])
    return next((cb for cb in callbacks if isinstance(cb, MlflowSweepCallback)), None)
