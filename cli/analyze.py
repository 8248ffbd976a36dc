"""``dynalign analyze`` and ``dynalign report``: run the registered analyses over stores.

Both commands open every store before analysing anything, so a wrong path fails at once with a
one-line ``Error: ...`` (exit code 2) instead of after minutes of work or with a traceback.
"""

from __future__ import annotations

import html
import inspect
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import numpy as np
import xarray as xr

from dynalign.analyses import (
    ANALYSES,
    COMPARE,
    READ_ERRORS,
    AnalysisError,
    applicable,
    describe_failure,
    open_tree,
    parameter_names,
)
from dynalign.analyses import summary as summary_values
from dynalign.analyses.compare import unique_names
from dynalign.analyses.smoothing import run_name
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
    """Analyse recorded run STORES: every analysis that applies, plus compare for several.

    Given a study directory (or a reproduction directory): the per-arm mean [95% CI] over seeds
    of the study's metrics; --out saves them as netCDF.
    """
    study = study_target(stores)
    if study is not None:
        if only or set_params:
            raise InputError(
                "--only and --set-param apply to run stores; a study is summarised with fixed "
                "metrics (analyse one of its run stores to set parameters)"
            )
        check_out(out)
        analyze_study(study, as_json, out)
        return
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
@click.option(
    "--runs",
    type=click.Choice(["none", "tables", "full"]),
    default=None,
    help="study directories: what each run's section shows (default: tables)",
)
def report(stores, out, pdf, quiet, runs) -> None:
    """Write one self-contained HTML report (and a PDF) for the run STORES, or for a study
    directory (per-arm table and curves with CI bands, then a section per run)."""
    from dynalign.analyses.report import check_out_path, write_report

    try:
        check_out_path(out)
    except AnalysisError as err:
        raise InputError(str(err)) from None
    study = study_target(stores)
    if study is not None:
        path = report_study(study, out, pdf, quiet, runs)
        click.echo(f"wrote {path}" + (f" and {path.with_suffix('.pdf')}" if pdf else ""))
        return
    if runs is not None:
        raise InputError("--runs applies to study directories; drop it for run stores")
    trees = open_stores(stores)
    try:
        path = write_report(trees, out, pdf=pdf, progress=not quiet)
    except AnalysisError as err:
        raise InputError(str(err)) from None
    except OSError as err:
        raise InputError(f"cannot write the report {out}: {err.strerror or err}") from None
    click.echo(f"wrote {path}" + (f" and {path.with_suffix('.pdf')}" if pdf else ""))


# ----------------------------------------------------------------------------- studies
#
# A single argument that is a study directory (it holds study.json) or a reproduction
# directory (finding-<N>/study.json, findings.json) takes these branches of `inspect`,
# `analyze` and `report`; run stores keep the behaviour above.


def study_target(paths: tuple[str, ...]) -> str | None:
    """The study or reproduction directory the command was given, None for run stores (and an
    InputError for a study mixed with other paths)."""
    from dynalign.study_reader import has_manifest, is_reproduction

    studies = [p for p in paths if has_manifest(p) or is_reproduction(p)]
    if not studies:
        return None
    if len(paths) > 1:
        raise InputError(
            f"{studies[0]} is a study directory; give one study directory, or only run stores"
        )
    return studies[0]


def study_dirs(path: str) -> list[Path]:
    """The study directories behind ``path``: itself, or a reproduction's finding-<N>."""
    from dynalign.study_reader import has_manifest, reproduction_studies

    return [Path(path)] if has_manifest(path) else reproduction_studies(path)


def reproduction_preamble(path: str):
    """What a reproduction report shows before its studies: the findings table from its
    ``findings.json`` (as ``dynalign reproduce`` writes it), or a note why there is none."""
    from dynalign.analyses.reproduce import FINDINGS_FILE, findings_html, findings_table

    file = Path(path) / FINDINGS_FILE
    if not file.is_file():
        return None
    try:
        verdicts = json.loads(file.read_text(encoding="utf-8"))
        return (findings_html(verdicts), findings_table(verdicts))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        note = f"{file} could not be read ({type(err).__name__}: {err}); no findings table"
        return (f'<p class="error">{html.escape(note)}</p>', note)


def _run_counts(statuses: list[str]) -> str:
    from dynalign.study_reader import FINISHED

    done = sum(s in FINISHED for s in statuses)
    parts = [f"{done}/{len(statuses)} done"]
    for state in ("running", "pending", "interrupted", "failed", "missing", "unreadable"):
        n = statuses.count(state)
        if n:
            parts.append(f"{n} {state}")
    return ", ".join(parts)


def study_info(path: Path, check: bool = False) -> dict[str, Any]:
    """What `inspect` shows of a study: the manifest's description, every run's state (from its
    store), store problems, and the per-arm mean [CI] of every metric."""
    from dynalign import study_reader
    from dynalign.analyses import study as study_metrics

    manifest = study_reader.read_manifest(path)
    arms = []
    problems: dict[str, list[str]] = {}
    entries = study_reader.run_entries(manifest)
    for arm in manifest["arms"]:
        runs = []
        for seed in manifest["seeds"]:
            entry = entries[(arm["name"], int(seed))]
            status, message, tree = study_reader.open_point(path, entry)
            store = path / entry["store"]
            run = {"seed": int(seed), "status": status, "message": message, "store": str(store)}
            if tree is not None:
                run["steps"] = int(tree["steps"].sizes.get("step", 0)) if "steps" in tree else 0
                run["epochs"] = int(tree["epochs"].sizes.get("epoch", 0)) if "epochs" in tree else 0
                try:
                    found = check_store(store, decode=check)
                except StoreError as err:
                    found = [str(err)]
                if found:
                    problems[str(store)] = found
            runs.append(run)
        arms.append(
            {
                "name": arm["name"],
                "overrides": arm.get("overrides") or {},
                "counts": _run_counts([r["status"] for r in runs]),
                "runs": runs,
            }
        )
    summary = study_metrics.summarise(path)
    grouped = study_metrics.arm_table(summary)
    statuses = [r["status"] for a in arms for r in a["runs"]]
    return {
        "path": str(path),
        "kind": "study",
        "name": manifest.get("name"),
        "description": manifest.get("description") or "",
        "finding": manifest.get("finding"),
        "scale": manifest.get("scale"),
        "seeds": manifest["seeds"],
        "grid": manifest.get("grid"),
        "dims": manifest.get("dims") or {},
        "runs": {s: statuses.count(s) for s in dict.fromkeys(statuses)},
        "arms": arms,
        "problems": problems,
        "decoded": check,
        "summary": study_metrics.arm_values(grouped),
        "_table": study_metrics.table(grouped),
    }


def print_study(info: dict[str, Any]) -> None:
    click.echo(f"study {info['name']}  ({info['path']})")
    if info["description"]:
        click.echo(f"  description: {info['description']}")
    finding = info["finding"]
    if isinstance(finding, dict):
        click.echo(f"  finding {finding.get('number', '?')}:   {finding.get('title', '')}")
        if finding.get("claim"):
            click.echo(f"  claim:       {finding['claim']}")
    if info["scale"]:
        click.echo(f"  scale:       {info['scale']}")
    click.echo(f"  seeds:       {', '.join(map(str, info['seeds']))}")
    if info["grid"]:
        from dynalign.study_reader import label

        keys = [
            f"{k} ({info['dims'].get(k, k)}): {', '.join(map(label, v))}"
            for k, v in info["grid"].items()
        ]
        click.echo(f"  grid:        {'; '.join(keys)}")
    total = sum(info["runs"].values())
    counts = ", ".join(f"{n} {s}" for s, n in info["runs"].items())
    click.echo(f"  runs:        {total}: {counts}")
    width = max((len(a["name"]) for a in info["arms"]), default=0)
    for arm in info["arms"]:
        seeds = ", ".join(
            f"{r['seed']} {r['status']}" + (f" ({r['steps']} steps)" if r.get("steps") else "")
            for r in arm["runs"]
        )
        click.echo(f"  {arm['name'].ljust(width)}  {arm['counts']}; seeds: {seeds}")
        for r in arm["runs"]:
            if r["message"]:
                click.echo(f"    seed {r['seed']} {r['status']}: {r['message']}")
    for store, found in info["problems"].items():
        for problem in found:
            click.echo(f"  damaged:     {store}: {problem}")
    if not info["problems"]:
        done = "present and decoded" if info["decoded"] else "present"
        click.echo(f"  check:       every array and chunk of every store {done}")
    click.echo()
    click.echo(info["_table"])


def inspect_study(path: str, as_json: bool, check: bool) -> int:
    """`dynalign inspect` of a study or reproduction directory; returns the exit code."""
    try:
        infos = [study_info(d, check) for d in study_dirs(path)]
    except StoreError as err:
        raise InputError(str(err)) from None
    if as_json:
        public = [{k: v for k, v in i.items() if not k.startswith("_")} for i in infos]
        body = public[0] if len(public) == 1 and Path(path) == Path(public[0]["path"]) else None
        if body is None:
            body = {"path": str(path), "kind": "reproduction", "studies": public}
        click.echo(json.dumps(_json_safe(body), indent=2, default=str, allow_nan=False))
    else:
        for k, info in enumerate(infos):
            if k:
                click.echo()
            print_study(info)
    return 1 if check and any(i["problems"] for i in infos) else 0


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _study_out(out: str, name: str, several: bool) -> Path:
    if out.endswith(".nc"):
        return Path(out[: -len(".nc")] + f"_{name}.nc") if several else Path(out)
    return Path(out) / f"{name}_study.nc"


def analyze_study(path: str, as_json: bool, out: str | None) -> None:
    """`dynalign analyze` of a study (or each study of a reproduction): the per-arm table, or
    the per-arm mean, CI and n of every metric as JSON; ``--out`` saves the (arm, seed) summary
    as netCDF with the per-arm table in its group ``arms``."""
    from dynalign.analyses import study as study_metrics

    dirs = study_dirs(path)
    results = []
    try:
        for d in dirs:
            summary = study_metrics.summarise(d)
            results.append((d, summary, study_metrics.arm_table(summary)))
    except StoreError as err:
        raise InputError(str(err)) from None
    if as_json:
        studies = [
            {
                "study": str(d),
                "name": summary.attrs.get("name", ""),
                "status": {
                    str(a): {
                        str(s): str(summary["status"].values[i, j])
                        for j, s in enumerate(summary["seed"].values)
                    }
                    for i, a in enumerate(summary["arm"].values)
                },
                "arms": study_metrics.arm_values(grouped),
            }
            for d, summary, grouped in results
        ]
        body = studies[0] if len(dirs) == 1 and dirs[0] == Path(path) else {"studies": studies}
        click.echo(json.dumps(_json_safe(body), indent=2, allow_nan=False))
    else:
        for k, (d, _, grouped) in enumerate(results):
            if k:
                click.echo()
            click.echo(f"== {d} ==")
            click.echo(study_metrics.table(grouped))
    if out:
        written = []
        try:
            for d, summary, grouped in results:
                several = len(dirs) > 1  # a reproduction: one file per finding-<N>
                name = d.name if several else str(summary.attrs.get("name") or d.name)
                target = _study_out(out, name, several)
                target.parent.mkdir(parents=True, exist_ok=True)
                netcdf_ready(summary).to_netcdf(target, engine="h5netcdf")
                netcdf_ready(grouped).to_netcdf(target, mode="a", group="arms", engine="h5netcdf")
                written.append(target)
        except OSError as err:
            raise InputError(
                f"--out {out}: cannot write the summary: {err.strerror or err}"
            ) from None
        files = ", ".join(map(str, written))
        click.echo(f"saved {len(written)} summary file(s): {files}", err=True)


def report_study(path: str, out: str, pdf: bool, quiet: bool, runs: str | None) -> Path:
    from dynalign.analyses.report import write_study_report
    from dynalign.study_reader import is_reproduction

    preamble = reproduction_preamble(path) if is_reproduction(path) else None
    try:
        return write_study_report(
            path, out, pdf=pdf, progress=not quiet, preamble=preamble, runs=runs or "tables"
        )
    except (StoreError, AnalysisError) as err:
        raise InputError(str(err)) from None
    except OSError as err:
        raise InputError(f"cannot write the report {out}: {err.strerror or err}") from None
