"""dynalign.analyses.report: one self-contained HTML page (and a PDF) over synthetic runs."""

from __future__ import annotations

import base64
import re
import warnings
from html.parser import HTMLParser

import numpy as np
import pytest
from matplotlib.colors import to_hex
from synthetic_stores import exp_decay, make_run, write_run
from test_autoencoder_analysis import autoencoder_run, probe_inputs

from dynalign.analyses import COMPARE, AnalysisError, applicable, figures, report
from dynalign.analyses.curves import plot_run_curves
from dynalign.analyses.layout import text_blocks
from dynalign.analyses.report import config_changes, write_report
from dynalign.analyses.smoothing import flat_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Collects what a reader of the report sees: images, headings, captions, text."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.headings: list[tuple[str, str]] = []
        self.captions: list[str] = []
        self.text: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))
        if tag in ("h1", "h2", "h3", "figcaption"):
            self._open = tag

    def handle_endtag(self, tag):
        if tag == self._open:
            self._open = None

    def handle_data(self, data):
        self.text.append(data)
        if self._open == "figcaption":
            self.captions.append(data)
        elif self._open:
            self.headings.append((self._open, data))


def _parse(path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _stores(tmp_path):
    x = probe_inputs()
    ae = write_run(autoencoder_run(x, x), tmp_path / "ae.zarr")
    fa = write_run(
        make_run(steps=60, update_angle=exp_decay(60, 90, 30, 10), config={"rule.name": "fa"}),
        tmp_path / "fa.zarr",
    )
    return ae, fa


def _expected_figures(trees) -> int:
    """Every analysis figure, plus one learning-curve figure per run with epochs."""
    analyses = sum(len(figures(m, m.analyze(t))) for t in trees for m in applicable(t))
    return analyses + sum(plot_run_curves(t) is not None for t in trees)


def _pdf_pages(path) -> int:
    pdf = path.read_bytes()
    assert pdf.startswith(b"%PDF")
    return pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ")


def _run(rule="fa", seed=0, best=0.8, **config):
    """An MLP run whose validation accuracy climbs to ``best`` and whose FA angle settles."""
    angle = exp_decay(60, 90, 0 if rule == "bp" else 40, 10)
    return make_run(
        steps=60,
        update_angle=angle,
        val_accuracy=np.linspace(0.2, best, 6),
        val_loss=np.linspace(2.0, 0.5, 6),
        config={"rule.name": rule, "train.seed": seed, **config},
    )


def test_html_has_every_figure_as_inline_png(tmp_path):
    from dynalign.reader import open_run

    stores = _stores(tmp_path)
    out = write_report(stores, tmp_path / "out" / "report.html", progress=False)
    page = _parse(out)
    assert page.images, "the report has no figures"
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_SIGNATURE)
    trees = [open_run(p) for p in stores]
    n_compare = len(figures(COMPARE, COMPARE.analyze(trees)))
    assert n_compare >= 1
    assert len(page.images) == _expected_figures(trees) + n_compare
    # every figure is captioned with the first line of its plot function's docstring
    from dynalign.analyses import autoencoder

    first_line = autoencoder.plot_fvu.__doc__.strip().splitlines()[0]
    assert first_line in page.captions
    assert len(page.captions) == len(page.images)
    assert not (tmp_path / "out" / "report.pdf").exists()


def test_summary_comes_first_then_comparison_then_folded_runs(tmp_path):
    out = write_report(_stores(tmp_path), tmp_path / "report.html", progress=False)
    page = _parse(out)
    assert [text for tag, text in page.headings if tag == "h2"] == ["Summary", "Comparison", "Runs"]
    raw = out.read_text(encoding="utf-8")
    summary = raw.index('<table class="summary">')
    assert summary < raw.index("<img") and summary < raw.index("<details")
    assert raw.index('id="compare"') < raw.index('id="runs"')
    # every run is a closed <details> section, linked from the summary
    runs = re.findall(r"<details([^>]*)>", raw)
    assert sum('class="run"' in attrs for attrs in runs) == 2
    assert not any(" open" in attrs for attrs in runs)
    for anchor in ("run-1", "run-2", "summary", "compare", "runs"):
        assert f'href="#{anchor}"' in raw and f'id="{anchor}"' in raw
    text = "".join(page.text)
    assert "verdict: reconstructs" in text  # the autoencoder's own table, in its run section
    assert "autoencoder: reconstructs" in _summary_text(raw)  # and its verdict in the summary
    assert "<pre" not in raw  # tables are HTML tables, not preformatted blocks


def _summary_text(raw: str) -> str:
    table = raw[raw.index('<table class="summary">') :]
    return re.sub(r"<[^>]+>", " ", table[: table.index("</table>")])


def _summary_rows(raw: str) -> list[str]:
    table = raw[raw.index('<table class="summary">') :]
    return re.findall(r"<tr>(.*?)</tr>", table[: table.index("</table>")])[1:]


def test_runs_differing_only_in_threads_form_one_arm(tmp_path):
    runs = [
        _run(seed=0, best=0.8, **{"train.threads": 1}),
        _run(seed=1, best=0.82, **{"train.threads": 4}),
        _run("bp", best=0.9),
    ]
    out = write_report(runs, tmp_path / "r.html", progress=False)
    raw = out.read_text(encoding="utf-8")
    rows = _summary_rows(raw)
    assert len(rows) == 2  # fa (two runs, pooled across threads and seed) and bp
    assert "threads" not in _summary_text(raw).split("An arm")[0]
    fa = next(row for row in rows if ">fa<" in row)
    assert "2 <b" in fa and "[" in fa  # two completed runs, so a CI
    assert "1 run" not in fa


def test_config_changes_list_exactly_the_keys_changed_from_the_defaults(tmp_path):
    overrides = {"model.depth": 5, "train.lr": 0.05, "rule.name": "bp", "data.n_val": 200}
    tree = make_run(steps=20, config={**overrides, "model.kernel_size": 5})
    changes = config_changes(flat_config(tree))
    # model.kernel_size is a convnet key: an MLP does not read it, so it is no change to show
    assert [key for key, _, _ in changes] == sorted(overrides)
    assert dict((k, v) for k, v, _ in changes) == overrides
    assert dict((k, d) for k, _, d in changes)["model.depth"] == 3
    assert config_changes(flat_config(make_run(steps=20))) == []

    out = write_report([tree], tmp_path / "r.html", progress=False)
    raw = out.read_text(encoding="utf-8")
    table = raw[raw.index('<table class="changes">') :]
    table = table[: table.index("</table>")]
    assert re.findall(r"<tr><td>([^<]+)</td>", table) == sorted(overrides)
    assert "model.kernel_size" not in table and "data.patch_size" not in table
    assert "model.kernel_size" in raw  # in the full configuration, folded


def test_pdf_of_five_runs_is_a_few_pages(tmp_path):
    runs = [_run(seed=s, best=0.8 + 0.01 * s) for s in range(3)]
    runs += [_run("bp", best=0.9), _run(best=0.7, **{"model.depth": 5})]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = write_report(runs, tmp_path / "r.html", pdf=True, progress=False)
    assert not [w for w in caught if "constrained_layout" in str(w.message)]
    pages = _pdf_pages(tmp_path / "r.pdf")
    # a summary sheet (its table and the two comparison figures: at most two pages) and one
    # page per run, whose few figures sit side by side
    assert len(runs) + 1 <= pages <= 2 + len(runs), pages
    assert len(_parse(out).images) > pages  # figures share pages


def test_single_run_has_a_summary_and_no_comparison(tmp_path):
    x = probe_inputs()
    out = write_report([autoencoder_run(x, x)], tmp_path / "one.html", pdf=True, progress=False)
    page = _parse(out)
    assert [t for tag, t in page.headings if tag == "h2"] == ["Summary", "Runs"]
    assert len(page.images) == _expected_figures([autoencoder_run(x, x)])
    assert len(_summary_rows(out.read_text(encoding="utf-8"))) == 1
    assert _pdf_pages(tmp_path / "one.pdf") <= 3


def test_an_arm_has_one_colour_everywhere(tmp_path, monkeypatch):
    drawn: list[str] = []

    def curves(tree, color):
        drawn.append(color)
        return plot_run_curves(tree, color=color)

    monkeypatch.setattr(report, "plot_run_curves", curves)
    runs = [_run(seed=0), _run("bp"), _run(seed=1), _run(best=0.7, **{"model.depth": 5})]
    out = write_report(runs, tmp_path / "r.html", progress=False)
    raw = out.read_text(encoding="utf-8")
    grouped = COMPARE.arms(COMPARE.analyze(runs))
    colours = dict(zip(grouped["arm_name"].values, grouped["arm_color"].values, strict=True))
    assert len(set(colours.values())) == 3
    swatch = r'<span class="swatch" style="background:(#[0-9a-f]{6})"></span>'
    in_summary = re.findall(swatch + r"([^<]+)</td>", raw)
    assert dict((name, colour) for colour, name in in_summary) == colours
    # each run's folded heading and its learning curves use its arm's colour
    arm_of_run = ["fa depth=3", "bp depth=3", "fa depth=3", "fa depth=5"]
    runs_shown = re.findall(r'<details id="run-\d+" class="run"><summary>' + swatch, raw)
    assert runs_shown == [colours[a] for a in arm_of_run] == drawn
    # and the comparison figures draw each arm in that colour
    result = COMPARE.analyze(runs)
    curves_fig = COMPARE.plot_learning_curves(result)
    for line in curves_fig.axes[0].get_lines():
        name = line.get_label().split(" (n=")[0]
        assert to_hex(line.get_color()) == colours[name]
    dots = COMPARE.plot_best_accuracy(result)
    ticks = [t.get_text().split(" (n=")[0] for t in dots.axes[0].get_yticklabels()]
    means = [to_hex(bar.lines[0].get_color()) for bar in dots.axes[0].containers]
    assert dict(zip(reversed(ticks), means, strict=True)) == colours


def test_plain_text_tables_become_html_tables():
    text = "\n".join(
        [
            "alignment — run (completed)",
            "kind    layer  plateau",
            "------  -----  -------",
            "update  fc1      30.3°",
            "delta   fc10      0.0°",
            "never settles below 80° (smoothed, to the end): fc2",
        ]
    )
    blocks = text_blocks(text)
    assert [kind for kind, _ in blocks] == ["lines", "table", "lines"]
    head, rows, right = blocks[1][1]
    assert head == ["kind", "layer", "plateau"]
    assert rows == [["update", "fc1", "30.3°"], ["delta", "fc10", "0.0°"]]
    assert right == [False, False, True]
    assert blocks[2][1] == [text.splitlines()[-1]]


def test_analysis_error_is_reported_in_place(tmp_path):
    same = np.tile(probe_inputs()[:1], (4, 1))  # identical probes: FVU undefined
    out = write_report([autoencoder_run(same, same)], tmp_path / "r.html", progress=False)
    text = "".join(_parse(out).text)
    assert "autoencoder could not analyse this" in text and "identical" in text


def test_bad_arguments(tmp_path):
    with pytest.raises(AnalysisError, match="no runs"):
        write_report([], tmp_path / "r.html")
    with pytest.raises(AnalysisError, match=r"\.html"):
        write_report([make_run(steps=5)], tmp_path / "r.txt")
