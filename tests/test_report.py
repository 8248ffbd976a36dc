"""dynalign.analyses.report: one self-contained HTML page (and a PDF) over synthetic runs."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

import numpy as np
import pytest
from dynalign.analyses import AnalysisError, applicable, figures
from dynalign.analyses.report import write_report
from synthetic_stores import exp_decay, make_run, write_run
from test_autoencoder_analysis import autoencoder_run, probe_inputs

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
    return sum(len(figures(m, m.analyze(t))) for t in trees for m in applicable(t))


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
    from dynalign.analyses import COMPARE

    n_compare = len(figures(COMPARE, COMPARE.analyze(trees)))
    assert n_compare >= 1
    assert len(page.images) == _expected_figures(trees) + n_compare
    # The autoencoder draws four figures: reconstructions, filters, FVU, loss terms.
    assert sum("ae: autoencoder" in c for c in page.captions) == 4
    assert not (tmp_path / "out" / "report.pdf").exists()


def test_html_shows_runs_config_status_tables_and_comparison(tmp_path):
    out = write_report(_stores(tmp_path), tmp_path / "report.html", progress=False)
    page = _parse(out)
    h2 = [text for tag, text in page.headings if tag == "h2"]
    assert h2 == ["ae", "fa", "Comparison"]
    h3 = [text for tag, text in page.headings if tag == "h3"]
    assert {"Configuration", "autoencoder", "alignment", "compare"} <= set(h3)
    text = "".join(page.text)
    assert "rule.name" in text and "model.code_size" in text  # the config tables
    assert "completed" in text
    assert "verdict: reconstructs" in text  # the autoencoder's table
    assert "compare — 2 runs" in text
    raw = out.read_text(encoding="utf-8")
    for anchor in ("run-1", "run-2", "compare"):  # contents links and their targets
        assert f'href="#{anchor}"' in raw and f'id="{anchor}"' in raw


def test_single_run_has_no_comparison_and_accepts_trees(tmp_path):
    x = probe_inputs()
    out = write_report([autoencoder_run(x, x)], tmp_path / "one.html", progress=False)
    page = _parse(out)
    assert [t for tag, t in page.headings if tag == "h2"] == ["run 1"]
    assert len(page.images) == _expected_figures([autoencoder_run(x, x)])


def test_pdf_written_beside_the_html(tmp_path):
    out = write_report(_stores(tmp_path), tmp_path / "r.html", pdf=True, progress=False)
    pdf = (tmp_path / "r.pdf").read_bytes()
    assert pdf.startswith(b"%PDF")
    n_pages = pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ")
    # Every figure is a page, plus at least one text page of tables.
    assert n_pages > len(_parse(out).images)


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
