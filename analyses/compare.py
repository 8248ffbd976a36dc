"""Many runs side by side: learning curves, best accuracy, and per-arm means with bootstrap CIs.

Runs line up along a ``run`` dimension with every config key that differs between them as a
coordinate (``rule.name``, ``model.depth``, ``train.seed``, ...). An *arm* is a group of runs
that share the grouping keys' values and differ only in the rest (by default: only in the seed),
so its spread across runs is seed-to-seed variability; each arm gets the mean over its runs and
a seeded percentile-bootstrap confidence interval of that mean. Named comparisons (BP vs FA,
depth x batch norm, ...) are just choices of grouping keys (:data:`GROUPINGS`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr
from dynalign.analyses.alignment import hidden_update_plateau
from dynalign.analyses.smoothing import (
    AnalysisError,
    bootstrap_ci_columns,
    epochs_group,
    flat_config,
    format_table,
    now_iso,
    provenance,
    run_name,
)
from matplotlib.figure import Figure

NAME = "compare"
CURVES = ("train_accuracy", "val_accuracy", "train_loss", "val_loss")
SUMMARIES = {
    "best_val_accuracy": ("1", "best validation accuracy over epochs"),
    "final_train_accuracy": ("1", "training accuracy of the last epoch"),
    "final_val_accuracy": ("1", "validation accuracy of the last epoch"),
    "best_val_loss": ("1", "lowest validation loss over epochs"),
    "update_angle_plateau": ("degree", "plateau update angle to BP, mean over hidden layers"),
}
# The study's comparisons as grouping keys. rule.name is part of every one so BP and FA runs in
# the same set are never pooled; keys that do not vary simply give a single value.
GROUPINGS: dict[str, tuple[str, ...]] = {
    "rule": ("rule.name",),
    "depth_batch_norm": ("rule.name", "model.depth", "model.batch_norm"),
    "batch_norm": ("rule.name", "model.batch_norm"),
    "activation": ("rule.name", "model.activation", "model.batch_norm"),
}
DEFAULT_EXCLUDE = ("train.seed",)


def applies(trees: xr.DataTree | Sequence[xr.DataTree]) -> bool:
    """Always, given one or more runs."""
    return isinstance(trees, xr.DataTree) or len(trees) >= 1


# ---------------------------------------------------------------------------- per-run table


def _label(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _coordinate(values: list[Any]) -> np.ndarray:
    """Keep numbers numeric (for plotting and selecting), everything else as strings."""
    if all(isinstance(v, bool) for v in values):
        return np.array(values, dtype=bool)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return np.array(values, dtype=np.int64)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return np.array(values, dtype=float)
    return np.array([_label(v) for v in values], dtype=object)


def unique_names(names: list[str]) -> list[str]:
    """Names made unique by suffixing repeats: a, a-2, a-3."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def _last_finite(values: np.ndarray) -> float:
    finite = np.flatnonzero(np.isfinite(values))
    return float(values[finite[-1]]) if finite.size else np.nan


def _nan_reduce(fn: Any, values: np.ndarray) -> float:
    with warnings.catch_warnings():  # all-NaN rows (a run with no val accuracy) give NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(fn(values))


def analyze(
    trees: Sequence[xr.DataTree],
    names: Sequence[str] | None = None,
    by: Sequence[str] | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    angles: bool = True,
) -> xr.Dataset:
    """Line runs up along ``run`` and summarise them per arm.

    names: run names (default: store file names). by: grouping keys for the arms, or a
    :data:`GROUPINGS` name (default: every varying key except ``exclude``, i.e. the seed).
    n_boot, level, seed: the percentile bootstrap.
    angles: also tabulate each run's hidden-layer plateau update angle.
    """
    if isinstance(trees, xr.DataTree):
        trees = [trees]
    trees = list(trees)
    if not trees:
        raise AnalysisError("compare needs at least one run; pass one or more run stores")
    if names is None:
        names = [run_name(t, default=f"run{i}") for i, t in enumerate(trees)]
    elif len(names) != len(trees):
        raise AnalysisError(f"got {len(names)} names for {len(trees)} runs; give one name per run")
    names = unique_names([str(n) for n in names])

    configs = [flat_config(t) for t in trees]
    keys = sorted({k for c in configs for k in c})
    varying = [k for k in keys if len({_label(c.get(k)) for c in configs}) > 1]

    epochs = [epochs_group(t) for t in trees]
    n_epochs = max((int(e.sizes.get("epoch", 0)) for e in epochs if e is not None), default=0)
    curves = {c: np.full((len(trees), n_epochs), np.nan) for c in CURVES}
    for i, ep in enumerate(epochs):
        if ep is None:
            continue
        index = (
            ep["epoch"].values.astype(int) - 1
            if "epoch" in ep.coords
            else np.arange(ep.sizes["epoch"])
        )
        for c in CURVES:
            if c in ep.data_vars:
                curves[c][i, index] = ep[c].values.astype(float)

    summary = {
        "best_val_accuracy": [_nan_reduce(np.nanmax, v) for v in curves["val_accuracy"]],
        "final_train_accuracy": [_last_finite(v) for v in curves["train_accuracy"]],
        "final_val_accuracy": [_last_finite(v) for v in curves["val_accuracy"]],
        "best_val_loss": [_nan_reduce(np.nanmin, v) for v in curves["val_loss"]],
        "update_angle_plateau": [hidden_update_plateau(t) if angles else np.nan for t in trees],
    }
    best_epoch = [
        float(np.nanargmax(v) + 1) if np.isfinite(v).any() else np.nan
        for v in curves["val_accuracy"]
    ]

    data: dict[str, Any] = {
        c: (("run", "epoch"), curves[c], {"units": "1", "long_name": c.replace("_", " ")})
        for c in CURVES
    }
    for key, (units, long_name) in SUMMARIES.items():
        data[key] = (
            ("run",),
            np.array(summary[key], dtype=float),
            {"units": units, "long_name": long_name},
        )
    data["best_epoch"] = (
        ("run",),
        best_epoch,
        {"units": "1", "long_name": "epoch of the best val accuracy"},
    )
    coords: dict[str, Any] = {
        "run": np.array(names, dtype=object),
        "epoch": ("epoch", np.arange(1, n_epochs + 1), {"units": "1", "long_name": "epoch"}),
        "status": ("run", np.array([str(t.attrs.get("status", "")) for t in trees], dtype=object)),
    }
    for key in varying:
        coords[key] = ("run", _coordinate([c.get(key) for c in configs]))
    result = xr.Dataset(data, coords=coords)

    group_keys = [k for k in varying if k not in exclude] if by is None else _grouping(by)
    result.attrs.update(
        {
            "analysis": NAME,
            "parameters": json.dumps(
                {
                    "by": group_keys,
                    "exclude": list(exclude),
                    "n_boot": int(n_boot),
                    "level": float(level),
                    "seed": int(seed),
                    "angles": bool(angles),
                }
            ),
            "varying_keys": json.dumps(varying),
            "runs": json.dumps([_run_provenance(t, n) for t, n in zip(trees, names, strict=True)]),
            "run_configs": json.dumps(dict(zip(names, configs, strict=True)), sort_keys=True),
            "analysed": now_iso(),
        }
    )
    grouped = arms(result, group_keys)
    return result.merge(grouped.drop_vars([k for k in group_keys if k in grouped.coords]))


def _run_provenance(tree: xr.DataTree, name: str) -> dict[str, Any]:
    p = provenance(tree, NAME)
    return {"run": name, "source": p["source"], "status": p["status"], "created": p["created"]}


# ---------------------------------------------------------------------------- arms


def _params(result: xr.Dataset) -> dict[str, Any]:
    return json.loads(result.attrs.get("parameters", "{}"))


def _key_values(result: xr.Dataset, key: str) -> list[Any]:
    """One value per run for ``key``: the run coordinate if it varies, else from the configs."""
    if key in result.coords and result[key].dims == ("run",):
        return [v.item() if hasattr(v, "item") else v for v in result[key].values]
    configs = json.loads(result.attrs.get("run_configs", "{}"))
    runs = [str(r) for r in result["run"].values]
    if not any(key in configs.get(r, {}) for r in runs):
        known = sorted({k for c in configs.values() for k in c})
        hint = ", ".join(json.loads(result.attrs.get("varying_keys", "[]"))) or "none vary"
        raise AnalysisError(
            f"unknown grouping key {key!r}; use config keys like rule.name (varying here: {hint})"
            if key not in known
            else f"grouping key {key!r} is missing from some runs' configs"
        )
    return [configs[r].get(key) for r in runs]


def _resolve_by(result: xr.Dataset, by: Sequence[str] | str | None) -> list[str]:
    return list(_params(result).get("by", [])) if by is None else _grouping(by)


def _grouping(by: Sequence[str] | str) -> list[str]:
    """Grouping keys from a list of keys or a :data:`GROUPINGS` name."""
    if isinstance(by, str):
        if by not in GROUPINGS:
            raise AnalysisError(
                f"unknown grouping {by!r}; use one of {', '.join(GROUPINGS)} or a list of keys"
            )
        return list(GROUPINGS[by])
    return list(by)


def arms(
    result: xr.Dataset,
    by: Sequence[str] | str | None = None,
    n_boot: int | None = None,
    level: float | None = None,
    seed: int | None = None,
) -> xr.Dataset:
    """Group the runs of a compare result by the values of ``by`` (keys or a GROUPINGS name).

    Returns a Dataset along ``arm`` with the keys' values as coordinates, ``n_runs``, and for
    every per-run summary and learning curve its mean over the arm's runs (``*_mean``) and the
    percentile-bootstrap CI of that mean (``*_low``, ``*_high``; NaN for a one-run arm).
    """
    params = _params(result)
    keys = _resolve_by(result, by)
    n_boot = int(params.get("n_boot", 2000) if n_boot is None else n_boot)
    level = float(params.get("level", 0.95) if level is None else level)
    seed = int(params.get("seed", 0) if seed is None else seed)

    values = {k: _key_values(result, k) for k in keys}
    n_runs = result.sizes["run"]
    signature = [tuple(_label(values[k][i]) for k in keys) for i in range(n_runs)]
    order = list(dict.fromkeys(signature))  # arms in order of first appearance
    labels = [
        ", ".join(f"{k}={v}" for k, v in zip(keys, sig, strict=True)) or "all" for sig in order
    ]
    members = [[i for i in range(n_runs) if signature[i] == sig] for sig in order]

    data: dict[str, Any] = {}
    per_run = [v for v in SUMMARIES if v in result.data_vars]
    per_epoch = [v for v in CURVES if v in result.data_vars]
    for var in per_run + per_epoch:
        arr = result[var].values
        arr2 = arr[:, None] if arr.ndim == 1 else arr
        means, lows, highs = [], [], []
        for idx in members:
            sub = arr2[idx]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                means.append(np.nanmean(sub, axis=0))
            low, high = bootstrap_ci_columns(sub, n=n_boot, level=level, seed=seed)
            lows.append(low)
            highs.append(high)
        dims = ("arm",) if arr.ndim == 1 else ("arm", "epoch")
        units = result[var].attrs.get("units", "1")
        name = result[var].attrs.get("long_name", var)
        for suffix, stack, what in (
            ("mean", means, "mean over the arm's runs"),
            ("low", lows, f"lower end of the {level:.0%} bootstrap CI of the mean"),
            ("high", highs, f"upper end of the {level:.0%} bootstrap CI of the mean"),
        ):
            block = np.array(stack)
            data[f"{var}_{suffix}"] = (
                dims,
                block[:, 0] if arr.ndim == 1 else block,
                {"units": units, "long_name": f"{name}: {what}"},
            )
    coords: dict[str, Any] = {
        "arm": np.array(labels, dtype=object),
        "n_runs": ("arm", np.array([len(m) for m in members]), {"units": "1", "long_name": "runs"}),
    }
    for key in keys:
        coords[key] = ("arm", _coordinate([values[key][m[0]] for m in members]))
    if "epoch" in result.coords:
        coords["epoch"] = result["epoch"]
    out = xr.Dataset(data, coords=coords)
    varying = json.loads(result.attrs.get("varying_keys", "[]"))
    pooled = [k for k in varying if k not in keys]
    out.attrs.update(
        {
            "by": json.dumps(keys),
            "pooled": json.dumps(pooled),
            "bootstrap": f"percentile bootstrap of the mean, {n_boot} resamples, level "
            f"{level:g}, seed {seed}",
        }
    )
    return out


# ---------------------------------------------------------------------------- output


def ci_cell(mean: float, low: float, high: float, scale: float, digits: int) -> str:
    """A table cell: ``mean [low, high]`` scaled (e.g. fractions as %), "-" without a mean."""
    if not np.isfinite(mean):
        return "-"
    text = f"{mean * scale:.{digits}f}"
    if np.isfinite(low) and np.isfinite(high):
        text += f" [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"
    return text


COLUMNS = (  # variable, header, scale, digits
    ("best_val_accuracy", "best val acc %", 100.0, 1),
    ("final_train_accuracy", "final train acc %", 100.0, 1),
    ("final_val_accuracy", "final val acc %", 100.0, 1),
    ("best_val_loss", "best val loss", 1.0, 3),
    ("update_angle_plateau", "update angle °", 1.0, 1),
)


def table(result: xr.Dataset, by: Sequence[str] | str | None = None) -> str:
    """One row per arm: its keys, number of runs, mean [CI] of best/final accuracy and angle.

    ``by`` is a list of config keys or a :data:`GROUPINGS` name (rule, depth_batch_norm,
    batch_norm, activation); default: the grouping the result was computed with.
    """
    grouped = arms(result, by)
    keys = json.loads(grouped.attrs["by"])
    columns = [c for c in COLUMNS if np.isfinite(grouped[f"{c[0]}_mean"].values).any()]
    head = [*(keys or ["arm"]), "runs", *(c[1] for c in columns)]
    rows = []
    for a in range(grouped.sizes["arm"]):
        g = grouped.isel(arm=a)
        cells = [_label(g[k].item()) for k in keys] if keys else [str(g["arm"].item())]
        cells.append(str(int(g["n_runs"])))
        for var, _, scale, digits in columns:
            stats = (float(g[f"{var}_{part}"]) for part in ("mean", "low", "high"))
            cells.append(ci_cell(*stats, scale, digits))
        rows.append(cells)
    lines = [f"compare — {result.sizes['run']} runs, {grouped.sizes['arm']} arms"]
    lines += format_table(head, rows, left=max(len(keys), 1))
    lines.append(f"mean over runs [{grouped.attrs['bootstrap']}; '-' with one run]")
    pooled = json.loads(grouped.attrs["pooled"])
    if pooled:
        lines.append(f"runs pooled across: {', '.join(pooled)}")
    return "\n".join(lines)


def plot_learning_curves(
    result: xr.Dataset,
    by: Sequence[str] | str | None = None,
    variables: Sequence[str] = ("train_accuracy", "val_accuracy"),
    **_: Any,
) -> Figure:
    """Mean learning curve per arm with its bootstrap CI band, one panel per variable."""
    unknown = [v for v in variables if v not in CURVES]
    if unknown:
        raise AnalysisError(f"no learning curve {unknown}; choose from {', '.join(CURVES)}")
    grouped = arms(result, by)
    epochs = grouped["epoch"].values if "epoch" in grouped.coords else np.array([])
    fig = Figure(figsize=(4.6 * len(variables), 3.6), layout="constrained")
    axes = fig.subplots(1, len(variables), squeeze=False)[0]
    for ax, var in zip(axes, variables, strict=True):
        for a in range(grouped.sizes["arm"]):
            g = grouped.isel(arm=a)
            color = f"C{a % 10}"
            label = f"{g['arm'].item()} (n={int(g['n_runs'])})"
            ax.plot(epochs, g[f"{var}_mean"].values, color=color, label=label)
            low, high = g[f"{var}_low"].values, g[f"{var}_high"].values
            if np.isfinite(low).any():
                ax.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(var.replace("_", " "))
    axes[0].legend(fontsize="small")
    return fig
