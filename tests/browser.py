"""Check an HTML page in headless Chromium: layout, figures and errors, as a reader's browser
renders them.

    page = check_page("report.html", width=1280, screenshot="report.png")
    assert not page.problems(), "\\n".join(page.problems())

No browser-automation package is needed: the page is copied with two small scripts added (one
first in <head> that collects errors, one last in <body> that measures after ``load``), and the
copy is run through ``chromium --headless --dump-dom``; the measurements come back as JSON in a
hidden ``<pre id="probe-result">`` of the dumped DOM. The measuring script measures the page
as loaded, then opens every ``<details>`` (a figure inside a closed one renders 0 × 0 by
design) and measures again: widths, every <img>'s rendered and natural size, errors.

Under ``--virtual-time-budget`` timers are reliable but ``requestAnimationFrame`` and
``HTMLImageElement.decode()`` are not (the DOM is sometimes dumped before they resolve), so the
probe measures synchronously, from a timer, and judges images by ``complete``/``naturalWidth``.
Screenshots are taken without virtual time (on a busy machine Chromium sometimes hangs taking
one under it), of the page as it is and of a copy with ``open`` on every ``<details>``.
"""

from __future__ import annotations

import functools
import html
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: executables tried in turn (Debian's package installs ``chromium``); DYNALIGN_CHROMIUM wins
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: the tallest screenshot taken: longer pages are cut (Chromium slows down with huge bitmaps)
MAX_SCREENSHOT_HEIGHT = 12000
MIN_SCREENSHOT_HEIGHT = 400

EARLY = """<script>
(() => {
  const errors = (window.__probeErrors = []);
  const text = (v) => {
    if (v instanceof Error) return `${v.name}: ${v.message}`;
    if (typeof v === "object") { try { return JSON.stringify(v); } catch (e) { return String(v); } }
    return String(v);
  };
  window.addEventListener("error", (e) => {
    const t = e.target;
    if (t && t !== window && t.tagName) {
      const src = t.currentSrc || t.src || t.href || "";
      errors.push(`<${t.tagName.toLowerCase()}> failed to load: ${src.slice(0, 80)}`);
    } else {
      errors.push(`uncaught ${e.message} (${e.filename || "?"}:${e.lineno})`);
    }
  }, true);
  window.addEventListener("unhandledrejection", (e) => {
    errors.push(`unhandled promise rejection: ${text(e.reason)}`);
  });
  const consoleError = console.error;
  console.error = function (...args) {
    errors.push(`console.error: ${args.map(text).join(" ")}`);
    return consoleError.apply(this, args);
  };
})();
</script>
"""

LATE = """<script>
window.addEventListener("load", () => {
  const errors = window.__probeErrors || ["the error collector did not run"];
  const root = document.documentElement;
  const page = () => ({
    scrollWidth: root.scrollWidth, clientWidth: root.clientWidth,
    // the height of what is drawn (scrollHeight is never less than the window's)
    contentHeight: Math.ceil(root.getBoundingClientRect().height +
      parseFloat(getComputedStyle(document.body).marginBottom || "0")),
  });
  const clip = (s, n) => { s = (s || "").replace(/\\s+/g, " ").trim();
    return s.length > n ? s.slice(0, n - 1) + "…" : s; };
  const name = (el) => {
    let s = el.tagName.toLowerCase();
    if (el.id) s += "#" + el.id;
    if (typeof el.className === "string" && el.className.trim())
      s += "." + el.className.trim().split(/\\s+/).join(".");
    return s;
  };
  const where = (el) => {
    const parts = [];
    const fig = el.closest("figure");
    const cap = fig && fig.querySelector("figcaption");
    if (cap) parts.push(`caption "${clip(cap.textContent, 70)}"`);
    const det = el.closest("details");
    const sum = det && det.querySelector("summary");
    if (sum) parts.push(`in <details> "${clip(sum.textContent, 50)}"`);
    if (!parts.length && !(el instanceof HTMLImageElement)) {
      const t = clip(el.textContent, 50);
      if (t) parts.push(`"${t}"`);
    }
    return parts.join(", ");
  };
  const describe = (el) => { const w = where(el); return w ? `${name(el)} (${w})` : name(el); };
  // what sticks out of the window: the outermost elements whose box does, else the deepest
  // whose content does (a <pre> that does not wrap overflows its own box, not the page's)
  const overflowing = () => {
    const vw = root.clientWidth, found = [];
    const walk = (el) => {
      const r = el.getBoundingClientRect();
      if ((r.right > vw + 0.5 || r.left < -0.5) && r.width > 0) {
        found.push(`${describe(el)}: box ${Math.round(r.left)}..${Math.round(r.right)} px`);
        return true;
      }
      const scrolls = /(auto|scroll|hidden|clip)/.test(getComputedStyle(el).overflowX);
      if (el !== document.body && scrolls) return false;
      let any = false;
      for (const child of el.children) any = walk(child) || any;
      if (!any && r.left + el.scrollWidth > vw + 0.5) {
        found.push(`${describe(el)}: content to ${Math.round(r.left + el.scrollWidth)} px`);
        return true;
      }
      return any;
    };
    if (document.body) walk(document.body);
    return found.slice(0, 10);
  };
  const result = { folded: page(), errors };
  result.folded.overflowing = result.folded.scrollWidth > result.folded.clientWidth
    ? overflowing() : [];
  const details = [...document.querySelectorAll("details")];
  result.details = details.length;
  details.forEach((d) => { d.open = true; });
  setTimeout(() => {
    try {
      result.expanded = page();
      result.expanded.overflowing = result.expanded.scrollWidth > result.expanded.clientWidth
        ? overflowing() : [];
      result.images = [...document.images].map((img, index) => {
        const r = img.getBoundingClientRect();
        return { index, label: describe(img), width: r.width, height: r.height,
                 naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
                 complete: img.complete };
      });
      const drawn = [...document.querySelectorAll("svg, canvas, object, embed, iframe")]
        .filter((el) => !el.parentElement.closest("svg"));
      result.figures = [...document.querySelectorAll("figure"), ...drawn].map((el) => {
        const r = el.getBoundingClientRect();
        return { label: describe(el), width: r.width, height: r.height };
      });
      result.tables = document.querySelectorAll("table").length;
      result.title = document.title;
    } catch (e) {
      result.probeError = String(e && e.stack || e);
    }
    const pre = document.createElement("pre");
    pre.id = "probe-result";
    pre.hidden = true;
    pre.textContent = JSON.stringify(result);
    document.body.appendChild(pre);
  }, 300);
});
</script>
"""

_CSP = re.compile(r"<meta[^>]+http-equiv\s*=\s*[\"']?content-security-policy[^>]*>", re.I)
_HEAD = re.compile(r"<head(\s[^>]*)?>", re.I)
_DOCTYPE_OR_HTML = re.compile(r"^\s*(<!doctype[^>]*>)?\s*(<html(\s[^>]*)?>)?", re.I)
_BODY_END = re.compile(r"</body\s*>", re.I)
_DETAILS = re.compile(r"<details(?=[\s>])", re.I)
_CONSOLE = re.compile(r":CONSOLE[:(]\d+\)?\]\s*(.*)$")
#: what Chromium itself logs to the console for a page error (not the page's console.log)
_BROWSER_ERROR = re.compile(r"(Uncaught|Refused to|Failed to|Not allowed to)\b")


class BrowserError(RuntimeError):
    """The browser could not be run, or the page's probe did not report back."""


@functools.lru_cache(maxsize=1)
def find_browser() -> str | None:
    """The Chromium executable to use, or None where none is installed (and working)."""
    names = [os.environ["DYNALIGN_CHROMIUM"]] if os.environ.get("DYNALIGN_CHROMIUM") else []
    for name in [*names, *BROWSER_NAMES]:
        exe = shutil.which(name)
        if exe is None:
            continue
        try:  # Ubuntu's chromium-browser can be a stub that only asks for snap
            done = subprocess.run(
                [exe, "--version"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0 and re.search(r"(Chromium|Chrome)\s+\d+", done.stdout):
            return exe
    return None


@functools.lru_cache(maxsize=1)
def browser_version() -> str:
    exe = find_browser()
    if exe is None:
        return "no browser"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


@dataclass
class PageCheck:
    """What the probe measured, as a reader's browser at ``width`` px renders the page."""

    path: Path
    width: int
    folded: dict[str, Any]
    expanded: dict[str, Any]
    details: int
    images: list[dict[str, Any]]
    figures: list[dict[str, Any]]
    tables: int
    errors: list[str]
    console: list[str] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Everything a reader would see as broken, one line each (empty: none)."""
        out = []
        states = [("as loaded", self.folded)]
        if self.details:
            states.append(("with every <details> open", self.expanded))
        for state, m in states:
            if m["scrollWidth"] > m["clientWidth"]:
                culprits = "; ".join(m["overflowing"]) or "no single element found"
                out.append(
                    f"horizontal overflow {state}: the page is {m['scrollWidth']} px wide in a "
                    f"{m['clientWidth']} px window; sticking out: {culprits}"
                )
        for img in self.images:
            label = f"image {img['index'] + 1} of {len(self.images)}, {img['label']}"
            if not img["complete"] or img["naturalWidth"] == 0:
                out.append(f"{label} did not load or decode")
            if img["width"] < 1 or img["height"] < 1:
                out.append(f"{label} renders {img['width']:g} × {img['height']:g} px")
        for fig in self.figures:
            if fig["width"] < 1 or fig["height"] < 1:
                out.append(f"{fig['label']} renders {fig['width']:g} × {fig['height']:g} px")
        out += [f"page error: {e}" for e in self.errors]
        for line in self.console:  # what Chromium logged that the page's listeners missed
            message = console_message(line)
            if _BROWSER_ERROR.match(message) and not any(message in e for e in self.errors):
                out.append(f"console: {message}")
        return out


def console_message(line: str) -> str:
    """The message of one of Chromium's console lines on stderr, without its source."""
    m = _CONSOLE.search(line)
    text = m.group(1) if m else line
    quoted = re.match(r'"(.*)", source: ', text)
    return quoted.group(1) if quoted else text


def instrument(markup: str, early: str = EARLY, late: str = LATE) -> str:
    """``markup`` with ``early`` first in <head> and ``late`` last in <body>; a
    Content-Security-Policy <meta> is dropped so that the added scripts may run. A charset
    <meta> goes first, since ``early`` could push the page's own past the 1024 bytes a browser
    looks at (the copy is written as UTF-8)."""
    markup = _CSP.sub("", markup)
    early = '<meta charset="utf-8">\n' + early
    head = _HEAD.search(markup)
    if head:
        markup = markup[: head.end()] + early + markup[head.end() :]
    else:  # after the doctype and <html>: a script before the doctype means quirks mode
        top = _DOCTYPE_OR_HTML.match(markup)
        markup = markup[: top.end()] + early + markup[top.end() :]
    ends = list(_BODY_END.finditer(markup))
    if ends:
        return markup[: ends[-1].start()] + late + markup[ends[-1].start() :]
    return markup + late


def run_browser(
    url: str,
    *,
    width: int,
    height: int,
    dump_dom: bool = False,
    screenshot: Path | None = None,
    timeout: float = 45,
    budget_ms: int | None = 10000,
    attempts: int = 2,
) -> tuple[str, list[str]]:
    """Load ``url`` in a fresh headless Chromium; return the dumped DOM (when asked) and the
    console lines it logged. ``budget_ms``: virtual time to run the page's timers in before the
    dump (None: none; screenshots need none, and a loaded machine can hang Chromium taking one
    under virtual time). A run past ``timeout`` s is ended and tried again, up to ``attempts``
    in all; then, or if Chromium fails, BrowserError."""
    for attempt in range(1, attempts + 1):
        try:
            return _run_browser_once(url, width, height, dump_dom, screenshot, timeout, budget_ms)
        except TimeoutError as err:
            if attempt == attempts:
                raise BrowserError(f"{err} ({attempts} attempts)") from None
            warnings.warn(f"{err}; trying again", stacklevel=2)
    raise AssertionError("unreachable")


def _run_browser_once(
    url: str,
    width: int,
    height: int,
    dump_dom: bool,
    screenshot: Path | None,
    timeout: float,
    budget_ms: int | None,
) -> tuple[str, list[str]]:
    exe = find_browser()
    if exe is None:
        raise BrowserError("no Chromium installed")
    with tempfile.TemporaryDirectory(prefix="browser-profile-") as profile:
        args = [
            exe,
            "--headless",
            "--no-sandbox",  # as root, Chromium runs only without its sandbox
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--mute-audio",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--run-all-compositor-stages-before-draw",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "--enable-logging=stderr",
            "--v=0",
        ]
        if budget_ms is not None:
            args.append(f"--virtual-time-budget={budget_ms}")
        if dump_dom:
            args.append("--dump-dom")
        if screenshot is not None:
            args.append(f"--screenshot={screenshot}")
        env = dict(os.environ, HOME=profile, XDG_CONFIG_HOME=profile, XDG_CACHE_HOME=profile)
        proc = subprocess.Popen(
            [*args, url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=env,
            start_new_session=True,  # its own process group: a timeout ends all its helpers
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TimeoutError(f"{Path(exe).name} did not finish {url} in {timeout:g} s") from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    console = [line for line in stderr.splitlines() if _CONSOLE.search(line)]
    if proc.returncode != 0:
        tail = "\n".join(stderr.splitlines()[-15:])
        raise BrowserError(f"{Path(exe).name} exited with {proc.returncode} on {url}:\n{tail}")
    if screenshot is not None and not Path(screenshot).is_file():
        raise BrowserError(f"{Path(exe).name} wrote no screenshot of {url}")
    return stdout, console


def check_page(
    html_path: str | Path,
    *,
    width: int = 1280,
    height: int = 2000,
    screenshot: str | Path | None = None,
    timeout: float = 45,
) -> PageCheck:
    """Render ``html_path`` at ``width`` × ``height`` px and measure it (see the module doc).

    With ``screenshot`` (a .png path) the page as a reader first sees it is written there (all
    of it, MIN_ to MAX_SCREENSHOT_HEIGHT px), and, where it has <details>, ``<name>-expanded.png``
    with every one open. The probed copies live in a temporary folder, away from the original:
    a page that needs files beside it shows load errors, which a self-contained page must not.
    """
    html_path = Path(html_path)
    markup = html_path.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="browser-page-") as tmp:
        probed = Path(tmp) / "probed.html"
        probed.write_text(instrument(markup), encoding="utf-8")
        dom, console = run_browser(
            probed.as_uri(), width=width, height=height, dump_dom=True, timeout=timeout
        )
        found = re.findall(r'<pre id="probe-result" hidden="">(.*?)</pre>', dom, re.S)
        if not found:
            raise BrowserError(
                f"the probe did not report back from {html_path} (a script error before "
                f"load, or the page never finished loading); console: {console[-5:]}"
            )
        result = json.loads(html.unescape(found[-1]))
        if "probeError" in result:
            raise BrowserError(f"the probe failed on {html_path}: {result['probeError']}")
        page = PageCheck(
            path=html_path,
            width=width,
            folded=result["folded"],
            expanded=result["expanded"],
            details=result["details"],
            images=result["images"],
            figures=result["figures"],
            tables=result["tables"],
            errors=result["errors"],
            console=console,
        )
        if screenshot is not None:
            shot = Path(screenshot)
            shot.parent.mkdir(parents=True, exist_ok=True)
            expanded = shot.with_name(shot.stem + "-expanded" + shot.suffix)
            opened = Path(tmp) / "opened.html"
            opened.write_text(_DETAILS.sub("<details open", markup), encoding="utf-8")
            shots = [(html_path.resolve().as_uri(), shot, page.folded["contentHeight"])]
            if page.details:
                shots.append((opened.as_uri(), expanded, page.expanded["contentHeight"]))
            for url, out, tall in shots:
                tall = max(MIN_SCREENSHOT_HEIGHT, min(int(tall), MAX_SCREENSHOT_HEIGHT))
                run_browser(
                    url, width=width, height=tall, screenshot=out, timeout=timeout, budget_ms=None
                )
                page.screenshots.append(out)
    return page
