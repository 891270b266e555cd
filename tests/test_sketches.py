"""Tests for the project-drawn doodle init images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sweeplab.sketches import SKETCHES, draw_sketch

NAMES = ["fireplace", "tree_hill_river"]


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _region(image: Image.Image, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """The pixels in a box given as fractions of the size, as an int array (h, w, 3)."""
    a = np.asarray(image, dtype=np.int32)
    h, w = a.shape[:2]
    return a[round(y0 * h):round(y1 * h), round(x0 * w):round(x1 * w)]


def _share(mask: np.ndarray) -> float:
    return float(mask.mean())


def _flame(a: np.ndarray) -> np.ndarray:  # red, orange or yellow
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    return (r > 200) & (b < 90) & (r > g)


def _dark(a: np.ndarray) -> np.ndarray:
    return a.max(axis=-1) < 60


def _sky_or_water_blue(a: np.ndarray) -> np.ndarray:
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    return (b > r + 40) & (b > g)


def _green(a: np.ndarray) -> np.ndarray:
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    return (g > r + 30) & (g > b + 30)


def test_registry_has_the_two_sketches():
    assert sorted(SKETCHES) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_default_is_512_rgb(name):
    image = draw_sketch(name)
    assert image.mode == "RGB"
    assert image.size == (512, 512)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name):
    assert _png_bytes(draw_sketch(name, 384, 384)) == _png_bytes(draw_sketch(name, 384, 384))
    assert _png_bytes(SKETCHES[name](256, 192)) == _png_bytes(draw_sketch(name, 256, 192))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(384, 384), (512, 320), (200, 300)])
def test_size_honoured(name, size):
    image = draw_sketch(name, *size)
    assert image.size == size
    assert image.mode == "RGB"


def test_unknown_name_lists_known_names():
    with pytest.raises(KeyError) as info:
        draw_sketch("campfire")
    message = str(info.value)
    assert "campfire" in message
    for name in NAMES:
        assert name in message


@pytest.mark.parametrize("size", [(512, 512), (384, 384), (512, 320)])
def test_fireplace_has_flames_and_a_dark_firebox(size):
    image = draw_sketch("fireplace", *size)
    firebox = _region(image, 0.3, 0.5, 0.7, 0.86)
    assert _share(_flame(firebox)) > 0.25
    assert _share(_dark(firebox)) > 0.10
    # the flames are in the fireplace, not on the wall above the mantel
    assert _share(_flame(_region(image, 0.0, 0.0, 1.0, 0.25))) == 0.0
    # brick-red surround beside the firebox
    side = _region(image, 0.17, 0.4, 0.25, 0.8)
    r, g, b = side[..., 0], side[..., 1], side[..., 2]
    assert _share((r > 140) & (g < 100) & (b < 80)) > 0.5


@pytest.mark.parametrize("size", [(512, 512), (384, 384), (512, 320)])
def test_tree_hill_river_layout(size):
    image = draw_sketch("tree_hill_river", *size)
    top = _region(image, 0.0, 0.0, 1.0, 0.08)
    assert _share(_sky_or_water_blue(top)) > 0.6
    middle = _region(image, 0.2, 0.5, 0.8, 0.6)  # the hill
    assert _share(_green(middle)) > 0.6
    bottom = _region(image, 0.0, 0.8, 1.0, 1.0)
    assert 0.1 < _share(_sky_or_water_blue(bottom)) < 0.6  # a river, not a lake
    assert _share(_green(bottom)) > 0.3  # running through grass
    # a brown trunk under a green canopy
    trunk = _region(image, 0.415, 0.39, 0.435, 0.43)
    r, g, b = trunk[..., 0], trunk[..., 1], trunk[..., 2]
    assert _share((r > g + 20) & (g > b)) > 0.5
    assert _share(_green(_region(image, 0.33, 0.15, 0.52, 0.33))) > 0.5


@pytest.mark.parametrize("name", NAMES)
def test_not_blank(name):
    a = np.asarray(draw_sketch(name, 256, 256))
    assert len(np.unique(a.reshape(-1, 3), axis=0)) >= 6
