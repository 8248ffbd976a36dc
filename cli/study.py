"""``dynalign sweep`` and ``dynalign reproduce``: many runs as one experiment on dask.distributed.

Specs are read and every run's config is validated before a worker starts, so a bad spec ends
with one ``Error: ...`` line (exit code 2) and nothing written.
"""

from __future__ import annotations

import sys

import click

from dynalign.config import ConfigError
from dynalign.store import StoreError

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
    from analyses.reproduce import check_criteria
    from dynalign.spec import load_spec
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
