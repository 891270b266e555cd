"""A procedural, seeded dataset of captioned scenes, each in two renderings.

The "finished" rendering (soft light, no outlines) is what the toy model learns to draw;
the "sketch" rendering of the same scene (flat crude colours, thick wobbly outlines) is the
doodle a user would start img2img from. Scenes: coloured shapes on coloured backgrounds,
fire in a fireplace, a tree on a hill with a river, and the sun in the sky.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sweeplab.sketches import INK, fireplace, tree_hill_river

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (245, 215, 50),
    "green": (50, 165, 70),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle")
KINDS = ("shape", "fire", "tree", "sun")
KIND_WEIGHTS = (0.64, 0.14, 0.14, 0.08)

SHAPE_CAPTIONS = (
    "a {c} {s}", "{c} {s}", "a {c} {s} on a {b} background", "a {size} {c} {s}",
    "a drawing of a {c} {s}", "a photograph of a {c} {s}", "a {c} {s} on {b}", "{c} {s} on a {b} background",
)
FIRE_CAPTIONS = (
    "fire", "a fire in a fireplace", "flames in a fireplace", "a cheery open fire", "fireplace with a fire",
    "a roaring fire", "fire, photograph",
)
TREE_CAPTIONS = (
    "tree on a hill with a river", "tree on a hill with a river, nature photograph, national geographic",
    "photograph of a tree on a hill with a river", "a green tree on a hill", "a tree, a hill and a river",
    "nature photograph of a tree on a hill",
)
SUN_CAPTIONS = ("a yellow sun in a blue sky", "the sun in the sky", "sun", "a sunny sky", "a yellow sun")


@dataclass(frozen=True)
class Scene:
    kind: str  # one of KINDS
    seed: int  # drives every remaining random choice of the drawing
    colour: str = ""  # shape scenes: the object's colour ...
    shape: str = ""  # ... its shape ...
    background: str = ""  # ... and the background colour
    cx: float = 0.5  # object centre and size as fractions of the side
    cy: float = 0.5
    size: float = 0.4


def random_scene(rng: random.Random) -> Scene:
    kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
    seed = rng.randrange(2**31)
    if kind != "shape":
        return Scene(kind, seed)
    colour, background = rng.sample(list(COLOURS), 2)
    size = rng.uniform(0.25, 0.6)
    return Scene(
        "shape", seed, colour, rng.choice(SHAPES), background,
        cx=rng.uniform(size / 2 + 0.05, 0.95 - size / 2), cy=rng.uniform(size / 2 + 0.05, 0.95 - size / 2), size=size,
    )


def caption(scene: Scene, rng: random.Random) -> str:
    if scene.kind == "fire":
        return rng.choice(FIRE_CAPTIONS)
    if scene.kind == "tree":
        return rng.choice(TREE_CAPTIONS)
    if scene.kind == "sun":
        return rng.choice(SUN_CAPTIONS)
    size = "big" if scene.size > 0.45 else "small"
    return rng.choice(SHAPE_CAPTIONS).format(c=scene.colour, s=scene.shape, b=scene.background, size=size)


def render(scene: Scene, size: int, sketch: bool = False) -> Image.Image:
    """The scene as a finished picture, or (sketch=True) as a crude outlined doodle."""
    rng = random.Random(scene.seed)
    if scene.kind == "shape":
        flat = _shape_scene(scene, size * 2, outlines=sketch, shaded=not sketch)
    elif scene.kind == "fire":
        flat = _framed(fireplace(size * 2, size * 2, seed=scene.seed, outlines=sketch), rng)
    elif scene.kind == "tree":
        flat = _framed(tree_hill_river(size * 2, size * 2, seed=scene.seed, outlines=sketch), rng)
    else:
        flat = _sun_scene(size * 2, rng, outlines=sketch)
    image = flat.resize((size, size), Image.Resampling.LANCZOS)
    return image if sketch else _finish(image, glow=scene.kind == "fire")


def _framed(image: Image.Image, rng: random.Random) -> Image.Image:
    """A random zoom and shift of a whole-scene drawing, so layouts vary."""
    side = image.width
    zoom = rng.uniform(0.8, 1.0)
    crop = int(side * zoom)
    x0, y0 = rng.randint(0, side - crop), rng.randint(0, side - crop)
    return image.crop((x0, y0, x0 + crop, y0 + crop)).resize((side, side), Image.Resampling.BILINEAR)


def _shape_polygon(scene: Scene, side: int) -> list[tuple[float, float]]:
    cx, cy, r = scene.cx * side, scene.cy * side, scene.size * side / 2
    if scene.shape == "circle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
    if scene.shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]


def _shape_scene(scene: Scene, side: int, outlines: bool, shaded: bool) -> Image.Image:
    background = np.array(COLOURS[scene.background], np.float64)
    colour = np.array(COLOURS[scene.colour], np.float64)
    rows = np.linspace(1.08, 0.9, side)[:, None, None] if shaded else np.ones((side, 1, 1))
    canvas = Image.fromarray(np.clip(background * rows * np.ones((side, side, 1)), 0, 255).astype(np.uint8))
    polygon = _shape_polygon(scene, side)
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).polygon(polygon, fill=255)
    if shaded:
        shadow = mask.filter(ImageFilter.GaussianBlur(side * 0.02)).point(lambda v: v * 0.35)
        offset = Image.new("L", (side, side), 0)
        offset.paste(shadow, (int(side * 0.02), int(side * 0.025)))
        canvas = Image.composite(Image.new("RGB", (side, side), (0, 0, 0)), canvas, offset)
        ys, xs = np.mgrid[0:side, 0:side] / side
        light = 1.15 - 0.35 * np.hypot(xs - (scene.cx - scene.size / 4), ys - (scene.cy - scene.size / 4)) / scene.size
        fill = Image.fromarray(np.clip(colour * light[..., None], 0, 255).astype(np.uint8))
    else:
        fill = Image.new("RGB", (side, side), tuple(int(v) for v in colour))
    canvas = Image.composite(fill, canvas, mask)
    if outlines:
        ImageDraw.Draw(canvas).line(polygon + polygon[:1], fill=INK, width=max(2, side // 60), joint="curve")
    return canvas


def _sun_scene(side: int, rng: random.Random, outlines: bool) -> Image.Image:
    sky = np.array([120, 180, 240], np.float64) * np.linspace(0.85, 1.1, side)[:, None, None]
    canvas = Image.fromarray(np.clip(sky * np.ones((side, side, 1)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    ground = rng.uniform(0.7, 0.9) * side
    draw.rectangle((0, ground, side, side), fill=(90, 170, 80), outline=INK if outlines else None,
                   width=max(2, side // 60))
    cx, cy, r = rng.uniform(0.2, 0.8) * side, rng.uniform(0.15, 0.45) * side, rng.uniform(0.08, 0.16) * side
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 215, 40), outline=INK if outlines else None,
                 width=max(2, side // 60))
    return canvas


def _finish(image: Image.Image, glow: bool) -> Image.Image:
    """Soften a flat rendering into a 'finished' picture: blur, bloom and a light falloff."""
    soft = image.filter(ImageFilter.GaussianBlur(image.width * 0.004))
    bloom = image.filter(ImageFilter.GaussianBlur(image.width * 0.04))
    pixels = np.asarray(soft, np.float64)
    if glow:  # firelight: warm bloom added where the picture is bright and red
        light = np.asarray(bloom, np.float64)
        pixels = pixels + 0.35 * light * (light[..., :1] > 150)
    ys, xs = np.mgrid[0 : image.height, 0 : image.width]
    falloff = 1.0 - 0.18 * (np.hypot(xs / image.width - 0.5, ys / image.height - 0.5) / 0.7) ** 2
    return Image.fromarray(np.clip(pixels * falloff[..., None], 0, 255).astype(np.uint8))
