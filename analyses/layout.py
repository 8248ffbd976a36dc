"""The report's page, built block by block: one self-contained HTML file and a compact PDF.

HTML: tables are real ``<table>`` elements that wrap (an analysis's plain-text table is turned
into one), figures are inline PNGs that shrink to the page, sections fold into ``<details>``;
nothing needs JavaScript or anything outside the file. PDF: each *sheet* (the title and summary,
one run, one study) is laid out on as few A4 pages as it fits: its text as a short monospace
header, then its figures side by side in a grid, so a report of five runs is a handful of pages
rather than a page per figure. Figures are rasterised once and dropped; only their PNG bytes are
kept until the page is written.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import re
import struct
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.image
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from .smoothing import format_table

#: characters per PDF line of prose (tables keep their width: the text shrinks to fit them)
PDF_COLUMNS = 110
#: resolution of the figures' PNGs, and the CSS pixels per figure inch they are shown at (a
#: figure narrower than half the page then sits beside the next)
PNG_DPI = 120
DISPLAY_PPI = 100

STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em;
  color: #222; line-height: 1.4; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #aaa; margin-top: 1.6em; }
h3 { margin: 1.2em 0 0.4em; }
nav { margin: 0.5em 0 1em; }
.table { max-width: 100%; overflow-x: auto; margin: 0.4em 0 0.8em; }
table { border-collapse: collapse; font-size: 0.88em; }
td, th { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top;
  overflow-wrap: break-word; }
th { background: #f0f0f0; border-bottom: 1px solid #aaa; }
td.num, th.num { text-align: right; } td.num { white-space: nowrap; }
.lines, pre { white-space: pre-wrap; overflow-wrap: anywhere; font-family: monospace;
  font-size: 0.85em; margin: 0.3em 0; }
pre { background: #f6f6f6; padding: 0.6em; }
.figs { display: flex; flex-wrap: wrap; gap: 0.5em 1em; align-items: flex-start; }
figure { margin: 0.4em 0; min-width: 0; max-width: 100%; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 0.85em; color: #555; contain: inline-size; }
details { margin: 0.3em 0; border: 1px solid #ddd; border-radius: 4px; padding: 0.2em 0.8em; }
details[open] { padding-bottom: 0.8em; }
summary { cursor: pointer; padding: 0.3em 0; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border-radius: 2px;
  vertical-align: -0.1em; margin-right: 0.35em; }
.status-completed { color: #070; } .status-diverged, .status-failed { color: #b00; }
.status-running, .status-interrupted { color: #a60; }
.error { color: #b00; } .note { color: #555; font-size: 0.9em; }
"""


@dataclass
class Cell:
    """A table cell given as HTML markup, with its plain text for the PDF."""

    markup: str
    text: str


@dataclass
class Sheet:
    """What one PDF sheet shows: a title, monospace text lines, then figures (PNG, caption)."""

    title: str
    lines: list[str] = field(default_factory=list)
    images: list[tuple[bytes, str]] = field(default_factory=list)


def _text(cell: str | Cell) -> str:
    return cell.text if isinstance(cell, Cell) else str(cell)


def _markup(cell: str | Cell) -> str:
    return cell.markup if isinstance(cell, Cell) else html.escape(str(cell))


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes, drawn with the Agg canvas (no pyplot, no window)."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=PNG_DPI)
    return buf.getvalue()


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels, from the PNG's header."""
    return struct.unpack(">II", data[16:24])


# ----------------------------------------------------------------------------- text tables

RULE = re.compile(r"^-+(  +-+)*$")


def text_blocks(text: str) -> list[tuple[str, Any]]:
    """A plain-text analysis table split into ``("lines", [...])`` and ``("table", (head, rows,
    right))`` blocks: a table is a header line over a rule of dashes, and the rows under it
    that keep the columns' gaps blank."""
    lines = text.splitlines()
    blocks: list[tuple[str, Any]] = []
    plain: list[str] = []
    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and lines[i].strip() and RULE.match(lines[i + 1]):
            spans = [(m.start(), m.end()) for m in re.finditer(r"-+", lines[i + 1])]
            end = i + 2
            while end < len(lines) and _is_row(lines[end], spans):
                end += 1
            if plain:
                blocks.append(("lines", plain))
                plain = []
            rows = [lines[i], *lines[i + 2 : end]]
            right = [_right_aligned(rows, span) for span in spans]
            cells = [[line[a:b].strip() for a, b in spans] for line in rows]
            blocks.append(("table", (cells[0], cells[1:], right)))
            i = end
        else:
            plain.append(lines[i])
            i += 1
    if plain:
        blocks.append(("lines", plain))
    return blocks


def _is_row(line: str, spans: list[tuple[int, int]]) -> bool:
    if not line.strip() or len(line) > spans[-1][1]:
        return False
    gaps = [range(b, a2) for (_, b), (a2, _) in zip(spans, spans[1:], strict=False)]
    return all(line[k] == " " for gap in gaps for k in gap if k < len(line))


def _right_aligned(lines: list[str], span: tuple[int, int]) -> bool:
    """A column of numbers: some cell is padded on the left, none on the right."""
    cells = [line[span[0] : span[1]].ljust(span[1] - span[0]) for line in lines]
    cells = [c for c in cells if c.strip()]
    return any(c[0] == " " for c in cells) and all(c[-1] != " " for c in cells)


# ----------------------------------------------------------------------------- the writer


class Writer:
    """Collects the HTML page and, when ``pdf``, the PDF sheets, block by block."""

    def __init__(self, pdf: bool):
        self.parts: list[str] = []
        self.sheets: list[Sheet] | None = [] if pdf else None

    # -- PDF side -------------------------------------------------------------------------
    def new_sheet(self, title: str) -> None:
        """Start a PDF sheet (an empty current one is renamed instead)."""
        if self.sheets is None:
            return
        if self.sheets and not (self.sheets[-1].lines or self.sheets[-1].images):
            self.sheets[-1].title = title
        else:
            self.sheets.append(Sheet(title))

    def _sheet(self) -> Sheet:
        """The sheet being filled (an untitled one before the first heading)."""
        assert self.sheets is not None
        if not self.sheets:
            self.sheets.append(Sheet(""))
        return self.sheets[-1]

    def pdf_text(self, lines: Sequence[str]) -> None:
        if self.sheets is not None:
            self._sheet().lines.extend(lines)

    def extend(self, other: Writer) -> None:
        """Append another writer's blocks and sheets (a section built ahead of its place)."""
        self.parts.extend(other.parts)
        if self.sheets is not None and other.sheets is not None:
            self.sheets.extend(other.sheets)

    # -- blocks ---------------------------------------------------------------------------
    def heading(self, level: int, text: str, anchor: str = "", pdf: bool = True) -> None:
        """A heading; in the PDF, levels 1-2 start a sheet and deeper ones are a text line."""
        ident = f' id="{html.escape(anchor)}"' if anchor else ""
        self.parts.append(f"<h{level}{ident}>{html.escape(text)}</h{level}>")
        if not pdf:
            return
        if level <= 2:
            self.new_sheet(text)
        else:
            self.pdf_text(["", text])

    def paragraph(self, text: str, css: str = "", pdf: bool = True) -> None:
        cls = f' class="{css}"' if css else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")
        if pdf:
            self.pdf_text(textwrap.wrap(text, PDF_COLUMNS) or [""])

    def raw(self, markup: str, text: str = "") -> None:
        """Prepared HTML, with its plain-text rendering for the PDF ("" for none)."""
        self.parts.append(markup)
        if text:
            self.pdf_text(text.splitlines())

    def table(
        self,
        head: Sequence[str | Cell],
        rows: Sequence[Sequence[str | Cell]],
        right: Sequence[bool] = (),
        css: str = "",
        pdf: bool = True,
        pdf_columns: int | None = None,
    ) -> None:
        """An HTML table (cells wrap, so it never runs off the page); monospace in the PDF,
        with only its first ``pdf_columns`` columns where a page is too narrow for all."""
        right = list(right) + [False] * (len(head) - len(right))

        def cells(row: Sequence[str | Cell], tag: str) -> str:
            num = ' class="num"'
            return "".join(
                f"<{tag}{num if r else ''}>{_markup(c)}</{tag}>"
                for c, r in zip(row, right, strict=False)
            )

        cls = f' class="{css}"' if css else ""
        body = "".join(f"<tr>{cells(row, 'td')}</tr>" for row in rows)
        self.parts.append(
            f'<div class="table"><table{cls}><thead><tr>{cells(head, "th")}</tr></thead>'
            f"{body}</table></div>"
        )
        if pdf:
            keep = slice(pdf_columns)
            self.pdf_text(
                _text_table([_text(c) for c in head[keep]], [r[keep] for r in rows], right)
            )

    def key_values(self, rows: list[tuple[str, Any]], head: tuple[str, str], pdf: bool = True):
        self.table(list(head), [(str(k), str(v)) for k, v in rows], pdf=pdf)

    def text_table(self, text: str, pdf: bool = True) -> None:
        """An analysis's plain-text table as HTML tables and wrapped lines (as is in the PDF)."""
        for kind, block in text_blocks(text):
            if kind == "table":
                head, rows, right = block
                self.table(head, rows, right, pdf=False)
            else:
                lines = html.escape("\n".join(block))
                self.parts.append(f'<div class="lines">{lines}</div>')
        if pdf:
            self.pdf_text(text.splitlines())

    def preformatted(self, text: str, pdf: bool = True) -> None:
        self.parts.append(f"<pre>{html.escape(text)}</pre>")
        if pdf:
            self.pdf_text(text.splitlines())

    def figure(self, fig: Figure, caption: str, alt: str = "") -> None:
        """The figure as an inline PNG with its caption; on the current sheet in the PDF."""
        data = png(fig)
        width = round(fig.get_size_inches()[0] * DISPLAY_PPI)
        encoded = base64.b64encode(data).decode("ascii")
        self.parts.append(
            f'<figure><img src="data:image/png;base64,{encoded}" width="{width}" '
            f'alt="{html.escape(alt or caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        if self.sheets is not None:
            self._sheet().images.append((data, caption))

    @contextlib.contextmanager
    def gallery(self) -> Iterator[None]:
        """Figures side by side where the page is wide enough."""
        self.parts.append('<div class="figs">')
        yield
        self.parts.append("</div>")

    @contextlib.contextmanager
    def fold(self, summary: str, anchor: str = "", css: str = "") -> Iterator[None]:
        """A closed ``<details>`` section; ``summary`` (markup) is what shows while closed."""
        ident = f' id="{html.escape(anchor)}"' if anchor else ""
        cls = f' class="{css}"' if css else ""
        self.parts.append(f"<details{ident}{cls}><summary>{summary}</summary>")
        yield
        self.parts.append("</details>")

    # -- output ---------------------------------------------------------------------------
    def page(self, title: str) -> str:
        body = "\n".join(self.parts)
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n"
        )

    def write_pdf(self, path: Path) -> None:
        with PdfPages(path) as pdf:
            sheets = [s for s in self.sheets or [] if s.lines or s.images]
            for sheet in sheets or [Sheet("(empty report)", ["nothing to show"])]:
                _Layout(pdf, sheet.title).sheet(sheet)


def _text_table(head: list[str], rows: Sequence[Sequence[str | Cell]], right: list[bool]):
    """A table as monospace lines (``format_table``), short rows padded with empty cells."""
    texts = [[_text(c) for c in row] + [""] * (len(head) - len(row)) for row in rows]
    return format_table(head, texts, right=right[: len(head)])


# ----------------------------------------------------------------------------- PDF layout

A4 = (8.27, 11.69)
MARGIN = 0.45
GAP = 0.18
TITLE_SIZE = 11
#: text sizes (points): a sheet's text shrinks to fit its longest line, down to the smallest
TEXT_SIZES = (7.0, 4.8)
CAPTION_SIZE = 5.5
CAPTION_LINES = 2
#: figures are shrunk to fit a grid cell down to this fraction of their size; one that would
#: need more spans several cells (a wide multi-panel figure gets a row of its own)
MIN_SCALE = 0.4


@dataclass
class _Placed:
    png: bytes
    caption: str
    width: float  # inches on the page
    height: float


class _Layout:
    """Fills A4 pages top to bottom with a sheet's title, text and figures."""

    def __init__(self, pdf: PdfPages, title: str):
        self.pdf, self.title = pdf, title
        self.width = A4[0] - 2 * MARGIN
        self.fig: Figure | None = None
        self.y = 0.0
        self.empty = True

    def _start(self, suffix: str = "") -> None:
        if self.fig is not None:
            self.pdf.savefig(self.fig)
        self.fig = Figure(figsize=A4)
        self.y = A4[1] - MARGIN
        self.empty = True
        if self.title:
            self.fig.text(
                MARGIN / A4[0],
                self.y / A4[1],
                self.title + suffix,
                va="top",
                fontsize=TITLE_SIZE,
                weight="bold",
            )
            self.y -= 0.35

    def room(self) -> float:
        return self.y - MARGIN

    def sheet(self, sheet: Sheet) -> None:
        self._start()
        self._text(sheet.lines)
        self._figures(sheet.images)
        self.pdf.savefig(self.fig)

    # -- text ------------------------------------------------------------------------------
    def _text(self, lines: list[str]) -> None:
        while lines and not lines[0].strip():
            lines = lines[1:]
        if not lines:
            return
        longest = max(len(line) for line in lines)
        size = max(min(TEXT_SIZES[0], self.width * 72 / (0.6 * max(longest, 1))), TEXT_SIZES[1])
        chars = int(self.width * 72 / (0.6 * size))
        wrapped = [w for line in lines for w in (textwrap.wrap(line, chars) or [""])]
        step = size * 1.35 / 72
        for line in wrapped:
            if self.room() < step:
                self._start(" (continued)")
            self.fig.text(
                MARGIN / A4[0], self.y / A4[1], line, va="top", family="monospace", fontsize=size
            )
            self.y -= step
            self.empty = False
        self.y -= GAP

    # -- figures ---------------------------------------------------------------------------
    def _figures(self, images: list[tuple[bytes, str]]) -> None:
        """The figures in a grid of 2 columns, or 3 where that takes fewer pages."""
        if not images:
            return
        grids = [_rows(images, n, self.width, self._tallest()) for n in (2, 3)]
        rows = min(grids, key=self._pages)
        for row in rows:
            if _row_height(row) > self.room() and not self.empty:
                self._start(" (continued)")
            self._row(row)

    def _pages(self, rows: list[list[_Placed]]) -> int:
        """How many pages ``rows`` take from here on (a page less when they fit below)."""
        pages, room = 0, self.room()
        for row in rows:
            if _row_height(row) > room:
                pages, room = pages + 1, self._tallest() + _caption_height() + GAP
            room -= _row_height(row)
        return pages

    def _tallest(self) -> float:
        """The most an image may take: a page below the title, less its caption."""
        return A4[1] - 2 * MARGIN - 0.35 - _caption_height() - GAP

    def _row(self, row: list[_Placed]) -> None:
        x = MARGIN
        for item in row:
            self._image(item, x)
            x += item.width + GAP
        self.y -= _row_height(row)
        self.empty = False

    def _image(self, item: _Placed, x: float) -> None:
        W, H = A4
        ax = self.fig.add_axes((x / W, (self.y - item.height) / H, item.width / W, item.height / H))
        ax.imshow(matplotlib.image.imread(io.BytesIO(item.png), format="png"), interpolation="none")
        ax.set_axis_off()
        chars = max(int(item.width * 72 / (0.5 * CAPTION_SIZE)), 10)
        caption = textwrap.wrap(item.caption, chars)[:CAPTION_LINES]
        self.fig.text(
            x / W,
            (self.y - item.height - 0.03) / H,
            "\n".join(caption),
            va="top",
            fontsize=CAPTION_SIZE,
            color="0.3",
        )


def _caption_height() -> float:
    return CAPTION_LINES * CAPTION_SIZE * 1.3 / 72 + 0.05


def _row_height(row: list[_Placed]) -> float:
    return max(item.height for item in row) + _caption_height() + GAP


def _height(rows: list[list[_Placed]]) -> float:
    return sum(_row_height(r) for r in rows)


def _rows(
    images: list[tuple[bytes, str]], columns: int, width: float, tallest: float
) -> list[list[_Placed]]:
    """The images on a grid of ``columns`` cells a row: each spans as few cells as keep it at
    :data:`MIN_SCALE` or more (never above its own size, never taller than ``tallest``) and
    goes into the first row with room for it, so small figures fill the gaps."""
    cell = (width - GAP * (columns - 1)) / columns
    rows: list[list[_Placed]] = []
    used: list[int] = []  # cells taken in each row
    for data, caption in images:
        px_w, px_h = png_size(data)
        w_in, h_in = px_w / PNG_DPI, px_h / PNG_DPI
        span = next(
            (k for k in range(1, columns) if (k * cell + (k - 1) * GAP) / w_in >= MIN_SCALE),
            columns,
        )
        room = span * cell + (span - 1) * GAP
        scale = min(room / w_in, tallest / h_in, 1.0)
        item = _Placed(data, caption, w_in * scale, h_in * scale)
        free = next((r for r, n in enumerate(used) if n + span <= columns), None)
        if free is None:
            rows.append([])
            used.append(0)
            free = len(rows) - 1
        rows[free].append(item)
        used[free] += span
    return rows
