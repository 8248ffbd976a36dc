"""One self-contained HTML report (and optionally a PDF) for one run or many.

For every run: its status, dataset and config, then each analysis that applies: its text table
and all its figures. With several runs a comparison section follows. Figures are rendered with
matplotlib's Agg canvas and embedded as base64 PNGs, so the HTML is one file that can be mailed
or archived; the PDF holds the same tables (as text pages) and figures, via matplotlib's
PdfPages, so it needs no extra dependency. Sections are rendered as they are produced and each
figure is dropped once written, so memory does not grow with the number of runs.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import os
import re
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from tqdm import tqdm

from . import COMPARE, READ_ERRORS, applicable, describe_failure, figures, open_tree
from .smoothing import AnalysisError, flat_config, now_iso, run_name, run_source

#: show a progress bar from this many runs on (and only on a terminal)
PROGRESS_MIN_RUNS = 3
#: text lines per PDF page (A4 portrait, 7 pt monospace) and characters per line
PDF_LINES = 90
PDF_COLUMNS = 110
PNG_DPI = 100

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #aaa; margin-top: 2em; }
table.kv { border-collapse: collapse; font-size: 0.9em; }
table.kv td, table.kv th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
table.kv th { background: #eee; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
figcaption { font-size: 0.85em; color: #555; }
.status-completed { color: #070; } .status-diverged, .status-failed { color: #b00; }
.error { color: #b00; }
"""


class _Writer:
    """Builds the HTML page and, when asked, the PDF, block by block."""

    def __init__(self, pdf_path: Path | None):
        self.parts: list[str] = []
        self.pdf = PdfPages(pdf_path) if pdf_path is not None else None
        self.text: list[str] = []  # text waiting for the next PDF text page
        self.n_figures = 0

    # -- blocks -------------------------------------------------------------------------------
    def heading(self, level: int, text: str, anchor: str = "") -> None:
        ident = f' id="{html.escape(anchor)}"' if anchor else ""
        self.parts.append(f"<h{level}{ident}>{html.escape(text)}</h{level}>")
        self._pdf_text(["", text, "=" * min(len(text), PDF_COLUMNS) if level <= 2 else ""])

    def paragraph(self, text: str, css: str = "") -> None:
        cls = f' class="{css}"' if css else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")
        self._pdf_text(textwrap.wrap(text, PDF_COLUMNS) or [""])

    def raw(self, markup: str, text: str) -> None:
        """Prepared HTML, with its plain-text rendering for the PDF."""
        self.parts.append(markup)
        self._pdf_text(text.splitlines())

    def key_values(self, rows: list[tuple[str, Any]], head: tuple[str, str]) -> None:
        cells = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
            for k, v in rows
        )
        self.parts.append(
            f'<table class="kv"><tr><th>{html.escape(head[0])}</th>'
            f"<th>{html.escape(head[1])}</th></tr>{cells}</table>"
        )
        width = max((len(str(k)) for k, _ in rows), default=0)
        self._pdf_text([f"  {str(k).ljust(width)}  {v}" for k, v in rows])

    def preformatted(self, text: str) -> None:
        self.parts.append(f"<pre>{html.escape(text)}</pre>")
        self._pdf_text(text.splitlines())

    def figure(self, fig: Figure, caption: str) -> None:
        buf = io.BytesIO()
        FigureCanvasAgg(fig)  # attach the Agg canvas: savefig renders with it
        fig.savefig(buf, format="png", dpi=PNG_DPI)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        self.parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        self.n_figures += 1
        if self.pdf is not None:
            self._flush_text()
            fig.text(0.01, 0.005, caption, fontsize=6, color="0.4")
            self.pdf.savefig(fig)

    # -- PDF text pages -----------------------------------------------------------------------
    def _pdf_text(self, lines: list[str]) -> None:
        if self.pdf is None:
            return
        for line in lines:
            self.text.extend(textwrap.wrap(line, PDF_COLUMNS, subsequent_indent="    ") or [""])

    def _flush_text(self) -> None:
        lines, self.text = self.text, []
        while lines and not lines[0].strip():
            lines.pop(0)
        for start in range(0, len(lines), PDF_LINES):
            page = Figure(figsize=(8.27, 11.69))  # A4 portrait
            page.text(
                0.05,
                0.97,
                "\n".join(lines[start : start + PDF_LINES]),
                va="top",
                family="monospace",
                fontsize=7,
            )
            self.pdf.savefig(page)

    def close(self) -> None:
        if self.pdf is not None:
            self._flush_text()
            self.pdf.close()

    def page(self, title: str) -> str:
        body = "\n".join(self.parts)
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n"
        )


def _config_rows(tree: xr.DataTree) -> list[tuple[str, Any]]:
    return sorted(flat_config(tree).items())


def _dataset_rows(tree: xr.DataTree) -> list[tuple[str, Any]]:
    info = tree.attrs.get("dataset")
    return sorted(info.items()) if isinstance(info, dict) else []


def _run_section(out: _Writer, tree: xr.DataTree, index: int) -> None:
    name = run_name(tree, default=f"run {index + 1}")
    out.heading(2, name, anchor=f"run-{index + 1}")
    attrs = tree.attrs
    status = str(attrs.get("status", "unknown"))
    message = str(attrs.get("message", "") or "")
    out.raw(
        f'<p>status: <b class="status-{html.escape(status)}">{html.escape(status)}</b>'
        + (f" — {html.escape(message)}" if message else "")
        + f"<br>store: {html.escape(run_source(tree) or '(in memory)')}"
        + f"<br>created {html.escape(str(attrs.get('created', '?')))} with dynalign "
        + f"{html.escape(str(attrs.get('dynalign_version', '?')))}, torch "
        + f"{html.escape(str(attrs.get('torch_version', '?')))}</p>",
        f"status: {status}"
        + (f" — {message}" if message else "")
        + f"\nstore: {run_source(tree) or '(in memory)'}",
    )
    if _dataset_rows(tree):
        out.heading(3, "Dataset")
        out.key_values(_dataset_rows(tree), ("field", "value"))
    out.heading(3, "Configuration")
    out.key_values(_config_rows(tree), ("key", "value"))
    modules = applicable(tree)
    if not modules:
        out.paragraph("No analysis applies to this run.")
    for module in modules:
        _analysis_section(out, module, lambda m=module: m.analyze(tree), name)


def _analysis_section(
    out: _Writer, module: ModuleType, run: Any, label: str, level: int = 3, draw: bool = True
) -> None:
    """One analysis: its table and figures (``draw``), or the reason it could not run."""
    out.heading(level, f"{module.NAME}")
    try:
        result = run()
    except READ_ERRORS as err:  # AnalysisError included: the report goes on with the next
        out.paragraph(f"{module.NAME} could not analyse this: {describe_failure(err)}", css="error")
        return
    out.preformatted(module.table(result))
    for plot_name, fig in figures(module, result) if draw else ():
        out.figure(fig, f"{label}: {module.NAME} — {plot_name.removeprefix('plot_')}")


def _contents(trees: list[xr.DataTree]) -> str:
    """Links to every run's section (with its status) and to the comparison."""
    items = "".join(
        f'<li><a href="#run-{i + 1}">{html.escape(run_name(t, default=f"run {i + 1}"))}</a> '
        f"({html.escape(str(t.attrs.get('status', '?')))})</li>"
        for i, t in enumerate(trees)
    )
    return f'<nav><ul>{items}<li><a href="#compare">Comparison</a></li></ul></nav>'


def check_out_path(out_html: str | Path) -> Path:
    """The report's path, or AnalysisError for one that cannot be written (checked before any
    store is read)."""
    out_html = Path(out_html)
    if out_html.suffix.lower() not in (".html", ".htm"):
        raise AnalysisError(
            f"--out {out_html} should end in .html; give --out a name like report.html"
        )
    for path in (out_html, out_html.with_suffix(".pdf")):
        if path.is_dir():
            raise AnalysisError(f"--out: {path} is a directory; give --out another file name")
    for parent in out_html.parents:
        if parent.exists():
            if not parent.is_dir():
                raise AnalysisError(
                    f"--out {out_html}: {parent} is a file, not a folder; choose another --out"
                )
            break
    return out_html


def _temporary(target: Path) -> Path:
    """An empty file beside ``target`` to write into, renamed over it only once complete."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)  # mkstemp's 0600 would make the report private
    return Path(name)


def write_report(
    trees_or_paths: Iterable[xr.DataTree | str | Path],
    out_html: str | Path,
    pdf: bool = False,
    progress: bool = True,
) -> Path:
    """Write the report to ``out_html`` (and ``<same name>.pdf`` beside it when ``pdf``).

    Paths are opened with ``dynalign.open_run`` (a StoreError names a bad one). Returns
    the HTML path. Both files are written to temporaries and renamed into place only when the
    whole report is done, so a failure (or Ctrl-C) leaves no partial file and no new folder.
    """
    runs = list(trees_or_paths)
    if not runs:
        raise AnalysisError("no runs to report on; pass one or more run stores")
    title = "dynalign report"

    def build(out: _Writer) -> None:
        out.heading(1, title)
        out.paragraph(f"{len(runs)} run{'s' if len(runs) != 1 else ''}; generated {now_iso()}")
        show = progress and len(runs) >= PROGRESS_MIN_RUNS and sys.stderr.isatty()
        trees = []
        for i, run in enumerate(tqdm(runs, desc="report", unit="run", disable=not show)):
            tree = open_tree(run)
            trees.append(tree)
            try:
                _run_section(out, tree, i)
            except AnalysisError as err:  # name the run: the report covers many
                where = run_source(tree) or run_name(tree, default=f"run {i + 1}")
                raise AnalysisError(f"{where}: {err}") from None
        if len(trees) > 1:
            out.heading(2, "Comparison", anchor="compare")
            _analysis_section(out, COMPARE, lambda: COMPARE.analyze(trees), "all runs")
            out.parts.insert(2, _contents(trees))  # after the title and the intro line

    return _publish(out_html, pdf, title, build)


def _publish(out_html: str | Path, pdf: bool, title: str, build: Callable[[_Writer], None]) -> Path:
    """Check ``out_html``, let ``build`` fill a writer, then move the HTML (and PDF) into place
    at once; on any failure remove the temporaries and the folders made for them."""
    out_html = check_out_path(out_html)
    created = [p for p in reversed(out_html.parents) if not p.exists()]
    out_html.parent.mkdir(parents=True, exist_ok=True)
    temporaries: list[Path] = []
    try:
        temporaries.append(_temporary(out_html))
        if pdf:
            temporaries.append(_temporary(out_html.with_suffix(".pdf")))
        out = _Writer(temporaries[1] if pdf else None)
        try:
            build(out)
        finally:
            out.close()
        temporaries[0].write_text(out.page(title), encoding="utf-8")
        if pdf:
            os.replace(temporaries[1], out_html.with_suffix(".pdf"))
        os.replace(temporaries[0], out_html)
    except BaseException:
        for path in temporaries:
            path.unlink(missing_ok=True)
        for folder in reversed(created):  # only the folders made here, and only if empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return out_html


# ----------------------------------------------------------------------------- studies

#: what a study report shows of each run: nothing, its analysis tables, or tables and figures
RUN_DETAIL = ("none", "tables", "full")


def write_study_report(
    study_dir: str | Path,
    out: str | Path,
    pdf: bool = False,
    progress: bool = True,
    preamble: Any = None,
    runs: str = "tables",
) -> Path:
    """The report of a study directory (or of every study of a reproduction directory).

    Per study: what it is (description, finding and claim), its arms and the status of every
    seed, the per-arm table (mean [95% CI] over seeds) and the learning curves with CI bands;
    then a shorter section per run (``runs``: "tables" = its analysis tables, "full" = tables
    and figures, "none"). ``preamble`` goes first, after the title: a callable given the
    writer (``preamble(out)``, which adds blocks with ``out.heading``/``out.paragraph``/
    ``out.raw``/``out.preformatted``/``out.figure``), HTML markup, or ``(markup, text)`` with
    the plain text for the PDF -- e.g. a reproduction's findings table.
    Written atomically like :func:`write_report`; a bad directory raises StoreError.
    """
    from dynalign import study_reader

    if runs not in RUN_DETAIL:
        raise AnalysisError(f"runs={runs!r} must be one of {', '.join(RUN_DETAIL)}")
    study_dir = Path(study_dir)
    if study_reader.is_reproduction(study_dir):
        studies = study_reader.reproduction_studies(study_dir)
        title = f"dynalign reproduction: {study_dir.resolve().name}"
    else:
        studies = [study_dir]
        title = f"dynalign study: {study_reader.read_manifest(study_dir).get('name') or ''}"
    manifests = [study_reader.read_manifest(s) for s in studies]  # bad ones fail before writing
    check_out_path(out)

    def build(w: _Writer) -> None:
        w.heading(1, title)
        count = f"{len(studies)} stud{'ies' if len(studies) != 1 else 'y'}; " if studies else ""
        w.paragraph(f"{study_dir}: {count}generated {now_iso()}")
        _preamble(w, preamble)
        if len(studies) > 1:
            w.raw(_study_contents(studies, manifests), "")
        for path, manifest in zip(studies, manifests, strict=True):
            _study_section(w, path, manifest, runs, progress)

    return _publish(out, pdf, title, build)


def _preamble(out: _Writer, preamble: Any) -> None:
    if preamble is None:
        return
    if callable(preamble):
        preamble(out)
    elif isinstance(preamble, tuple):
        out.raw(*preamble)
    else:
        text = html.unescape(re.sub(r"<[^>]+>", " ", str(preamble)))
        out.raw(str(preamble), re.sub(r"[ \t]+", " ", text).strip())


def study_anchor(path: Path) -> str:
    """The id of a study's section: ``study-<directory name>`` (``study-finding-2``)."""
    return f"study-{Path(path).name}"


def _study_title(manifest: dict[str, Any], path: Path) -> str:
    finding = manifest.get("finding")
    name = str(manifest.get("name") or path.name)
    if isinstance(finding, dict) and finding.get("title"):
        return f"Finding {finding.get('number', '?')}: {finding['title']} ({name})"
    return f"Study {name}"


def _study_contents(studies: list[Path], manifests: list[dict[str, Any]]) -> str:
    items = "".join(
        f'<li><a href="#{html.escape(study_anchor(p))}">{html.escape(_study_title(m, p))}</a></li>'
        for p, m in zip(studies, manifests, strict=True)
    )
    return f"<nav><ul>{items}</ul></nav>"


def _study_section(
    out: _Writer, path: Path, manifest: dict[str, Any], runs: str, progress: bool
) -> None:
    from dynalign import study_reader

    from . import study as study_metrics

    out.heading(2, _study_title(manifest, path), anchor=study_anchor(path))
    if manifest.get("description"):
        out.paragraph(str(manifest["description"]))
    finding = manifest.get("finding")
    if isinstance(finding, dict):
        for key in ("claim", "evidence"):
            if finding.get(key):
                out.paragraph(f"{key.capitalize()}: {finding[key]}")
    seeds = manifest.get("seeds", [])
    grid = manifest.get("grid") or {}
    rows = [
        ("directory", str(path)),
        ("spec", str(manifest.get("spec_path") or "")),
        ("scale", str(manifest.get("scale") or "as in the spec")),
        ("seeds", ", ".join(map(str, seeds))),
        ("arms", str(len(manifest.get("arms", [])))),
    ]
    if grid:
        values = {key: ", ".join(map(study_reader.label, vals)) for key, vals in grid.items()}
        rows.append(("grid", "; ".join(f"{key}: {vals}" for key, vals in values.items())))
    rows += [
        ("dynalign", str(manifest.get("dynalign_version") or "?")),
        ("updated", str(manifest.get("updated") or "?")),
    ]
    out.key_values(rows, ("study", ""))

    summary = study_metrics.summarise(path, progress=progress and sys.stderr.isatty())
    out.heading(3, "Arms and runs")
    arm_rows = []
    for i, arm in enumerate(manifest.get("arms", [])):
        overrides = arm.get("overrides") or {}
        what = ", ".join(f"{key}={value}" for key, value in overrides.items()) or "(base config)"
        states = ", ".join(
            f"seed {s}: {summary['status'].values[i, j]}"
            for j, s in enumerate(summary["seed"].values)
        )
        arm_rows.append((arm["name"], f"{what} — {states}"))
    out.key_values(arm_rows, ("arm", "overrides — runs"))
    problems = [
        f"{summary['arm'].values[i]} seed {summary['seed'].values[j]}: "
        f"{summary['status'].values[i, j]} — {summary['message'].values[i, j]}"
        for i in range(summary.sizes["arm"])
        for j in range(summary.sizes["seed"])
        if summary["message"].values[i, j]
    ]
    for line in problems:
        out.paragraph(line, css="error")

    out.heading(3, "Results per arm")
    out.preformatted(study_metrics.table(summary))
    tree = study_reader.open_study(path)
    name = str(manifest.get("name") or path.name)
    for caption, plot in (
        ("accuracy per epoch", study_metrics.plot_accuracy),
        ("loss", study_metrics.plot_loss),
    ):
        out.figure(plot(tree), f"{name}: {caption}, mean over seeds with 95% bootstrap CI")

    if runs == "none":
        return
    out.heading(3, "Runs")
    points = study_reader.study_runs(path)
    show = progress and len(points) >= PROGRESS_MIN_RUNS and sys.stderr.isatty()
    for arm, seed, store in tqdm(points, desc="report", unit="run", disable=not show):
        _study_run_section(out, path, manifest, arm, seed, store, runs == "full")


def _study_run_section(
    out: _Writer,
    path: Path,
    manifest: dict[str, Any],
    arm: str,
    seed: int,
    store: Path,
    draw: bool,
) -> None:
    from dynalign import study_reader

    entry = study_reader.run_entries(manifest)[(arm, seed)]
    status, message, tree = study_reader.open_point(path, entry)
    label = f"{arm}, seed {seed}"
    out.heading(4, label)
    out.raw(
        f'<p>status: <b class="status-{html.escape(status)}">{html.escape(status)}</b>'
        + (f" — {html.escape(message)}" if message else "")
        + f"<br>store: {html.escape(str(store))}</p>",
        f"status: {status}" + (f" — {message}" if message else "") + f"\nstore: {store}",
    )
    if tree is None:
        return
    modules = applicable(tree)
    if not modules:
        out.paragraph("No analysis applies to this run.")
    for module in modules:
        _analysis_section(out, module, lambda m=module: m.analyze(tree), label, level=5, draw=draw)
