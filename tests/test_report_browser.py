"""The report in a real browser: headless Chromium renders reports of 1, 4 and 20 runs at
1280 px with no horizontal overflow, every figure at a non-zero size and no console errors, and
writes a screenshot of each for the record (to $DYNALIGN_SCREENSHOTS when set, else to the test's
temporary folder; the paths are printed, ``pytest -s`` shows them).

Skipped where no Chromium is installed; ``.ci/run`` installs Debian's ``chromium``. The checker
(tests/browser.py) is itself tested on pages that are broken on purpose.
"""

from __future__ import annotations

import os
import struct
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from browser import browser_version, check_page, find_browser
from synthetic_stores import exp_decay, make_run, rise_then_fall, write_run

from dynalign.analyses.report import write_report
from dynalign.config import build_config
from dynalign.record import record

pytestmark = pytest.mark.skipif(
    find_browser() is None, reason="no Chromium installed (.ci/run installs Debian's chromium)"
)

WIDTH = 1280
#: a 1 × 1 PNG for the checker's own test pages, drawn larger with width/height attributes
DOT = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwAD"
    "hgGAWjR9awAAAABJRU5ErkJggg=="
)
#: (rule, depth) arms of the synthetic runs; 20 runs are 5 arms × 4 seeds
ARMS = [("bp", 2), ("fa", 2), ("fa", 3), ("dfa", 2), ("kp", 4)]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A real recorded run: a 2×64 FA MLP on digits, 50 steps to about 80 % (a second or two)."""
    config = build_config(
        overrides={
            "model.depth": 2,
            "model.width": 64,
            "train.epochs": 5,
            "train.lr": 0.05,
            "data.n_train": 500,
            "data.n_val": 100,
            "train.batch_size": 50,
            "probes.snapshot_every": 10,
        }
    )
    out = tmp_path_factory.mktemp("real") / "fa-real.zarr"
    record(config, out, progress=False)
    return out


def synthetic(rule: str, depth: int, seed: int, steps: int = 80):
    """A run whose curves differ by arm (plateau angle, peak accuracy) and seed (noise)."""
    rng = np.random.default_rng(100 * depth + seed)
    layers = [f"fc{i}" for i in range(1, depth + 2)]
    plateau = 0.0 if rule == "bp" else 25.0 + 8 * depth + 3 * seed
    angle = np.zeros(steps) if rule == "bp" else exp_decay(steps, 88, plateau, 12 + 4 * seed)
    peak = 0.95 - 0.04 * depth - (0.0 if rule == "bp" else 0.05)
    accuracy = rise_then_fall(steps, peak, 40, steps + 1, 0.0) + rng.normal(0, 0.01, steps)
    loss = exp_decay(steps, 2.3, 0.3 + 0.1 * depth, 20) + rng.normal(0, 0.02, steps)
    return make_run(
        steps=steps,
        layers=layers,
        update_angle=angle,
        delta_angle=angle * 0.8,
        feedback_angle=np.zeros(steps) if rule == "bp" else angle + 5,
        accuracy=np.clip(accuracy, 0, 1),
        loss=loss,
        val_accuracy=np.clip(accuracy[9::10] - 0.02, 0, 1),
        config={"rule.name": rule, "model.depth": depth, "train.seed": seed},
        name=f"{rule}-d{depth}-s{seed}",
    )


def report_runs(n_runs: int, real_run: Path, folder: Path) -> list:
    if n_runs == 1:
        return [real_run]
    if n_runs == 4:  # the real run beside three synthetic arms, one of them from a store
        stored = write_run(synthetic("dfa", 2, 1), folder / "dfa-d2-s1.zarr")
        return [real_run, synthetic("bp", 2, 0), synthetic("fa", 3, 0), stored]
    assert n_runs == 20
    return [synthetic(rule, depth, seed) for rule, depth in ARMS for seed in range(4)]


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = Path(os.environ.get("DYNALIGN_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.count = 0

    def handle_starttag(self, tag, attrs):
        self.count += tag == "img"


def count_images(path: Path) -> int:
    parser = _Images()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser.count


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head.startswith(b"\x89PNG\r\n\x1a\n"), f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


# ----------------------------------------------------------------------------- the report


@pytest.mark.parametrize("n_runs", [1, 4, 20])
def test_report_renders_cleanly_at_1280_px(n_runs, real_run, tmp_path, screenshots):
    runs = report_runs(n_runs, real_run, tmp_path)
    out = write_report(runs, tmp_path / f"report-{n_runs}.html", progress=False)
    shot = screenshots / f"report-{n_runs}-run{'s' if n_runs > 1 else ''}.png"
    page = check_page(out, width=WIDTH, screenshot=shot)
    for path in page.screenshots:
        print(f"{n_runs}-run report, {browser_version()}: {path}")

    problems = page.problems()
    assert not problems, f"{n_runs}-run report ({out}) at {WIDTH} px:\n" + "\n".join(problems)
    # the probe saw every figure the HTML holds, each drawn at a real size
    assert len(page.images) == count_images(out) >= n_runs
    assert all(img["width"] >= 100 and img["height"] >= 50 for img in page.images), [
        (img["label"], img["width"], img["height"]) for img in page.images
    ]
    assert page.folded["clientWidth"] == WIDTH
    assert page.screenshots and page.screenshots[0] == shot
    for path in page.screenshots:
        width, height = png_size(path)
        assert width == WIDTH and height >= 400, (path, width, height)


# ----------------------------------------------------------------------------- the checker


def _page(tmp_path: Path, body: str, name: str = "page.html") -> Path:
    path = tmp_path / name
    path.write_text(
        f'<!doctype html><html><head><meta charset="utf-8"><title>t</title></head>'
        f"<body>{body}</body></html>",
        encoding="utf-8",
    )
    return path


def test_checker_passes_a_clean_page_and_opens_details(tmp_path):
    body = (
        f'<h1>Clean — ünïcode °</h1><figure><img src="{DOT}" width="400" height="300">'
        "<figcaption>open</figcaption></figure>"
        f'<details><summary>folded run</summary><figure><img src="{DOT}" width="300" '
        'height="200"><figcaption>folded figure</figcaption></figure></details>'
        # a wide block that scrolls inside its own box is no page overflow
        f'<pre style="overflow-x:auto">{"x" * 600}</pre>'
        '<div style="overflow-x:auto"><table><tr>'
        + "<td>cell&nbsp;with&nbsp;text</td>" * 60
        + "</tr></table></div>"
    )
    page = check_page(_page(tmp_path, body), width=WIDTH, screenshot=tmp_path / "clean.png")
    assert page.problems() == []
    assert page.details == 1 and len(page.images) == 2
    sizes = [(img["width"], img["height"]) for img in page.images]
    assert sizes == [(400, 300), (300, 200)]  # the folded figure measured after opening
    assert [p.name for p in page.screenshots] == ["clean.png", "clean-expanded.png"]


def test_checker_finds_horizontal_overflow(tmp_path):
    body = '<p>fits</p><div id="wide" style="width:3000px">far too wide</div>'
    problems = check_page(_page(tmp_path, body), width=WIDTH).problems()
    assert len(problems) == 1, problems
    assert "horizontal overflow" in problems[0] and "div#wide" in problems[0]
    assert f"in a {WIDTH} px window" in problems[0]


def test_checker_finds_overflow_inside_folded_details(tmp_path):
    body = (
        "<details><summary>run 7</summary>"
        '<pre class="config">' + "y" * 400 + "</pre></details>"  # a <pre> that does not wrap
    )
    problems = check_page(_page(tmp_path, body), width=WIDTH).problems()
    assert len(problems) == 1, problems
    assert "with every <details> open" in problems[0] and "pre.config" in problems[0]


def test_checker_finds_errors_and_zero_size_or_broken_images(tmp_path):
    body = (
        f'<figure><img src="{DOT}" style="width:0;height:0">'
        "<figcaption>vanished figure</figcaption></figure>"
        '<img id="broken" src="no-such-figure.png" width="50" height="50">'
        "<script>console.error('drawn from a script');</script>"
        "<script>null.missing;</script>"
        "<script>setTimeout(() => { throw new Error('late failure'); }, 50);</script>"
        "<script>Promise.reject(new Error('nobody waits'));</script>"
        f'<details><summary>s</summary><img src="{DOT}" width="64" height="48"></details>'
    )
    page = check_page(_page(tmp_path, body), width=WIDTH)
    text = "\n".join(page.problems())
    assert 'img (caption "vanished figure") renders 0 × 0 px' in text
    assert "img#broken did not load" in text
    assert "<img> failed to load: file://" in text and "no-such-figure.png" in text
    assert "console.error: drawn from a script" in text
    assert "Cannot read properties of null" in text
    assert "late failure" in text
    assert "unhandled promise rejection: Error: nobody waits" in text
    assert "renders" not in text.split("img#broken")[1]  # the figure in <details> is fine
    assert page.images[-1]["width"] == 64


def test_checker_fails_loudly_when_its_probe_cannot_run(tmp_path):
    from browser import BrowserError

    body = "<script>window.addEventListener = () => { throw new Error('hijacked'); };</script>"
    with pytest.raises(BrowserError, match="did not report back"):
        check_page(_page(tmp_path, body), width=WIDTH)
