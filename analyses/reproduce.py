"""``dynalign reproduce``: the shipped finding specs, run as studies, judged by their criteria.

Each finding's spec (``dynalign/findings/finding-N.toml``) states the claim in words and its
criteria, fixed before any run; the runs' per-seed metrics are summarised, each criterion is
evaluated with its bootstrap CI, and the finding gets a verdict: reproduced, not reproduced or
inconclusive. The verdicts are written to ``DIR/findings.json``; the report opens with them.
"""

from __future__ import annotations

import html
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

from dynalign.spec import SpecError, StudySpec, load_spec

FINDINGS_FILE = "findings.json"
STUDY_PREFIX = "finding-"
VERDICT_COLOURS = {"reproduced": "#1a7f37", "not reproduced": "#b42318", "inconclusive": "#9a6700"}


def check_criteria(spec: StudySpec) -> None:
    """Validate a finding spec's criteria against its arms and the known metrics, before runs."""
    if spec.finding is None:
        return
    from dynalign.analyses.study import is_metric
    from dynalign.analyses.verdict import CriterionError, validate_criteria

    criteria = spec.finding.get("criteria")
    if not isinstance(criteria, list):
        raise SpecError(f"{spec.name}.toml: [finding] needs [[finding.criteria]] tables")
    try:
        where = f"{spec.name}.toml: criteria"
        validate_criteria(criteria, spec.arm_configs(), is_metric, where=where)
    except CriterionError as err:
        raise SpecError(str(err)) from None


# ----------------------------------------------------------------------------- the findings


def _findings_folder():
    return resources.files("dynalign") / "findings"


def finding_numbers() -> list[int]:
    """The numbers of the shipped finding specs, in order."""
    found = []
    for entry in _findings_folder().iterdir():
        match = re.fullmatch(r"finding-(\d+)\.toml", entry.name)
        if match:
            found.append(int(match.group(1)))
    return sorted(found)


def parse_findings(names: tuple[str, ...] | list[str]) -> list[int]:
    """``("2", "finding-3")`` -> ``[2, 3]``; none means every finding; unknown ones are refused."""
    known = finding_numbers()
    if not names:
        return known
    chosen = []
    for name in names:
        text = str(name).strip().removeprefix(STUDY_PREFIX)
        if not text.isdigit() or int(text) not in known:
            raise SpecError(
                f"no finding {name!r}; choose from {', '.join(map(str, known))} "
                "(`dynalign reproduce --list` shows them)"
            )
        if int(text) not in chosen:
            chosen.append(int(text))
    return chosen


def load_finding(
    number: int, scale: str = "quick", seeds: int | None = None, data: str | None = None
) -> StudySpec:
    """Finding ``number``'s spec at ``scale``, its criteria validated."""
    with resources.as_file(_findings_folder() / f"{STUDY_PREFIX}{number}.toml") as path:
        seed_list = list(range(seeds)) if seeds is not None else None
        spec = load_spec(path, scale=scale, seeds=seed_list, data=data)
    if spec.finding is None:
        raise SpecError(f"{spec.name}.toml has no [finding] table")
    check_criteria(spec)
    return spec


def describe(spec: StudySpec) -> str:
    """A finding for ``--list``: number, title, claim, arms and criteria."""
    f = spec.finding or {}
    lines = [f"{f.get('number')}. {f.get('title', '')}", f"   claim: {f.get('claim', '')}"]
    arms = ", ".join(a.name for a in spec.arms)
    lines.append(f"   {len(spec.arms)} arms x {len(spec.seeds)} seeds: {arms}")
    for c in f.get("criteria", []):
        lines.append(f"   criterion: {c.get('name')}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- judging


def criteria_metrics(criteria: list[dict[str, Any]]) -> list[str]:
    """Every metric a finding's criteria read (the summary computes these beside its own)."""
    names = []
    for c in criteria:
        names.append(c["metric"])
        names.extend((c.get("also") or {}).keys())
    return list(dict.fromkeys(names))


def judge_study(study_dir: str | Path) -> dict[str, Any]:
    """Evaluate the finding of one study directory: its criteria's results and its verdict."""
    from dynalign.analyses.study import summarise
    from dynalign.analyses.verdict import combine, evaluate
    from dynalign.study_reader import arm_configs, read_manifest

    manifest = read_manifest(study_dir)
    finding = manifest.get("finding") or {}
    criteria = finding.get("criteria") or []
    summary = summarise(study_dir, metrics=criteria_metrics(criteria))
    results = evaluate(criteria, summary, arms=arm_configs(manifest))
    statuses = [str(s) for s in summary["status"].values.ravel()]
    return _plain(
        {
            "number": finding.get("number"),
            "title": finding.get("title", ""),
            "claim": finding.get("claim", ""),
            "evidence": finding.get("evidence", ""),
            "study": Path(study_dir).name,
            "scale": manifest.get("scale"),
            "seeds": manifest.get("seeds"),
            "runs": {s: statuses.count(s) for s in sorted(set(statuses))},
            "verdict": combine(results),
            "criteria": results,
        }
    )


def judge(directory: str | Path) -> list[dict[str, Any]]:
    """Judge every finding study in a reproduction directory and write ``findings.json``."""
    directory = Path(directory)
    studies = sorted(
        (p for p in directory.glob(f"{STUDY_PREFIX}*") if (p / "study.json").is_file()),
        key=lambda p: int(p.name.removeprefix(STUDY_PREFIX)) if p.name[8:].isdigit() else 0,
    )
    findings = [judge_study(s) for s in studies]
    temporary = directory / f".{FINDINGS_FILE}.tmp"
    temporary.write_text(json.dumps(findings, indent=1, allow_nan=False) + "\n")
    temporary.replace(directory / FINDINGS_FILE)
    return findings


def _plain(value: Any) -> Any:
    """JSON-ready: NaN and infinities as None, numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------- the table


def _effects(finding: dict[str, Any]) -> list[str]:
    from dynalign.analyses.verdict import format_effect

    lines = []
    for r in finding["criteria"]:
        shown = {k: (math.nan if v is None else v) for k, v in r.items()}
        lines.append(f"{r['name']}: {format_effect(shown)} (n={r.get('n')}) -> {r['verdict']}")
    return lines


def findings_table(findings: list[dict[str, Any]]) -> str:
    """The findings as plain text: claim, each criterion's effect with CI and n, verdict."""
    lines = []
    for f in findings:
        runs = ", ".join(f"{n} {s}" for s, n in f["runs"].items())
        lines.append(f"{f['number']}. {f['title']}  [{f['verdict'].upper()}]  ({runs})")
        lines.append(f"   claim: {f['claim']}")
        lines.extend(f"   - {line}" for line in _effects(f))
    return "\n".join(lines)


def findings_html(findings: list[dict[str, Any]], anchor=lambda f: f"study-{f['study']}") -> str:
    """The findings table for the report: per finding its claim and verdict, then one row per
    criterion (what was measured, the mean effect with its 95% CI and n, that criterion's
    verdict), and a link to the finding's section with its figures."""
    from dynalign.analyses.verdict import format_effect

    esc = html.escape
    rows = []
    for f in findings:
        runs = ", ".join(f"{n} {s}" for s, n in f["runs"].items())
        criteria = f["criteria"] or [None]
        for i, r in enumerate(criteria):
            cells = ""
            if i == 0:
                span = f" rowspan='{len(criteria)}'"
                cells += (
                    f"<td{span}>{f['number']}</td><td{span}><b>{esc(f['title'])}</b>"
                    f"<div class='claim'>{esc(f['claim'])}</div></td>"
                    f"<td{span}>{_verdict_html(f['verdict'], bold=True)}<div class='runs'>"
                    f"{esc(runs)}<br><a href='#{esc(anchor(f))}'>figures and runs</a></div></td>"
                )
            if r is None:
                cells += "<td colspan='4'>no criteria</td>"
            else:
                shown = {k: (math.nan if v is None else v) for k, v in r.items()}
                cells += (
                    f"<td>{esc(r['name'])}</td><td class='num'>{esc(format_effect(shown))}</td>"
                    f"<td class='num'>{r.get('n')}</td><td>{_verdict_html(r['verdict'])}</td>"
                )
            rows.append(f"<tr class='{'first' if i == 0 else 'more'}'>{cells}</tr>")
    style = (
        "<style>table.findings{border-collapse:collapse;width:100%;font-size:90%}"
        "table.findings td,table.findings th{border:1px solid #ccc;padding:3px 6px;"
        "vertical-align:top;text-align:left}table.findings tr.first td{border-top:2px solid #555}"
        "table.findings .claim{font-size:90%;color:#444;margin-top:3px}"
        "table.findings .runs{font-size:85%;color:#444;margin-top:4px}"
        "table.findings td.num{white-space:nowrap;font-family:monospace}</style>"
    )
    return (
        style + "<table class='findings'><thead><tr><th>#</th><th style='width:34%'>finding and "
        "claim</th><th>verdict</th><th>criterion, fixed before the runs</th>"
        "<th>measured: mean effect [95% CI]</th><th>n</th><th>criterion verdict</th></tr>"
        "</thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _verdict_html(verdict: str, bold: bool = False) -> str:
    colour = VERDICT_COLOURS.get(verdict, "#444")
    weight = "bold" if bold else "normal"
    return f"<span style='color:{colour};font-weight:{weight}'>{html.escape(verdict)}</span>"
