"""A report as plain blocks, written three ways: Markdown, CSV and an HTML page.

Images are PNG files beside the page (relative links), so the Markdown renders on a
forge and the HTML folder is self-contained. Nothing written depends on when or where
the report ran: no timestamps, paths, run ids or wall-clock seconds, stable PNG bytes.
"""

from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image


@dataclass(frozen=True)
class Picture:
    src: str  # relative to the report folder
    alt: str
    width: int | None = None  # display width in pixels


Cell = list  # of str (lines) and Picture


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]


@dataclass
class Report:
    """What one subcommand produced: a titled list of headings, paragraphs, tables and pictures."""

    name: str  # file stem: NAME.md, NAME.html, NAME.csv and the folder NAME/ for images
    title: str
    blocks: list = field(default_factory=list)
    data: pd.DataFrame | None = None  # the CSV
    images: dict[str, bytes] = field(default_factory=dict)
    # zlib level of its PNGs (lossless at any level): 9, the smallest files, for reports kept in git; a sweep's
    # summary takes 1, since the sweep's user waits for it (a 24-cell grid: 0.6 s at 9)
    png_level: int = 9

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def text(self, text: str) -> None:
        self.blocks.append(("p", text))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def table(self, table: Table) -> None:
        self.blocks.append(("table", table))

    def picture(self, picture: Picture) -> None:
        self.blocks.append(("picture", picture))

    def html(self, markup: str) -> None:
        """Markup only the HTML page has (an interactive part); the Markdown goes without it."""
        self.blocks.append(("html", markup))

    def add_image(self, stem: str, image: Image.Image, alt: str, width: int | None = None) -> Picture:
        """Keep an image as NAME/STEM.png; the same stem twice is the same file."""
        src = f"{self.name}/{stem}.png"
        self.images.setdefault(src, png_bytes(image, self.png_level))
        return Picture(src, alt, width)


def png_bytes(image: Image.Image, level: int = 9) -> bytes:
    """PNG with no metadata chunks and fixed settings: the same pixels and level give the same bytes."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", optimize=False, compress_level=level)
    return buffer.getvalue()


MANIFEST = "MANIFEST"  # NAME/MANIFEST: the files a report wrote, the only ones its next run replaces
MANIFEST_HEADER = "# written by sweeplab-report: regenerating this report replaces exactly these files"


class ReportFolderError(Exception):
    """The output folder holds a report's file names that sweeplab-report did not write; nothing is replaced."""


def write_report(report: Report, out: Path) -> list[Path]:
    """Write NAME.md, NAME.html, NAME.csv and NAME/*.png, replacing only the files NAME/MANIFEST lists.

    A report never deletes what it did not make: other files in the folder stay, and a NAME.md or NAME/
    without a manifest (someone else's) stops the report before anything is written.
    """
    image_dir = out / report.name
    _remove_previous(report.name, out)
    image_dir.mkdir(parents=True, exist_ok=True)
    for src, data in sorted(report.images.items()):
        (out / src).write_bytes(data)
    written = [out / f"{report.name}.md", out / f"{report.name}.html"]
    written[0].write_text(to_markdown(report), encoding="utf-8")
    written[1].write_text(to_html(report), encoding="utf-8")
    if report.data is not None:
        written.append(out / f"{report.name}.csv")
        report.data.to_csv(written[-1], index=False, lineterminator="\n")
    entries = sorted([*(path.name for path in written), *report.images])
    (image_dir / MANIFEST).write_text("\n".join([MANIFEST_HEADER, *entries]) + "\n", encoding="utf-8")
    return written


def _remove_previous(name: str, out: Path) -> None:
    """Delete the files the report's last run listed in its manifest; refuse if its names are someone else's."""
    manifest = out / name / MANIFEST
    if not manifest.is_file():
        foreign = [path for path in (out / name, *(out / f"{name}{ext}" for ext in (".md", ".html", ".csv")))
                   if path.exists()]
        if foreign:
            raise ReportFolderError(f"{foreign[0]} exists and was not written by sweeplab-report (no {manifest}); "
                                    "move it away or pass --out DIR")
        return
    root = out.resolve()
    for entry in manifest.read_text(encoding="utf-8").splitlines()[1:]:
        path = (out / entry).resolve()
        if path.is_relative_to(root) and path.is_file():  # a manifest never reaches outside its folder
            path.unlink()
    manifest.unlink()


def _md_escape(text: str) -> str:
    """User text (prompts, paths) as inert Markdown: no raw HTML, no table breaks."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def _img_tag(picture: Picture) -> str:
    """Markdown and HTML show a picture the same way, so a width can be given in both."""
    width = f' width="{picture.width}"' if picture.width else ""
    return f'<img src="{html.escape(picture.src)}" alt="{html.escape(picture.alt)}"{width}>'


def _md_item(item) -> str:
    return _img_tag(item) if isinstance(item, Picture) else _md_escape(str(item))


def to_markdown(report: Report) -> str:
    lines = [f"# {_md_escape(report.title)}", ""]
    for kind, block in report.blocks:
        if kind == "h2":
            lines += [f"## {_md_escape(block)}", ""]
        elif kind == "p":
            lines += [_md_escape(block), ""]
        elif kind == "code":
            fence = "`" * max([3, *(len(run) + 1 for run in re.findall("`+", block))])  # longer than any in the text
            lines += [fence, block, fence, ""]
        elif kind == "picture":
            lines += [_md_item(block), ""]
        elif kind == "html":
            continue
        else:
            lines.append("| " + " | ".join(_md_escape(h) for h in block.header) + " |")
            lines.append("|" + "---|" * len(block.header))
            for row in block.rows:
                lines.append("| " + " | ".join("<br>".join(_md_item(i) for i in cell) for cell in row) + " |")
            lines.append("")
    return "\n".join(lines)


STYLE = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #bbb;padding:6px;vertical-align:top;text-align:left}th{background:#eee}
img{display:block;image-rendering:pixelated;margin:2px 0}pre{background:#f4f4f4;padding:8px}"""


def _html_item(item) -> str:
    return _img_tag(item) if isinstance(item, Picture) else f"<div>{html.escape(str(item))}</div>"


def to_html(report: Report) -> str:
    parts = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(report.title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(report.title)}</h1>"]
    for kind, block in report.blocks:
        if kind == "h2":
            parts.append(f"<h2>{html.escape(block)}</h2>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(block)}</p>")
        elif kind == "code":
            parts.append(f"<pre><code>{html.escape(block)}</code></pre>")
        elif kind == "picture":
            parts.append(_html_item(block))
        elif kind == "html":
            parts.append(block)
        else:
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in block.header) + "</tr>")
            for row in block.rows:
                cells = ("<td>" + "".join(_html_item(i) for i in cell) + "</td>" for cell in row)
                parts.append("<tr>" + "".join(cells) + "</tr>")
            parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
