"""The `sweeplab` command: a Hydra app whose every job is one img2img trial.

    sweeplab prompt=fire strength=0.7                  # one trial, one MLflow run
    sweeplab -m strength=0.4,0.7 sampler=k_lms,k_heun  # a sweep: a parent run, a child per trial
    sweeplab -m experiment=demo                        # a named sweep from experiments/
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import signal
import sys
from importlib.metadata import PackageNotFoundError, version

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sweeplab import __version__, interrupts, outcome
from sweeplab.configsearch import CONF_DIR, PRIMARY_CONFIG, ConfigOptions
from sweeplab.errors import ConfigError, exit_for
from sweeplab.schema import SCHEMA_KEYS
from sweeplab.sweepaxes import SWEEPER_FIELDS, read_axes
from sweeplab.tracking import bound_http_retries

log = logging.getLogger("sweeplab")

CONFIG_GROUPS = ("model", "sampler", "tracking", "experiment")
SWEEPER_PREFIX = "hydra.sweeper."  # where a command line sets the sweep's grid and zipped lists
# What `sweeplab --version` names beside sweeplab: the libraries that decide a trial's result and its record.
VERSIONED_LIBRARIES = {"torch": "torch", "diffusers": "diffusers", "MLflow": "mlflow", "Hydra": "hydra-core"}


def main() -> None:
    """Console script: check the command line, run Hydra, exit non-zero if any trial failed."""
    if "--version" in sys.argv[1:]:  # Hydra's own --version names only Hydra
        print(version_line())
        sys.exit(0)
    try:
        preflight(sys.argv[1:])
    except ConfigError as err:
        exit_for(err)
    bound_http_retries()
    interrupts.install()
    try:
        hydra_app()
    except KeyboardInterrupt:
        name = interrupts.received or "SIGINT"
        print(f"sweeplab: interrupted by {name}: runs in flight are marked KILLED; "
              "run the same command again to complete what is missing", file=sys.stderr)
        sys.exit(128 + signal.Signals[name])
    sys.exit(outcome.exit_code())


def version_line() -> str:
    """sweeplab's version and those of the libraries it runs on, from the installed packages' metadata."""
    found = []
    for label, distribution in VERSIONED_LIBRARIES.items():
        try:
            found.append(f"{label} {version(distribution)}")
        except PackageNotFoundError:
            found.append(f"{label} not installed")
    return f"sweeplab {__version__} ({', '.join(found)})"


def preflight(argv: list[str]) -> None:
    """Catch what Hydra would refuse with a traceback, and unknown config options and keys, in one line
    before Hydra composes anything. Hydra's own flags pass through."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    args = get_args_parser().parse_args(argv)  # Hydra's flags; a malformed one ends in argparse's usage line
    commands = [flag for flag, given in [("--run", args.run), ("--multirun", args.multirun), ("--cfg", args.cfg),
                                         ("--info", args.info), ("--shell-completion", args.shell_completion)] if given]
    if len(commands) > 1:
        raise ConfigError(f"{' and '.join(commands)}: give only one of --run, --multirun, --cfg, --info "
                          "and --shell-completion")
    if args.shell_completion:
        return  # its arguments (install=bash, query=...) are the completion command, not overrides
    if args.resolve and not (args.cfg or args.help):
        raise ConfigError("--resolve: only with --cfg or --help")
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(args.overrides)
    except OverrideParseException as err:
        raise ConfigError(_unparsable(parser, args.overrides, err)) from None
    options = ConfigOptions(args.config_dir, args.config_name, args.overrides)
    sweeper_overrides, experiment = [], []  # what sets the sweep's own grid and zipped lists
    for override in parsed:
        key = override.key_or_group
        if key.startswith(SWEEPER_PREFIX):
            _check_sweeper_override(override, args.multirun or bool(args.cfg or args.help or args.info))
            sweeper_overrides.append(override)
            continue
        if override.is_delete() or override.is_add() or key.startswith("hydra"):
            continue
        if override.is_sweep_override() and not args.multirun:
            value = override.input_line.partition("=")[2]
            raise ConfigError(f"{key}: '{value}' is a sweep; add -m (sweeplab -m {key}={value}), or give a list "
                              f"in brackets ({key}=[{value}]) or a string in quotes")
        if key in CONFIG_GROUPS:
            allowed = options.of(key)
            for value in _choice_values(override):
                if value == "null" and key != "experiment":
                    raise ConfigError(f"{key}: null leaves no {key} config; allowed: {', '.join(allowed)}")
                if value not in allowed and value != "null":
                    raise ConfigError(f"{key}: unknown option '{value}'{_suggest(value, allowed)}; allowed: {', '.join(allowed)}")
                if key == "experiment" and value != "null":
                    _check_sweep_keys(f"experiment {value}: ", options.sweeper([f"experiment={value}"]))
            if key == "experiment" and not override.is_sweep_override() and override.value() is not None:
                experiment = [override.input_line]
        elif key.split(".")[0] not in SCHEMA_KEYS:
            raise ConfigError(_unknown_key(key))
    if args.multirun and (experiment or sweeper_overrides):  # zipped lists of different lengths, before Hydra starts
        for override in sweeper_overrides:
            _check_addition(override, options.sweeper(experiment))
        read_axes(options.sweeper([*experiment, *(override.input_line for override in sweeper_overrides)]),
                  [override.input_line for override in parsed if not override.is_hydra_override()])


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


def _check_sweeper_override(override, sweeping: bool) -> None:
    """`hydra.sweeper.list_params.KEY=[...]` and the grid's fields: a known key, a list Hydra accepts, and -m
    (or a flag that only shows the config: `sweeping`)."""
    field, _, swept = override.key_or_group.removeprefix(SWEEPER_PREFIX).partition(".")
    if field not in SWEEPER_FIELDS or override.is_delete():
        return
    line = override.input_line.lstrip("+")
    if not sweeping:
        raise ConfigError(f"{override.key_or_group}: the sweeper's settings apply only to a sweep; add -m "
                          f"(sweeplab -m {line})")
    if override.is_sweep_override():
        key, _, values = override.input_line.partition("=")
        raise ConfigError(f"{key}: '{values}' would sweep Hydra's own settings, which Hydra refuses; give the values "
                          f"as a list: {key}=[{values}]")
    value = override.value()
    _check_sweep_keys("", {field: [swept] if swept else value if isinstance(value, dict) else []})


def _check_addition(override, sweeper: dict) -> None:
    """Hydra adds a key to the sweeper's settings only with `+`, and replaces one (an experiment's) only without."""
    from hydra.core.override_parser.types import OverrideType

    field, _, swept = override.key_or_group.removeprefix(SWEEPER_PREFIX).partition(".")
    if field not in SWEEPER_FIELDS or not swept or override.type == OverrideType.FORCE_ADD:
        return
    line = override.input_line.lstrip("+")
    present = swept in (sweeper.get(field) or {})
    if override.type == OverrideType.CHANGE and not present:
        raise ConfigError(f"{override.key_or_group}: not set yet, and Hydra adds a key only with +: +{line}")
    if override.type == OverrideType.ADD and present:
        raise ConfigError(f"{override.key_or_group}: already set (by the experiment); replace it without +: {line}")


def _check_sweep_keys(where: str, sweeper: dict) -> None:
    """A sweeper's grid and zipped keys become overrides only when Hydra sweeps: check their names now."""
    for field in SWEEPER_FIELDS:
        for key in map(str, sweeper.get(field) or ()):
            if key.split(".")[0] not in SCHEMA_KEYS and key not in CONFIG_GROUPS:
                raise ConfigError(f"{where}hydra.sweeper.{field}.{_unknown_key(key)}")


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


@hydra.main(config_path=str(CONF_DIR), config_name=PRIMARY_CONFIG, version_base="1.3")
def hydra_app(cfg: DictConfig) -> None:
    run_configured_trial(cfg)


def run_configured_trial(cfg: DictConfig) -> None:
    """One Hydra job, run through the sweep engine: a plain run, or a job of another launcher's sweep.

    `hydra/launcher=sweeplab` (the default for -m) hands the engine every job at once; Hydra's basic,
    joblib and submitit launchers call this once per job, and models stay loaded for the process.
    """
    from sweeplab.engine import ExecutionSettings, SweepEngine
    from sweeplab.sweep import ComposedJob
    from sweeplab.tracking import PARENT_RUN_ENV

    interrupts.install()  # again: submitit workers start here, with submitit's own handlers
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    job = ComposedJob(hydra_cfg.job.num if multirun else 0, list(hydra_cfg.overrides.task), cfg,
                      OmegaConf.to_container(hydra_cfg.runtime.choices))
    engine = SweepEngine(ExecutionSettings(multirun=multirun), models=_process_models(),
                         parent_run=lambda: os.environ.get(PARENT_RUN_ENV))
    try:
        engine.run([job])
    except ConfigError as err:  # the store cannot be used: one line, before the model loads
        exit_for(err)


@functools.cache
def _process_models():
    """One model cache for the life of the process: a launcher that calls once per job loads each model once."""
    from sweeplab.models import PipelineCache

    return PipelineCache()
