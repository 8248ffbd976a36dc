"""A study's numbers: per-run metrics, their mean and bootstrap CI per arm, tables and curves.

Every run of a study is reduced to the same handful of floats (:data:`METRICS`, NaN where a
metric does not apply or the run has no readable store), computed with the single-run
analyses where one exists (alignment plateau, unlearning onset, autoencoder FVU).
:func:`summarise` lays them out along (arm, seed); :func:`arm_table` gives each arm the mean
over its seeds with a seeded 95% percentile-bootstrap CI; :func:`table` prints that, and
:func:`plot_curves` draws the mean learning curve of every arm with its CI band.
Nothing here imports pyplot: figures are built with matplotlib's object API.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tqdm import tqdm

from dynalign import study_reader
from dynalign.analyses import READ_ERRORS, open_tree
from dynalign.analyses import autoencoder as autoencoder_analysis
from dynalign.analyses import unlearning as unlearning_analysis
from dynalign.analyses.alignment import hidden_update_plateau
from dynalign.analyses.compare import ci_cell
from dynalign.analyses.smoothing import (
    AnalysisError,
    bootstrap_ci_columns,
    epochs_group,
    flat_config,
    format_table,
    now_iso,
)
from dynalign.store import StoreError

#: the per-run metrics: name -> (units, long_name); ``train_/val_accuracy_epoch_K`` exist for
#: every K >= 1 (:func:`is_metric`), those of :data:`DEFAULT_EPOCHS` are listed here
DEFAULT_EPOCHS = (1, 5, 10)
METRICS: dict[str, tuple[str, str]] = {
    "best_val_accuracy": ("1", "best validation accuracy over epochs"),
    "final_val_accuracy": ("1", "validation accuracy of the last epoch"),
    "best_train_accuracy": ("1", "best training accuracy over epochs"),
    "final_train_accuracy": ("1", "training accuracy of the last epoch"),
    **{
        f"{split}_accuracy_epoch_{k}": ("1", f"{split} accuracy after epoch {k}")
        for split in ("train", "val")
        for k in DEFAULT_EPOCHS
    },
    "final_val_loss": ("1", "validation loss of the last epoch"),
    "initial_loss": ("1", "batch loss at step 1"),
    "max_train_loss": ("1", "largest batch loss over the steps"),
    "diverged": ("1", "1 if the run diverged, else 0"),
    "stable": (
        "1",
        "1 if not diverged, every epoch loss finite and the final val loss below the initial loss",
    ),
    "update_angle_plateau": ("degree", "plateau update angle to BP, mean over hidden layers"),
    "peak_accuracy": ("1", "peak of the smoothed batch accuracy"),
    "unlearning_drop": ("1", "peak minus final smoothed batch accuracy"),
    "onset_step": ("1", "step from which accuracy stays a margin below its peak (unlearning)"),
    "flips_lead": (
        "1",
        "1 if attempted flips or zeroing rose before the unlearning onset, 0 if not",
    ),
    "final_fvu": ("1", "fraction of variance unexplained at the last reconstruction"),
    "fvu_ratio_mean_image": ("1", "final FVU / FVU of the mean training image"),
    "specificity": ("1", "specificity of the last reconstruction"),
    "epochs_recorded": ("1", "epochs the run recorded"),
}
EPOCH_METRIC = re.compile(r"(train|val)_accuracy_epoch_([1-9][0-9]*)")
#: (metric, header, scale, digits) of the columns :func:`table` shows by default
COLUMNS = (
    ("best_val_accuracy", "best val %", 100.0, 1),
    ("final_val_accuracy", "final val %", 100.0, 1),
    ("train_accuracy_epoch_1", "train@1 %", 100.0, 1),
    ("train_accuracy_epoch_5", "train@5 %", 100.0, 1),
    ("train_accuracy_epoch_10", "train@10 %", 100.0, 1),
    ("update_angle_plateau", "angle °", 1.0, 1),
    ("onset_step", "onset step", 1.0, 0),
    ("final_fvu", "FVU", 1.0, 3),
)
#: learning curves :func:`plot_curves` draws: epoch-group ones and step-group ones
EPOCH_CURVES = ("train_accuracy", "val_accuracy", "train_loss", "val_loss")
STEP_CURVES = ("loss", "batch_accuracy")
#: step curves are averaged into at most this many bins before bootstrapping
STEP_BINS = 200
STATS = ("mean", "ci_low", "ci_high", "n")


def is_metric(name: str) -> bool:
    """Whether ``name`` is a per-run metric (``train_accuracy_epoch_K`` for any K >= 1 too)."""
    return name in METRICS or EPOCH_METRIC.fullmatch(str(name)) is not None


def metric_attrs(name: str) -> dict[str, str]:
    """``{"units", "long_name"}`` of a metric."""
    if name in METRICS:
        units, long_name = METRICS[name]
    else:
        match = EPOCH_METRIC.fullmatch(name)
        if match is None:
            raise AnalysisError(f"unknown metric {name!r}; {_known()}")
        units, long_name = "1", f"{match.group(1)} accuracy after epoch {match.group(2)}"
    return {"units": units, "long_name": long_name}


def _known() -> str:
    fixed = [m for m in METRICS if not EPOCH_METRIC.fullmatch(m)]
    return f"choose from {', '.join(fixed)}, train_accuracy_epoch_K, val_accuracy_epoch_K"


def metric_names(epochs: Iterable[int] = DEFAULT_EPOCHS, extra: Iterable[str] = ()) -> list[str]:
    """The metrics :func:`run_metrics` returns for ``epochs``, plus ``extra`` (checked)."""
    names = [m for m in METRICS if not EPOCH_METRIC.fullmatch(m)]
    epoch_names = [f"{s}_accuracy_epoch_{int(k)}" for s in ("train", "val") for k in epochs]
    for name in extra:
        if not is_metric(name):
            raise AnalysisError(f"unknown metric {name!r}; {_known()}")
        if name not in names and name not in epoch_names:
            epoch_names.append(name)
    return _in_order(names, epoch_names)


def _in_order(fixed: list[str], epoch_names: list[str]) -> list[str]:
    """Epoch metrics after the best/final accuracies, sorted by split then K."""

    def key(name: str) -> tuple[int, int]:
        match = EPOCH_METRIC.fullmatch(name)
        return (0 if match.group(1) == "train" else 1, int(match.group(2)))

    at = fixed.index("final_train_accuracy") + 1
    return [*fixed[:at], *sorted(dict.fromkeys(epoch_names), key=key), *fixed[at:]]


# ----------------------------------------------------------------------------- one run


def _finite_last(values: np.ndarray) -> float:
    finite = np.flatnonzero(np.isfinite(values))
    return float(values[finite[-1]]) if finite.size else np.nan


def _nanmax(values: np.ndarray) -> float:
    with warnings.catch_warnings():  # an all-NaN series gives NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmax(values)) if values.size else np.nan


def _epoch_values(ep: xr.Dataset | None, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(epoch numbers, values) of an epoch series; empty when the run has none."""
    if ep is None or name not in ep.data_vars:
        return np.array([], dtype=int), np.array([])
    values = np.asarray(ep[name].values, dtype=float)
    if "epoch" in ep.coords:
        epochs = np.asarray(ep["epoch"].values, dtype=int)
    else:
        epochs = np.arange(1, values.size + 1)
    return epochs, values


def _at_epoch(epochs: np.ndarray, values: np.ndarray, k: int) -> float:
    hit = np.flatnonzero(epochs == k)
    return float(values[hit[0]]) if hit.size else np.nan


def run_metrics(
    tree: xr.DataTree | str | Path | None,
    epochs: Iterable[int] = DEFAULT_EPOCHS,
    status: str | None = None,
    extra: Iterable[str] = (),
) -> dict[str, float]:
    """Every per-run metric of one run (a tree or a store path; None: all NaN).

    ``epochs``: the K of ``train_/val_accuracy_epoch_K``; ``extra``: further metric names
    (epoch ones). ``status`` overrides the store's own (the study reader's view of it). An
    analysis that fails on the run (too short, damaged chunks) leaves its metrics NaN.
    """
    names = metric_names(epochs, extra)
    out = dict.fromkeys(names, np.nan)
    if tree is None:
        return out
    tree = open_tree(tree)
    status = str(tree.attrs.get("status", "") if status is None else status)
    try:
        out.update(_curve_metrics(tree, names, status))
    except READ_ERRORS:
        pass  # a store that cannot be read: nothing is known about it
    try:
        out["update_angle_plateau"] = hidden_update_plateau(tree)
    except READ_ERRORS:
        pass
    out.update(_unlearning_metrics(tree))
    out.update(_autoencoder_metrics(tree))
    return {k: float(v) for k, v in out.items() if k in names}


def _curve_metrics(tree: xr.DataTree, names: list[str], status: str) -> dict[str, float]:
    ep = epochs_group(tree)
    out: dict[str, float] = {}
    curves = {c: _epoch_values(ep, c) for c in EPOCH_CURVES}
    for split in ("train", "val"):
        _, acc = curves[f"{split}_accuracy"]
        out[f"best_{split}_accuracy"] = _nanmax(acc)
        out[f"final_{split}_accuracy"] = _finite_last(acc)
    for name in names:
        match = EPOCH_METRIC.fullmatch(name)
        if match:
            epochs, acc = curves[f"{match.group(1)}_accuracy"]
            out[name] = _at_epoch(epochs, acc, int(match.group(2)))
    val_loss = curves["val_loss"][1]
    out["final_val_loss"] = _finite_last(val_loss)
    out["epochs_recorded"] = float(ep.sizes.get("epoch", 0)) if ep is not None else 0.0

    initial, max_loss = np.nan, np.nan
    if "steps" in tree.children and "loss" in tree["steps"].data_vars:
        st = tree["steps"].to_dataset()
        loss = np.asarray(st["loss"].values, dtype=float)
        steps = np.arange(1, loss.size + 1)
        if "step" in st.coords:
            steps = np.asarray(st["step"].values)
        first = np.flatnonzero(steps == 1)
        initial = float(loss[first[0]]) if first.size else np.nan
        if loss.size and not np.isnan(loss).all():
            max_loss = float(np.nanmax(loss))
    out["initial_loss"], out["max_train_loss"] = initial, max_loss

    diverged = status == "diverged"
    out["diverged"] = 1.0 if diverged else 0.0
    epoch_losses = np.concatenate([curves["train_loss"][1], val_loss])
    stable = (
        not diverged
        and bool(np.isfinite(epoch_losses).all())
        and out["final_val_loss"] < initial  # False when either is NaN
    )
    out["stable"] = 1.0 if stable else 0.0
    return out


def _unlearning_metrics(tree: xr.DataTree) -> dict[str, float]:
    keys = ("peak_accuracy", "unlearning_drop", "onset_step", "flips_lead")
    out = dict.fromkeys(keys, np.nan)
    try:
        if not unlearning_analysis.applies(tree):
            return out
        result = unlearning_analysis.analyze(tree)
    except READ_ERRORS:  # AnalysisError included: too short, no accuracy, damaged chunks
        return out
    peak = float(result["peak_accuracy"])
    onset = float(result["onset_step"].sel(estimate="margin"))
    steps = result["step"].values
    rise_fraction = json.loads(result.attrs.get("parameters", "{}")).get("rise_fraction", 0.5)
    flips_rise = unlearning_analysis.rise_step(
        steps, result["attempted_flips_mean"].values, rise_fraction
    )
    rises = [v for v in (float(result["zeroing_step_mean"]), flips_rise) if np.isfinite(v)]
    lead = np.nan
    if np.isfinite(onset):
        lead = 1.0 if rises and min(rises) < onset else 0.0
    out.update(
        peak_accuracy=peak,
        unlearning_drop=peak - float(result["final_accuracy"]),
        onset_step=onset,
        flips_lead=lead,
    )
    return out


def _autoencoder_metrics(tree: xr.DataTree) -> dict[str, float]:
    keys = ("final_fvu", "fvu_ratio_mean_image", "specificity")
    out = dict.fromkeys(keys, np.nan)
    try:
        if not autoencoder_analysis.applies(tree):
            return out
        result = autoencoder_analysis.analyze(tree)
    except READ_ERRORS:
        return out
    final = float(result["final_fvu"])
    baseline = float(result["fvu_mean_image"])
    out.update(
        final_fvu=final,
        fvu_ratio_mean_image=final / baseline if baseline > 0 else np.nan,
        specificity=float(result["final_specificity"]),
    )
    return out


# ----------------------------------------------------------------------------- a study


class _Point:
    __slots__ = ("arm", "seed", "tree", "status", "message")

    def __init__(self, arm: str, seed: int, tree: Any, status: str, message: str = ""):
        self.arm, self.seed, self.tree, self.status, self.message = arm, seed, tree, status, message


def _from_directory(path: Path) -> tuple[list[_Point], list[str], list[int], dict, dict]:
    manifest = study_reader.read_manifest(path)
    points = []
    for (arm, seed), entry in study_reader.run_entries(manifest).items():
        status, message, tree = study_reader.open_point(path, entry)
        points.append(_Point(arm, seed, tree, status, message))
    arms = [a["name"] for a in manifest["arms"]]
    seeds = [int(s) for s in manifest["seeds"]]
    coords = study_reader.arm_coordinates(manifest)
    return points, arms, seeds, coords, study_reader.study_attrs(manifest, path)


def _open(run: Any) -> xr.DataTree | None:
    if run is None:
        return None
    try:
        return open_tree(run)
    except StoreError:
        return None


def _from_mapping(runs: Mapping[tuple[str, int], Any]) -> tuple:
    points = []
    for (arm, seed), run in runs.items():
        tree = _open(run)
        status = "missing" if tree is None else str(tree.attrs.get("status", "unknown"))
        points.append(_Point(str(arm), int(seed), tree, status))
    arms = list(dict.fromkeys(p.arm for p in points))
    seeds = sorted({p.seed for p in points})
    configs = {}
    for p in points:
        if p.tree is not None and p.arm not in configs:
            configs[p.arm] = {
                k: v for k, v in flat_config(p.tree).items() if k not in study_reader.SEED_KEYS
            }
    keys = study_reader.varying_keys(configs) if len(configs) == len(arms) else []
    coords = {k: study_reader.coordinate([configs[a].get(k) for a in arms]) for k in keys}
    return points, arms, seeds, coords, {"name": "", "description": ""}


def _from_trees(runs: Sequence[Any]) -> tuple:
    """Runs grouped into arms by the config keys that vary between them (the seed aside)."""
    trees = [open_tree(r) for r in runs]
    configs = [flat_config(t) for t in trees]
    rest = [{k: v for k, v in c.items() if k not in study_reader.SEED_KEYS} for c in configs]
    keys = study_reader.varying_keys(dict(enumerate(rest)))
    shorts = [study_reader.short_name(k) for k in keys]
    names = [k if shorts.count(s) > 1 else s for k, s in zip(keys, shorts, strict=True)]
    mapping: dict[tuple[str, int], Any] = {}
    for tree, config in zip(trees, configs, strict=True):
        parts = zip(names, keys, strict=True)
        arm = ",".join(f"{n}={study_reader.label(config.get(k))}" for n, k in parts)
        key = (arm or "all", int(config.get("train.seed", 0)))
        if key in mapping:
            raise AnalysisError(
                f"two runs share the arm {key[0]!r} and seed {key[1]}; give each seed once"
            )
        mapping[key] = tree
    return _from_mapping(mapping)


def _points(study: Any) -> tuple:
    if isinstance(study, xr.DataTree) and study.attrs.get("kind") == study_reader.KIND:
        study = study.attrs["path"]  # an open_study tree: read the runs themselves again
    if isinstance(study, (str, Path)):
        path = Path(study)
        if study_reader.has_manifest(path) or not (path / "zarr.json").exists():
            return _from_directory(path)
        study = [path]
    if isinstance(study, xr.DataTree):
        study = [study]
    if isinstance(study, Mapping):
        return _from_mapping(study)
    study = list(study)
    if not study:
        raise AnalysisError("no runs to summarise; give a study directory or run stores")
    return _from_trees(study)


def summarise(
    study: Any,
    epochs: Iterable[int] = DEFAULT_EPOCHS,
    metrics: Iterable[str] = (),
    progress: bool = False,
) -> xr.Dataset:
    """Every per-run metric of a study along (arm, seed), plus ``status`` and ``message``.

    ``study``: a study directory (or its :func:`dynalign.study_reader.open_study` tree), a
    mapping ``{(arm, seed): tree, path or None}``, or a list of run trees/stores (arms: the
    config keys that vary between them, seeds: ``train.seed``). Coordinates on ``arm``: every
    config key that varies between arms, by dotted name. ``epochs``/``metrics``: which
    ``*_accuracy_epoch_K`` metrics to add. Runs without a readable store give NaN.
    """
    epochs = [int(k) for k in epochs]
    names = metric_names(epochs, metrics)
    points, arms, seeds, coords, attrs = _points(study)
    values = {m: np.full((len(arms), len(seeds)), np.nan) for m in names}
    status = np.full((len(arms), len(seeds)), "missing", dtype=object)
    message = np.full((len(arms), len(seeds)), "", dtype=object)
    a_index = {a: i for i, a in enumerate(arms)}
    s_index = {s: j for j, s in enumerate(seeds)}
    for p in tqdm(points, desc="metrics", unit="run", disable=not progress):
        i, j = a_index[p.arm], s_index[p.seed]
        status[i, j], message[i, j] = p.status, p.message
        if p.tree is None:
            continue
        found = run_metrics(p.tree, epochs, status=p.status, extra=metrics)
        for m in names:
            values[m][i, j] = found[m]
    data = {m: (("arm", "seed"), values[m], metric_attrs(m)) for m in names}
    data["status"] = (("arm", "seed"), status, {"long_name": "run status"})
    data["message"] = (("arm", "seed"), message, {"long_name": "why the run has this status"})
    ds = xr.Dataset(
        data,
        coords={
            "arm": ("arm", np.array(arms, dtype=object)),
            "seed": ("seed", np.array(seeds, dtype=np.int64)),
            **{k: ("arm", v) for k, v in coords.items()},
        },
    )
    ds.attrs.update(
        {
            "analysis": "study",
            "name": str(attrs.get("name", "")),
            "description": str(attrs.get("description", "")),
            "source": str(attrs.get("path", "")),
            "finding": json.dumps(attrs.get("finding")),
            "scale": str(attrs.get("scale") or ""),
            "arm_keys": json.dumps(list(coords)),
            "analysed": now_iso(),
        }
    )
    return ds


# ----------------------------------------------------------------------------- per arm


def arm_table(
    summary: xr.Dataset,
    metrics: Sequence[str] | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> xr.Dataset:
    """Each arm's ``mean``, ``ci_low``, ``ci_high`` (percentile bootstrap of the mean over its
    seeds, seeded) and ``n`` (seeds with a finite value), as variables over (arm, metric)."""
    if metrics is None:
        metrics = [m for m in summary.data_vars if is_metric(str(m))]
    missing = [m for m in metrics if m not in summary.data_vars]
    if missing:
        raise AnalysisError(
            f"the summary has no metric {', '.join(map(repr, missing))}; summarise the study "
            "with metrics=[...] naming it"
        )
    metrics = list(metrics)
    n_arms = summary.sizes["arm"]
    stats = {s: np.full((n_arms, len(metrics)), np.nan) for s in STATS}
    for i in range(n_arms):
        block = np.column_stack(
            [np.asarray(summary[m].isel(arm=i).values, dtype=float) for m in metrics]
        ).reshape(summary.sizes["seed"], len(metrics))
        finite = np.isfinite(block)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            stats["mean"][i] = np.nanmean(block, axis=0)
        stats["n"][i] = finite.sum(axis=0)
        stats["ci_low"][i], stats["ci_high"][i] = bootstrap_ci_columns(block, n_boot, level, seed)
    what = {
        "mean": "mean over the arm's seeds",
        "ci_low": f"lower end of the {level:.0%} percentile-bootstrap CI of the mean",
        "ci_high": f"upper end of the {level:.0%} percentile-bootstrap CI of the mean",
        "n": "seeds with a finite value",
    }
    coords = {k: v for k, v in summary["arm"].coords.items() if k != "seed"}
    ds = xr.Dataset(
        {s: (("arm", "metric"), stats[s], {"long_name": what[s]}) for s in STATS},
        coords={
            **coords,
            "metric": ("metric", np.array(metrics, dtype=object)),
            "units": ("metric", np.array([metric_attrs(m)["units"] for m in metrics], object)),
            "long_name": (
                "metric",
                np.array([metric_attrs(m)["long_name"] for m in metrics], dtype=object),
            ),
        },
    )
    if "status" in summary:
        status = summary["status"].values
        ds["done"] = (("arm",), np.isin(status, study_reader.FINISHED).sum(axis=1))
        ds["done"].attrs["long_name"] = "seeds that finished (completed or diverged)"
        ds["seeds"] = (("arm",), np.full(n_arms, summary.sizes["seed"]))
    ds.attrs.update(summary.attrs)
    ds.attrs["bootstrap"] = (
        f"percentile bootstrap of the mean over seeds, {n_boot} resamples, level {level:g}, "
        f"seed {seed}"
    )
    return ds


def arm_values(table_ds: xr.Dataset) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{arm: {metric: {mean, ci_low, ci_high, n}}}`` as plain JSON-ready Python."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for i, arm in enumerate(table_ds["arm"].values):
        per = out.setdefault(str(arm), {})
        for j, metric in enumerate(table_ds["metric"].values):
            cell = {}
            for s in STATS:
                v = float(table_ds[s].values[i, j])
                cell[s] = (int(v) if s == "n" else v) if np.isfinite(v) else None
            per[str(metric)] = cell
    return out


def table(
    summary: xr.Dataset, metrics: Sequence[str] | None = None, n_boot: int = 2000, **kw: Any
) -> str:
    """One row per arm: finished seeds, then mean [95% CI] of the key metrics (best/final val
    accuracy, train accuracy after epochs 1/5/10, plateau angle, unlearning onset, FVU), or of
    ``metrics``; columns NaN for every arm are left out. Takes a summary or an arm table."""
    if "metric" in summary.dims:
        grouped = summary
    else:
        wanted = [c[0] for c in COLUMNS if c[0] in summary] if metrics is None else metrics
        grouped = arm_table(summary, wanted, n_boot=n_boot, **kw)
    known = {c[0]: c for c in COLUMNS}
    chosen = [c[0] for c in COLUMNS] if metrics is None else list(metrics)
    listed = [str(m) for m in grouped["metric"].values]
    columns = []
    for m in chosen:
        if m not in listed:
            continue
        j = listed.index(m)
        if not np.isfinite(grouped["mean"].values[:, j]).any():
            continue
        spec = known.get(m)
        if spec is None:
            percent = m.endswith("accuracy") or EPOCH_METRIC.fullmatch(m) is not None
            spec = (m, f"{m} %", 100.0, 1) if percent else (m, m, 1.0, 3)
        columns.append((j, spec))
    head = ["arm", *(["done"] if "done" in grouped else []), *(s[1] for _, s in columns)]
    rows = []
    for i, arm in enumerate(grouped["arm"].values):
        cells = [str(arm)]
        if "done" in grouped:
            cells.append(f"{int(grouped['done'].values[i])}/{int(grouped['seeds'].values[i])}")
        for j, (_, _, scale, digits) in columns:
            stats = (float(grouped[s].values[i, j]) for s in ("mean", "ci_low", "ci_high"))
            cells.append(ci_cell(*stats, scale, digits))
        rows.append(cells)
    name = grouped.attrs.get("name") or "study"
    lines = [f"{name} — {grouped.sizes['arm']} arms"]
    lines += format_table(head, rows)
    if not columns:
        lines.append("no metric has a value yet (no run has finished an epoch)")
    lines.append(
        f"mean [95% CI] over seeds ({grouped.attrs.get('bootstrap', 'bootstrap')}; "
        "no CI with fewer than two seeds)"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- curves


def _flat_arms(ds: xr.Dataset) -> tuple[xr.Dataset, list[str]]:
    """``ds`` with its arm dimension(s) as one ``arm`` dimension, and a label per arm."""
    lead = [d for d in ds.dims if d not in ("seed", "step", "epoch", "layer")]
    if lead == ["arm"]:
        return ds, [str(a) for a in ds["arm"].values]
    names = ds["arm"] if "arm" in ds.coords else None
    flat = ds.drop_vars("arm") if names is not None else ds
    flat = flat.stack(arm=lead)
    if names is not None:
        labels = [str(v) for v in names.stack(arm=lead).values]
    else:
        labels = [
            ",".join(f"{d}={v}" for d, v in zip(lead, idx, strict=True))
            for idx in flat["arm"].values
        ]
    return flat, labels


def _binned(x: np.ndarray, values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of ``values`` (seeds, points) over at most ``bins`` consecutive blocks of points."""
    if x.size <= bins:
        return x, values
    edges = np.linspace(0, x.size, bins + 1).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        xs = np.array([x[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)])
        vs = np.column_stack(
            [np.nanmean(values[:, a:b], axis=1) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        )
    return xs, vs


#: curves this short are drawn with markers and CI bars (a band over one epoch is invisible)
FEW_POINTS = 12
#: each curve's panel title and y label
CURVE_LABELS = {
    "train_accuracy": ("Training accuracy per epoch", "training accuracy (fraction)"),
    "val_accuracy": ("Validation accuracy per epoch", "validation accuracy (fraction)"),
    "train_loss": ("Training loss per epoch", "training loss (per sample)"),
    "val_loss": ("Validation loss per epoch", "validation loss (per sample)"),
    "loss": ("Batch loss per step", "batch loss (per sample)"),
    "batch_accuracy": ("Batch accuracy per step", "batch accuracy (fraction)"),
}


def _arm_curve(ax: Any, xs: np.ndarray, block: np.ndarray, color: str, label: str, **ci: Any):
    """One arm: its mean over seeds, and its bootstrap CI as a band (bars when few points)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(block, axis=0)
    low, high = bootstrap_ci_columns(block, **ci)
    n = int(np.isfinite(block).any(axis=1).sum())
    few = len(xs) <= FEW_POINTS
    ax.plot(xs, mean, color=color, marker="o" if few else None, label=f"{label} (n={n})")
    if np.isfinite(low).any():
        ax.fill_between(xs, low, high, color=color, alpha=0.2, linewidth=0)
        if few:  # a band needs two points; show the CI as bars
            ax.errorbar(xs, mean, [mean - low, high - mean], color=color, fmt="none")


def _curve_panel(ax: Any, study: xr.DataTree, name: str, **ci: Any) -> None:
    """One curve: every arm's mean and CI over epochs or (binned) steps, axes labelled."""
    axis = "epoch" if name in EPOCH_CURVES else "step"
    group = "epochs" if axis == "epoch" else "steps"
    ds = study[group].to_dataset() if group in study.children else xr.Dataset()
    drawn = 0
    if name in ds.data_vars and ds.sizes.get(axis, 0):
        flat, labels = _flat_arms(ds[[name]])
        data = flat[name].transpose("arm", "seed", axis).values.astype(float)
        x = flat[axis].values.astype(float)
        for a, lab in enumerate(labels):
            xs, block = (x, data[a]) if axis == "epoch" else _binned(x, data[a], STEP_BINS)
            if np.isfinite(block).any():
                _arm_curve(ax, xs, block, f"C{a % 10}", lab, **ci)
                drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
    title, ylabel = CURVE_LABELS[name]
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(axis)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_curves(
    study: xr.DataTree | str | Path,
    curve: str | Sequence[str] = "val_accuracy",
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Figure:
    """Mean learning curve over seeds per arm with its bootstrap CI band, one panel per curve.

    ``curve``: an epoch curve (train_accuracy, val_accuracy, train_loss, val_loss) over
    epochs, or a step curve (loss, batch_accuracy) over steps, averaged into at most
    :data:`STEP_BINS` bins first; or a list of them. ``study``: an ``open_study`` tree (any
    dims) or a study directory. One legend, outside the panels, names the arms.
    """
    if not isinstance(study, xr.DataTree):
        study = study_reader.open_study(study)
    curves = [curve] if isinstance(curve, str) else list(curve)
    unknown = [c for c in curves if c not in EPOCH_CURVES + STEP_CURVES]
    if unknown:
        raise AnalysisError(
            f"no curve {', '.join(unknown)}; choose from {', '.join(EPOCH_CURVES + STEP_CURVES)}"
        )
    fig = Figure(figsize=(4.4 * len(curves) + 2.0, 3.6), layout="constrained")
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, name in zip(axes, curves, strict=True):
        _curve_panel(ax, study, name, n=n_boot, level=level, seed=seed)
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize="small")
    title = study.attrs.get("name") or "Study"
    fig.suptitle(f"{title}: mean over seeds per arm, {level:.0%} bootstrap CI")
    return fig


def plot_accuracy(study: xr.DataTree | str | Path, **kw: Any) -> Figure:
    """Training and validation accuracy per epoch: each arm's mean over seeds with its CI band."""
    return plot_curves(study, ("train_accuracy", "val_accuracy"), **kw)


def plot_loss(study: xr.DataTree | str | Path, **kw: Any) -> Figure:
    """Batch loss per step (binned) and validation loss per epoch: each arm's mean and CI band."""
    return plot_curves(study, ("loss", "val_loss"), **kw)
