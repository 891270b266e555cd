"""A labelled X/Y image grid, drawn with PIL, as A1111's X/Y/Z plot users know it.

The layout is computed first (every box in pixels), then drawn, so tests and callers
can ask where a label or a cell is. The font is Pillow's bundled one: the same bytes
on every machine with the same Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
FAILED_FILL = (190, 190, 190)
FAILED_INK = (110, 110, 110)
MISSING_FILL = (235, 235, 235)
FAILED = "failed"
MISSING = "no run"


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


def draw_grid(legend: str, column_labels: list[str], row_labels: list[str], cells: list[list],
              cell_width: int, cell_height: int, margin: int = 16, gap: int = 4,
              font_size: int = 14) -> tuple[Image.Image, GridLayout]:
    """cells[row][column] is an image, FAILED or MISSING; images are fitted into the cell."""
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
    canvas = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    _draw_lines(draw, layout.legend_box(), legend_lines, face, center=False)
    for column, lines in enumerate(column_lines):
        _draw_lines(draw, layout.column_label_box(column), lines, face, center=True)
    for row, lines in enumerate(row_lines):
        _draw_lines(draw, layout.row_label_box(row), lines, face, center=False)
    for row, row_cells in enumerate(cells):
        for column, cell in enumerate(row_cells):
            _draw_cell(canvas, draw, layout.cell_box(column, row), cell, face)
    return canvas, layout


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
