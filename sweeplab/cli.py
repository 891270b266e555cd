"""The `sweeplab` command: a Hydra app whose every job is one img2img trial.

    sweeplab prompt=fire strength=0.7                  # one trial, one MLflow run
    sweeplab -m strength=0.4,0.7 sampler=k_lms,k_heun  # a sweep: a parent run, a child per trial
    sweeplab -m experiment=demo                        # a named sweep from experiments/
"""

from __future__ import annotations

import difflib
import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sweeplab import interrupts, outcome
from sweeplab.errors import ConfigError
from sweeplab.schema import SCHEMA_KEYS

log = logging.getLogger("sweeplab")
# transformers warns about optional image processors that img2img never uses
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _conf_dir() -> Path:
    """conf/ inside the installed package (a wheel), else at the top of the repository (editable install)."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return installed if (installed / "config.yaml").is_file() else package.parent / "conf"


CONF_DIR = Path(os.environ.get("SWEEPLAB_CONFIG_DIR") or _conf_dir())
CONFIG_GROUPS = ("model", "sampler", "tracking", "experiment")

_pipelines = None  # one PipelineCache per process: models load once, not once per trial


def main() -> None:
    """Console script: check the command line, run Hydra, exit non-zero if any trial failed."""
    try:
        preflight(sys.argv[1:])
    except ConfigError as err:
        print(f"sweeplab: error: {err}", file=sys.stderr)
        sys.exit(2)
    interrupts.install()
    try:
        hydra_app()
    except KeyboardInterrupt:
        name = interrupts.received or "SIGINT"
        print(f"sweeplab: interrupted by {name}: runs in flight are marked KILLED; "
              "run the same command again to complete what is missing", file=sys.stderr)
        sys.exit(128 + signal.Signals[name])
    sys.exit(outcome.exit_code())


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def preflight(argv: list[str]) -> None:
    """Catch unknown config options and keys in one line before Hydra composes anything."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    overrides = [arg for arg in argv if not arg.startswith("-") and "=" in arg]
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except OverrideParseException as err:
        raise ConfigError(_unparsable(parser, overrides, err)) from None
    for override in parsed:
        key = override.key_or_group
        if override.is_delete() or override.is_add() or key.startswith("hydra"):
            continue
        if key in CONFIG_GROUPS:
            allowed = group_options(key)
            for value in _choice_values(override):
                if value == "null" and key != "experiment":
                    raise ConfigError(f"{key}: null leaves no {key} config; allowed: {', '.join(allowed)}")
                if value not in allowed and value != "null":
                    raise ConfigError(f"{key}: unknown option '{value}'{_suggest(value, allowed)}; allowed: {', '.join(allowed)}")
                if key == "experiment" and value != "null":
                    _check_sweep_keys(value)
        elif key.split(".")[0] not in SCHEMA_KEYS:
            raise ConfigError(_unknown_key(key))


def _unknown_key(key: str) -> str:
    return f"{key}: unknown key{_suggest(key, sorted(SCHEMA_KEYS))}; allowed: {', '.join(sorted(SCHEMA_KEYS))}"


def _unparsable(parser, overrides: list[str], err: Exception) -> str:
    """Name the override Hydra's grammar rejects and how to quote it (an unquoted emoji is a lexer error)."""
    from hydra.errors import OverrideParseException

    for override in overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException as own:
            key, _, value = override.partition("=")
            reason = str(own).splitlines()[0].removesuffix(f": {override}")
            return (f"{key}: cannot parse the value {value!r} ({reason}); quote values with spaces, emoji or "
                    f"brackets: '{key}=\"{value}\"'")
    return str(err).splitlines()[0]


def _check_sweep_keys(experiment: str) -> None:
    """An experiment's hydra.sweeper.params become overrides only when Hydra sweeps: check their keys now."""
    from omegaconf import OmegaConf

    path = CONF_DIR / "experiment" / f"{experiment}.yaml"
    if not path.is_file():
        return
    params = OmegaConf.select(OmegaConf.load(path), "hydra.sweeper.params", default=None) or {}
    for key in map(str, params):
        if key.split(".")[0] not in SCHEMA_KEYS and key not in CONFIG_GROUPS:
            raise ConfigError(f"{path.name}: hydra.sweeper.params.{_unknown_key(key)}")


def _choice_values(override) -> list[str]:
    if override.is_sweep_override():
        if override.is_discrete_sweep():
            return [str(value) for value in override.sweep_string_iterator()]
        return []  # glob() and ranges are expanded by Hydra itself
    value = override.value()
    return ["null" if value is None else str(value)]


def _suggest(value: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(value, allowed, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_app(cfg: DictConfig) -> None:
    run_configured_trial(cfg)


def run_configured_trial(cfg: DictConfig) -> None:
    """One Hydra job: validate, skip if done before, run, log.

    A failure is recorded and reported, never lost; an interruption (a signal, scancel, a
    SLURM time limit) closes the run as KILLED and stops the process. With iterations=n the
    job runs a chain of n trials, each starting from the previous output, each its own
    MLflow run tagged with the run it continues.
    """
    from sweeplab.tracking import PARENT_RUN_ENV, MlflowTracker, overrides_tag

    interrupts.install()  # again: submitit workers start here, with submitit's own handlers
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    job_label = f"#{hydra_cfg.job.num}" if multirun else "run"
    tracker = MlflowTracker.from_config(cfg)
    parent = os.environ.get(PARENT_RUN_ENV) if multirun else None
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    overrides = overrides_tag(hydra_cfg.overrides.task)
    run_id = previous_run_id = None
    try:
        from sweeplab.trial import prepare_trial

        trial = prepare_trial(cfg)
        if multirun and trial.resume and trial.iterations == 1 and _skip_finished(
            tracker, trial.spec.config_hash, parent, job_label
        ):
            return
        for iteration in range(trial.iterations):
            label = job_label if trial.iterations == 1 else f"{job_label}.{iteration}"
            run_id = _start_trial_run(tracker, trial, overrides, parent, previous_run_id)
            result = _run_and_log(tracker, run_id, trial, cfg, config, label)
            previous_run_id, run_id = run_id, None
            trial = trial.next_iteration(result.output)
    except Exception as err:  # noqa: BLE001 - every failure must end up in the tracker and the summary
        message = str(err) if isinstance(err, ConfigError) else f"{type(err).__name__}: {err}"
        message = message.strip().splitlines()[0] if message.strip() else type(err).__name__
        print(f"sweeplab: error: trial {job_label} [{overrides}]: {message}" if multirun else f"sweeplab: error: {message}",
              file=sys.stderr)
        if not isinstance(err, ConfigError):
            log.debug("trial failed", exc_info=err)
        if run_id is None:
            run_id = tracker.start_run(
                f"trial {job_label} (invalid)", _raw_params(cfg), {"sweeplab.overrides": overrides}, parent
            )
        tracker.end_run(run_id, "FAILED", message)
        outcome.record_failure(message)
    except BaseException as err:
        interrupts.hold()
        tracker.kill_open_runs(f"interrupted: {err}")  # also a run interrupted while it was being created
        interrupts.finish()
        raise


def _skip_finished(tracker, config_hash: str, parent: str | None, job_label: str) -> bool:
    """Resume: a trial with a FINISHED run of the same config hash is not run again."""
    done = tracker.finished_run(config_hash)
    if done is None:
        return False
    if parent:
        tracker.record_skip(parent, config_hash, done.info.run_id)
    log.info("trial %s skipped: already FINISHED as run %s (%s); resume=false reruns it",
             job_label, done.info.run_id, config_hash)
    return True


def _raw_params(cfg: DictConfig) -> dict[str, str]:
    """What a trial that failed validation asked for, so its FAILED run still shows it."""
    from sweeplab.trial import PARAM_KEYS

    raw = {key: OmegaConf.select(cfg, key, default=None) for key in PARAM_KEYS}
    raw["model"] = OmegaConf.select(cfg, "model.name", default=None)
    raw["sampler"] = OmegaConf.select(cfg, "sampler.name", default=None)
    return {key: str(value) for key, value in raw.items() if value is not None and not OmegaConf.is_config(value)}


def _start_trial_run(tracker, trial, overrides: str, parent: str | None, previous_run_id: str | None) -> str:
    from sweeplab.tracking import CONFIG_HASH_TAG, environment_tags

    spec = trial.spec
    tags = {
        CONFIG_HASH_TAG: spec.config_hash,
        "sweeplab.overrides": overrides,
        "sweeplab.scheduler": spec.scheduler,
        **environment_tags(spec.device, spec.dtype),
    }
    if trial.prompt_template:
        tags["sweeplab.prompt_search"], tags["sweeplab.prompt_replace"] = trial.prompt_template
    if previous_run_id:
        tags["sweeplab.previous_run_id"] = previous_run_id
    name = f"{spec.sampler} s{spec.strength} n{spec.steps} seed{spec.seed}"
    if trial.iterations > 1:
        name += f" it{spec.iteration}"
    return tracker.start_run(name, spec.params(), tags, parent)


def _run_and_log(tracker, run_id: str, trial, cfg: DictConfig, config: dict, label: str):
    import torch

    from sweeplab.models import PipelineCache
    from sweeplab.runner import run_trial

    global _pipelines
    if _pipelines is None:
        _pipelines = PipelineCache()
    spec = trial.spec
    loaded = _pipelines.get(spec.model_source, spec.device, getattr(torch, spec.dtype))
    result = run_trial(trial, loaded, progress_desc=f"trial {label}")
    for warning in result.warnings:
        log.warning("trial %s: %s", label, warning)
    tracker.log_trial_result(run_id, result, config, cfg.tracking.log_step_images)
    tracker.end_run(run_id, "FINISHED")
    log.info(
        "trial %s: %d steps taken, %d UNet evaluations, %.2f s -> run %s",
        label, result.steps_taken, result.unet_evals, result.seconds, run_id,
    )
    return result
