"""How closely a rule's updates follow backprop: angle trajectories and their summary per layer.

For every layer and angle kind (update: rule's update vs the BP gradient; delta: error signal at
the layer's output vs BP's; feedback: W vs B) this keeps the raw trajectory and a smoothed one,
and summarises it as initial, minimum and plateau angle and the step from which the smoothed
angle stays below a threshold to the end of the run (the point where FA has "aligned").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from dynalign.analyses.smoothing import (
    AnalysisError,
    check_window,
    format_table,
    layer_names,
    parameters,
    provenance,
    smooth,
    steps_group,
)
from matplotlib.figure import Figure

NAME = "alignment"
KINDS = ("update", "delta", "feedback")


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
    return result


def feedback_alignment(result: xr.Dataset) -> xr.DataArray:
    """W–B alignment over time: the raw feedback-angle trajectory (step, layer)."""
    if "feedback" not in result["kind"].values:
        raise AnalysisError("this result has no feedback angle; the run did not record one")
    return result["angle"].sel(kind="feedback")


def _fmt(value: float, unit: str = "") -> str:
    return "-" if not np.isfinite(value) else f"{value:.1f}{unit}"


def _fmt_step(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:.0f}"


def table(result: xr.Dataset) -> str:
    """Per angle kind and layer: initial, minimum (at step), plateau and crossing step."""
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
    lines += format_table(head, rows, left=2)
    if never:
        lines.append(
            f"never settles below {threshold:g}° (smoothed, to the end): {', '.join(never)}"
        )
    return "\n".join(lines)


def plot_angles(result: xr.Dataset, kinds: list[str] | None = None, **_: Any) -> Figure:
    """Angle vs step, one panel per angle kind: raw (faint) and smoothed per layer, threshold."""
    kinds = [str(k) for k in result["kind"].values] if kinds is None else list(kinds)
    missing = [k for k in kinds if k not in result["kind"].values]
    if missing:
        raise AnalysisError(
            f"no angle kind {missing}; this result has {list(result['kind'].values)}"
        )
    threshold = parameters(result).get("threshold")
    fig = Figure(figsize=(4.2 * len(kinds), 3.4), layout="constrained")
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    steps = result["step"].values
    for ax, kind in zip(axes, kinds, strict=True):
        for j, layer in enumerate(result["layer"].values):
            color = f"C{j % 10}"
            raw = result["angle"].sel(kind=kind, layer=layer).values
            sm = result["angle_smooth"].sel(kind=kind, layer=layer).values
            ax.plot(steps, raw, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(steps, sm, color=color, linewidth=1.6, label=str(layer))
        if threshold is not None:
            ax.axhline(threshold, color="0.4", linestyle="--", linewidth=0.8)
        ax.set_title(f"{kind} angle")
        ax.set_xlabel("step")
        ax.set_ylabel("angle to backprop (degrees)")
        ax.set_ylim(bottom=0)
    axes[-1].legend(fontsize="small", title="layer")
    return fig
