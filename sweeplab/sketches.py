"""Crude, deterministic "doodle" init images drawn with PIL.

The img2img demos start from a bad drawing that Stable Diffusion is asked to
turn into a picture, in the spirit of the two doodles of the InvokeAI img2img
documentation: a fireplace with a fire ("fire-drawing.png") and a tree on a
hill with a river ("tree-and-river-sketch.png").  Nothing is downloaded: each
sketch is drawn here from coordinates given as fractions of the image size,
so any resolution gives the same picture, and the hand-drawn wobble comes
from a fixed-seed ``random.Random``, so the bytes are identical on every run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from PIL import Image, ImageDraw

__all__ = ["SKETCHES", "draw_sketch"]

Point = tuple[float, float]
Color = tuple[int, int, int]

INK: Color = (35, 28, 24)


class _Pen:
    """Draws thick-outlined, flat-coloured, slightly wobbly shapes.

    Coordinates are fractions of the image size.  Every shape is cut into a
    fixed number of segments whatever the resolution, so the random wobble
    (and therefore the drawing) is the same at every size.
    """

    def __init__(self, width: int, height: int, background: Color, seed: int, outlines: bool = True) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"sketch size must be positive, got {width}x{height}")
        self.image = Image.new("RGB", (width, height), background)
        self.draw = ImageDraw.Draw(self.image)
        self.w, self.h = width, height
        self.rng = random.Random(seed)
        self.unit = min(width, height)
        self.stroke = max(2, round(self.unit * 0.012))
        self.outlines = outlines  # False: flat colour regions only, the basis of a "finished" rendering

    def _wobbly(self, pts: Sequence[Point], closed: bool, wobble: float, steps: int) -> list[Point]:
        """Pixel coordinates of ``pts``, each edge cut in ``steps`` and jittered."""
        ends = list(pts) + ([pts[0]] if closed else [])
        out: list[Point] = []
        for (x0, y0), (x1, y1) in zip(ends, ends[1:]):
            for i in range(steps):
                t = i / steps
                dx = self.rng.uniform(-wobble, wobble) * self.unit
                dy = self.rng.uniform(-wobble, wobble) * self.unit
                out.append(((x0 + (x1 - x0) * t) * self.w + dx, (y0 + (y1 - y0) * t) * self.h + dy))
        if not closed:
            out.append((ends[-1][0] * self.w, ends[-1][1] * self.h))
        return out

    def shape(self, pts: Sequence[Point], fill: Color | None, outline: Color | None = INK,
              wobble: float = 0.005, steps: int = 3, thickness: float = 1.0) -> None:
        """A closed polygon with a flat fill and a thick hand-drawn outline."""
        px = self._wobbly(pts, True, wobble, steps)
        if fill is not None:
            self.draw.polygon(px, fill=fill)
        if outline is not None and self.outlines:
            self.draw.line(px + [px[0]], fill=outline, width=self._width(thickness), joint="curve")

    def line(self, pts: Sequence[Point], color: Color = INK, wobble: float = 0.004,
             steps: int = 3, thickness: float = 1.0) -> None:
        """An open, wobbly stroke; ink strokes are left out when outlines are off."""
        px = self._wobbly(pts, False, wobble, steps)
        if color == INK and not self.outlines:
            return
        self.draw.line(px, fill=color, width=self._width(thickness), joint="curve")

    def _width(self, thickness: float) -> int:
        return max(1, round(self.stroke * thickness))

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: Color | None, **kw) -> None:
        self.shape([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], fill, **kw)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: Color | None,
                n: int = 20, **kw) -> None:
        """An ellipse; ``rx`` is a fraction of the width, ``ry`` of the height."""
        self.shape(_arc(cx, cy, rx, ry, n, closed=True), fill, steps=1, **kw)


def _arc(cx: float, cy: float, rx: float, ry: float, n: int,
         start: float = 0.0, end: float = 2 * math.pi, closed: bool = False) -> list[Point]:
    """``n`` points along an elliptic arc (``n + 1`` when open, to include ``end``)."""
    count = n if closed else n + 1
    angles = [start + (end - start) * k / n for k in range(count)]
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


def _flame(cx: float, base: float, half_width: float, height: float,
           tips: Sequence[float]) -> list[Point]:
    """A flame outline: a tapered flat bottom and a row of spiky tongues.

    ``tips`` are the relative heights (0..1) of the tongues, left to right.
    """
    left, right = cx - half_width, cx + half_width
    n = len(tips)
    pts: list[Point] = [(right, base - 0.25 * height)]
    for i, tip in enumerate(reversed(tips)):  # tongues from right to left
        x_tip = right - (i + 0.5) * 2 * half_width / n
        x_notch = right - (i + 1) * 2 * half_width / n
        pts.append((x_tip, base - tip * height))
        if i < n - 1:
            pts.append((x_notch, base - 0.45 * height))
    pts.append((left, base - 0.25 * height))
    pts += [(left + 0.15 * half_width, base), (right - 0.15 * half_width, base)]
    return pts


def fireplace(width: int = 512, height: int = 512, seed: int = 1, outlines: bool = True) -> Image.Image:
    """A crude fireplace with a roaring fire: wall, brick surround, mantel, logs."""
    pen = _Pen(width, height, background=(236, 220, 178), seed=seed, outlines=outlines)
    floor_y = 0.86
    pen.rect(-0.02, floor_y, 1.02, 1.02, fill=(158, 104, 58))  # floor boards and the floor line
    for x in (0.2, 0.45, 0.7, 0.95):
        pen.line([(x, floor_y + 0.02), (x - 0.08, 0.99)], thickness=0.5)
    # brick surround, mortar lines, mantel shelf
    pen.rect(0.15, 0.34, 0.85, floor_y, fill=(178, 62, 44))
    rows = [0.34 + k * 0.065 for k in range(9)]
    for k, y in enumerate(rows[1:-1]):
        pen.line([(0.15, y), (0.85, y)], thickness=0.5)
        for x in [0.15 + 0.14 * (j + 0.5 * (k % 2)) for j in range(1, 5)]:
            pen.line([(x, y - 0.065), (x, y)], thickness=0.5, steps=1)
    pen.rect(0.09, 0.27, 0.91, 0.34, fill=(110, 70, 40))
    # dark arched firebox opening
    arch = _arc(0.5, 0.54, 0.23, 0.08, 8, start=math.pi, end=2 * math.pi)
    pen.shape(arch + [(0.73, floor_y), (0.27, floor_y)], fill=(28, 22, 24), thickness=1.3)
    # flames: red, then orange, then yellow inside
    pen.shape(_flame(0.5, 0.8, 0.2, 0.33, [0.7, 1.0, 0.8, 0.95, 0.65]), fill=(226, 48, 28))
    pen.shape(_flame(0.5, 0.8, 0.14, 0.25, [0.8, 1.0, 0.85]), fill=(250, 140, 20))
    pen.shape(_flame(0.5, 0.8, 0.075, 0.15, [1.0, 0.8]), fill=(255, 225, 60), thickness=0.7)
    # two crossed logs with end grain
    for (x0, y0), (x1, y1) in [((0.33, 0.84), (0.64, 0.77)), ((0.36, 0.77), (0.67, 0.84))]:
        log = [(x0, y0 - 0.025), (x1, y1 - 0.025), (x1, y1 + 0.025), (x0, y0 + 0.025)]
        pen.shape(log, fill=(120, 72, 36))
        pen.ellipse(x1, y1, 0.02, 0.025, fill=(214, 170, 110), n=10)
    return pen.image


def tree_hill_river(width: int = 512, height: int = 512, seed: int = 2, outlines: bool = True) -> Image.Image:
    """A sketch of a tree on a green hill, a sun, and a river winding through grass."""
    pen = _Pen(width, height, background=(150, 205, 245), seed=seed, outlines=outlines)
    # sun with rays, a cloud
    for k in range(8):
        a = 2 * math.pi * k / 8
        pen.line([(0.83 + 0.085 * math.cos(a), 0.15 + 0.085 * math.sin(a)),
                  (0.83 + 0.13 * math.cos(a), 0.15 + 0.13 * math.sin(a))], color=(235, 170, 20), steps=1)
    pen.ellipse(0.83, 0.15, 0.065, 0.065, fill=(255, 215, 40))
    for cx, cy, r in [(0.2, 0.16, 0.06), (0.28, 0.13, 0.07), (0.36, 0.16, 0.055)]:
        pen.ellipse(cx, cy, r, r * 0.75, fill=(250, 250, 250), outline=None)
    # the hill, then the foreground meadow in front of it
    hill = [(x / 10, 0.72 - 0.30 * math.exp(-((x / 10 - 0.42) / 0.33) ** 2)) for x in range(-1, 12)]
    pen.shape(hill + [(1.1, 1.1), (-0.1, 1.1)], fill=(92, 170, 72))
    meadow = [(-0.1, 0.66), (0.3, 0.63), (0.7, 0.64), (1.1, 0.60), (1.1, 1.1), (-0.1, 1.1)]
    pen.shape(meadow, fill=(130, 200, 90))
    # the tree on the hill top: trunk, round canopy with a few leaf clumps
    pen.rect(0.40, 0.26, 0.45, 0.45, fill=(120, 75, 40))
    pen.ellipse(0.425, 0.24, 0.15, 0.14, fill=(44, 140, 52), n=16, wobble=0.012)
    for cx, cy in [(0.37, 0.2), (0.47, 0.26), (0.45, 0.17)]:
        pen.ellipse(cx, cy, 0.035, 0.03, fill=None, outline=(20, 95, 30), thickness=0.6, n=8)
    # the river, widening as it winds towards the viewer
    course = []  # (centre x, y, half width) from the source down to the bottom edge
    for t in (k / 12 for k in range(13)):
        course.append((0.78 - 0.35 * t + 0.14 * math.sin(2.8 * math.pi * t), 0.64 + 0.37 * t,
                       0.015 + 0.11 * t ** 1.3))
    left_bank = [(x - hw, y) for x, y, hw in course]
    right_bank = [(x + hw, y) for x, y, hw in reversed(course)]
    pen.shape(left_bank + right_bank, fill=(55, 120, 215), steps=1)
    for x, y, hw in course[4:11:3]:  # ripples
        pen.line([(x - 0.4 * hw, y), (x + 0.4 * hw, y)], color=(200, 230, 255), thickness=0.6, steps=1)
    return pen.image


SKETCHES: dict[str, Callable[[int, int], Image.Image]] = {
    "fireplace": fireplace,
    "tree_hill_river": tree_hill_river,
}


def draw_sketch(name: str, width: int = 512, height: int = 512) -> Image.Image:
    """Draw the named sketch as an RGB image of ``width`` x ``height`` pixels."""
    try:
        painter = SKETCHES[name]
    except KeyError:
        raise KeyError(f"unknown sketch {name!r}; known sketches: {', '.join(sorted(SKETCHES))}") from None
    return painter(width, height)
