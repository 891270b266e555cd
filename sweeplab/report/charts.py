"""Line charts drawn with matplotlib, as reproducible as the rest of a report.

The Agg canvas is used directly (no pyplot, no global figure state), under matplotlib's default
style whatever the user's matplotlibrc says, and the PNG is written without its "Software" entry;
the report then re-encodes the pixels with its own fixed PNG settings.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

LINE_COLOUR = "#4a6fa5"
MARK_COLOUR = "#c0392b"


@dataclass(frozen=True)
class Mark:
    """A labelled point on the line, e.g. where a strength enters the schedule."""

    x: float
    y: float
    label: str


def line_chart(title: str, y_values: list[float], x_label: str, y_label: str, marks: list[Mark],
               marks_legend: str) -> Image.Image:
    """y against its index, with the marks drawn over it in another colour and labelled."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.style.context("default"):
        figure = Figure(figsize=(8, 4.5), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.plot(range(len(y_values)), y_values, marker="o", markersize=3, color=LINE_COLOUR, label=y_label)
        axes.plot([mark.x for mark in marks], [mark.y for mark in marks], linestyle="none", marker="o",
                  markersize=7, markerfacecolor="none", markeredgecolor=MARK_COLOUR, label=marks_legend)
        for mark in marks:
            axes.annotate(mark.label, (mark.x, mark.y), xytext=(5, 7), textcoords="offset points", fontsize=8,
                          color=MARK_COLOUR)
        axes.set_title(title, fontsize=11)
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
        axes.set_xticks(range(0, len(y_values), max(1, len(y_values) // 10)))
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
    return Image.open(buffer).convert("RGB")
