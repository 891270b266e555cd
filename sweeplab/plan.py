"""What a sweep would run, without running it: each trial's overrides and config hash.

    python -m sweeplab.plan experiment=invokeai_img2img [more overrides, sweeps included]

Prints JSON. The report layer calls this in a subprocess to find trials missing from the
store, since computing a config hash needs the trial code (and so torch).
"""

from __future__ import annotations

import json
import sys
from functools import partial

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

import sweeplab.schema  # noqa: F401  registers the config schemas
from sweeplab.cli import CONF_DIR, preflight
from sweeplab.errors import ConfigError
from sweeplab.sweepaxes import read_axes


def plan(overrides: list[str]) -> list[dict]:
    """Expand the sweep exactly as sweeplab's sweeper would (its grid times its zipped lists), then hash every
    trial."""
    from sweeplab.images import InitImages
    from sweeplab.trial import prepare_trial

    preflight(["-m", *overrides])
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [override.input_line for override in parsed if not override.is_sweep_override()]
    task = [override.input_line for override in parsed if not override.is_hydra_override()]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        sweeper = compose("config", fixed, return_hydra_config=True).hydra.sweeper  # as Hydra composes a multirun
        trials = read_axes(sweeper, task).trials()
        prepare = partial(prepare_trial, images=InitImages())
        return [_hash_trial(trial, compose("config", trial), prepare) for trial in trials]


def _hash_trial(trial: list[str], cfg, prepare_trial) -> dict:
    """An invalid trial has no hash; it is listed with its one-line error instead."""
    try:
        return {"overrides": trial, "config_hash": prepare_trial(cfg).spec.config_hash}
    except ConfigError as err:
        return {"overrides": trial, "config_hash": None, "error": str(err)}


def main() -> None:
    try:
        print(json.dumps(plan(sys.argv[1:])))
    except ConfigError as err:
        print(f"sweeplab: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
