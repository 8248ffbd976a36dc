"""When does a (sign-constrained) network start to unlearn, and does weight zeroing come first?

The seed study saw fixed-sign networks learn, then more and more updates try to flip signs,
weights get stuck at zero and accuracy falls. This module finds, on the smoothed accuracy curve,
the peak and the onset of the fall in two independent ways (a margin rule and a two-segment
piecewise-linear fit), reads the zeroed fraction and attempted-flip rate at the onset, and
measures the lag between the rise of zeroing and the fall of accuracy. An unconstrained
classifier gets the accuracy part only: without the constraint no weight is zeroed by a blocked
flip, so its table and figures leave zeroing out.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from scipy.optimize import minimize_scalar

from dynalign.analyses.alignment import layer_colors
from dynalign.analyses.smoothing import (
    AnalysisError,
    check_window,
    epochs_group,
    flat_config,
    format_table,
    layer_names,
    parameters,
    provenance,
    smooth,
    steps_group,
)

NAME = "unlearning"
ESTIMATES = ("margin", "hinge")
CURVES = ("batch", "val")
#: fewest points (and at least one smoothing window) the fall must last to count as unlearning
MIN_FALL = 3


def applies(tree: xr.DataTree) -> bool:
    """Sign-constrained runs, and any classification run (monotone ones get 'no unlearning')."""
    if "steps" not in tree.children:
        return False
    sign = flat_config(tree).get("constraint.sign", "none")
    task = tree.attrs.get("task")
    if task is None:  # older stores: a classifier is a run with a finite batch accuracy
        acc = tree["steps"].to_dataset().get("batch_accuracy")
        task = "classification" if acc is not None and bool(np.isfinite(acc).any()) else ""
    return sign != "none" or task == "classification"


# ---------------------------------------------------------------------------- estimates


def margin_onset(steps: np.ndarray, smoothed: np.ndarray, peak_index: int, margin: float) -> float:
    """First step after the peak from which ``smoothed`` stays more than ``margin`` below the
    peak to the end; NaN when the curve is back within the margin at its end."""
    level = smoothed[peak_index] - margin
    after = np.arange(peak_index, smoothed.size)
    still_up = after[smoothed[after] >= level]
    last_up = int(still_up[-1])  # the peak itself is always >= level
    return np.nan if last_up == smoothed.size - 1 else float(steps[last_up + 1])


def _hinge_design(t: np.ndarray, tb: float) -> np.ndarray:
    return np.column_stack([np.ones_like(t), np.minimum(t - tb, 0.0), np.maximum(t - tb, 0.0)])


def _hinge_sse(t: np.ndarray, y: np.ndarray, tb: float) -> tuple[float, np.ndarray]:
    coef, *_ = np.linalg.lstsq(_hinge_design(t, tb), y, rcond=None)
    resid = y - _hinge_design(t, tb) @ coef
    return float(resid @ resid), coef


def hinge_fit(t: np.ndarray, y: np.ndarray, grid_points: int = 200) -> dict[str, float]:
    """Continuous two-segment linear fit ``a + b*min(t-tb, 0) + c*max(t-tb, 0)``.

    For a fixed breakpoint tb the fit is linear least squares, so the breakpoint is found by a
    global grid search over tb (robust: no local minima to fall into) refined with scipy's
    bounded scalar minimiser between the neighbouring grid points.
    """
    nan = {"breakpoint": np.nan, "level": np.nan, "slope_before": np.nan, "slope_after": np.nan}
    if t.size < 6:
        return nan
    # Leave at least two points on each side so neither segment is fitted to a single point.
    lo, hi = float(t[2]), float(t[-3])
    if hi <= lo:
        return nan
    grid = np.linspace(lo, hi, min(grid_points, t.size))
    sse = np.array([_hinge_sse(t, y, tb)[0] for tb in grid])
    i = int(np.argmin(sse))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    best = float(grid[i])
    if b > a:
        opt = minimize_scalar(lambda tb: _hinge_sse(t, y, tb)[0], bounds=(a, b), method="bounded")
        if opt.success and opt.fun <= sse[i]:
            best = float(opt.x)
    _, coef = _hinge_sse(t, y, best)
    return {
        "breakpoint": best,
        "level": float(coef[0]),
        "slope_before": float(coef[1]),
        "slope_after": float(coef[2]),
    }


def fit_range(
    smoothed: np.ndarray, peak_index: int, margin: float, end_fraction: float
) -> tuple[int, int]:
    """Index range (inclusive) of the hinge fit around the fall after the peak.

    It starts where the smoothed curve last came within ``margin`` of its peak before the peak,
    so the fit sees the high stretch even when noise puts the maximum at its very end, and it
    ends where the curve has covered ``end_fraction`` of its fall to the post-peak minimum, so
    a floor reached after the fall does not pull the breakpoint.
    """
    peak = smoothed[peak_index]
    below = np.flatnonzero(smoothed[:peak_index] < peak - margin)
    start = int(below[-1]) + 1 if below.size else 0
    after = smoothed[peak_index:]
    target = peak - end_fraction * (peak - after.min())
    end = peak_index + int(np.argmax(after <= target))
    return start, end


def rise_step(steps: np.ndarray, smoothed: np.ndarray, fraction: float) -> float:
    """First step where ``smoothed`` has covered ``fraction`` of its rise from its first value
    to its maximum; NaN when it never rises (e.g. an unconstrained run, zeroed fraction 0)."""
    finite = np.isfinite(smoothed)
    s, z = steps[finite], smoothed[finite]
    if z.size == 0:
        return np.nan
    rise = z.max() - z[0]
    if not rise > 1e-12:
        return np.nan
    return float(s[np.argmax(z >= z[0] + fraction * rise)])


def _at(steps: np.ndarray, series: np.ndarray, step: float) -> float:
    """Series value at ``step``, linearly interpolated between its finite (probed) points."""
    finite = np.isfinite(series)
    if not np.isfinite(step) or not finite.any():
        return np.nan
    return float(np.interp(step, steps[finite], series[finite]))


# ---------------------------------------------------------------------------- analysis


def _accuracy(tree: xr.DataTree, st: xr.Dataset, curve: str) -> np.ndarray:
    """The chosen accuracy curve on the steps axis (val accuracy only at epoch-end steps)."""
    if curve == "batch":
        if "batch_accuracy" not in st.data_vars:
            raise AnalysisError("this run records no batch_accuracy; try curve='val'")
        return st["batch_accuracy"].values.astype(float)
    ep = epochs_group(tree)
    if ep is None or "val_accuracy" not in ep.data_vars or "step" not in ep.variables:
        raise AnalysisError("this run has no epochs/val_accuracy and step yet; use curve='batch'")
    out = np.full(st.sizes["step"], np.nan)
    index = {int(s): i for i, s in enumerate(st["step"].values)}
    for s, v in zip(ep["step"].values, ep["val_accuracy"].values, strict=True):
        if int(s) in index:
            out[index[int(s)]] = v
    return out


def _layer_series(st: xr.Dataset, name: str, layers: list[str]) -> np.ndarray:
    if name in st.data_vars:
        return st[name].transpose("step", "layer").values.astype(float)
    return np.full((st.sizes["step"], len(layers)), np.nan)


def _zeroing(
    st: xr.Dataset, layers: list[str], window: int, rise_fraction: float, onsets: np.ndarray
) -> dict[str, Any]:
    """Smoothed zeroed fraction and attempted flips (per layer and layer mean), their values
    at each onset estimate, and the step where zeroing covered ``rise_fraction`` of its rise."""
    zeroed = _layer_series(st, "zeroed_fraction", layers)
    flips = _layer_series(st, "attempted_flips", layers)
    steps = st["step"].values
    with warnings.catch_warnings():  # un-probed steps are all-NaN rows: their mean is NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        out: dict[str, Any] = {
            "zeroed": smooth(zeroed, window),
            "flips": smooth(flips, window),
            "zeroed_mean": smooth(np.nanmean(zeroed, axis=1), window),
            "flips_mean": smooth(np.nanmean(flips, axis=1), window),
        }
    for name in ("zeroed", "flips"):
        per_layer = out[name]
        out[f"{name}_at"] = np.array(
            [[_at(steps, per_layer[:, j], o) for j in range(len(layers))] for o in onsets]
        ).reshape(len(onsets), len(layers))
        out[f"{name}_mean_at"] = np.array([_at(steps, out[f"{name}_mean"], o) for o in onsets])
    out["zeroing_step"] = np.array(
        [rise_step(steps, out["zeroed"][:, j], rise_fraction) for j in range(len(layers))]
    )
    out["zeroing_mean"] = rise_step(steps, out["zeroed_mean"], rise_fraction)
    return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _too_short(tree: xr.DataTree, st: xr.Dataset, curve: str, n_points: int) -> str:
    """Why there is too little accuracy to analyse, from what the run recorded (not a guess)."""
    if tree.attrs.get("task") == "reconstruction":
        return "this is an autoencoder run, which has no accuracy; unlearning needs a classifier"
    ep = epochs_group(tree)
    n_steps = int(st.sizes.get("step", 0))
    n_epochs = int(ep.sizes.get("epoch", 0)) if ep is not None else 0
    status = str(tree.attrs.get("status", "unknown"))
    if curve == "val" and n_steps >= 3:
        fix = "use the batch curve: --set-param unlearning.curve=batch"
    elif status in ("running", "interrupted"):
        fix = "nothing to analyse yet; analyse it again once it has trained longer"
    else:
        fix = "record a longer run (raise train.epochs)"
    return (
        f"the run recorded {_count(n_steps, 'step')} and {_count(n_epochs, 'epoch')} "
        f"(status {status}), so the "
        f"{curve} accuracy has {n_points} points and unlearning needs at least 3; {fix}"
    )


def _check_params(curve: str, margin: float, rise_fraction: float) -> None:
    if curve not in CURVES:
        raise AnalysisError(
            f"curve={curve!r} must be one of {', '.join(CURVES)}; choose one of them"
        )
    if not 0 < margin < 1:
        raise AnalysisError(
            f"margin={margin!r} must be an accuracy difference in (0, 1), e.g. 0.05"
        )
    if not 0 < rise_fraction < 1:
        raise AnalysisError(f"rise_fraction={rise_fraction!r} must lie in (0, 1), e.g. 0.5")


def analyze(
    tree: xr.DataTree,
    curve: str = "batch",
    window: int | None = None,
    margin: float = 0.05,
    rise_fraction: float = 0.5,
    fit_end_fraction: float = 0.9,
) -> xr.Dataset:
    """Peak, onset (margin rule and hinge fit), zeroing at onset and the zeroing lead/lag.

    curve: "batch" (per-step batch accuracy) or "val" (validation accuracy at epoch ends).
    window: smoothing window in points of each series (None: 1/50 of the accuracy points).
    margin: absolute accuracy drop below the peak that counts as unlearning, once it has
        lasted to the end over at least :data:`MIN_FALL` points and one smoothing window.
    rise_fraction: the zeroing step is where the layer-mean zeroed fraction has covered this
        fraction of its rise from its first value to its maximum.
    fit_end_fraction: where the hinge fit ends (see :func:`fit_range`).
    """
    _check_params(curve, margin, rise_fraction)
    if not 0 < fit_end_fraction <= 1:
        raise AnalysisError(f"fit_end_fraction={fit_end_fraction!r} must lie in (0, 1]")
    st = steps_group(tree)
    layers = layer_names(st)
    steps = st["step"].values.astype(np.int64)
    acc = _accuracy(tree, st, curve)
    finite = np.isfinite(acc)
    if finite.sum() < 3:
        raise AnalysisError(_too_short(tree, st, curve, int(finite.sum())))
    if window is None:
        window = max(1, int(finite.sum()) // 50)
    window = check_window(window)
    acc_smooth = smooth(acc, window)

    t, ys = steps[finite].astype(float), acc_smooth[finite]
    ip = int(np.argmax(ys))
    peak, start, final = float(ys[ip]), float(ys[0]), float(ys[-1])
    onset_margin = margin_onset(t, ys, ip, margin)
    rose = peak - start >= margin
    # a fall counts once it lasts: a dip in the last few points of a noisy curve is not one
    lasting = np.isfinite(onset_margin) and np.sum(t >= onset_margin) >= max(MIN_FALL, window)
    unlearning = bool(rose and lasting)

    fit = {"breakpoint": np.nan, "level": np.nan, "slope_before": np.nan, "slope_after": np.nan}
    fit_span = (np.nan, np.nan)
    if unlearning:
        start_i, end_i = fit_range(ys, ip, margin, fit_end_fraction)
        fit_span = (float(t[start_i]), float(t[end_i]))
        fit = hinge_fit(t[start_i : end_i + 1], acc[finite][start_i : end_i + 1])
        if not fit["slope_after"] < min(fit["slope_before"], 0.0):
            fit["breakpoint"] = np.nan  # no steeper fall after the break: not an onset
    onsets = np.array([onset_margin if unlearning else np.nan, fit["breakpoint"]])

    z = _zeroing(st, layers, window, rise_fraction, onsets)

    step_attrs = {"units": "1", "long_name": "optimiser step"}
    e, sl, s = ("estimate",), ("step", "layer"), ("step",)
    result = xr.Dataset(
        {
            "accuracy": (s, acc, {"units": "1", "long_name": f"{curve} accuracy"}),
            "accuracy_smooth": (
                s,
                acc_smooth,
                {"units": "1", "long_name": f"{curve} accuracy smoothed over {window} points"},
            ),
            "zeroed_fraction": (
                sl,
                z["zeroed"],
                _a("1", "fraction of weights exactly 0 (smoothed)"),
            ),
            "zeroed_fraction_mean": (
                s,
                z["zeroed_mean"],
                _a("1", "zeroed fraction, mean over layers"),
            ),
            "attempted_flips": (
                sl,
                z["flips"],
                _a("count", "attempted sign flips per step (smoothed)"),
            ),
            "attempted_flips_mean": (
                s,
                z["flips_mean"],
                _a("count", "attempted flips per step, mean over layers"),
            ),
            "unlearning": (
                (),
                unlearning,
                _a("1", "accuracy rose, then fell margin below its peak"),
            ),
            "peak_accuracy": ((), peak, _a("1", "peak of the smoothed accuracy")),
            "peak_step": ((), float(t[ip]), _a("1", "step of the peak")),
            "start_accuracy": ((), start, _a("1", "first smoothed accuracy")),
            "final_accuracy": ((), final, _a("1", "last smoothed accuracy")),
            "onset_step": (
                e,
                onsets,
                _a("1", "onset of unlearning (margin: stays margin below peak; hinge: breakpoint)"),
            ),
            "zeroed_at_onset": (
                ("estimate", "layer"),
                z["zeroed_at"],
                _a("1", "zeroed fraction at onset"),
            ),
            "zeroed_mean_at_onset": (
                e,
                z["zeroed_mean_at"],
                _a("1", "layer-mean zeroed fraction at onset"),
            ),
            "attempted_flips_at_onset": (
                ("estimate", "layer"),
                z["flips_at"],
                _a("count", "attempted flips per step at onset"),
            ),
            "attempted_flips_mean_at_onset": (
                e,
                z["flips_mean_at"],
                _a("count", "layer-mean attempted flips per step at onset"),
            ),
            "zeroing_step": (
                ("layer",),
                z["zeroing_step"],
                _a("1", f"step where the zeroed fraction covered {rise_fraction:g} of its rise"),
            ),
            "zeroing_step_mean": (
                (),
                z["zeroing_mean"],
                _a(
                    "1",
                    f"step where the mean zeroed fraction covered {rise_fraction:g} of its rise",
                ),
            ),
            "lag": (
                e,
                onsets - z["zeroing_mean"],
                _a("1", "onset step minus zeroing step (>0: zeroing leads)"),
            ),
            "hinge_level": ((), fit["level"], _a("1", "hinge fit: accuracy at the breakpoint")),
            "hinge_slope_before": (
                (),
                fit["slope_before"],
                _a("1/step", "hinge fit: slope before"),
            ),
            "hinge_slope_after": ((), fit["slope_after"], _a("1/step", "hinge fit: slope after")),
            "fit_start": ((), fit_span[0], _a("1", "first step of the hinge fit")),
            "fit_end": ((), fit_span[1], _a("1", "last step of the hinge fit")),
        },
        coords={
            "step": ("step", steps, step_attrs),
            "layer": np.array(layers, dtype=object),
            "estimate": np.array(ESTIMATES, dtype=object),
        },
    )
    result.attrs.update(
        provenance(
            tree,
            NAME,
            curve=curve,
            window=window,
            margin=float(margin),
            rise_fraction=float(rise_fraction),
            fit_end_fraction=float(fit_end_fraction),
        )
    )
    result.attrs["constraint"] = str(flat_config(tree).get("constraint.sign", "none"))
    result.attrs["verdict"] = _verdict(
        curve, unlearning, rose, peak, float(t[ip]), start, final, onset_margin, margin, lasting
    )
    return result


def _a(units: str, long_name: str) -> dict[str, str]:
    return {"units": units, "long_name": long_name}


def _verdict(
    curve: str,
    unlearning: bool,
    rose: bool,
    peak: float,
    peak_step: float,
    start: float,
    final: float,
    onset: float,
    margin: float,
    lasting: bool = True,
) -> str:
    if unlearning:
        return (
            f"unlearning: {curve} accuracy peaked at {peak:.3f} (step {peak_step:.0f}) and stays "
            f"more than {margin:g} below it from step {onset:.0f} on (final {final:.3f})"
        )
    if not rose:
        return (
            f"no unlearning: {curve} accuracy never rose {margin:g} above its start "
            f"({start:.3f}, peak {peak:.3f})"
        )
    if np.isfinite(onset) and not lasting:
        return (
            f"no unlearning: {curve} accuracy fell more than {margin:g} below its peak "
            f"{peak:.3f} only at the end (from step {onset:.0f}; final {final:.3f}), too briefly "
            f"to tell from noise (fewer than {MIN_FALL} points or one smoothing window)"
        )
    return (
        f"no unlearning: {curve} accuracy ends within {margin:g} of its peak {peak:.3f} "
        f"(step {peak_step:.0f}; final {final:.3f})"
    )


# ---------------------------------------------------------------------------- output


def _num(value: float, digits: int = 3) -> str:
    return "-" if not np.isfinite(value) else f"{value:.{digits}f}"


def _step(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:.0f}"


def constraint_level(result: xr.Dataset) -> str:
    """The run's sign constraint (``constraint.sign``: none, synapse or neuron)."""
    sign = result.attrs.get("constraint")
    if sign is None:  # results from before the attr: read the run's config
        config = json.loads(result.attrs.get("config") or "{}")
        sign = config.get("constraint", {}).get("sign", "none")
    return str(sign)


def is_constrained(result: xr.Dataset) -> bool:
    """Whether the run had a sign constraint (Dale's law): only then can weights be zeroed by
    blocked sign flips, so only then are zeroing and attempted flips worth showing."""
    return constraint_level(result) != "none"


def table(result: xr.Dataset) -> str:
    """The verdict, the peak, and per onset estimate: step, and for sign-constrained runs the
    zeroing at onset and its lag."""
    lines = [
        f"unlearning — {result.attrs.get('run', '')} ({result.attrs.get('status', '')})",
        result.attrs.get("verdict", ""),
    ]
    peak = (
        f"peak {_num(float(result['peak_accuracy']))} at step {_step(float(result['peak_step']))}"
    )
    if not is_constrained(result):
        rows = [
            [str(est), _step(float(result["onset_step"].sel(estimate=est)))]
            for est in result["estimate"].values
        ]
        lines.append(f"{peak}; no sign constraint, so no zeroing to compare with")
        return "\n".join(lines + format_table(["estimate", "onset step"], rows))
    lines.append(
        f"{peak}; zeroed fraction reaches {parameters(result).get('rise_fraction', 0.5):g} of "
        f"its rise at step {_step(float(result['zeroing_step_mean']))}"
    )
    head = [
        "estimate",
        "onset step",
        "zeroed at onset",
        "attempted flips/step",
        "lag (+: zeroing leads)",
    ]
    rows = []
    for est in result["estimate"].values:
        r = result.sel(estimate=est)
        rows.append(
            [
                str(est),
                _step(float(r["onset_step"])),
                _num(float(r["zeroed_mean_at_onset"])),
                _num(float(r["attempted_flips_mean_at_onset"]), 1),
                _step(float(r["lag"])),
            ]
        )
    return "\n".join(lines + format_table(head, rows))


#: colour and line style of each onset estimate
ONSET_STYLES = {"margin": ("C3", "--"), "hinge": ("C1", ":")}


def _mark_onsets(ax: Any, result: xr.Dataset) -> None:
    """A vertical line at each onset estimate that found one."""
    for est in result["estimate"].values:
        onset = float(result["onset_step"].sel(estimate=est))
        if np.isfinite(onset):
            color, style = ONSET_STYLES.get(str(est), ("C7", "-."))
            ax.axvline(onset, color=color, linestyle=style, label=f"onset ({est})")


def _hinge_line(result: xr.Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """The fitted two-segment line over the fit's span, or None when the fit found no onset."""
    tb = float(result["onset_step"].sel(estimate="hinge"))
    if not np.isfinite(tb):
        return None
    t = np.linspace(float(result["fit_start"]), float(result["fit_end"]), 50)
    y = (
        float(result["hinge_level"])
        + float(result["hinge_slope_before"]) * np.minimum(t - tb, 0)
        + float(result["hinge_slope_after"]) * np.maximum(t - tb, 0)
    )
    return t, y


def plot_unlearning(result: xr.Dataset, **_: Any) -> Figure:
    """Accuracy over steps, raw and smoothed, with its peak and the onset of its decline marked."""
    fig = Figure(figsize=(7.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    steps = result["step"].values
    acc = result["accuracy"].values
    finite = np.isfinite(acc)
    curve = parameters(result).get("curve", "batch")
    ax.plot(steps[finite], acc[finite], color="C0", alpha=0.25, linewidth=0.8, label="raw")
    smoothed = result["accuracy_smooth"].values[finite]
    ax.plot(steps[finite], smoothed, color="C0", label="smoothed")
    peak = ([float(result["peak_step"])], [float(result["peak_accuracy"])])
    ax.plot(*peak, "o", color="k", label="peak")
    _mark_onsets(ax, result)
    fit = _hinge_line(result)
    if fit is not None:
        ax.plot(*fit, color="C1", linewidth=1.2, label="hinge fit")
    ax.set_xlabel("step")
    ax.set_ylabel(f"{curve} accuracy (fraction)")
    fig.legend(loc="outside right upper", fontsize="small")
    verdict = result.attrs.get("verdict", "").split(":")[0]
    fig.suptitle(f"{curve.capitalize()} accuracy: {verdict} — {result.attrs.get('run', '')}")
    return fig


def plot_zeroing(result: xr.Dataset, **_: Any) -> Figure | None:
    """Zeroed fraction and attempted sign flips per layer under the sign constraint, per step.

    The accuracy onsets are marked, so whether zeroing rose before accuracy fell can be read off.
    None for a run without a sign constraint: nothing can be zeroed by a blocked flip there.
    """
    if not is_constrained(result):
        return None
    layers = [str(v) for v in result["layer"].values]
    colors = layer_colors(len(layers))
    fig = Figure(figsize=(9.6, 3.6), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    panels = (
        ("zeroed_fraction", "weights exactly 0 (fraction)", "Zeroed weights"),
        ("attempted_flips", "attempted sign flips (count per step)", "Attempted sign flips"),
    )
    steps = result["step"].values
    for ax, (name, ylabel, title) in zip(axes, panels, strict=True):
        for j, layer in enumerate(layers):
            _finite_line(ax, steps, result[name].values[:, j], color=colors[j], label=layer)
        mean = result[f"{name}_mean"].values
        _finite_line(ax, steps, mean, color="k", linewidth=2.0, label="mean over layers")
        _mark_onsets(ax, result)
        if name == "zeroed_fraction":
            _mark_zeroing(ax, result)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
    handles = dict(zip(*reversed(axes[0].get_legend_handles_labels()), strict=True))
    fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize="small")
    run = result.attrs.get("run", "")
    fig.suptitle(f"Under the sign constraint ({constraint_level(result)}), smoothed — {run}")
    return fig


def _mark_zeroing(ax: Any, result: xr.Dataset) -> None:
    """A vertical line where the mean zeroed fraction covered its rise fraction of its rise."""
    step = float(result["zeroing_step_mean"])
    if np.isfinite(step):
        rise = parameters(result).get("rise_fraction", 0.5)
        label = f"zeroing at {rise:.0%} of its rise"
        ax.axvline(step, color="0.45", linestyle="-.", label=label)


def _finite_line(ax: Any, x: np.ndarray, y: np.ndarray, **style: Any) -> None:
    """Plot only the finite (probed) points, so gaps between probes do not break the line."""
    finite = np.isfinite(y)
    ax.plot(x[finite], y[finite], **style)
