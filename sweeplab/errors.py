"""Errors a user can fix, reported as one line without a traceback."""

import sys
from typing import NoReturn


class ConfigError(ValueError):
    """A config value that cannot work: the message names the key and what is allowed."""


class StoreError(ConfigError):
    """The MLflow store at tracking.uri cannot be used: the message names the URI, the cause and the fix."""


def exit_for(err: ConfigError) -> NoReturn:
    """A user's error as sweeplab reports it: one line on stderr, exit status 2."""
    print(f"sweeplab: error: {err}", file=sys.stderr)
    sys.exit(2)
