"""Init images: a file on disk or a sketch the project draws, checked before any model loads."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from sweeplab.errors import ConfigError
from sweeplab.sketches import SKETCHES, draw_sketch

SKETCH_SIZE = 512


def load_init_image(source: str) -> Image.Image:
    """The RGB image named by `init_image`: a shipped sketch name or a path."""
    if source in SKETCHES:
        return draw_sketch(source, SKETCH_SIZE, SKETCH_SIZE)
    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"init_image: '{source}' is neither an existing file nor a shipped sketch "
            f"({', '.join(SKETCHES)})"
        )
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ConfigError(f"init_image: '{source}' is not a readable image ({err})") from None


def image_digest(image: Image.Image) -> str:
    """A content hash of the pixels, so a trial's identity does not depend on where the file lives."""
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def fit_to_size(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize the init image to the trial's size, as diffusers would otherwise do implicitly."""
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS)
