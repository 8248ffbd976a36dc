"""How closely a rule's updates follow backprop: angle trajectories and their summary per layer.

For every layer and angle kind (update: rule's update vs the BP gradient; delta: error signal at
the layer's output vs BP's; feedback: W vs B) this keeps the raw trajectory and a smoothed one,
and summarises it as initial, minimum and plateau angle and the step from which the smoothed
angle stays below a threshold to the end of the run (the point where FA has "aligned").
Backprop's angles are 0 by construction: its result keeps the numbers, but its table says so in
one line and it gets no figure.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.figure import Figure

from dynalign.analyses.smoothing import (
    AnalysisError,
    check_window,
    flat_config,
    format_table,
    layer_names,
    parameters,
    provenance,
    smooth,
    steps_group,
)

NAME = "alignment"
KINDS = ("update", "delta", "feedback")
#: rules whose update is backprop's gradient itself: every angle is 0 by construction
EXACT_RULES = ("bp",)
#: a layer whose angle never exceeds this (degrees) is exact up to rounding: nothing to plot
EXACT_DEGREES = 0.1
#: what each angle kind measures, as panel title and y label
KIND_LABELS = {
    "update": ("Update vs BP gradient", "update angle to BP (°)"),
    "delta": ("Error signal δ vs BP's δ", "δ angle to BP (°)"),
    "feedback": ("Feedback B vs forward W", "angle between B and W (°)"),
}


def applies(tree: xr.DataTree) -> bool:
    """Any run whose steps group records an update angle."""
    return "steps" in tree.children and "update_angle" in tree["steps"].data_vars


def _check_params(window: int, threshold: float, initial_points: int, plateau_fraction: float):
    check_window(window)
    if not np.isfinite(threshold) or not 0 < threshold <= 180:
        raise AnalysisError(
            f"threshold={threshold!r} must be an angle in (0, 180] degrees, e.g. 80"
        )
    if (
        isinstance(initial_points, bool)
        or int(initial_points) != initial_points
        or initial_points < 1
    ):
        raise AnalysisError(f"initial_points={initial_points!r} must be a whole number >= 1")
    if not 0 < plateau_fraction <= 1:
        raise AnalysisError(
            f"plateau_fraction={plateau_fraction!r} must lie in (0, 1], e.g. 0.2 for the last 20%"
        )


def crossing_step(steps: np.ndarray, smoothed: np.ndarray, threshold: float) -> float:
    """First probed step from which ``smoothed`` stays below ``threshold`` to the end, else NaN.

    A trajectory that dips below and rebounds above gets the step after its last rebound; one
    whose last probed value is not below the threshold never settled and gets NaN.
    """
    finite = np.isfinite(smoothed)
    s, a = steps[finite], smoothed[finite]
    if a.size == 0 or a[-1] >= threshold:
        return np.nan
    above = np.flatnonzero(a >= threshold)
    return float(s[0] if above.size == 0 else s[above[-1] + 1])


def plateau(steps: np.ndarray, angles: np.ndarray, fraction: float) -> float:
    """Mean of the finite ``angles`` over the last ``fraction`` of their probed step span.

    Measured in steps, not points, so an unevenly probed run still averages over the same
    stretch of training.
    """
    finite = np.isfinite(angles)
    if not finite.any():
        return np.nan
    s, a = steps[finite], angles[finite]
    return float(a[s >= s[-1] - fraction * (s[-1] - s[0])].mean())


def hidden_update_plateau(tree: xr.DataTree, fraction: float = 0.2) -> float:
    """Plateau update angle averaged over the hidden layers (all but the last, the output layer,
    whose FA update is exact); the one number per run that compare tabulates across seeds."""
    if not applies(tree):
        return np.nan
    st = steps_group(tree)
    angles = st["update_angle"].transpose("step", "layer").values.astype(float)
    steps = st["step"].values
    hidden = range(max(angles.shape[1] - 1, 1))
    values = [plateau(steps, angles[:, j], fraction) for j in hidden]
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else np.nan


def _summary(
    steps: np.ndarray,
    raw: np.ndarray,
    smoothed: np.ndarray,
    threshold: float,
    initial_points: int,
    plateau_fraction: float,
) -> dict[str, float]:
    finite = np.isfinite(raw)
    nan = {k: np.nan for k in ("initial", "min", "min_step", "plateau", "crossing", "n")}
    if not finite.any():
        return nan | {"n": 0.0}
    s, a, sm = steps[finite], raw[finite], smoothed[finite]
    i_min = int(np.argmin(sm))
    return {
        "initial": float(a[:initial_points].mean()),
        "min": float(sm[i_min]),
        "min_step": float(s[i_min]),
        "plateau": plateau(s, a, plateau_fraction),
        "crossing": crossing_step(s, sm, threshold),
        "n": float(a.size),
    }


def analyze(
    tree: xr.DataTree,
    window: int = 5,
    threshold: float = 80.0,
    initial_points: int = 1,
    plateau_fraction: float = 0.2,
) -> xr.Dataset:
    """Angle trajectories and per-layer summaries of one run.

    window: smoothing window in probed points (centred moving average over probed steps only).
    threshold: degrees; the crossing step is where the smoothed angle settles below it.
    initial_points: the initial angle is the mean of this many first probed values.
    plateau_fraction: the plateau is the mean raw angle over this last fraction of the run.
    """
    if not applies(tree):
        raise AnalysisError(
            "this run has no steps/update_angle; alignment needs a run recorded with probes "
            "(probes.every > 0)"
        )
    _check_params(window, threshold, initial_points, plateau_fraction)
    st = steps_group(tree)
    kinds = [k for k in KINDS if f"{k}_angle" in st.data_vars]
    layers = layer_names(st)
    raw = xr.concat(
        [st[f"{k}_angle"].astype(float).transpose("step", "layer").drop_attrs() for k in kinds],
        dim=xr.DataArray(kinds, dims="kind", name="kind"),
    ).load()
    raw = raw.assign_coords(layer=layers)
    probed = np.isfinite(raw).any(dim=("kind", "layer"))
    raw = raw.sel(step=probed.values)  # keep probed steps only: the rest carry no angle
    smoothed = smooth(raw, window, dim="step")

    steps = raw["step"].values
    names = ("initial", "min", "min_step", "plateau", "crossing", "n")
    table_ = {n: np.full((len(kinds), len(layers)), np.nan) for n in names}
    for i in range(len(kinds)):
        for j in range(len(layers)):
            summary = _summary(
                steps,
                raw.values[i, :, j],
                smoothed.values[i, :, j],
                threshold,
                int(initial_points),
                plateau_fraction,
            )
            for n in names:
                table_[n][i, j] = summary[n]

    kl = ("kind", "layer")
    deg = "degree"
    result = xr.Dataset(
        {
            "angle": (
                ("kind", "step", "layer"),
                raw.values,
                {"units": deg, "long_name": "angle to backprop (raw, probed steps)"},
            ),
            "angle_smooth": (
                ("kind", "step", "layer"),
                smoothed.values,
                {"units": deg, "long_name": f"angle smoothed over {window} probed steps"},
            ),
            "initial_angle": (
                kl,
                table_["initial"],
                {"units": deg, "long_name": f"mean of the first {initial_points} probed angles"},
            ),
            "min_angle": (
                kl,
                table_["min"],
                {"units": deg, "long_name": "minimum of the smoothed angle"},
            ),
            "min_step": (
                kl,
                table_["min_step"],
                {"units": "1", "long_name": "step of the smoothed minimum"},
            ),
            "plateau_angle": (
                kl,
                table_["plateau"],
                {
                    "units": deg,
                    "long_name": f"mean angle over the last {plateau_fraction:g} of the run",
                },
            ),
            "crossing_step": (
                kl,
                table_["crossing"],
                {
                    "units": "1",
                    "long_name": f"first step from which the smoothed angle stays below "
                    f"{threshold:g} degrees (NaN: never settles below)",
                },
            ),
            "n_probed": (kl, table_["n"], {"units": "1", "long_name": "probed steps"}),
        },
        coords={
            "kind": np.array(kinds, dtype=object),
            "step": ("step", steps, {"units": "1", "long_name": "optimiser step"}),
            "layer": np.array(layers, dtype=object),
        },
    )
    result.attrs.update(
        provenance(
            tree,
            NAME,
            window=int(window),
            threshold=float(threshold),
            initial_points=int(initial_points),
            plateau_fraction=float(plateau_fraction),
        )
    )
    result.attrs["rule"] = run_rule(tree)
    return result


def run_rule(tree: xr.DataTree) -> str:
    """The run's learning rule (``rule.name``), so tables and plots can tell BP from the rest."""
    return str(flat_config(tree).get("rule.name") or tree.attrs.get("rule", ""))


def result_rule(result: xr.Dataset) -> str:
    """The rule a result was computed for: its ``rule`` attr, or older results' config."""
    if "rule" in result.attrs:
        return str(result.attrs["rule"])
    config = json.loads(result.attrs.get("config") or "{}")
    return str(config.get("rule", {}).get("name", ""))


def is_exact(result: xr.Dataset) -> bool:
    """Whether the run's rule is backprop itself, whose angles are 0 by construction."""
    return result_rule(result) in EXACT_RULES


def feedback_alignment(result: xr.Dataset) -> xr.DataArray:
    """W–B alignment over time: the raw feedback-angle trajectory (step, layer)."""
    if "feedback" not in result["kind"].values:
        raise AnalysisError("this result has no feedback angle; the run did not record one")
    return result["angle"].sel(kind="feedback")


def _fmt(value: float, unit: str = "") -> str:
    return "-" if not np.isfinite(value) else f"{value:.1f}{unit}"


def _fmt_step(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:.0f}"


def _exact_line(result: xr.Dataset) -> str:
    """The one line a BP run gets instead of a table of zeros."""
    largest = float(np.nanmax(np.abs(result["angle"].values)))
    return (
        f"rule {result_rule(result)}: its updates are backprop's own, so every angle is exact by "
        f"construction (0° up to rounding; largest recorded {largest:.2g}°)"
    )


def table(result: xr.Dataset) -> str:
    """Per angle kind and layer: initial, minimum (at step), plateau and crossing step; for
    BP, whose angles are 0 by construction, one line saying so."""
    params = parameters(result)
    threshold = params.get("threshold", np.nan)
    head = ["kind", "layer", "initial", "min", "min at", "plateau", f"< {threshold:g}° from"]
    rows: list[list[str]] = []
    never: list[str] = []
    for kind in result["kind"].values:
        for layer in result["layer"].values:
            r = result.sel(kind=kind, layer=layer)
            if r["n_probed"].item() == 0:
                continue
            crossing = float(r["crossing_step"])
            cross = _fmt_step(crossing) if np.isfinite(crossing) else "never"
            if not np.isfinite(crossing):
                never.append(f"{kind}/{layer}")
            rows.append(
                [
                    str(kind),
                    str(layer),
                    _fmt(float(r["initial_angle"]), "°"),
                    _fmt(float(r["min_angle"]), "°"),
                    _fmt_step(float(r["min_step"])),
                    _fmt(float(r["plateau_angle"]), "°"),
                    cross,
                ]
            )
    lines = [f"alignment — {result.attrs.get('run', '')} ({result.attrs.get('status', '')})"]
    if not rows:
        lines.append("no probed steps: the run recorded no angles (was probes.every 0?)")
        return "\n".join(lines)
    if is_exact(result):
        lines.append(_exact_line(result))
        return "\n".join(lines)
    lines += format_table(head, rows, left=2)
    if never:
        lines.append(
            f"never settles below {threshold:g}° (smoothed, to the end): {', '.join(never)}"
        )
    return "\n".join(lines)


def layer_colors(n: int) -> list[Any]:
    """One colour per layer: the qualitative cycle up to 10 layers, a sequential map beyond,
    where a repeated cycle colour would make two layers look alike."""
    if n <= 10:
        return [f"C{j}" for j in range(n)]
    return list(colormaps["viridis"](np.linspace(0.0, 0.92, n)))


def _layer_state(result: xr.Dataset, kind: str, layer: str) -> str:
    """'drawn', 'exact' (never above rounding of 0°) or 'none' (no finite angle)."""
    values = result["angle"].sel(kind=kind, layer=layer).values
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return "none"
    return "exact" if np.abs(finite).max() <= EXACT_DEGREES else "drawn"


def _shown_kinds(result: xr.Dataset, kinds: list[str] | None) -> list[str]:
    """The kinds asked for (checked), or by default those where some layer has a real angle."""
    available = [str(k) for k in result["kind"].values]
    if kinds is not None:
        missing = [k for k in kinds if k not in available]
        if missing:
            raise AnalysisError(f"no angle kind {missing}; this result has {available}")
        return list(kinds)
    layers = [str(v) for v in result["layer"].values]
    return [k for k in available if any(_layer_state(result, k, v) == "drawn" for v in layers)]


def _left_out(names: list[str], why: str) -> str:
    listed = ", ".join(names) if len(names) <= 3 else f"{len(names)} layers"
    return f"{listed}: {why}"


def _angle_panel(ax: Any, result: xr.Dataset, kind: str, colors: dict[str, Any]) -> None:
    """One kind: raw (faint) and smoothed angle per layer; exact or empty layers named."""
    steps = result["step"].values
    skipped: dict[str, list[str]] = {"exact": [], "none": []}
    for layer, color in colors.items():
        state = _layer_state(result, kind, layer)
        if state != "drawn":
            skipped[state].append(layer)
            continue
        raw = result["angle"].sel(kind=kind, layer=layer).values
        sm = result["angle_smooth"].sel(kind=kind, layer=layer).values
        ax.plot(steps, raw, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(steps, sm, color=color, linewidth=1.6, label=layer)
    threshold = parameters(result).get("threshold")
    if threshold is not None:
        label = f"threshold {threshold:g}°"
        ax.axhline(threshold, color="0.4", linestyle="--", linewidth=0.8, label=label)
    notes = [_left_out(skipped["exact"], "exact (0°)")] if skipped["exact"] else []
    notes += [_left_out(skipped["none"], "no angle")] if skipped["none"] else []
    title, ylabel = KIND_LABELS.get(kind, (f"{kind} angle", "angle to BP (°)"))
    ax.set_title(title + (f"\n({'; '.join(notes)}, not drawn)" if notes else ""), fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)


def plot_angles(result: xr.Dataset, kinds: list[str] | None = None, **_: Any) -> Figure | None:
    """Angle to backprop of each layer's update, error signal δ and feedback matrix B, per step.

    One panel per angle kind: raw angle (faint) and smoothed (solid) per layer, the threshold
    dashed. Layers whose angle is exact (0°, the read-out under FA) or undefined are named, not
    drawn. None for a backprop run (every angle 0 by construction) or when no kind has an angle
    to show. ``kinds``: the kinds to draw (default: every informative one).
    """
    if is_exact(result):
        return None
    kinds = _shown_kinds(result, kinds)
    if not kinds:
        return None
    layers = [str(v) for v in result["layer"].values]
    colors = dict(zip(layers, layer_colors(len(layers)), strict=True))
    fig = Figure(figsize=(3.9 * len(kinds) + 1.3, 3.6), layout="constrained")
    axes = fig.subplots(1, len(kinds), squeeze=False, sharey=True)[0]
    for ax, kind in zip(axes, kinds, strict=True):
        _angle_panel(ax, result, kind, colors)
    for ax in axes[1:]:
        ax.tick_params(labelleft=True)  # each panel keeps its own scale labels
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    order = [name for name in layers if name in handles]
    order += [name for name in handles if name not in layers]  # the threshold
    fig.legend([handles[n] for n in order], order, loc="outside right upper", fontsize="small")
    fig.suptitle(f"Alignment with backprop — {result.attrs.get('run', '')} ({result_rule(result)})")
    return fig
