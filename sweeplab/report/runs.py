"""MLflow -> pandas: the one place reports read runs and artifacts from.

Torch-free on purpose (so are sweeplab.tracking and sweeplab.errors, the only project
modules imported here): reports run where no model can load, e.g. beside a tracking server.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm import tqdm

from sweeplab.tracking import CONFIG_HASH_TAG, ERROR_TAG, SWEEP_TAG, local_artifact_folder, resolve_tracking_uri

# The InvokeAI options, with the values they have when unused (captions leave those out).
OPTION_DEFAULTS = {"fit": "False", "iteration": 0, "variation_amount": 0.0, "variation_seed": None,
                   "with_variations": "", "steps_taken_target": None, "lora": ""}
PARAM_KEYS = ("model", "model_family", "sampler", "prompt", "negative_prompt", "init_image", "strength", "steps",
              "seed", "cfg_scale", "width", "height", *OPTION_DEFAULTS)
NUMERIC_PARAMS = {"strength": "float64", "steps": "Int64", "seed": "Int64", "cfg_scale": "float64",
                  "width": "Int64", "height": "Int64", "iteration": "Int64", "variation_amount": "float64",
                  "variation_seed": "Int64", "steps_taken_target": "Int64"}
# Params that follow from others (the model; steps_taken_target x strength; the init image with fit): a report
# that shows the keys fixing them may leave them unshown without mixing anything.
DERIVED_PARAMS = ("model_family", "steps", "width", "height")
DEFAULT_MODEL = "toy"  # the model param of the embedded toy model, whose figure sets keep reports/<experiment>/
METRIC_KEYS = ("steps_taken", "denoiser_evals", "seconds")
RENAMED_METRICS = {"denoiser_evals": "unet_evals"}  # new name -> the name runs logged before model families (the UNet only)
OVERRIDES_TAG = "sweeplab.overrides"
PARENT_TAG = "mlflow.parentRunId"
PAGE_SIZE = 1000  # MlflowClient.search_runs' largest page


class ReportError(Exception):
    """A selection or option that cannot work; the message is one line naming it and what is allowed."""


def client_for(uri: str | None, create: bool = False):
    """A client on the store; a local SQLite file must exist unless trials are about to be run into it."""
    from mlflow import MlflowClient

    resolved = resolve_tracking_uri(uri)
    database = Path(resolved.removeprefix("sqlite:///"))
    if resolved.startswith("sqlite:///") and not create and not database.is_file():
        raise ReportError(f"no MLflow store at {database}; run a sweep first (sweeplab -m experiment=NAME), "
                          "or pass --tracking-uri URI")
    return MlflowClient(tracking_uri=resolved)


def load_runs(client, experiment: str | None = None, sweep: str | None = None, latest_sweep: bool = False,
              page_size: int = PAGE_SIZE, where: dict[str, str] | None = None) -> pd.DataFrame:
    """Trial runs (never sweep parents) of an experiment, of one sweep, or of an experiment's latest sweep;
    `where` keeps those that logged each KEY with VALUE (--where)."""
    if sweep:
        experiment_id = _sweep_run(client, sweep).info.experiment_id
    else:
        experiment_id = _experiment_id(client, experiment)
        if latest_sweep:
            sweep = _latest_sweep(client, experiment_id, experiment)
    query = f"tags.`{PARENT_TAG}` = '{sweep}'" if sweep else ""
    runs = [run for run in iter_runs(client, experiment_id, query, page_size) if run.data.tags.get(SWEEP_TAG) != "true"]
    selection = f"sweep run '{sweep}'" if sweep else f"experiment '{experiment}'"
    if not runs:
        raise ReportError(f"no trial runs found in {selection} of {client.tracking_uri}")
    for key, value in (where or {}).items():
        runs = _with_value(runs, key, value, selection)
    frame = runs_frame(runs)
    frame.insert(0, "experiment", client.get_experiment(experiment_id).name)
    return frame


def parse_where(pairs: list[str]) -> dict[str, str]:
    """--where KEY=VALUE options, each key once."""
    where: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ReportError(f"--where: '{pair}' is not KEY=VALUE; allowed: a logged param and its value, "
                              "e.g. --where model=toy")
        if key in where:
            raise ReportError(f"--where: {key} is given twice ({where[key]}, {value}); a run logs one value per key")
        where[key] = value
    return where


def _with_value(runs: list, key: str, value: str, selection: str) -> list:
    """The runs that logged `key` (a param, else a tag) with `value`; none is an error naming what was logged."""
    logged = [(run, {**run.data.tags, **_params(run)}) for run in runs]
    having = [(run, keys[key]) for run, keys in logged if key in keys]
    if not having:
        allowed = sorted({name for run in runs for name in _params(run)})
        raise ReportError(f"--where {key}={value}: no run of {selection} logged {key}; allowed: {', '.join(allowed)}, "
                          "or a sweeplab.* tag")
    matching = [run for run, logged_value in having if _same_value(logged_value, value)]
    if not matching:
        values = sorted({logged_value for _, logged_value in having})
        raise ReportError(f"--where {key}={value}: no run of {selection} has {key}={value}; its values: "
                          f"{', '.join(values)}")
    return matching


def _params(run) -> dict[str, str]:
    """A run's params; a run that failed before logging them has those its Hydra overrides name."""
    return {**_overrides(run.data.tags.get(OVERRIDES_TAG, "")), **run.data.params}


def _same_value(logged: str, wanted: str) -> bool:
    """Equal as text, or as numbers (--where strength=0.40 finds 0.4)."""
    if logged == wanted:
        return True
    try:
        return float(logged) == float(wanted)
    except ValueError:
        return False


def iter_runs(client, experiment_id: str, query: str, page_size: int = PAGE_SIZE):
    """Every matching run, page by page (search_runs stops at one page without a token)."""
    token = None
    while True:
        page = client.search_runs([experiment_id], query, max_results=page_size,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _experiment_id(client, name: str | None) -> str:
    found = client.get_experiment_by_name(name) if name else None
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        what = f"experiment '{name}' not found" if name else "no experiment given (--experiment NAME or --sweep RUN_ID)"
        raise ReportError(f"{what} in {client.tracking_uri}; allowed: {', '.join(names) or 'none (the store is empty)'}")
    return found.experiment_id


def _sweep_run(client, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ReportError(f"sweep run '{run_id}' not found in {client.tracking_uri}") from None
    if run.data.tags.get(SWEEP_TAG) != "true":
        raise ReportError(f"run '{run_id}' is not a sweep (parent) run; allowed: the run id `sweeplab -m` printed")
    return run


def _latest_sweep(client, experiment_id: str, name: str) -> str:
    page = client.search_runs([experiment_id], f"tags.`{SWEEP_TAG}` = 'true'", max_results=1,
                              order_by=["attributes.start_time DESC"])
    if not page:
        raise ReportError(f"experiment '{name}' has no sweep; run one with: sweeplab -m experiment={name}")
    return page[0].info.run_id


def runs_frame(runs) -> pd.DataFrame:
    """One row per run: params (typed), metrics, sweeplab tags, status and artifact URI."""
    rows = []
    for run in runs:
        tags = run.data.tags
        params = _params(run)
        rows.append({
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "parent_run_id": tags.get(PARENT_TAG),
            "artifact_uri": run.info.artifact_uri,
            **{key: params.get(key) for key in PARAM_KEYS},
            **{key: run.data.metrics.get(key, run.data.metrics.get(RENAMED_METRICS.get(key, key))) for key in METRIC_KEYS},
            "config_hash": tags.get(CONFIG_HASH_TAG),
            "error": tags.get(ERROR_TAG),
            "overrides": tags.get(OVERRIDES_TAG),
            **{key: value for key, value in sorted(tags.items()) if key.startswith("sweeplab.")},
        })
    frame = pd.DataFrame(rows)
    for key in PARAM_KEYS:  # a trial that failed before logging params ran with what its sweep did not vary
        shared = frame[key].dropna().unique()
        if len(shared) == 1:
            frame[key] = frame[key].fillna(shared[0])
    for key, dtype in {**NUMERIC_PARAMS, "steps_taken": "Int64", "denoiser_evals": "Int64"}.items():
        frame[key] = pd.to_numeric(frame[key], errors="coerce").astype(dtype)
    return frame


def _overrides(line: str) -> dict[str, str]:
    """Params a run that failed before logging any can still be placed by: its Hydra overrides."""
    try:
        words = shlex.split(line)
    except ValueError:
        return {}
    pairs = (word.split("=", 1) for word in words if "=" in word)
    return {key: value for key, value in pairs if key in PARAM_KEYS}


def one_per_trial(frame: pd.DataFrame) -> pd.DataFrame:
    """The run that stands for each trial: finished before failed, then the newest; sorted by params."""
    identity = frame["config_hash"].fillna("overrides:" + frame["overrides"].fillna(frame["run_id"]))
    ranked = frame.assign(_identity=identity, _failed=frame["status"] != "FINISHED")
    ranked = ranked.sort_values(["_failed", "start_time"], ascending=[True, False], kind="stable")
    kept = ranked.drop_duplicates("_identity").drop(columns=["_identity", "_failed"])
    return kept.sort_values(list(PARAM_KEYS), kind="stable", na_position="last").reset_index(drop=True)


def varying_keys(frame: pd.DataFrame) -> list[str]:
    """Params that take more than one value among the rows, in PARAM_KEYS order."""
    return [key for key in PARAM_KEYS if frame[key].nunique(dropna=True) > 1]


def format_value(value) -> str:
    """How a param value is shown in labels and file names: 0.4, 10, fire."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "?"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class Artifacts:
    """Run artifacts fetched through MLflow's download API (local stores and servers alike)."""

    def __init__(self, client, progress: bool = True):
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one bar for all files, below
        self.client = client
        self.progress = progress  # the bar: on for a report command, off inside a sweep's closing lines
        self._tmp = tempfile.TemporaryDirectory(prefix="sweeplab-report-")
        self._images: dict[tuple[str, str], Image.Image] = {}

    def fetch(self, frame: pd.DataFrame, names: tuple[str, ...]) -> None:
        """Download the named artifacts of every finished run, with a progress bar."""
        finished = frame[frame["status"] == "FINISHED"]
        roots = finished["artifact_uri"] if "artifact_uri" in finished else [None] * len(finished)
        wanted = [(run_id, name, root) for run_id, root in zip(finished["run_id"], roots) for name in names
                  if (run_id, name) not in self._images]
        bar = tqdm(wanted, desc="artifacts", unit="file", disable=not (wanted and self.progress), leave=False)
        for run_id, name, root in bar:
            with Image.open(_local_artifact(root, name) or self._download(run_id, name)) as image:
                self._images[(run_id, name)] = image.convert("RGB")

    def image(self, run_id: str, name: str) -> Image.Image:
        if (run_id, name) not in self._images:
            self.fetch(pd.DataFrame({"run_id": [run_id], "status": ["FINISHED"]}), (name,))
        return self._images[(run_id, name)]

    def text(self, run_id: str, name: str) -> str:
        """A small text artifact of a finished run, such as its schedule.json."""
        return self._download(run_id, name).read_text(encoding="utf-8")

    def _download(self, run_id: str, name: str) -> Path:
        try:
            return Path(self.client.download_artifacts(run_id, name, str(Path(self._tmp.name) / run_id)))
        except Exception as err:  # noqa: BLE001 - MLflow raises its own and OSError kinds for a missing file
            raise ReportError(f"run {run_id} has no artifact {name} (its artifacts were deleted, never uploaded, "
                              f"or logged by an older sweeplab); rerun its trial: add --run-missing, or run the sweep "
                              f"again with resume=false") from err

    def close(self) -> None:
        self._tmp.cleanup()


def _local_artifact(artifact_uri: str | None, name: str) -> Path | None:
    """The artifact's own file when the run's artifacts are local files: read in place, without MLflow's download,
    which looks the run up again and copies the file (15 ms a file)."""
    folder = local_artifact_folder(artifact_uri) if artifact_uri else None
    if folder is None or not (folder / name).is_file():
        return None
    return folder / name
