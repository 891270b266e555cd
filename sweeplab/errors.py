"""Errors a user can fix, reported as one line without a traceback."""


class ConfigError(ValueError):
    """A config value that cannot work: the message names the key and what is allowed."""
