"""One self-contained HTML report (and optionally a compact PDF) for one run or many.

The page leads with answers. First a summary, one row per arm (runs that differ only in their
seed or in how they were run, see ``compare.DEFAULT_EXCLUDE``): rule, model, data, status, best
and final accuracy and plateau angle (with bootstrap CIs over an arm's runs) and the verdicts
of the analyses that give one. Then the comparison figures, then every run's details, folded:
what its config changes from the defaults, its learning curves, each analysis's table and
figures, and the full config. An arm keeps one colour in every table and figure, and every
figure is captioned with the first line of its plot function's docstring. How blocks become
HTML and PDF pages (tables that wrap, figure grids, a few PDF pages) is :mod:`.layout`'s job.
"""

from __future__ import annotations

import contextlib
import functools
import html
import inspect
import json
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.colors import to_hex
from tqdm import tqdm

from dynalign.config import Config, flatten

from . import COMPARE, READ_ERRORS, applicable, curves, describe_failure, figures, open_tree
from .compare import ci_cell, members, short_name, unique_names
from .curves import plot_run_curves
from .layout import Cell, Writer
from .smoothing import AnalysisError, flat_config, now_iso, run_name, run_source

#: show a progress bar from this many runs on (and only on a terminal)
PROGRESS_MIN_RUNS = 3
#: [model] keys that size the model: always shown in its one-line description
SHAPE_KEYS = ("depth", "width", "channels", "code_size")
#: the summary's numbers: compare variable, header, scale, digits
SUMMARY_COLUMNS = (
    ("best_val_accuracy", "best val acc %", 100.0, 1),
    ("final_val_accuracy", "final val acc %", 100.0, 1),
    ("update_angle_plateau", "plateau angle °", 1.0, 1),
)
NO_DEFAULT = "(not a default key)"


@dataclass
class _Run:
    """What the summary needs of one run, gathered while its section is drawn."""

    index: int
    name: str
    status: str
    config: dict[str, Any]
    data: str
    verdicts: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- small pieces


def swatch(color: str) -> str:
    """A small square of an arm's colour, to put before its name."""
    return f'<span class="swatch" style="background:{html.escape(color)}"></span>'


def _status_markup(status: str) -> str:
    return f'<b class="status-{html.escape(status)}">{html.escape(status)}</b>'


def caption(module: ModuleType, plot_name: str) -> str:
    """A figure's caption: the first line of its plot function's docstring."""
    doc = inspect.getdoc(getattr(module, plot_name, None)) or ""
    return doc.splitlines()[0] if doc else plot_name.removeprefix("plot_").replace("_", " ")


def headline(verdict: str) -> str:
    """A verdict's short form: what comes before its colon (``no unlearning``)."""
    return verdict.split(":", 1)[0].strip()


def named(analysis: str, verdict: str) -> str:
    """A verdict that says which analysis gave it: ``autoencoder: reconstructs``, but
    ``no unlearning`` as it is."""
    return verdict if analysis in headline(verdict) else f"{analysis}: {verdict}"


def _percent(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{100 * value:.1f}%"


# ----------------------------------------------------------------------------- configuration


@functools.cache
def _defaults() -> dict[str, Any]:
    return flatten(Config().to_dict())


@functools.cache
def _model_reads(kind: Any) -> tuple[str, ...] | None:
    """The [model] keys a model kind reads; None for a kind this dynalign does not know."""
    from dynalign import registry

    if not isinstance(kind, str) or kind not in registry.MODELS:
        return None
    return tuple(registry.MODELS.load(kind).reads)


def read_by_model(key: str, config: dict[str, Any]) -> bool:
    """False for a [model] key the run's model kind does not read: its value means nothing."""
    if not key.startswith("model.") or key == "model.kind":
        return True
    reads = _model_reads(config.get("model.kind"))
    return reads is None or key.removeprefix("model.") in reads


def config_changes(config: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, value, default)`` for every key a run's flat config sets away from dynalign's
    defaults, leaving out the [model] keys its model kind does not read."""
    defaults = _defaults()
    return [
        (key, value, defaults.get(key, NO_DEFAULT))
        for key, value in sorted(config.items())
        if (key not in defaults or value != defaults[key]) and read_by_model(key, config)
    ]


def model_text(config: dict[str, Any]) -> str:
    """The model in a few words: ``mlp 3×512 bn=standard`` (its size, and what it changes)."""
    kind = str(config.get("model.kind", "?"))
    reads = _model_reads(kind) or ()
    shown = [
        k
        for k in reads
        if k in SHAPE_KEYS or config.get(f"model.{k}") != _defaults().get(f"model.{k}")
    ]
    parts = [kind]
    if "depth" in shown and "width" in shown:
        parts.append(f"{config['model.depth']}×{config['model.width']}")
        shown = [k for k in shown if k not in ("depth", "width")]
    parts += [short_name([f"model.{k}"], [config.get(f"model.{k}")]) for k in shown]
    return " ".join(parts)


def rule_text(config: dict[str, Any]) -> str:
    """The learning rule, and the sign constraint where there is one."""
    rule = str(config.get("rule.name", "?"))
    sign = config.get("constraint.sign", "none")
    return rule if sign in ("none", None) else f"{rule} sign={sign}"


def data_text(tree: xr.DataTree, config: dict[str, Any]) -> str:
    """The data set and its sizes as recorded (``digits, 1297 train / 500 val``)."""
    info = tree.attrs.get("dataset")
    info = info if isinstance(info, dict) else {}
    name = info.get("name", config.get("data.name", "?"))
    n_train = info.get("n_train") or config.get("data.n_train")
    n_val = info.get("n_val", config.get("data.n_val"))
    return f"{name}, {n_train} train / {n_val} val" if n_train else str(name)


def _checked_config(tree: xr.DataTree, index: int) -> dict[str, Any]:
    """The run's flat config; a damaged one fails naming the run (a report covers many)."""
    try:
        return flat_config(tree)
    except AnalysisError as err:
        where = run_source(tree) or run_name(tree, default=f"run {index + 1}")
        raise AnalysisError(f"{where}: {err}") from None


# ----------------------------------------------------------------------------- analyses


def _analyze(module: ModuleType, run: Callable[[], xr.Dataset]) -> xr.Dataset | Exception:
    """The analysis result, or what reading or analysing raised (shown in place)."""
    try:
        return run()
    except READ_ERRORS as err:  # AnalysisError included: the report goes on with the next
        return err


def _verdicts(outcomes: list[tuple[ModuleType, xr.Dataset | Exception]]) -> dict[str, str]:
    """Per analysis with a verdict (or that failed), its full verdict sentence."""
    out = {}
    for module, outcome in outcomes:
        if isinstance(outcome, Exception):
            out[module.NAME] = "could not analyse this run"
        elif outcome.attrs.get("verdict"):
            out[module.NAME] = str(outcome.attrs["verdict"])
    return out


def _analysis_block(
    out: Writer,
    module: ModuleType,
    outcome: xr.Dataset | Exception,
    label: str,
    level: int = 3,
    draw: bool = True,
    pdf: bool = True,
) -> None:
    """One analysis: its table and figures (``draw``), or the reason it could not run;
    ``pdf``: its table goes to the PDF too (figures always do)."""
    out.heading(level, module.NAME, pdf=pdf)
    if isinstance(outcome, Exception):
        text = f"{module.NAME} could not analyse this: {describe_failure(outcome)}"
        out.paragraph(text, css="error")
        return
    out.text_table(module.table(outcome), pdf=pdf)
    if draw:
        with out.gallery():
            for plot_name, fig in figures(module, outcome):
                text = caption(module, plot_name)
                out.figure(fig, text, alt=f"{label}: {text}")


# ----------------------------------------------------------------------------- one run


@dataclass
class _Arm:
    """The arm a run belongs to, as every part of the report shows it."""

    name: str
    color: str


def _run_section(out: Writer, tree: xr.DataTree, run: _Run, arm: _Arm, numbers: xr.Dataset) -> None:
    """The run's details, folded: status, config changes, learning curves, analyses, full
    config; one PDF sheet with the key text as its header and every figure."""
    outcomes = [(m, _analyze(m, lambda m=m: m.analyze(tree))) for m in applicable(tree)]
    run.verdicts = _verdicts(outcomes)
    with out.fold(_run_summary(run, arm, numbers), anchor=f"run-{run.index + 1}", css="run"):
        out.new_sheet(f"{run.name} — {run.status}")
        _run_header(out, tree, run, arm, numbers)
        _config_changes(out, run.config)
        _curves_figure(out, tree, arm.color, run.name)
        if not outcomes:
            out.paragraph("No analysis applies to this run.", pdf=False)
        for module, outcome in outcomes:
            _analysis_block(out, module, outcome, run.name, pdf=False)
        _full_config(out, tree, run.config)


def _curves_figure(out: Writer, tree: xr.DataTree, color: str, label: str) -> None:
    """The run's learning curves in its arm's colour (none for a run without an epoch)."""
    fig = plot_run_curves(tree, color=color)
    if fig is not None:
        text = caption(curves, "plot_run_curves")
        with out.gallery():
            out.figure(fig, text, alt=f"{label}: {text}")


def _run_summary(run: _Run, arm: _Arm, numbers: xr.Dataset) -> str:
    """What shows of a run while its section is folded: name, status, arm, accuracy, verdicts."""
    best = float(numbers["best_val_accuracy"])
    bits = [f"arm {html.escape(arm.name)}"]
    if np.isfinite(best):
        bits.append(f"best val {_percent(best)}")
    bits += [html.escape(named(n, headline(v))) for n, v in run.verdicts.items()]
    return (
        f"{swatch(arm.color)}<b>{html.escape(run.name)}</b> — {_status_markup(run.status)}"
        f" · {' · '.join(bits)}"
    )


def _run_header(out: Writer, tree: xr.DataTree, run: _Run, arm: _Arm, numbers: xr.Dataset) -> None:
    """Status, arm, rule, model, data and store; in the PDF also the run's numbers and full
    verdicts (its analysis tables stay in the HTML)."""
    attrs = tree.attrs
    message = str(attrs.get("message", "") or "")
    store = run_source(tree) or "(in memory)"
    versions = (
        f"created {attrs.get('created', '?')} with dynalign {attrs.get('dynalign_version', '?')}"
        f", torch {attrs.get('torch_version', '?')}"
    )
    out.raw(
        f"<p>status: {_status_markup(run.status)}"
        + (f" — {html.escape(message)}" if message else "")
        + f"<br>arm: {swatch(arm.color)}{html.escape(arm.name)}"
        + f" · rule {html.escape(rule_text(run.config))}"
        + f" · model {html.escape(model_text(run.config))}"
        + f" · data {html.escape(run.data)}"
        + f"<br>store: {html.escape(store)}<br>{html.escape(versions)}</p>",
        f"status: {run.status}" + (f" — {message}" if message else "") + f"\narm: {arm.name}"
        f" · rule {rule_text(run.config)} · model {model_text(run.config)} · data {run.data}"
        f"\nstore: {store}",
    )
    values = [
        f"{header} {ci_cell(float(numbers[var]), np.nan, np.nan, scale, digits)}"
        for var, header, scale, digits in SUMMARY_COLUMNS
        if np.isfinite(float(numbers[var]))
    ]
    out.pdf_text([" · ".join(values)] if values else [])
    out.pdf_text([named(name, verdict) for name, verdict in run.verdicts.items()])


def _config_changes(out: Writer, config: dict[str, Any]) -> None:
    """What the run's config changes from the defaults (model keys its kind reads only)."""
    changes = config_changes(config)
    out.heading(3, "Configuration: changes from the defaults", pdf=False)
    if not changes:
        out.paragraph("Every key has its default value.", pdf=False)
        out.pdf_text(["config: the defaults"])
        return
    rows = [(key, _shown(value), _shown(default)) for key, value, default in changes]
    out.table(("key", "value", "default"), rows, css="changes", pdf=False)
    out.pdf_text(["config: " + ", ".join(f"{k}={v}" for k, v, _ in rows)])


def _shown(value: Any) -> str:
    return "none" if value is None else str(value)


def _full_config(out: Writer, tree: xr.DataTree, config: dict[str, Any]) -> None:
    """Every config key and dataset fact, folded: the record, not the news (HTML only)."""
    info = tree.attrs.get("dataset")
    dataset = sorted(info.items()) if isinstance(info, dict) else []
    with out.fold(f"Full configuration ({len(config)} keys) and dataset"):
        rows = [(k, _shown(v)) for k, v in sorted(config.items())]
        out.key_values(rows, ("key", "value"), pdf=False)
        if dataset:
            out.key_values(dataset, ("dataset", "value"), pdf=False)


# ----------------------------------------------------------------------------- summary


def _summary_section(
    out: Writer, result: xr.Dataset, grouped: xr.Dataset, runs: list[_Run]
) -> None:
    """One row per arm, before anything else: what was run and what came out of it."""
    out.heading(2, "Summary", anchor="summary", pdf=False)
    numbers = [c for c in SUMMARY_COLUMNS if np.isfinite(grouped[f"{c[0]}_mean"].values).any()]
    verdicts = any(run.verdicts for run in runs)
    head = ["arm", "rule", "model", "data", "status", *(c[1] for c in numbers)]
    head += ["verdicts"] * verdicts + ["runs"]
    rows = [
        _summary_row(grouped, a, [runs[i] for i in idx], numbers, verdicts)
        for a, idx in enumerate(members(grouped))
    ]
    # the PDF leaves out the runs column: each run has its own page there
    right = [False] * 5 + [True] * len(numbers)
    out.table(head, rows, right, css="summary", pdf_columns=-1)
    out.paragraph(_summary_note(result, grouped), css="note")


def _summary_row(
    grouped: xr.Dataset, a: int, runs: list[_Run], numbers: list[tuple], verdicts: bool
) -> list[str | Cell]:
    """An arm's row: what its runs are, their status, mean [CI] of ``numbers``, verdicts."""
    arm = _arm(grouped, a)
    row: list[str | Cell] = [
        Cell(swatch(arm.color) + html.escape(arm.name), arm.name),
        _joined(rule_text(r.config) for r in runs),
        _joined(model_text(r.config) for r in runs),
        _joined(r.data for r in runs),
        _status_cell([r.status for r in runs]),
    ]
    g = grouped.isel(arm=a)
    for var, _, scale, digits in numbers:
        stats = (float(g[f"{var}_{part}"]) for part in ("mean", "low", "high"))
        row.append(ci_cell(*stats, scale, digits))
    if verdicts:
        row.append(_verdict_cell([r.verdicts for r in runs]))
    row.append(Cell(", ".join(map(_run_link, runs)), ", ".join(r.name for r in runs)))
    return row


def _arm(grouped: xr.Dataset, a: int) -> _Arm:
    return _Arm(str(grouped["arm_name"].values[a]), str(grouped["arm_color"].values[a]))


def _run_link(run: _Run) -> str:
    return f'<a href="#run-{run.index + 1}">{html.escape(run.name)}</a>'


def _joined(values: Iterable[str]) -> str:
    return " / ".join(dict.fromkeys(values))


def _status_cell(statuses: list[str]) -> Cell:
    counts = Counter(statuses)
    if len(statuses) == 1:
        return Cell(_status_markup(statuses[0]), statuses[0])
    parts = [(f"{n} ", s) for s, n in counts.items()]
    return Cell(
        ", ".join(n + _status_markup(s) for n, s in parts), ", ".join(n + s for n, s in parts)
    )


def _verdict_cell(verdicts: list[dict[str, str]]) -> str:
    """Each analysis's verdicts over the arm's runs: ``no unlearning`` or, where they differ,
    ``unlearning ×2, no unlearning ×1``."""
    names = list(dict.fromkeys(name for v in verdicts for name in v))
    cells = []
    for name in names:
        counts = Counter(headline(v[name]) for v in verdicts if name in v)
        said = ", ".join(f"{h} ×{n}" if len(counts) > 1 else h for h, n in counts.items())
        cells.append(named(name, said))
    return "; ".join(cells)


def _summary_note(result: xr.Dataset, grouped: xr.Dataset) -> str:
    by = json.loads(grouped.attrs["by"])
    pooled = json.loads(grouped.attrs["pooled"])
    level = float(json.loads(result.attrs.get("parameters", "{}")).get("level", 0.95))
    note = (
        f"Numbers are means over an arm's runs, with the {level:.0%} percentile-bootstrap CI in "
        "brackets where it has two or more. Plateau angle: the update angle to backprop over "
        "the last fifth of the run, mean over hidden layers."
    )
    if by:
        note += f" Arms differ in {', '.join(by)}."
    if pooled:
        note += f" An arm's runs may differ in {', '.join(pooled)}."
    return note


# ----------------------------------------------------------------------------- comparison


def _comparison_section(out: Writer, result: xr.Dataset) -> None:
    """The comparison figures (the PDF puts them under the summary), and the full table."""
    out.heading(2, "Comparison", anchor="compare", pdf=False)
    with out.gallery():
        for plot_name, fig in figures(COMPARE, result):
            out.figure(fig, caption(COMPARE, plot_name))
    with out.fold("Comparison table: every column, arms by their config keys"):
        out.text_table(COMPARE.table(result), pdf=False)


def _contents(trees: Sequence[xr.DataTree]) -> str:
    """Links to the summary, the comparison (with several runs) and the runs."""
    links = [("summary", "Summary")]
    if len(trees) > 1:
        links.append(("compare", "Comparison"))
    links.append(("runs", f"Runs ({len(trees)})"))
    return "<nav>" + " · ".join(f'<a href="#{a}">{t}</a>' for a, t in links) + "</nav>"


def _compare(trees: list[xr.DataTree], names: list[str]) -> xr.Dataset:
    """The comparison of every run (even one: it gives the summary's numbers); a store whose
    angles cannot be read still gets its accuracies."""
    try:
        return COMPARE.analyze(trees, names=names)
    except AnalysisError:
        raise
    except READ_ERRORS:
        return COMPARE.analyze(trees, names=names, angles=False)


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

    def build(out: Writer) -> None:
        trees = [open_tree(run) for run in runs]
        names = unique_names([run_name(t, default=f"run {i + 1}") for i, t in enumerate(trees)])
        configs = [_checked_config(t, i) for i, t in enumerate(trees)]
        result = _compare(trees, names)
        grouped = COMPARE.arms(result)
        arm_of = {i: a for a, idx in enumerate(members(grouped)) for i in idx}
        show = progress and len(runs) >= PROGRESS_MIN_RUNS and sys.stderr.isatty()
        sections, facts = [], []
        for i in tqdm(range(len(trees)), desc="report", unit="run", disable=not show):
            tree = trees[i]
            status = str(tree.attrs.get("status", "unknown"))
            run = _Run(i, names[i], status, configs[i], data_text(tree, configs[i]))
            section = Writer(out.sheets is not None)
            try:
                _run_section(section, tree, run, _arm(grouped, arm_of[i]), result.isel(run=i))
            except AnalysisError as err:  # name the run: the report covers many
                raise AnalysisError(f"{run_source(tree) or run.name}: {err}") from None
            sections.append(section)
            facts.append(run)

        out.heading(1, title)
        n_arms = grouped.sizes["arm"]
        out.paragraph(
            f"{len(runs)} run{'s' if len(runs) != 1 else ''} in {n_arms} "
            f"arm{'s' if n_arms != 1 else ''}; generated {now_iso()}"
        )
        out.raw(_contents(trees))
        _summary_section(out, result, grouped, facts)
        if len(trees) > 1:
            _comparison_section(out, result)
        out.heading(2, "Runs", anchor="runs", pdf=False)
        for section in sections:
            out.extend(section)

    return _publish(out_html, pdf, title, build)


def _publish(out_html: str | Path, pdf: bool, title: str, build: Callable[[Writer], None]) -> Path:
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
        out = Writer(pdf)
        build(out)
        temporaries[0].write_text(out.page(title), encoding="utf-8")
        if pdf:
            out.write_pdf(temporaries[1])
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

    def build(w: Writer) -> None:
        w.heading(1, title)
        count = f"{len(studies)} stud{'ies' if len(studies) != 1 else 'y'}; " if studies else ""
        w.paragraph(f"{study_dir}: {count}generated {now_iso()}")
        _preamble(w, preamble)
        if len(studies) > 1:
            w.raw(_study_contents(studies, manifests), "")
        for path, manifest in zip(studies, manifests, strict=True):
            _study_section(w, path, manifest, runs, progress)

    return _publish(out, pdf, title, build)


def _preamble(out: Writer, preamble: Any) -> None:
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
    out: Writer, path: Path, manifest: dict[str, Any], runs: str, progress: bool
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
        name = Cell(swatch(study_color(i)) + html.escape(arm["name"]), arm["name"])
        arm_rows.append((name, what, states))
    out.table(("arm", "overrides", "runs"), arm_rows)
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
    out.text_table(study_metrics.table(summary))
    tree = study_reader.open_study(path, dims="arm")  # arms in the manifest's order and colours
    name = str(manifest.get("name") or path.name)
    with out.gallery():
        for plot in (study_metrics.plot_accuracy, study_metrics.plot_loss):
            text = caption(study_metrics, plot.__name__)
            out.figure(plot(tree), text, alt=f"{name}: {text}")

    if runs == "none":
        return
    out.heading(3, "Runs")
    points = study_reader.study_runs(path)
    show = progress and len(points) >= PROGRESS_MIN_RUNS and sys.stderr.isatty()
    order = [a["name"] for a in manifest.get("arms", [])]
    for arm, seed, store in tqdm(points, desc="report", unit="run", disable=not show):
        color = study_color(order.index(arm) if arm in order else 0)
        _study_run_section(out, path, manifest, (arm, seed, store), color, runs == "full")


def study_color(index: int) -> str:
    """The colour of a study's arm: the one its curves get in the study's figures (C0, C1, ...
    in the manifest's order)."""
    return to_hex(f"C{index % 10}")


def _study_run_section(
    out: Writer,
    path: Path,
    manifest: dict[str, Any],
    point: tuple[str, int, Path],
    color: str,
    draw: bool,
) -> None:
    """One run of a study, folded: its status, its analysis tables, and with ``draw`` its
    learning curves and analysis figures."""
    from dynalign import study_reader

    arm, seed, store = point
    entry = study_reader.run_entries(manifest)[(arm, seed)]
    status, message, tree = study_reader.open_point(path, entry)
    label = f"{arm}, seed {seed}"
    with out.fold(f"{swatch(color)}<b>{html.escape(label)}</b> — {_status_markup(status)}"):
        out.pdf_text(["", label])
        out.raw(
            f"<p>status: {_status_markup(status)}"
            + (f" — {html.escape(message)}" if message else "")
            + f"<br>store: {html.escape(str(store))}</p>",
            f"status: {status}" + (f" — {message}" if message else "") + f"\nstore: {store}",
        )
        if tree is None:
            return
        if draw:
            _curves_figure(out, tree, color, label)
        modules = applicable(tree)
        if not modules:
            out.paragraph("No analysis applies to this run.")
        for module in modules:
            outcome = _analyze(module, lambda m=module: m.analyze(tree))
            _analysis_block(out, module, outcome, label, level=4, draw=draw)
