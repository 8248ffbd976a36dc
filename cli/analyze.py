"""``dynalign analyze`` and ``dynalign report``: run the registered analyses over stores.

Both commands open every store before analysing anything, so a wrong path fails at once with a
one-line ``Error: ...`` (exit code 2) instead of after minutes of work or with a traceback.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import numpy as np
import xarray as xr

from analyses import (
    ANALYSES,
    COMPARE,
    READ_ERRORS,
    AnalysisError,
    applicable,
    describe_failure,
    open_tree,
    parameter_names,
)
from analyses import summary as summary_values
from analyses.compare import unique_names
from analyses.smoothing import run_name
from dynalign.reader import check_store, writer_note
from dynalign.store import StoreError

COMPARE_NAME = "compare"
#: parameters the commands set themselves (compare's run names come from the store paths)
FIXED_PARAMS = {COMPARE_NAME: ("names",)}


class InputError(click.ClickException):
    """Bad input from the command line: printed as one ``Error: ...`` line, exit code 2."""

    exit_code = 2


def open_stores(paths: tuple[str, ...]) -> list[xr.DataTree]:
    """Open every store (lazily), or stop at the first bad one naming it and what is wrong.

    A run still being written, one whose writer was killed, and missing arrays or chunks are
    named on stderr, one warning line each: the analyses see only what is there.
    """
    trees = []
    for path in paths:
        try:
            tree = open_tree(path)
            problems = check_store(path)
        except StoreError as err:
            raise InputError(str(err)) from None
        note = writer_note(path, dict(tree.attrs))
        for line in ([note] if note else []) + problems:
            click.echo(f"warning: {path}: {line}", err=True)
        trees.append(tree)
    return trees


def parse_params(pairs: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``("autoencoder.min_specificity=0.3",)`` -> ``{"autoencoder": {"min_specificity": 0.3}}``.

    Values are read as JSON (numbers, true/false, lists) and otherwise kept as text; the
    analysis name and the key are checked against what the analysis accepts.
    """
    modules = {**ANALYSES, COMPARE_NAME: COMPARE}
    params: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        target, sep, text = pair.partition("=")
        name, dot, key = target.strip().partition(".")
        if not sep or not dot or not key:
            raise InputError(
                f"--set-param {pair!r} must look like NAME.KEY=VALUE, "
                f"e.g. --set-param alignment.threshold=60"
            )
        if name not in modules:
            raise InputError(
                f"--set-param {pair!r}: unknown analysis {name!r}; choose from {', '.join(modules)}"
            )
        fixed = FIXED_PARAMS.get(name, ())
        accepted = [p for p in parameter_names(modules[name]) if p not in fixed]
        if key not in accepted:
            raise InputError(
                f"--set-param {pair!r}: {name} has no parameter {key!r}; choose one of "
                f"{', '.join(accepted) or 'none'}"
            )
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text.strip()
        param = inspect.signature(modules[name].analyze).parameters[key]
        params.setdefault(name, {})[key] = typed_param(f"{name}.{key}", param, value, text)
    return params


def _param_kind(param: inspect.Parameter) -> str:
    """bool, float, int, list (of text) or str: from the annotation (text, as the analyses
    postpone annotations) or else from the default's type."""
    text = param.annotation if isinstance(param.annotation, str) else ""
    for kind, marker in (("bool", "bool"), ("float", "float"), ("int", "int")):
        if marker in text:
            return kind
    if "Sequence" in text or "list" in text or isinstance(param.default, (list, tuple)):
        return "list"
    if text.startswith("str") or isinstance(param.default, str):
        return "str"
    default = param.default
    return type(default).__name__ if isinstance(default, (bool, float, int)) else "any"


def _example(kind: str, default: Any) -> str:
    if default is not None and default is not inspect.Parameter.empty:
        return json.dumps(list(default) if isinstance(default, tuple) else default)
    return {"bool": "true", "float": "0.5", "int": "5", "list": '["rule.name"]'}.get(kind, "x")


def typed_param(target: str, param: inspect.Parameter, value: Any, text: str) -> Any:
    """``value`` (parsed as JSON) checked against the analysis parameter's type, so that a
    wrong one is named here instead of failing inside the analysis (or blaming the store)."""
    kind = _param_kind(param)
    hint = f"give e.g. --set-param {target}={_example(kind, param.default)}"
    optional = param.default is None or "None" in str(param.annotation)
    if value is None or (optional and value in ("none", "None")):
        if optional:
            return None
        raise InputError(f"--set-param {target} cannot be null; {hint}")
    if kind == "str":
        return text.strip()  # text as given: "5" stays a name, not a number
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise InputError(f"--set-param {target}={text!r} is not true or false; {hint}")
    if kind in ("float", "int"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"--set-param {target}={text!r} is not a number; {hint}")
        if not math.isfinite(value):
            raise InputError(f"--set-param {target}={text!r} is not a finite number; {hint}")
        if kind == "int":
            if not float(value).is_integer():
                raise InputError(f"--set-param {target}={text!r} is not a whole number; {hint}")
            return int(value)
        return value
    if kind == "list":
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise InputError(f"--set-param {target}={text!r} is not a name or a list of names; {hint}")
    return value


def check_out(out: str | None) -> None:
    """Refuse an ``--out`` that cannot be written before any analysis runs (not minutes later)."""
    if out is None:
        return
    path = Path(out)
    if not out.strip():
        raise InputError("--out is empty; give a folder or a NAME.nc path")
    if out.endswith(".nc"):
        if path.parent.exists() and not path.parent.is_dir():
            raise InputError(f"--out {out}: {path.parent} is a file, not a folder; pick another")
    elif path.exists() and not path.is_dir():
        raise InputError(
            f"--out {out}: exists and is not a directory; end it in .nc or pick a folder"
        )


def _check_only(only: tuple[str, ...]) -> None:
    names = [*ANALYSES, COMPARE_NAME]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise InputError(
            f"--only {', '.join(unknown)}: unknown analysis; choose from {', '.join(names)}"
        )


def _run(module: ModuleType, target: Any, params: dict[str, Any], where: str) -> xr.Dataset:
    try:
        return module.analyze(target, **params)
    except READ_ERRORS as err:  # AnalysisError, or a damaged chunk read for the first time
        raise InputError(f"{where}: {module.NAME}: {describe_failure(err)}") from None


# ----------------------------------------------------------------------------- saving


def _attr_value(value: Any) -> Any:
    """An attribute value netCDF can hold: text, a number, or a list of numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (str, int, float)):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
        return value
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return list(value)
    return json.dumps(value, default=str)


def netcdf_ready(result: xr.Dataset) -> xr.Dataset:
    """A copy of ``result`` that the h5netcdf engine can write (attrs and string dtypes)."""
    ds = result.copy()
    ds.attrs = {k: _attr_value(v) for k, v in ds.attrs.items()}
    for name in list(ds.variables):
        var = ds[name]
        if var.dtype.kind == "T":  # numpy StringDType, as zarr v3 hands back text arrays
            ds[name] = var.astype(object)
        ds[name].attrs = {k: _attr_value(v) for k, v in var.attrs.items()}
    return ds


def save_results(
    results: dict[str, dict[str, xr.Dataset]], compared: xr.Dataset | None, out: str
) -> list[Path]:
    """Write every result as netCDF: ``X.nc`` -> ``X_<run>_<analysis>.nc`` (``X_<analysis>.nc``
    for one run), any other path -> a directory of ``<run>_<analysis>.nc``."""
    single = len(results) == 1
    if out.endswith(".nc"):
        base = Path(out[: -len(".nc")])
        base.parent.mkdir(parents=True, exist_ok=True)

        def target(stem: str) -> Path:
            return base.parent / f"{base.name}_{stem}.nc"
    else:
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise InputError(
                f"--out {out}: exists and is not a directory; end it in .nc or pick a folder"
            )
        folder.mkdir(parents=True, exist_ok=True)

        def target(stem: str) -> Path:
            return folder / f"{stem}.nc"

    written = []
    for run, by_name in results.items():
        for name, result in by_name.items():
            stem = name if single and out.endswith(".nc") else f"{run}_{name}"
            written.append(target(stem))
            netcdf_ready(result).to_netcdf(written[-1], engine="h5netcdf")
    if compared is not None:
        written.append(target(COMPARE_NAME))
        netcdf_ready(compared).to_netcdf(written[-1], engine="h5netcdf")
    return written


# ----------------------------------------------------------------------------- commands


@click.command()
@click.argument("stores", nargs=-1, required=True, type=click.Path())
@click.option(
    "--only",
    multiple=True,
    metavar="NAME",
    help=f"run only this analysis (repeatable): {', '.join([*ANALYSES, COMPARE_NAME])}",
)
@click.option(
    "--out",
    type=str,
    default=None,
    help="save results as netCDF: X.nc -> X_<run>_<analysis>.nc, else a directory",
)
@click.option(
    "--json", "as_json", is_flag=True, help="print the summary values as JSON instead of tables"
)
@click.option(
    "--set-param",
    "set_params",
    multiple=True,
    metavar="NAME.KEY=VALUE",
    help="an analysis parameter, e.g. alignment.threshold=60 (repeatable)",
)
def analyze(stores, only, out, as_json, set_params) -> None:
    """Analyse recorded run STORES: every analysis that applies, plus compare for several."""
    _check_only(only)
    params = parse_params(set_params)
    check_out(out)
    trees = open_stores(stores)
    singles = [n for n in only if n != COMPARE_NAME]
    names = unique_names([run_name(t, default=f"run{i + 1}") for i, t in enumerate(trees)])

    results: dict[str, dict[str, xr.Dataset]] = {}
    report_json: dict[str, Any] = {"runs": []}
    for path, tree, name in zip(stores, trees, names, strict=True):
        if only and not singles:
            modules = []
        else:
            modules = applicable(tree, singles)
            skipped = [n for n in singles if ANALYSES[n] not in modules]
            if skipped:
                click.echo(f"note: {', '.join(skipped)} does not apply to {path}", err=True)
        results[name] = {m.NAME: _run(m, tree, params.get(m.NAME, {}), path) for m in modules}
        if as_json:
            report_json["runs"].append(
                {
                    "store": str(path),
                    "run": name,
                    "status": str(tree.attrs.get("status", "")),
                    "analyses": {k: summary_values(r) for k, r in results[name].items()},
                }
            )
        elif modules or not only:  # --only compare: no per-run sections
            click.echo(f"== {path} ({tree.attrs.get('status', '?')}) ==")
            if not modules:
                click.echo("no analysis applies to this run")
            for module in modules:
                click.echo(module.table(results[name][module.NAME]))
                click.echo()

    compared = None
    if COMPARE_NAME in only or (not only and len(trees) > 1):
        compared = _run(COMPARE, trees, {"names": names, **params.get(COMPARE_NAME, {})}, "compare")
        if as_json:
            report_json[COMPARE_NAME] = summary_values(compared)
        else:
            click.echo(COMPARE.table(compared))

    if as_json:
        click.echo(json.dumps(report_json, indent=2, allow_nan=False))
    if out:
        try:
            written = save_results(results, compared, out)
        except OSError as err:
            raise InputError(
                f"--out {out}: cannot write the results: {err.strerror or err}"
            ) from None
        click.echo(f"saved {len(written)} result file(s): {', '.join(map(str, written))}", err=True)


@click.command()
@click.argument("stores", nargs=-1, required=True, type=click.Path())
@click.option(
    "--out",
    type=str,
    default="report.html",
    show_default=True,
    help="the HTML file to write",
)
@click.option("--pdf", is_flag=True, help="also write the tables and figures to <out>.pdf")
@click.option("--quiet", is_flag=True, help="no progress bar")
def report(stores, out, pdf, quiet) -> None:
    """Write one self-contained HTML report (and a PDF) for the run STORES."""
    from analyses.report import check_out_path, write_report

    try:
        check_out_path(out)
    except AnalysisError as err:
        raise InputError(str(err)) from None
    trees = open_stores(stores)
    try:
        path = write_report(trees, out, pdf=pdf, progress=not quiet)
    except AnalysisError as err:
        raise InputError(str(err)) from None
    except OSError as err:
        raise InputError(f"cannot write the report {out}: {err.strerror or err}") from None
    click.echo(f"wrote {path}" + (f" and {path.with_suffix('.pdf')}" if pdf else ""))
