"""Init images in every shape users have them: each is converted properly or refused in one line."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sweeplab.errors import ConfigError
from sweeplab.images import InitImages, fit_within, load_init_image
from sweeplab.trial import prepare_trial


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^init_image: '.*nope.png' is neither an existing file"):
        load_init_image(str(tmp_path / "nope.png"))


def test_non_image_file_is_refused(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is text, not a PNG")
    with pytest.raises(ConfigError, match=r"^init_image: '.*notes.png' is not a readable image"):
        load_init_image(str(path))


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "whole.png"
    Image.effect_noise((256, 256), 64).convert("RGB").save(path)
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConfigError, match=r"^init_image: '.*cut.png' is not a readable image"):
        load_init_image(str(cut))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    """A tiny file whose header claims 100000 x 100000 pixels."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    path = tmp_path / "bomb.png"
    path.write_bytes(data + _png_chunk(b"IEND", b""))
    with pytest.raises(ConfigError, match=r"^init_image: '.*bomb.png' is too large to decode safely"):
        load_init_image(str(path))


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)  # uint16 -> mode I;16
    rgb = np.asarray(load_init_image(str(path)).rgb)
    assert rgb.shape == (64, 256, 3)
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255
    assert 120 <= rgb[0, 128, 0] <= 135  # mid-grey, where a naive convert would saturate to white


@pytest.mark.parametrize("mode", ["P", "L", "CMYK", "LA"])
def test_palette_greyscale_and_cmyk_become_rgb(tmp_path, mode):
    source = Image.new("RGB", (64, 32), (200, 40, 40))
    path = tmp_path / f"image.{'jpg' if mode == 'CMYK' else 'png'}"
    source.convert(mode).save(path)
    image = load_init_image(str(path))
    assert image.rgb.mode == "RGB" and image.rgb.size == (64, 32) and image.mask is None
    red, green, _ = np.asarray(image.rgb)[16, 32].astype(int)
    if mode in ("P", "CMYK"):
        assert red > 150 and green < 90  # still red
    else:
        assert abs(red - green) <= 1  # greyscale stays grey


def test_transparent_pixels_become_the_mask_and_keep_their_colour(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[..., 3] = 255
    rgba[16:48, 16:48, 3] = 0  # transparent square: redraw it
    path = tmp_path / "hole.png"
    Image.fromarray(rgba, "RGBA").save(path)
    image = load_init_image(str(path))
    mask = np.asarray(image.mask)
    assert mask[32, 32] == 255 and mask[4, 4] == 0 and (mask == 255).sum() == 32 * 32
    assert tuple(np.asarray(image.rgb)[32, 32]) == (10, 200, 30)  # colour under the hole is kept


def test_opaque_alpha_is_plain_img2img(tmp_path):
    path = tmp_path / "opaque.png"
    Image.new("RGBA", (32, 32), (1, 2, 3, 255)).save(path)
    assert load_init_image(str(path)).mask is None


@pytest.mark.parametrize(
    ("size", "box", "expected"),
    [((1024, 512), (512, 512), (512, 256)), ((600, 900), (512, 512), (336, 512)), ((512, 512), (384, 384), (384, 384))],
)
def test_fit_keeps_aspect_ratio_in_multiples_of_8(size, box, expected):
    assert fit_within(*size, *box) == expected


def test_fit_versus_resize(compose_config, tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (1024, 512), "blue").save(path)
    fitted = prepare_trial(compose_config(f"init_image={path}", "width=512", "height=512", "fit=true"))
    stretched = prepare_trial(compose_config(f"init_image={path}", "width=512", "height=512"))
    assert (fitted.spec.width, fitted.spec.height) == (512, 256) and fitted.init.rgb.size == (512, 256)
    assert (stretched.spec.width, stretched.spec.height) == (512, 512) and stretched.init.rgb.size == (512, 512)


def test_small_init_image_warns_as_the_doc_does(compose_config, tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (256, 256), "green").save(path)
    trial = prepare_trial(compose_config(f"init_image={path}"))
    assert any("smaller than 512x512" in w and "fit" in w for w in trial.warnings)
    assert not prepare_trial(compose_config("init_image=fireplace")).warnings


def test_a_sweeps_trials_share_one_drawing_of_their_init_image(compose_config):
    """The planner draws, hashes and resizes an image once for all the trials that use it, and each trial is
    the trial it would be alone."""
    images = InitImages()
    first, second = (prepare_trial(compose_config(f"seed={seed}", "width=256", "height=256"), images)
                     for seed in (1, 2))
    smaller = prepare_trial(compose_config("seed=2", "width=128", "height=128"), images)
    alone = prepare_trial(compose_config("seed=2", "width=256", "height=256"))
    assert first.init is second.init and first.init.rgb.size == (256, 256) and smaller.init.rgb.size == (128, 128)
    assert second.spec.config_hash == alone.spec.config_hash
    assert second.init.rgb.tobytes() == alone.init.rgb.tobytes()
