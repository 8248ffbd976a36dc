"""Analyses of recorded runs: a registry of single-run analyses, plus ``compare`` for many runs.

Every analysis module has ``NAME``, ``applies(tree)``, ``analyze(tree, **params) -> Dataset``,
``table(result) -> str`` and ``plot_*(result) -> Figure`` functions; the CLI and the report only
loop over this registry, so a new analysis is one module plus one entry in ``ANALYSES``.
Nothing here imports pyplot: figures are built with matplotlib's object API.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from . import alignment, autoencoder, compare, spectra, unlearning
from .smoothing import AnalysisError

#: single-run analyses by name, in the order tables and figures appear
ANALYSES: dict[str, ModuleType] = {m.NAME: m for m in (alignment, unlearning, autoencoder, spectra)}
#: the many-run comparison: ``compare.analyze(list_of_trees)``
COMPARE = compare
#: what reading a damaged store raises while an analysis runs (stores open lazily, so a
#: truncated chunk only shows when it is read): codec errors (RuntimeError), missing or
#: unreadable chunk files (OSError), undecodable bytes (ValueError)
READ_ERRORS = (OSError, RuntimeError, ValueError)

__all__ = [
    "ANALYSES",
    "COMPARE",
    "READ_ERRORS",
    "AnalysisError",
    "applicable",
    "describe_failure",
    "figures",
    "open_tree",
    "parameter_names",
    "summary",
]


def open_tree(run: str | Path | xr.DataTree) -> xr.DataTree:
    """A run tree as given, or the store at ``run`` opened lazily (``dynalign.store.StoreError``
    with a one-line message when the path is missing, not zarr, not a dynalign run or damaged)."""
    if isinstance(run, xr.DataTree):
        return run
    from dynalign.reader import open_run

    return open_run(run)


def applicable(tree: xr.DataTree, names: list[str] | tuple[str, ...] = ()) -> list[ModuleType]:
    """The registered analyses that apply to ``tree``, or only those in ``names`` (unknown
    names raise AnalysisError)."""
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        raise AnalysisError(
            f"unknown analysis {', '.join(map(repr, unknown))}; choose from {', '.join(ANALYSES)}"
        )
    chosen = [ANALYSES[n] for n in names] if names else list(ANALYSES.values())
    return [m for m in chosen if m.applies(tree)]


def describe_failure(err: Exception) -> str:
    """One line for an analysis that failed: its own message, or what reading the store raised."""
    if isinstance(err, AnalysisError):
        return str(err)
    return (
        f"failed while reading or analysing the store ({type(err).__name__}: {err}); "
        "the store may be damaged"
    )


def parameter_names(module: ModuleType) -> list[str]:
    """Keyword parameters that ``module.analyze`` accepts after the run(s)."""
    params = list(inspect.signature(module.analyze).parameters.values())[1:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def figures(module: ModuleType, result: xr.Dataset) -> list[tuple[str, Figure]]:
    """Every figure the module draws for ``result``: its ``plot_*`` functions in source order,
    each called with the result alone; a plot that does not apply returns None and is left out."""
    out = []
    for name, fn in vars(module).items():
        if not (name.startswith("plot_") and inspect.isfunction(fn)):
            continue
        if fn.__module__ != module.__name__:
            continue
        fig = fn(result)
        if fig is not None:
            out.append((name, fig))
    return out


def summary(result: xr.Dataset) -> dict[str, Any]:
    """The summary values of a result as plain JSON-ready Python.

    Scalars, and variables whose every dimension is labelled by strings (layer, kind, run, ...)
    as nested dicts; series over steps, snapshots or pixels are left to the stored result.
    String and number attrs (verdicts, parameters) come along; the long config JSON does not.
    NaN and infinities become None.
    """
    values: dict[str, Any] = {}
    for name, var in result.data_vars.items():
        if all(_labelled(result, dim) for dim in var.dims):
            values[str(name)] = _nested(var)
    attrs = {
        k: _plain(v)
        for k, v in result.attrs.items()
        if k != "config" and isinstance(v, (str, int, float, bool, np.generic))
    }
    return {"values": values, "attrs": attrs}


def _labelled(ds: xr.Dataset, dim: str) -> bool:
    return dim in ds.coords and ds[dim].dtype.kind in "OUT"


def _nested(var: xr.DataArray) -> Any:
    if var.ndim == 0:
        return _plain(var.values.item())
    dim = var.dims[0]
    return {str(label): _nested(var.isel({dim: i})) for i, label in enumerate(var[dim].values)}


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
