"""``dynalign sweep`` and ``dynalign reproduce``: many runs as one experiment on dask.distributed.

Specs are read and every run's config is validated before a worker starts, so a bad spec ends
with one ``Error: ...`` line (exit code 2) and nothing written.
"""

from __future__ import annotations

import sys

import click

from dynalign.config import ConfigError

WORKERS_HELP = "worker processes of the local cluster, one torch thread each (default: CPU cores)"
SCHEDULER_HELP = "submit to this dask scheduler (tcp://HOST:8786) instead of a local cluster"


def fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


def check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        fail(f"--workers {workers}: give 1 or more worker processes")


def finish_line(result) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(result.counts.items()))
    kept = f" ({result.skipped} already finished, kept)" if result.skipped else ""
    return f"{result.directory}: {result.total} runs: {counts}{kept}"


@click.command()
@click.argument("spec_path", metavar="SPEC.toml", type=str)
@click.option("--out", required=True, type=str, help="the study directory (created, or continued)")
@click.option("--workers", type=int, default=None, help=WORKERS_HELP)
@click.option("--scheduler", type=str, default=None, metavar="ADDRESS", help=SCHEDULER_HELP)
@click.option("--quiet", is_flag=True, help="no progress line")
def sweep(spec_path, out, workers, scheduler, quiet) -> None:
    """Run every arm x seed of a study spec, one store each, in DIR/runs/<arm>/seed-<k>.zarr.

    Running it again continues the study: finished runs are kept, the others resumed or started.
    """
    from dynalign.analyses.reproduce import check_criteria
    from dynalign.spec import load_spec
    from dynalign.store import StoreError
    from dynalign.sweep import SweepError, SweepInterrupted, run_study

    check_workers(workers)
    try:
        spec = load_spec(spec_path)
        check_criteria(spec)
    except (ConfigError, ValueError) as err:
        fail(str(err))
    click.echo(
        f"study {spec.name}: {len(spec.arms)} arm(s) x {len(spec.seeds)} seed(s) = "
        f"{len(spec.points)} runs into {out}",
        err=True,
    )
    try:
        result = run_study(spec, out, workers=workers, scheduler=scheduler, progress=not quiet)
    except (SweepError, StoreError, ConfigError) as err:
        fail(str(err))
    except SweepInterrupted:
        click.echo(f"interrupted; continue the study with: dynalign sweep {spec_path} --out {out}")
        sys.exit(130)
    click.echo(finish_line(result))
    click.echo(f"look at it with: dynalign inspect {out}   (Python: dynalign.open_study({out!r}))")
    if not result.ok:
        sys.exit(1)


@click.command()
@click.argument("findings", nargs=-1, metavar="[FINDING]...")
@click.option("--out", type=str, help="the reproduction directory (created, or continued)")
@click.option("--seeds", type=int, default=None, help="seeds per arm (default: each spec's, 3)")
@click.option("--data", type=str, default=None, help="image data for the MLP/ConvNet findings")
@click.option(
    "--scale",
    type=click.Choice(["quick", "full"]),
    default="quick",
    show_default=True,
    help="quick: embedded data, minutes; full: the study's protocol on Fashion-MNIST",
)
@click.option("--list", "list_only", is_flag=True, help="print the findings and their criteria")
@click.option("--workers", type=int, default=None, help=WORKERS_HELP)
@click.option("--scheduler", type=str, default=None, metavar="ADDRESS", help=SCHEDULER_HELP)
@click.option("--pdf", is_flag=True, help="also write the report as a PDF")
@click.option("--quiet", is_flag=True, help="no progress line")
def reproduce(findings, out, seeds, data, scale, list_only, workers, scheduler, pdf, quiet):
    """Reproduce the study's findings (by number; none: all eight) with a verdict for each.

    Every finding is a shipped study spec with its claim and criteria fixed before the runs;
    the verdict (reproduced, not reproduced, inconclusive) comes from the runs' results and
    their 95% bootstrap CIs. Writes OUT/finding-N/ (one study each), OUT/findings.json and
    OUT/report.html, which opens with the table of findings.
    """
    from dynalign.analyses.reproduce import (
        describe,
        findings_table,
        judge,
        load_finding,
        parse_findings,
    )
    from dynalign.store import StoreError
    from dynalign.sweep import SweepError, SweepInterrupted, run_studies

    check_workers(workers)
    if seeds is not None and seeds < 1:
        fail(f"--seeds {seeds}: give 1 or more (2 or more for a confidence interval)")
    try:
        numbers = parse_findings(findings)
        specs = [load_finding(n, scale=scale, seeds=seeds, data=data) for n in numbers]
    except (ConfigError, ValueError) as err:
        fail(str(err))
    if list_only:
        click.echo("\n\n".join(describe(s) for s in specs))
        return
    if not out:
        fail("--out is missing; give a directory for the reproduction, e.g. --out repro")
    from pathlib import Path

    root = Path(out)
    if root.exists() and not root.is_dir():
        fail(f"--out {out} is a file; give a directory")
    total = sum(len(s.points) for s in specs)
    click.echo(
        f"reproducing finding(s) {', '.join(map(str, numbers))} at scale {scale}: {total} runs "
        f"into {out}",
        err=True,
    )
    jobs = [(s, root / f"finding-{n}") for s, n in zip(specs, numbers, strict=True)]
    try:
        results = run_studies(jobs, workers=workers, scheduler=scheduler, progress=not quiet)
    except (SweepError, StoreError, ConfigError) as err:
        fail(str(err))
    except SweepInterrupted:
        again = " ".join(["dynalign reproduce", *map(str, findings), "--out", str(out)])
        click.echo(f"interrupted; continue with: {again} (and the same options)")
        sys.exit(130)
    for result in results:
        click.echo(finish_line(result), err=True)
    verdicts = judge(root)
    click.echo(findings_table(verdicts))
    report_path = write_reproduction_report(root, verdicts, pdf=pdf, progress=not quiet)
    click.echo(f"wrote {root / 'findings.json'} and {report_path}")
    if not all(r.ok for r in results):
        sys.exit(1)


def write_reproduction_report(root, verdicts, pdf: bool = False, progress: bool = True):
    """DIR/report.html: the findings table first, then each finding's study."""
    from dynalign.analyses.report import write_study_report
    from dynalign.analyses.reproduce import findings_html, findings_table

    preamble = (findings_html(verdicts), findings_table(verdicts))
    return write_study_report(
        root, root / "report.html", pdf=pdf, progress=progress, preamble=preamble
    )
