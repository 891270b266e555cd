"""A safetensors file's JSON header, read without loading a tensor: checks of model and LoRA files before any load."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from sweeplab.errors import ConfigError

HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own bound on the header length


def read_safetensors_header(path: Path, where: str) -> dict:
    """The header mapping (tensor name -> dtype, shape, offsets; `__metadata__`); a one-line ConfigError
    starting with `where` if the file is not safetensors."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if not 2 <= length <= HEADER_LIMIT:
                raise ValueError("bad header length")
            header = json.loads(handle.read(length))
    except (struct.error, ValueError, UnicodeDecodeError, OSError):
        raise ConfigError(f"{where} is not a valid .safetensors file") from None
    if not isinstance(header, dict):
        raise ConfigError(f"{where} is not a valid .safetensors file")
    return header
