"""Shared analysis helpers: smoothing, bootstrap intervals, reading a run, tables, provenance.

Recorded series are noisy (batch accuracy) and sparse (probes run every k steps, NaN between),
so every analysis smooths the same way: a centred moving average over the *finite* points only,
put back on the original axis. Keeping this in one place means "smoothed with window 5" means
the same thing in every table and figure.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from dynalign.config import flatten


class AnalysisError(ValueError):
    """A run or a parameter an analysis cannot use; the message says what to change."""


# ---------------------------------------------------------------------------- smoothing


def check_window(window: int) -> int:
    """Validate a smoothing window (a count of finite points, >= 1)."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise AnalysisError(f"window={window!r} must be a whole number >= 1, e.g. window=5")
    return int(window)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred mean of ``window`` points (odd; even ones widened by one), shrinking at the ends."""
    n = values.size
    if window == 1 or n == 0:
        return values.astype(float)
    # Point i averages values[i - half : i + half + 1], clipped to the array, so the ends
    # average only the points that exist instead of being dragged towards padding. An even
    # window is widened by one: a window reaching further one way would shift the curve.
    half = window // 2
    i = np.arange(n)
    lo = np.clip(i - half, 0, n)
    hi = np.clip(i + half + 1, 0, n)
    csum = np.concatenate([[0.0], np.cumsum(values, dtype=float)])
    return (csum[hi] - csum[lo]) / (hi - lo)


def smooth(series: np.ndarray | xr.DataArray, window: int, dim: str = "step") -> Any:
    """Moving average over the finite points of ``series`` along ``dim`` (NaNs stay NaN).

    Works on a numpy array (along its first axis, each column separately) or on a DataArray
    (each 1-D slice along ``dim`` separately), so
    a probe series recorded every k steps is smoothed over its probed points, not over the gaps.
    The window is centred; an even window is widened by one so it does not shift the curve.
    """
    window = check_window(window)
    if isinstance(series, xr.DataArray):
        if dim not in series.dims:
            raise AnalysisError(f"cannot smooth along {dim!r}: the array has dims {series.dims}")
        out = xr.apply_ufunc(
            lambda a: _smooth_1d(a, window),
            series.astype(float),
            input_core_dims=[[dim]],
            output_core_dims=[[dim]],
            vectorize=True,
        )
        return out.transpose(*series.dims).assign_attrs(series.attrs)
    values = np.asarray(series, dtype=float)
    if values.ndim == 0:
        raise AnalysisError("smooth() needs a series (an array with a step axis), got a scalar")
    if values.ndim == 1:
        return _smooth_1d(values, window)
    if values.size == 0:
        return values.copy()
    return np.apply_along_axis(_smooth_1d, 0, values, window)


def _smooth_1d(values: np.ndarray, window: int) -> np.ndarray:
    out = np.full(values.shape, np.nan)
    finite = np.isfinite(values)
    out[finite] = _moving_average(values[finite], window)
    return out


# ---------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    values: np.ndarray, n: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaNs dropped).

    Resamples the values with replacement ``n`` times (seeded, so tables are reproducible) and
    returns the (1-level)/2 and (1+level)/2 quantiles of the resampled means. With fewer than two
    values there is no spread to resample and the interval is (NaN, NaN).
    """
    low, high = bootstrap_ci_columns(np.asarray(values, dtype=float)[:, None], n, level, seed)
    return float(low[0]), float(high[0])


def bootstrap_ci_columns(
    values: np.ndarray, n: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`bootstrap_ci` for every column of a (samples, columns) array at once.

    The same resampled sample indices serve every column (e.g. every epoch of a learning curve),
    which keeps a CI band smooth; NaNs in a column are left out of that column's means.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise AnalysisError(f"n={n!r} bootstrap resamples must be a whole number >= 1, e.g. n=2000")
    if not 0 < level < 1:
        raise AnalysisError(f"level={level!r} must lie strictly between 0 and 1, e.g. level=0.95")
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise AnalysisError(f"bootstrap_ci_columns needs a 2-D array, got shape {values.shape}")
    k, m = values.shape
    low = np.full(m, np.nan)
    high = np.full(m, np.nan)
    finite = np.isfinite(values)
    enough = finite.sum(axis=0) >= 2
    if k < 2 or not enough.any():
        return low, high
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, k, size=(int(n), k))
    sample = np.where(finite, values, 0.0)[idx]  # (n, k, m)
    counts = finite.astype(float)[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sample.sum(axis=1) / counts
    alpha = (1 - level) / 2
    for j in np.flatnonzero(enough):
        col = means[:, j]
        col = col[np.isfinite(col)]
        low[j], high[j] = np.quantile(col, [alpha, 1 - alpha])
    return low, high


# ---------------------------------------------------------------------------- reading a run


def steps_group(tree: xr.DataTree) -> xr.Dataset:
    """The run's ``steps`` group as a Dataset, or a clear error when the store has none."""
    if "steps" not in tree.children:
        raise AnalysisError(
            "this run has no 'steps' group; open a dynalign run store (NAME.zarr) recorded by "
            "`dynalign record`"
        )
    return tree["steps"].to_dataset()


def epochs_group(tree: xr.DataTree) -> xr.Dataset | None:
    """The run's ``epochs`` group, or None when the run ended before the first epoch."""
    if "epochs" not in tree.children:
        return None
    return tree["epochs"].to_dataset()


def run_config(tree: xr.DataTree) -> dict[str, Any]:
    """The run's full config as a nested dict (from the JSON in the root ``config`` attr)."""
    text = tree.attrs.get("config")
    if text is None:
        return {}
    if isinstance(text, dict):
        return text
    try:
        return json.loads(text)
    except (TypeError, json.JSONDecodeError):
        raise AnalysisError(
            "the run's 'config' attribute is not valid JSON, so the store is damaged; record the "
            "run again"
        ) from None


def flat_config(tree: xr.DataTree) -> dict[str, Any]:
    """The run's config with dotted keys, e.g. ``{"rule.name": "fa", "train.seed": 0, ...}``."""
    return flatten(run_config(tree))


def run_source(tree: xr.DataTree) -> str:
    """Where the run was read from (xarray records the store path), '' for in-memory trees."""
    return str(tree.encoding.get("source", "") or "")


def run_name(tree: xr.DataTree, default: str = "run") -> str:
    """A short name for the run: the store's file name without ``.zarr``, else the tree's name."""
    source = run_source(tree)
    if source:
        name = Path(source.rstrip("/")).name
        return name[: -len(".zarr")] if name.endswith(".zarr") else name
    return str(tree.name) if tree.name else default


def layer_names(ds: xr.Dataset) -> list[str]:
    """Layer coordinate as plain Python strings (stores may hand back numpy StringDType)."""
    return [str(v) for v in ds["layer"].values] if "layer" in ds.coords else []


# ---------------------------------------------------------------------------- tables


def format_table(
    head: list[str], rows: list[list[str]], left: int = 1, right: Sequence[bool] | None = None
) -> list[str]:
    """Plain-text table lines: the first ``left`` columns left-aligned (labels), the rest
    right-aligned (numbers), or per column where ``right`` says so; a rule under the header,
    widths fitted to the content."""
    if right is None:
        right = [i >= left for i in range(len(head))]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = []
    for k, row in enumerate([head, *rows]):
        cells = [
            str(c).rjust(w) if r else str(c).ljust(w)
            for c, w, r in zip(row, widths, right, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


# ---------------------------------------------------------------------------- provenance


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def provenance(tree: xr.DataTree, analysis: str = "", **params: Any) -> dict[str, Any]:
    """Result attrs naming the inputs: source store, run status/created/config, parameters.

    Every value is a string or a number so the attrs survive netCDF and zarr alike.
    """
    attrs = tree.attrs
    return {
        "analysis": analysis,
        "source": run_source(tree),
        "run": run_name(tree),
        "status": str(attrs.get("status", "")),
        "created": str(attrs.get("created", "")),
        "schema_version": int(attrs.get("schema_version", 0) or 0),
        "dynalign_version": str(attrs.get("dynalign_version", "")),
        "config": json.dumps(run_config(tree), sort_keys=True),
        "parameters": json.dumps(_jsonable(params), sort_keys=True),
        "analysed": now_iso(),
    }


def parameters(result: xr.Dataset) -> dict[str, Any]:
    """The analysis parameters a result was computed with (decoded from its attrs)."""
    return json.loads(result.attrs.get("parameters", "{}"))
