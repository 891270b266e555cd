"""Secrets never reach MLflow: values under secret-looking keys and passwords in URLs are masked.

A key is secret when its last word is token, password, secret, key, ... (`hf_token`,
`api_key`, `db_password`), so `tokenizer`, `max_tokens`, `keyframes` or `config_hash`
are left alone.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"
SECRET_WORDS = frozenset({"token", "password", "passwd", "passphrase", "secret", "key", "apikey", "credentials"})
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)[^@\s]+(?=@)")


def is_secret_key(key: str) -> bool:
    words = _WORD.findall(str(key).rsplit(".", 1)[-1])
    return bool(words) and words[-1].lower() in SECRET_WORDS


def redact(value: Any) -> Any:
    """A copy of a config container with secret values masked, recursively."""
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_key(k) and v is not None else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}", value)
    return value


def redact_override(override: str) -> str:
    """One Hydra override `key=value`, with the value masked when the key is secret."""
    key, sep, value = override.partition("=")
    if sep and is_secret_key(key.lstrip("+~")):
        return f"{key}={REDACTED}"
    return redact(override)
