"""Init images: a file on disk or a sketch the project draws, checked before any model loads.

Any mode PIL opens is converted properly (16-bit scaled, palette and greyscale expanded,
CMYK converted); transparent pixels become an inpainting mask; oversized images are
refused before they are decoded.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sweeplab.errors import ConfigError
from sweeplab.sketches import SKETCHES, draw_sketch

SKETCH_SIZE = 512
MAX_PIXELS = 8192 * 8192  # larger images are refused as possible decompression bombs
SMALL_SIDE = 512  # the InvokeAI doc: img2img works poorly below 512x512
SMALL_IMAGE_WARNING = (
    "init_image: {w}x{h} is smaller than 512x512; img2img does not work well on small images, "
    "scale it to at least 512x512 or use fit=true with a larger width/height"
)


@dataclass(frozen=True)
class InitImage:
    """The RGB pixels (colour kept under transparent pixels) and the region to redraw, if any."""

    rgb: Image.Image
    mask: Image.Image | None = None  # mode "L", white = redraw; None = plain img2img


def load_init_image(source: str) -> InitImage:
    """The image named by `init_image`: a shipped sketch name or a path."""
    if source in SKETCHES:
        return InitImage(draw_sketch(source, SKETCH_SIZE, SKETCH_SIZE))
    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"init_image: '{source}' is neither an existing file nor a shipped sketch "
            f"({', '.join(SKETCHES)})"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise Image.DecompressionBombError("too many pixels")
                image.load()
                return _to_init_image(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ConfigError(
            f"init_image: '{source}' is too large to decode safely; allowed up to {MAX_PIXELS:,} pixels"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ConfigError(f"init_image: '{source}' is not a readable image ({err})") from None


def _to_init_image(image: Image.Image) -> InitImage:
    """Normalise any PIL mode to RGB plus an optional transparency mask."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.int64)
        top = 65535 if image.mode != "I" or pixels.max() > 255 else 255
        image = Image.fromarray((pixels.clip(0, top) * 255 // top).astype(np.uint8), "L")
    elif image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        scale = 255.0 if pixels.max() <= 1.0 else 1.0
        image = Image.fromarray((pixels * scale).clip(0, 255).astype(np.uint8), "L")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if not has_alpha:
        return InitImage(image.convert("RGB"))
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    transparent = alpha < 128
    rgb = rgba.convert("RGB")  # keeps the colour under transparent pixels: the doc asks for it
    if not transparent.any():
        return InitImage(rgb)
    return InitImage(rgb, Image.fromarray(transparent.astype(np.uint8) * 255, "L"))


def image_digest(image: InitImage) -> str:
    """A content hash of the pixels (and mask), so a trial's identity ignores where the file lives."""
    digest = hashlib.sha256()
    for part in (image.rgb, image.mask):
        if part is not None:
            digest.update(f"{part.mode}:{part.width}x{part.height}:".encode())
            digest.update(part.tobytes())
    return digest.hexdigest()


def fit_within(width: int, height: int, box_width: int, box_height: int, multiple: int = 8) -> tuple[int, int]:
    """The largest size with the image's aspect ratio inside the box, in multiples of `multiple` (InvokeAI's --fit)."""
    scale = min(box_width / width, box_height / height)
    return tuple(max(multiple, int(side * scale) // multiple * multiple) for side in (width, height))


def resize_init_image(image: InitImage, width: int, height: int) -> InitImage:
    """Resize pixels and mask to the trial's size, as diffusers would otherwise do implicitly."""
    if image.rgb.size == (width, height):
        return image
    rgb = image.rgb.resize((width, height), Image.Resampling.LANCZOS)
    mask = image.mask.resize((width, height), Image.Resampling.NEAREST) if image.mask is not None else None
    return InitImage(rgb, mask)


class InitImages:
    """The init images of one sweep's trials: each source read or drawn once, hashed once, resized once per size.

    A sweep's trials mostly share one image; drawing, hashing and resizing it again for each of 24 trials
    cost 0.4 s here. The images are shared and never modified (diffusers copies them into tensors).
    """

    def __init__(self):
        self._loaded: dict[str, tuple[InitImage, str]] = {}  # source -> the image and its digest
        self._resized: dict[tuple[str, int, int], InitImage] = {}

    def load(self, source: str) -> tuple[InitImage, str]:
        """The image `init_image` names, and its content digest."""
        if source not in self._loaded:
            image = load_init_image(source)
            self._loaded[source] = image, image_digest(image)
        return self._loaded[source]

    def resized(self, source: str, width: int, height: int) -> InitImage:
        key = source, width, height
        if key not in self._resized:
            self._resized[key] = resize_init_image(self.load(source)[0], width, height)
        return self._resized[key]
