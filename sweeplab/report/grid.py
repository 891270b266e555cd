"""A labelled X/Y image grid, drawn with PIL, as A1111's X/Y/Z plot users know it.

The layout is computed first (every box in pixels), then drawn, so tests and callers
can ask where a label or a cell is. The font is Pillow's bundled one: the same bytes
on every machine with the same Pillow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
FAILED_FILL = (190, 190, 190)
FAILED_INK = (110, 110, 110)
MISSING_FILL = (235, 235, 235)
FAILED = "failed"
MISSING = "no run"
DEFAULT_MAX_SIDE = 8192  # px: past this a grid PNG gets slow to open and some viewers refuse it


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


@dataclass(frozen=True)
class GridLayout:
    """Pixel boxes (left, top, right, bottom) of a grid's legend, labels and cells."""

    columns: int
    rows: int
    cell_width: int
    cell_height: int
    margin: int
    gap: int
    legend_height: int
    column_label_height: int
    row_label_width: int

    @property
    def size(self) -> tuple[int, int]:
        width = 2 * self.margin + self.row_label_width + self.columns * self.cell_width + (self.columns - 1) * self.gap
        height = (2 * self.margin + self.legend_height + self.column_label_height
                  + self.rows * self.cell_height + (self.rows - 1) * self.gap)
        return width, height

    def cell_box(self, column: int, row: int) -> tuple[int, int, int, int]:
        left = self.margin + self.row_label_width + column * (self.cell_width + self.gap)
        top = self.margin + self.legend_height + self.column_label_height + row * (self.cell_height + self.gap)
        return left, top, left + self.cell_width, top + self.cell_height

    def column_label_box(self, column: int) -> tuple[int, int, int, int]:
        left, top, right, _ = self.cell_box(column, 0)
        return left, top - self.column_label_height, right, top

    def row_label_box(self, row: int) -> tuple[int, int, int, int]:
        left, top, _, bottom = self.cell_box(0, row)
        return self.margin, top, left, bottom

    def legend_box(self) -> tuple[int, int, int, int]:
        return self.margin, self.margin, self.size[0] - self.margin, self.margin + self.legend_height


def _wrap(text: str, face: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap to a pixel width; a word wider than that is cut."""
    lines: list[str] = []
    for word in text.split():
        if lines and face.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    fitted = []
    for line in lines:
        while face.getlength(line) > width and len(line) > 1:
            cut = len(line) - 1
            while cut > 1 and face.getlength(line[:cut]) > width:
                cut -= 1
            fitted.append(line[:cut])
            line = line[cut:]
        fitted.append(line)
    return fitted or [""]


def _text_height(lines: list[str], face: ImageFont.FreeTypeFont) -> int:
    return len(lines) * _line_height(face)


def _line_height(face: ImageFont.FreeTypeFont) -> int:
    ascent, descent = face.getmetrics()
    return ascent + descent + 2


def _draw_lines(draw: ImageDraw.ImageDraw, box, lines: list[str], face, center: bool) -> None:
    left, top, right, bottom = box
    y = top + max(0, (bottom - top - _text_height(lines, face)) // 2)
    for line in lines:
        x = left + (right - left - face.getlength(line)) / 2 if center else left
        draw.text((round(x), y), line, font=face, fill=INK)
        y += _line_height(face)


@dataclass(frozen=True)
class GridStyle:
    """How a grid is drawn, in pixels; the command line's --cell, --margin, --gap, --font-size and --max-side."""

    cell: int = 128  # cell width; the height follows the images' aspect ratio
    margin: int = 16  # around the whole grid
    gap: int = 4  # between cells
    font_size: int = 14  # of the legend and the labels
    max_side: int = DEFAULT_MAX_SIDE  # no grid file is wider or taller: cells shrink, then the grid splits


@dataclass(frozen=True)
class GridText:
    """A grid's labels, wrapped to the boxes of its layout."""

    legend: list[str]
    columns: list[list[str]]
    rows: list[list[str]]


def layout_grid(legend: str, column_labels: list[str], row_labels: list[str], cell_width: int, cell_height: int,
                style: GridStyle) -> tuple[GridLayout, GridText]:
    """Where everything goes, before anything is drawn (also how fit_grid measures a candidate)."""
    margin, gap, font_size = style.margin, style.gap, style.font_size
    face = font(font_size)
    row_label_width = min(3 * cell_width, max(face.getlength(label) for label in row_labels) + 2 * gap)
    row_label_width = max(int(row_label_width), 4 * font_size)
    column_lines = [_wrap(label, face, cell_width - gap) for label in column_labels]
    row_lines = [_wrap(label, face, row_label_width - gap) for label in row_labels]
    width_guess = 2 * margin + row_label_width + len(column_labels) * (cell_width + gap)
    legend_lines = _wrap(legend, face, max(cell_width, width_guess - 2 * margin))
    layout = GridLayout(
        columns=len(column_labels), rows=len(row_labels), cell_width=cell_width, cell_height=cell_height,
        margin=margin, gap=gap, legend_height=_text_height(legend_lines, face) + gap,
        column_label_height=max(_text_height(lines, face) for lines in column_lines) + gap,
        row_label_width=row_label_width,
    )
    return layout, GridText(legend_lines, column_lines, row_lines)


def draw_grid(legend: str, column_labels: list[str], row_labels: list[str], cells: list[list],
              cell_width: int, cell_height: int, style: GridStyle) -> tuple[Image.Image, GridLayout]:
    """cells[row][column] is an image, FAILED or MISSING; images are fitted into the cell."""
    face = font(style.font_size)
    layout, text = layout_grid(legend, column_labels, row_labels, cell_width, cell_height, style)
    canvas = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    _draw_lines(draw, layout.legend_box(), text.legend, face, center=False)
    for column, lines in enumerate(text.columns):
        _draw_lines(draw, layout.column_label_box(column), lines, face, center=True)
    for row, lines in enumerate(text.rows):
        _draw_lines(draw, layout.row_label_box(row), lines, face, center=False)
    for row, row_cells in enumerate(cells):
        for column, cell in enumerate(row_cells):
            _draw_cell(canvas, draw, layout.cell_box(column, row), cell, face)
    return canvas, layout


SMALLEST_SCALE = 0.5  # cells shrink to this share of their width at most; a grid that still does not fit is split


class GridTooSmall(Exception):
    """max_side cannot hold even one cell with its labels; the message says how much it needs."""


@dataclass(frozen=True)
class GridPart:
    """A block of a grid's columns and rows, drawn as one file."""

    columns: range
    rows: range
    caption: str  # which block, e.g. "part 2 of 4: columns 9-16 of 20"; "" for the whole grid

    def labels(self, column_labels: list[str], row_labels: list[str]) -> tuple[list[str], list[str]]:
        return [column_labels[c] for c in self.columns], [row_labels[r] for r in self.rows]

    def cells(self, cells: list[list]) -> list[list]:
        return [[cells[r][c] for c in self.columns] for r in self.rows]


@dataclass(frozen=True)
class GridFit:
    """How a grid keeps within max_side: the cell size it is drawn at and the parts it is drawn in."""

    cell_width: int
    cell_height: int
    parts: tuple[GridPart, ...]
    requested_width: int  # the cell width asked for (GridStyle.cell)
    max_side: int

    @property
    def note(self) -> str:
        """What was done to keep within max_side, for captions; "" when nothing was."""
        if len(self.parts) > 1:
            first = self.parts[0]
            return (f"the grid would be over {self.max_side} px (--max-side) even with cells scaled down to "
                    f"{SMALLEST_SCALE:g} of {self.requested_width} px, so it is split into {len(self.parts)} parts "
                    f"of at most {len(first.columns)} x {len(first.rows)} cells (columns x rows)")
        if self.cell_width < self.requested_width:
            return (f"cells scaled down from {self.requested_width} to {self.cell_width} px wide to keep the grid "
                    f"within {self.max_side} px (--max-side)")
        return ""

    def legend(self, base: str, part: GridPart) -> str:
        """A part's legend: the grid's, then which part it is or how its cells were scaled."""
        extra = part.caption or self.note
        return f"{base}. {extra}" if extra else base

    def fits(self, base: str, column_labels: list[str], row_labels: list[str], style: GridStyle) -> bool:
        return all(_side(self.legend(base, part), *part.labels(column_labels, row_labels), self.cell_width,
                         self.cell_height, style) <= self.max_side for part in self.parts)


def _side(legend: str, column_labels: list[str], row_labels: list[str], cell_width: int, cell_height: int,
          style: GridStyle) -> int:
    return max(layout_grid(legend, column_labels, row_labels, cell_width, cell_height, style)[0].size)


def fit_grid(legend: str, column_labels: list[str], row_labels: list[str], cell_height: int,
             style: GridStyle) -> GridFit:
    """The whole grid at the largest cells, down to SMALLEST_SCALE, within max_side; else parts at full size."""
    whole = (GridPart(range(len(column_labels)), range(len(row_labels)), ""),)
    smallest = max(1, math.ceil(style.cell * SMALLEST_SCALE))
    for width in range(style.cell, smallest - 1, -1):
        fit = GridFit(width, max(1, round(width * cell_height / style.cell)), whole, style.cell, style.max_side)
        if fit.fits(legend, column_labels, row_labels, style):
            return fit
    full, _ = layout_grid(legend, column_labels, row_labels, style.cell, cell_height, style)
    room = style.max_side - 2 * style.margin + style.gap
    columns_each = (room - full.row_label_width) // (style.cell + style.gap)
    rows_each = (room - full.legend_height - full.column_label_height) // (cell_height + style.gap)
    while columns_each >= 1 and rows_each >= 1:
        parts = _parts(len(column_labels), len(row_labels), columns_each, rows_each)
        fit = GridFit(style.cell, cell_height, parts, style.cell, style.max_side)
        if fit.fits(legend, column_labels, row_labels, style):
            return fit
        rows_each -= 1  # a part's narrower legend wraps onto more lines
    widest = _parts(len(column_labels), len(row_labels), 1, 1)[-1]  # one cell with the longest caption
    needed = _side(f"{legend}. {widest.caption}", column_labels[:1], row_labels[:1], style.cell, cell_height, style)
    raise GridTooSmall(f"--max-side {style.max_side} px cannot hold one {style.cell} px cell with its labels "
                       f"({needed} px); allowed: a larger --max-side or a smaller --cell")


def _parts(columns: int, rows: int, columns_each: int, rows_each: int) -> tuple[GridPart, ...]:
    """Blocks of at most columns_each x rows_each, row by row, each captioned with where it lies."""
    blocks = [(range(c, min(c + columns_each, columns)), range(r, min(r + rows_each, rows)))
              for r in range(0, rows, rows_each) for c in range(0, columns, columns_each)]
    parts = []
    for number, (column_block, row_block) in enumerate(blocks, start=1):
        spans = []
        if columns_each < columns:
            spans.append(f"columns {column_block.start + 1}-{column_block.stop} of {columns}")
        if rows_each < rows:
            spans.append(f"rows {row_block.start + 1}-{row_block.stop} of {rows}")
        parts.append(GridPart(column_block, row_block, f"part {number} of {len(blocks)}: {', '.join(spans)}"))
    return tuple(parts)


def _draw_cell(canvas: Image.Image, draw: ImageDraw.ImageDraw, box, cell, face) -> None:
    left, top, right, bottom = box
    if isinstance(cell, Image.Image):
        scale = min((right - left) / cell.width, (bottom - top) / cell.height)
        size = (max(1, round(cell.width * scale)), max(1, round(cell.height * scale)))
        fitted = cell.resize(size, Image.Resampling.LANCZOS)
        canvas.paste(fitted, (left + (right - left - fitted.width) // 2, top + (bottom - top - fitted.height) // 2))
        return
    failed = cell == FAILED
    draw.rectangle((left, top, right - 1, bottom - 1), fill=FAILED_FILL if failed else MISSING_FILL)
    if failed:
        draw.line((left, top, right - 1, bottom - 1), fill=FAILED_INK, width=3)
        draw.line((left, bottom - 1, right - 1, top), fill=FAILED_INK, width=3)
    _draw_lines(draw, box, [str(cell)], face, center=True)
