"""One run's learning curves: training and validation accuracy and loss per epoch.

Not a registered analysis: it computes nothing and has no table, it shows the run's ``epochs``
group as recorded. The report draws it first in every run's section, in the run's arm colour.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .smoothing import epochs_group, run_name

#: panels and the epoch series each shows: (ylabel, ((variable, legend label, line style), ...))
PANELS = (
    (
        "accuracy (fraction)",
        (("train_accuracy", "train", "--"), ("val_accuracy", "validation", "-")),
    ),
    ("loss (training objective)", (("train_loss", "train", "--"), ("val_loss", "validation", "-"))),
)
#: curves this short get markers: a line over two epochs hides where the points are
FEW_EPOCHS = 12


def _finite(ds: xr.Dataset, name: str) -> bool:
    return name in ds.data_vars and bool(np.isfinite(ds[name].values.astype(float)).any())


def panels(ds: xr.Dataset) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """The panels that have something to show, each with only its recorded series."""
    chosen = []
    for ylabel, series in PANELS:
        present = [s for s in series if _finite(ds, s[0])]
        if present:
            chosen.append((ylabel, present))
    return chosen


def plot_run_curves(tree: xr.DataTree, color: str = "C0") -> Figure | None:
    """Learning curves: training (dashed) and validation (solid) accuracy and loss per epoch."""
    ds = epochs_group(tree)
    shown = panels(ds) if ds is not None and ds.sizes.get("epoch", 0) else []
    if not shown:
        return None  # the run ended before its first epoch
    epochs = ds["epoch"].values if "epoch" in ds.coords else np.arange(1, ds.sizes["epoch"] + 1)
    marker = "o" if len(epochs) <= FEW_EPOCHS else None
    fig = Figure(figsize=(3.3 * len(shown), 2.6), layout="constrained")
    axes = fig.subplots(1, len(shown), squeeze=False)[0]
    for ax, (ylabel, series) in zip(axes, shown, strict=True):
        for name, label, style in series:
            values = ds[name].values.astype(float)
            ax.plot(epochs, values, style, color=color, marker=marker, markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"Learning curves per epoch — {run_name(tree)}", fontsize="medium")
    return fig
