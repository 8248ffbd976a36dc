"""Many runs side by side: learning curves, best accuracy, and per-arm means with bootstrap CIs.

Runs line up along a ``run`` dimension with every config key that differs between them as a
coordinate (``rule.name``, ``model.depth``, ``train.seed``, ...). An *arm* is a group of runs
that share the grouping keys' values and differ only in the rest (by default: only in the seed),
so its spread across runs is seed-to-seed variability; each arm gets the mean over its runs and
a seeded percentile-bootstrap confidence interval of that mean. Named comparisons (BP vs FA,
depth x batch norm, ...) are just choices of grouping keys (:data:`GROUPINGS`). Keys that only
say how a run was made (threads, device, probe schedule, data folder) never split an arm.

Every arm also gets a short readable name (its preset's, or its keys in short form such as
``fa depth=5 bn=standard``) and a fixed colour, so every figure and table shows it alike.
"""

from __future__ import annotations

import functools
import json
import os
import re
import textwrap
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

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
#: keys that never form arms: the seed (what an arm's CI is over) and keys that only say how or
#: where a run was made; an entry ending in "." covers its whole section
DEFAULT_EXCLUDE = ("train.seed", "train.threads", "train.device", "data.data_dir", "probes.")
#: short forms of keys in arm names; "" shows the value alone (``fa``, ``mlp``, ``digits``)
SHORT_KEYS = {
    "rule.name": "",
    "model.kind": "",
    "data.name": "",
    "model.batch_norm": "bn",
    "model.activation": "act",
    "constraint.sign": "sign",
    "train.optimizer": "opt",
}
#: arm names made of keys longer than this give way to the arms' common run names, if distinct
ARM_NAME_MAX = 32
#: from this many arms on, learning curves get one row of panels per rule (or other key)
FACET_FROM = 7
#: keys to facet by, in order of preference, before any other grouping key
FACET_KEYS = ("rule.name", "model.kind", "data.name")


def excluded(key: str, exclude: Sequence[str] = DEFAULT_EXCLUDE) -> bool:
    """Whether ``key`` is one of ``exclude`` or lies in a section it names (``"probes."``)."""
    return any(key == e or (e.endswith(".") and key.startswith(e)) for e in exclude)


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

    group_keys = [k for k in varying if not excluded(k, exclude)] if by is None else _grouping(by)
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
    order, groups = _members(values, keys, result.sizes["run"])
    labels = [
        ", ".join(f"{k}={v}" for k, v in zip(keys, sig, strict=True)) or "all" for sig in order
    ]

    data: dict[str, Any] = {}
    per_run = [v for v in SUMMARIES if v in result.data_vars]
    per_epoch = [v for v in CURVES if v in result.data_vars]
    for var in per_run + per_epoch:
        arr = result[var].values
        arr2 = arr[:, None] if arr.ndim == 1 else arr
        means, lows, highs = [], [], []
        for idx in groups:
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
        "n_runs": ("arm", np.array([len(m) for m in groups]), {"units": "1", "long_name": "runs"}),
        "arm_name": ("arm", np.array(_arm_names(result, keys, order, groups), dtype=object)),
        "arm_color": ("arm", np.array(arm_colors(len(order)), dtype=object)),
    }
    for key in keys:
        coords[key] = ("arm", _coordinate([values[key][m[0]] for m in groups]))
    if "epoch" in result.coords:
        coords["epoch"] = result["epoch"]
    out = xr.Dataset(data, coords=coords)
    varying = json.loads(result.attrs.get("varying_keys", "[]"))
    pooled = [k for k in varying if k not in keys]
    out.attrs.update(
        {
            "members": json.dumps(groups),
            "by": json.dumps(keys),
            "pooled": json.dumps(pooled),
            "bootstrap": f"percentile bootstrap of the mean, {n_boot} resamples, level "
            f"{level:g}, seed {seed}",
        }
    )
    return out


def _members(
    values: dict[str, list[Any]], keys: list[str], n_runs: int
) -> tuple[list[tuple[str, ...]], list[list[int]]]:
    """The arms' key values in order of first appearance, and each arm's run indices."""
    signature = [tuple(_label(values[k][i]) for k in keys) for i in range(n_runs)]
    order = list(dict.fromkeys(signature))
    return order, [[i for i in range(n_runs) if signature[i] == sig] for sig in order]


def members(grouped: xr.Dataset) -> list[list[int]]:
    """The run indices (positions along ``run``) of each arm of an :func:`arms` result."""
    return json.loads(grouped.attrs["members"])


# ---------------------------------------------------------------------------- names, colours


def arm_colors(n: int) -> list[str]:
    """``n`` distinct colours, one per arm: tab10 up to 10 arms, then tab20 (its dark half
    first, so neighbouring arms differ), then tab20b and tab20c; beyond 50 they repeat."""
    if n <= 10:
        palette = list(colormaps["tab10"].colors)
    else:
        tab20 = list(colormaps["tab20"].colors)
        palette = tab20[0::2] + tab20[1::2]
        palette += list(colormaps["tab20b"].colors) + list(colormaps["tab20c"].colors)
    return [to_hex(palette[i % len(palette)]) for i in range(n)]


def short_name(keys: Sequence[str], values: Sequence[Any]) -> str:
    """An arm's keys in short form, bare values first: ``fa depth=5 bn=standard``."""
    shorts = [SHORT_KEYS.get(k, k.rsplit(".", 1)[-1]) for k in keys]
    clash = {s for s in shorts if s and shorts.count(s) > 1}  # two sections' excitatory_fraction
    parts = [
        (short != "", _label(v) if short == "" else f"{k if short in clash else short}={_label(v)}")
        for k, v, short in zip(keys, values, shorts, strict=True)
    ]
    return " ".join(text for _, text in sorted(parts, key=lambda p: p[0])) or "all"


@functools.cache
def _preset_configs() -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """Every shipped preset's full config (defaults plus the preset) as scientific key/values."""
    from dynalign.config import Config, ConfigError, apply, flatten, load_preset, preset_names

    out = []
    for name in preset_names():
        try:
            config = flatten(apply(Config(), load_preset(name)).to_dict())
        except ConfigError:
            continue
        out.append((name, _scientific(config)))
    return tuple(out)


def _scientific(config: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """What a run tested: its config without the seed and how-it-was-run keys, comparable."""
    return tuple(sorted((k, _label(v)) for k, v in config.items() if not excluded(k)))


def preset_name(config: dict[str, Any]) -> str | None:
    """The shipped preset whose config ``config`` is (seed and how-it-was-run keys aside)."""
    wanted = _scientific(config)
    return next((name for name, preset in _preset_configs() if preset == wanted), None)


def _arm_names(
    result: xr.Dataset, keys: list[str], order: list[tuple[str, ...]], groups: list[list[int]]
) -> list[str]:
    """The arms' preset names where every arm is a shipped preset (its runs differ in nothing
    else), else their keys in short form (only the keys whose values differ between arms): a
    mix would hide what the preset arms differ in."""
    configs = json.loads(result.attrs.get("run_configs", "{}"))
    runs = [str(r) for r in result["run"].values]
    presets = []
    for idx in groups:
        tested = {_scientific(configs.get(runs[i], {})) for i in idx}
        presets.append(preset_name(configs.get(runs[idx[0]], {})) if len(tested) == 1 else None)
    if all(presets) and len(set(presets)) == len(presets):
        return [str(p) for p in presets]
    shown = [j for j, _ in enumerate(keys) if len({sig[j] for sig in order}) > 1 or len(order) == 1]
    if not shown:  # nothing tells the arms apart: name the one arm by its rule, where it has one
        rules = {configs.get(r, {}).get("rule.name") for r in runs}
        return [str(rules.pop()) if len(rules) == 1 and None not in rules else "all"] * len(order)
    names = unique_names(
        [short_name([keys[j] for j in shown], [sig[j] for j in shown]) for sig in order]
    )
    if max(map(len, names)) <= ARM_NAME_MAX:
        return names
    stems = [run_stem([runs[i] for i in idx]) for idx in groups]
    return stems if all(stems) and len(set(stems)) == len(stems) else names


def run_stem(names: Sequence[str]) -> str:
    """What an arm's run names share, without a trailing seed mark: ``fa-d2`` for
    ``fa-d2-s0`` and ``fa-d2-s1``; a lone run's whole name."""
    if len(names) == 1:
        return names[0]
    common = os.path.commonprefix(list(names))
    return re.sub(r"[-_.]*(seed|s)?[-_.]*$", "", common)


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


#: legend labels wrap at this many characters, so a long arm name widens no figure much
LABEL_WIDTH = 28
#: inches per legend entry (small font) and per arm of a dot plot
ENTRY_HEIGHT = 0.2


def _wrap(label: str) -> str:
    return "\n".join(textwrap.wrap(label, LABEL_WIDTH, break_on_hyphens=False)) or label


def facets(grouped: xr.Dataset) -> list[tuple[str, list[int]]]:
    """Groups of arms that share a panel: one group up to :data:`FACET_FROM` arms, else one per
    value of the first key (rule.name first) that splits the arms into several groups."""
    n = grouped.sizes["arm"]
    keys = json.loads(grouped.attrs.get("by", "[]"))
    if n >= FACET_FROM:
        ranked = [k for k in FACET_KEYS if k in keys] + [k for k in keys if k not in FACET_KEYS]
        for key in ranked:
            values = [_label(v) for v in grouped[key].values]
            distinct = list(dict.fromkeys(values))
            if 1 < len(distinct) < n:
                short = SHORT_KEYS.get(key, key.rsplit(".", 1)[-1])
                return [
                    (f"{short}={v}" if short else v, [a for a in range(n) if values[a] == v])
                    for v in distinct
                ]
    return [("", list(range(n)))]


def _legend_size(grouped: xr.Dataset) -> tuple[float, float]:
    """(width, height) in inches a one-column legend of every arm needs, with its label."""
    labels = [_wrap(_arm_label(grouped, a)) for a in range(grouped.sizes["arm"])]
    lines = sum(label.count("\n") + 1 for label in labels)
    longest = max((len(line) for label in labels for line in label.split("\n")), default=0)
    return 0.6 + 0.075 * longest, 0.5 + ENTRY_HEIGHT * lines


def _arm_label(grouped: xr.Dataset, a: int) -> str:
    return f"{grouped['arm_name'].values[a]} (n={int(grouped['n_runs'].values[a])})"


def plot_learning_curves(
    result: xr.Dataset,
    by: Sequence[str] | str | None = None,
    variables: Sequence[str] = ("train_accuracy", "val_accuracy"),
    **_: Any,
) -> Figure:
    """Learning curves per arm: mean over the arm's runs with its bootstrap CI band."""
    unknown = [v for v in variables if v not in CURVES]
    if unknown:
        raise AnalysisError(f"no learning curve {unknown}; choose from {', '.join(CURVES)}")
    grouped = arms(result, by)
    epochs = grouped["epoch"].values if "epoch" in grouped.coords else np.array([])
    rows = facets(grouped)
    legend_w, legend_h = _legend_size(grouped)
    height = max(2.9 * len(rows), legend_h)
    fig = Figure(figsize=(4.2 * len(variables) + legend_w, height), layout="constrained")
    axes = fig.subplots(len(rows), len(variables), squeeze=False, sharex=True, sharey="col")
    for (title, chosen), row in zip(rows, axes, strict=True):
        for ax, var in zip(row, variables, strict=True):
            for a in chosen:
                _draw_arm(ax, grouped, a, var, epochs)
            ax.set_ylabel(var.replace("_", " ") + (" (fraction)" if "accuracy" in var else ""))
            ax.grid(alpha=0.3)
        if title:
            row[0].set_title(title, loc="left", fontsize="medium")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(*_legend_entries(axes), loc="outside right upper", fontsize="small", frameon=False)
    fig.suptitle("Learning curves per arm: mean over its runs, 95% bootstrap CI", fontsize="medium")
    return fig


def _draw_arm(ax: Any, grouped: xr.Dataset, a: int, var: str, epochs: np.ndarray) -> None:
    """One arm's mean curve (markers where there are few epochs) and its CI band."""
    g = grouped.isel(arm=a)
    color = str(g["arm_color"].item())
    label = _wrap(_arm_label(grouped, a))
    mean = g[f"{var}_mean"].values
    marker = "o" if np.isfinite(mean).sum() <= 12 else None  # a short arm stays visible
    ax.plot(epochs, mean, color=color, marker=marker, markersize=3, label=label)
    low, high = g[f"{var}_low"].values, g[f"{var}_high"].values
    if np.isfinite(low).any():
        ax.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)


def _legend_entries(axes: np.ndarray) -> tuple[list[Any], list[str]]:
    """Every arm's line once, in arm order (each facet row holds only some arms)."""
    entries: dict[str, Any] = {}
    for row in axes:
        handles, labels = row[0].get_legend_handles_labels()
        entries.update(zip(labels, handles, strict=True))
    return list(entries.values()), list(entries)


def plot_best_accuracy(result: xr.Dataset, by: Sequence[str] | str | None = None, **_: Any):
    """Best validation accuracy per arm: each run (dots), the arm's mean and 95% bootstrap CI."""
    grouped = arms(result, by)
    if not np.isfinite(grouped["best_val_accuracy_mean"].values).any():
        return None
    n = grouped.sizes["arm"]
    width = 5.2 + min(0.075 * max(len(str(v)) for v in grouped["arm_name"].values), 3.0)
    labels = [_wrap(_arm_label(grouped, a)) for a in range(n)]
    lines = max(label.count("\n") + 1 for label in labels)  # ticks are evenly spaced
    rows = n * max(0.3, ENTRY_HEIGHT * lines)
    fig = Figure(figsize=(width, 0.9 + rows), layout="constrained")
    ax = fig.add_subplot()
    runs = result["best_val_accuracy"].values * 100
    for a, idx in enumerate(members(grouped)):
        g = grouped.isel(arm=a)
        color = str(g["arm_color"].item())
        y = n - 1 - a  # first arm on top
        ax.plot(runs[idx], np.full(len(idx), y), "o", mfc="none", color=color, alpha=0.6)
        mean = float(g["best_val_accuracy_mean"]) * 100
        low, high = (float(g[f"best_val_accuracy_{p}"]) * 100 for p in ("low", "high"))
        bar = [[mean - low], [high - mean]] if np.isfinite(low) else None
        ax.errorbar([mean], [y], xerr=bar, fmt="D", color=color, capsize=3)
    ax.set_yticks(range(n), labels[::-1])
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel("best validation accuracy (%)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Best validation accuracy per arm", fontsize="medium")
    ax.set_ylabel("arm (runs)")
    return fig
